"""OT head speed: batched `align.ot.solve_ot` vs POT's `ot.sinkhorn2` in a loop, and the OT share of a training step.

Usage: python benchmarks/perf_ot.py [--json] [--threads 1] [--skip-share]

Part 1 solves the same B=256 problems of 8 arguments x 50 regions (cost 1 - cosine of random embeddings, uniform
marginals, eps 0.1) for exactly 50 iterations on both sides (POT: numItermax=50, stopThr=0, numpy inputs, its default
method "sinkhorn" which is POT's fastest; its "sinkhorn_log" is timed too). Part 2 times one training step of
`align.model.EventCLIP` (forward+backward: image + region pooling, text towers, a CLIP contrastive loss and the OT
loss; only real, unpadded argument phrases go through the text tower) and, separately, forward+backward of
`ot_alignment_loss` on that step's shapes; the share is their ratio (median steps, a warm-up step excluded).
Thread count (default 1) applies to torch, numpy/BLAS and both sides of every comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def _median_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_vs_pot(batch: int = 256, n_args: int = 8, n_regions: int = 50, eps: float = 0.1, iters: int = 50) -> dict:
    import numpy as np
    import ot
    import torch

    from align.ot import cosine_cost, solve_ot

    g = torch.Generator().manual_seed(0)
    cost64 = cosine_cost(torch.randn(batch, n_args, 64, generator=g, dtype=torch.float64),
                         torch.randn(batch, n_regions, 64, generator=g, dtype=torch.float64))
    cost_np = cost64.numpy()
    cost = cost64.float()
    rows = torch.ones(batch, n_args, dtype=torch.bool)
    cols = torch.ones(batch, n_regions, dtype=torch.bool)
    a, b = np.full(n_args, 1.0 / n_args), np.full(n_regions, 1.0 / n_regions)

    def pot(method: str) -> np.ndarray:
        return np.array([ot.sinkhorn2(a, b, cost_np[i], eps, method=method, numItermax=iters, stopThr=0, warn=False)
                         for i in range(batch)])

    def ours() -> torch.Tensor:
        return solve_ot(cost, rows, cols, eps=eps, n_iters=iters, tol=None).distance

    ref = pot("sinkhorn")
    diff = float(np.abs(ours().numpy().astype(np.float64) - ref).max())
    diff_log = float(np.abs(pot("sinkhorn_log") - ref).max())
    # interleaved rounds, so load from other processes on a shared machine hits both sides alike
    pot_t, ours_t = [], []
    for _ in range(5):
        pot_t.append(_median_ms(lambda: pot("sinkhorn"), reps=1, warmup=0))
        ours_t.append(_median_ms(ours, reps=5, warmup=1))
    pot_ms, ours_ms = statistics.median(pot_t), statistics.median(ours_t)
    pot_log_ms = _median_ms(lambda: pot("sinkhorn_log"), reps=1, warmup=0)
    c = cost.clone().requires_grad_()
    ours_fb_ms = _median_ms(lambda: solve_ot(c, rows, cols, eps=eps, n_iters=iters, tol=None).distance.sum()
                            .backward(), reps=30, warmup=3)
    ours_unrolled_ms = _median_ms(lambda: solve_ot(c, rows, cols, eps=eps, n_iters=iters, tol=None, grad="unrolled")
                                  .distance.sum().backward(), reps=10, warmup=2)
    return {"pot_ms": pot_ms, "ours_ms": ours_ms, "speedup": pot_ms / ours_ms, "max_abs_diff": diff,
            "pot_log_ms": pot_log_ms, "speedup_vs_pot_log": pot_log_ms / ours_ms, "pot_log_vs_pot_diff": diff_log,
            "ours_fwd_bwd_envelope_ms": ours_fb_ms, "ours_fwd_bwd_unrolled_ms": ours_unrolled_ms}


def ot_share(model_name: str, batch: int, n_args: int, n_regions: int, n_neg_struct: int, n_neg_desc: int,
             reps: int) -> dict:
    """Share of one training step's time (fwd+bwd) spent in the OT loss (fwd+bwd) on the same shapes."""
    import torch
    import torch.nn.functional as F

    from align.model import EventCLIP
    from align.ot import ot_alignment_loss

    torch.manual_seed(0)
    model = EventCLIP(model_name, pretrained=None).train()
    size, dim = model.image_size, model.embed_dim
    images = torch.randn(batch, 3, size, size)
    xy = torch.rand(batch, n_regions, 2) * size * 0.6
    boxes = torch.cat([xy, xy + 8 + torch.rand(batch, n_regions, 2) * size * 0.4], -1).clamp(max=size)
    box_mask = torch.ones(batch, n_regions, dtype=torch.bool)
    arg_mask = torch.arange(n_args)[None] < torch.randint(1, n_args + 1, (batch, 1))
    descs = model.tokenizer([f"event {i}: attacker police attacked target protesters" for i in
                             range(batch * (1 + n_neg_desc))])
    real = arg_mask[:, None, :, None].expand(batch, 1 + n_neg_struct, n_args, dim)  # only real arguments are encoded
    args = model.tokenizer([f"role {i}: argument phrase {i % 7}" for i in range(int(real.sum()) // dim)])
    neg_mask = torch.ones(batch, n_neg_struct, dtype=torch.bool)

    def ot_loss(arg_emb, regions, neg_emb, mask):
        return ot_alignment_loss(arg_emb, regions, arg_mask, mask, neg_emb, neg_mask).loss

    def step() -> None:
        model.zero_grad(set_to_none=True)
        img, regions, mask = model.encode_image_and_regions(images, boxes, box_mask)
        txt = model.encode_text(descs).reshape(batch, 1 + n_neg_desc, dim)
        arg_all = torch.zeros(real.shape).masked_scatter(real, model.encode_text(args))
        # contrastive proxy: in-batch InfoNCE (both directions) + the description's negatives as extra columns
        logits = model.logit_scale.exp() * img @ torch.cat([txt[:, 0], txt[:, 1:].reshape(-1, dim)]).T
        target = torch.arange(batch)
        clip = F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch].T, target)
        loss = clip + ot_loss(arg_all[:, 0], regions, arg_all[:, 1:], mask)
        loss.backward()

    leaves = [torch.nn.functional.normalize(torch.randn(*s), dim=-1).requires_grad_()
              for s in [(batch, n_args, dim), (batch, n_regions, dim), (batch, n_neg_struct, n_args, dim)]]

    def ot_only() -> None:
        for t in leaves:
            t.grad = None
        ot_loss(*leaves, box_mask).backward()

    step_ms = _median_ms(step, reps=reps)  # first (warm-up) step excluded
    ot_ms = _median_ms(ot_only, reps=max(20, reps), warmup=3)
    return {"model": model_name, "batch": batch, "args": n_args, "regions": n_regions, "neg_structures": n_neg_struct,
            "neg_descriptions": n_neg_desc, "step_ms": step_ms, "ot_ms": ot_ms, "share": ot_ms / step_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and BLAS (both sides)")
    parser.add_argument("--skip-share", action="store_true", help="only the POT comparison")
    opts = parser.parse_args(argv)
    _set_threads(opts.threads)  # before numpy / torch are imported
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    torch.set_num_threads(opts.threads)
    res = bench_vs_pot()
    res["threads"] = opts.threads
    shares = {}
    if not opts.skip_share:
        shares["tiny"] = ot_share("EventCLIP-Tiny", batch=16, n_args=8, n_regions=50, n_neg_struct=2, n_neg_desc=3,
                                  reps=3)
        shares["vit-b-32"] = ot_share("ViT-B-32", batch=4, n_args=8, n_regions=50, n_neg_struct=2, n_neg_desc=3,
                                      reps=2)
    res["ot_share_of_step"] = {k: v["share"] for k, v in shares.items()}
    res["ot_share_detail"] = shares
    if opts.json:
        print(json.dumps(res))
        return 0
    print(f"OT, B=256 x (8 args x 50 regions), eps 0.1, 50 iterations, {opts.threads} thread(s)")
    print(f"{'solver':<42}{'ms':>10}{'speedup':>10}")
    print(f"{'POT ot.sinkhorn2 loop (sinkhorn)':<42}{res['pot_ms']:>10.2f}{1.0:>10.1f}")
    print(f"{'POT ot.sinkhorn2 loop (sinkhorn_log)':<42}{res['pot_log_ms']:>10.2f}{'':>10}")
    print(f"{'ours solve_ot (forward)':<42}{res['ours_ms']:>10.2f}{res['speedup']:>10.1f}")
    print(f"{'ours fwd+bwd, envelope':<42}{res['ours_fwd_bwd_envelope_ms']:>10.2f}{'':>10}")
    print(f"{'ours fwd+bwd, unrolled':<42}{res['ours_fwd_bwd_unrolled_ms']:>10.2f}{'':>10}")
    print(f"max |ours - POT| distance: {res['max_abs_diff']:.2e}")
    for name, s in shares.items():
        print(f"OT share of step [{name}: {s['model']}, batch {s['batch']}, {s['args']} args x {s['regions']} "
              f"regions, {s['neg_structures']} neg structures]: step {s['step_ms']:.1f} ms, OT {s['ot_ms']:.2f} ms, "
              f"share {s['share']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
