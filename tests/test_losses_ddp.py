"""ContrastiveLoss under DDP: 2 gloo processes on CPU, each holding part of a global batch, must reproduce the
single-process loss on the full batch (mean over ranks) and its gradients (rank gradient / world size, which is
what DDP's gradient averaging makes of it)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from align.losses import ContrastiveLoss, ContrastiveLossConfig

WORLD = 2
B, P, K, D = 6, 2, 3, 16
CONFIGS = [dict(variant="ce"), dict(variant="ce", multi_positive="primary", label_smoothing=0.1),
           dict(variant="ce", use_negatives_of_others=True),
           dict(variant="kl", label_smoothing=0.1, use_negatives_of_others=True),
           dict(variant="bce"), dict(variant="bce", label_smoothing=0.1, use_negatives_of_others=True)]
# Per rank: (rows, positive slots, negative slots). "uneven" gives rank 1 fewer rows, one positive slot and no
# negatives, so the gather must pad B, P and K; the full batch masks those slots out for the same rows.
# "no_negatives": K = 0 everywhere, compared with the full batch without negatives.
SPLITS = {"even": [(slice(0, 3), P, K), (slice(3, 6), P, K)],
          "uneven": [(slice(0, 4), P, K), (slice(4, 6), 1, 0)],
          "no_negatives": [(slice(0, 3), P, 0), (slice(3, 6), P, 0)]}


def make_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    pos = F.normalize(torch.randn(B, P, D, generator=g), dim=-1)
    neg = F.normalize(torch.randn(B, K, D, generator=g), dim=-1)
    pos_mask = torch.tensor([[True, True], [True, False], [True, True], [True, False], [True, False], [True, False]])
    neg_mask = torch.rand(B, K, generator=g) > 0.3
    neg_mask[1] = False
    neg_mask[4:] = False
    return img, pos, pos_mask, neg, neg_mask


def run_case(config: dict, img: torch.Tensor, pos: torch.Tensor, pos_mask: torch.Tensor, neg: torch.Tensor,
             neg_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss and gradients w.r.t. every input (and the bce bias) for fresh leaf copies of the inputs."""
    img, pos, neg = (x.clone().requires_grad_() for x in (img, pos, neg))
    scale = torch.tensor(2.5, requires_grad=True)
    module = ContrastiveLoss(ContrastiveLossConfig(**config))  # type: ignore[arg-type]
    loss, _ = module(img, pos, pos_mask, neg, neg_mask, scale)
    loss.backward()
    out = {"loss": loss.detach(), "img": img.grad, "pos": pos.grad, "neg": neg.grad, "scale": scale.grad}
    if config["variant"] == "bce":
        out["bias"] = module.bias.grad
    return out


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        img, pos, pos_mask, neg, neg_mask = make_batch()
        results = {}
        for split, parts in SPLITS.items():
            rows, p, k = parts[rank]
            for i, config in enumerate(CONFIGS):
                results[f"{split}/{i}"] = run_case(config, img[rows], pos[rows, :p], pos_mask[rows, :p],
                                                   neg[rows, :k], neg_mask[rows, :k])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    img, pos, pos_mask, neg, neg_mask = make_batch()
    close = dict(atol=1e-5, rtol=1e-5)
    for split, parts in SPLITS.items():
        for i, config in enumerate(CONFIGS):
            key = f"{split}/{i}"
            k_full = max(k for _, _, k in parts)
            full = run_case(config, img, pos, pos_mask, neg[:, :k_full], neg_mask[:, :k_full])
            got = [r[key] for r in ranks]
            torch.testing.assert_close(sum(g["loss"] for g in got) / WORLD, full["loss"], **close, msg=key)
            for name in ("scale", "bias") if config["variant"] == "bce" else ("scale",):
                torch.testing.assert_close(sum(g[name] for g in got) / WORLD, full[name], **close, msg=key)
            for g, (rows, p, k) in zip(got, parts):
                torch.testing.assert_close(g["img"] / WORLD, full["img"][rows], **close, msg=key)
                torch.testing.assert_close(g["pos"] / WORLD, full["pos"][rows, :p], **close, msg=key)
                if k:  # with K = 0 there is nothing to compare (the empty input may get no gradient at all)
                    torch.testing.assert_close(g["neg"] / WORLD, full["neg"][rows, :k], **close, msg=key)
        # the slots cut from rank 1 in the uneven split are masked in the full batch: no gradient there
        assert full["pos"][4:, 1:].abs().sum() == 0 and full["neg"][4:].abs().sum() == 0
