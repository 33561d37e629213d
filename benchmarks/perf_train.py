"""Training throughput: open_clip's own trainer vs `align fit` (plain-CLIP mode and full mode), same data and model.

Usage: python benchmarks/perf_train.py [--json] [--quick] [--configs tiny vit-b-32] [--rounds 2] [--workers 1]
       [--threads 1] [--shards 'shards/eventworld/train-*.tar']

The first `steps x batch` EventWorld training samples are written twice into a temp folder: as JPEG files + a
tab-separated CSV (`filepath`, `caption` = the sample's `long` description, the positive text `align` trains on)
for `python -m open_clip_train.main --dataset-type csv`, and as one shard of the same records for `align fit`.
Per model config (`tiny`: EventCLIP-Tiny at 128 px, batch 32; `vit-b-32`: ViT-B-32 at 224 px, batch 8; random
init) three runs go as separate processes: open_clip_train (fp32, one epoch of exactly `steps` batches, no
validation), `align fit` with configs/eventworld-clip-baseline.yaml (plain CLIP) and with configs/demo.yaml (hard
negatives + OT), both limited to the same steps, batch, image size, seed and no validation. All runs get the same
data workers and torch threads (set before the trainer starts, checked at the first step).

Timing is the same on both sides: a global optimizer step post-hook in each child process records a timestamp
after every optimizer step; samples/s = batch x (steps - warmup) / (time of the last step - time of the end of the
warm-up steps), so start-up, model building, the warm-up steps and the final checkpoint are excluded, while data
waits, logging and progress bars between steps are included. Peak RSS is the child's own `ru_maxrss` (main process,
DataLoader workers excluded). The same stamps in main-process CPU time (`time.process_time`) give `sps_main_cpu`,
samples per CPU-second of the training process, which other jobs on a shared machine disturb much less than wall
time (data workers, which run beside the step, are not in it). Runs interleave (open_clip, plain, full, open_clip,
...) over `--rounds`; each figure is the median over rounds, the ratio is taken from those medians.

The full mode's extra cost is split in-process on one real batch (fwd+bwd of `EventAlignModule.training_step`,
median CPU time over interleaved repetitions, one thread): `negative_texts` = step with hard negatives - plain
step; `region_pooling` = `encode_image_and_regions` with the batch's boxes - `encode_image`; `ot` = the OT losses
the full config switches on (`ot_alignment_loss`, and `ot_contrastive_loss` when `ot_batch` > 0) fwd+bwd on the
step's embeddings; `argument_texts` = the rest of full - step with hard negatives (encoding the argument phrases
and the corrupted structures).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"model": "EventCLIP-Tiny", "image_size": 128, "batch": 32, "steps": 30, "warmup": 5},
    "vit-b-32": {"model": "ViT-B-32", "image_size": 224, "batch": 8, "steps": 8, "warmup": 2},
}
QUICK = {"tiny": {"steps": 8, "warmup": 2}, "vit-b-32": {"steps": 4, "warmup": 1}}
RUNS = ("openclip", "ours_plain", "ours_full")
BASE_CONFIGS = {"ours_plain": REPO / "configs" / "eventworld-clip-baseline.yaml",
                "ours_full": REPO / "configs" / "demo.yaml"}
CHILD = "_child"


# --------------------------------------------------------------------------- data
def extract_eventworld(shards: list[str], out: Path, n: int) -> dict[str, Any]:
    """First `n` records of `shards` -> `out/images/*.jpg` + `out/train.csv` (open_clip) and
    `out/shards/train-000000.tar` + `sizes.json` (ours), the same records in the same order. Caption = the first
    `long` description, else the caption (the primary positive `align` trains on with `positive_kinds: [long]`)."""
    from align.schema import IMAGE_EXT, RECORD_EXT, Sample

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    shard = out / "shards" / "train-000000.tar"
    rows: list[tuple[str, str]] = []
    with tarfile.open(shard, "w") as dst:
        for url in shards:
            with tarfile.open(url) as src:
                members: dict[str, dict[str, tuple[tarfile.TarInfo, bytes]]] = {}
                for info in src:
                    if not info.isfile():
                        continue
                    key, _, ext = info.name.partition(".")
                    members.setdefault(key, {})[ext] = (info, src.extractfile(info).read())
                    rec = members[key]
                    if IMAGE_EXT not in rec or RECORD_EXT not in rec:
                        continue
                    sample = Sample.from_json(rec[RECORD_EXT][1])
                    text = next((d.text for d in sample.positives if d.kind == "long" and d.text), sample.caption)
                    if not text:
                        raise ValueError(f"{url}: sample {key!r} has neither a long description nor a caption")
                    image = out / "images" / f"{Path(key).name}.{IMAGE_EXT}"
                    image.write_bytes(rec[IMAGE_EXT][1])
                    rows.append((str(image), " ".join(text.split())))
                    for m, data in rec.values():
                        dst.addfile(m, io.BytesIO(data))
                    del members[key]
                    if len(rows) == n:
                        break
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"{shards}: only {len(rows)} complete samples, {n} needed")
    with open(out / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    (out / "shards" / "sizes.json").write_text(json.dumps({shard.name: n}), encoding="utf-8")
    return {"csv": out / "train.csv", "shard": shard, "num_samples": n}


# --------------------------------------------------------------------------- child processes
def _child(kind: str, stamps_path: str, threads: int, args: list[str]) -> int:
    """Run one trainer in this process with step timestamps; write them, the thread count and the peak RSS."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(threads)
    stamps: list[float] = []
    cpu: list[float] = []
    seen: dict[str, int] = {}

    def hook(optimizer: Any, args_: Any, kwargs: Any) -> None:
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        seen.setdefault("threads", torch.get_num_threads())

    register_optimizer_step_post_hook(hook)
    rc = 0
    try:
        if kind == "openclip":
            import open_clip

            open_clip.add_model_config(REPO / "configs" / "models")  # EventCLIP-Tiny, as align.model does
            from open_clip_train.main import main as openclip_main

            rc = openclip_main(args) or 0
        else:
            from align.cli import main as align_main

            align_main(args)
    finally:
        from align.atomic import atomic_write_text

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        atomic_write_text(Path(stamps_path), json.dumps({"stamps": stamps, "cpu": cpu, "threads": seen.get("threads"),
                                                         "peak_rss_mb": peak_mb}))
    return int(rc)


def _align_config(run: str, cfg: dict[str, Any], data: dict[str, Any], root: Path, workers: int) -> Path:
    """The shipped config of `run`, with steps, batch, model, data and output folders set for the benchmark."""
    import yaml

    from align.cli import _merge

    base = yaml.safe_load(BASE_CONFIGS[run].read_text(encoding="utf-8"))
    loggers = [{"class_path": lg["class_path"], "init_args": {**lg.get("init_args", {}), "save_dir": str(root)}}
               for lg in base["trainer"].get("logger", [])]
    over = {
        "trainer": {"max_steps": cfg["steps"], "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "default_root_dir": str(root), "logger": loggers},
        "model": {"model_name": cfg["model"]},
        "data": {"train": str(data["shard"]), "val": None, "test": None, "batch_size": cfg["batch"],
                 "num_workers": workers, "image_size": cfg["image_size"],
                 "samples_per_epoch": cfg["steps"] * cfg["batch"]},
    }
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(_merge(base, over)), encoding="utf-8")
    return path


def _openclip_args(cfg: dict[str, Any], data: dict[str, Any], root: Path, workers: int) -> list[str]:
    """open_clip_train on the same rows (one epoch = `steps` batches), fp32, the demo's optimiser settings."""
    return ["--dataset-type", "csv", "--train-data", str(data["csv"]), "--csv-img-key", "filepath",
            "--csv-caption-key", "caption", "--csv-separator", "\t", "--model", cfg["model"],
            "--batch-size", str(cfg["batch"]), "--epochs", "1", "--workers", str(workers), "--precision", "fp32",
            "--lr", "1e-3", "--wd", "0.1", "--warmup", "40", "--seed", "0", "--logs", str(root), "--name", "run",
            "--report-to", "tensorboard", "--log-every-n-steps", "10"]


def run_child(run: str, cfg: dict[str, Any], data: dict[str, Any], root: Path, workers: int,
              threads: int) -> dict[str, Any]:
    """One trainer run in a fresh process; samples/s over the steps after the warm-up, peak RSS, threads."""
    root.mkdir(parents=True)
    if run == "openclip":
        kind, args = "openclip", _openclip_args(cfg, data, root, workers)
    else:
        kind, args = "align", ["fit", "--config", str(_align_config(run, cfg, data, root, workers))]
    stamps_path = root / "stamps.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    with open(root / "log.txt", "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, __file__, CHILD, kind, str(stamps_path), str(threads), "--", *args],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False)
    log_tail = (root / "log.txt").read_text(encoding="utf-8", errors="replace")[-3000:]
    if proc.returncode != 0 or not stamps_path.is_file():
        raise RuntimeError(f"{run} run failed (exit {proc.returncode}); log {root / 'log.txt'}:\n{log_tail}")
    rec = json.loads(stamps_path.read_text(encoding="utf-8"))
    t, w = rec["stamps"], cfg["warmup"]
    if len(t) != cfg["steps"]:
        raise RuntimeError(f"{run}: {len(t)} optimizer steps recorded, {cfg['steps']} expected; log:\n{log_tail}")
    if rec["threads"] != threads:
        raise RuntimeError(f"{run}: torch ran with {rec['threads']} threads, {threads} requested")
    c = rec["cpu"]
    return {"sps": cfg["batch"] * (len(t) - w) / (t[-1] - t[w - 1]),
            "sps_cpu": cfg["batch"] * (len(c) - w) / (c[-1] - c[w - 1]), "peak_rss_mb": rec["peak_rss_mb"]}


# --------------------------------------------------------------------------- full-mode cost split
def _median_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median CPU ms of each function over `reps` interleaved rounds, after one warm-up call each (one thread, so
    CPU time is the work itself, whatever else runs on the machine)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append((time.process_time() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def full_mode_split(cfg: dict[str, Any], shard: Path, reps: int) -> dict[str, float]:
    """ms per step of each part the full mode adds over plain CLIP, from fwd+bwd on one real batch."""
    import dataclasses
    import warnings

    import torch
    import yaml

    from align import losses
    from align.data import EventDataModule
    from align.hparams import LossWeights
    from align.module import EventAlignModule
    from align.ot import ot_alignment_loss

    full_cfg = yaml.safe_load(BASE_CONFIGS["ours_full"].read_text(encoding="utf-8"))
    plain_cfg = yaml.safe_load(BASE_CONFIGS["ours_plain"].read_text(encoding="utf-8"))
    data_kw = {k: v for k, v in full_cfg["data"].items() if k not in ("train", "val", "test", "num_workers")}
    data_kw.update(batch_size=cfg["batch"], image_size=cfg["image_size"])
    dm = EventDataModule(train=str(shard), num_workers=0, tokenizer_name=cfg["model"],
                         samples_per_epoch=cfg["batch"], **data_kw)
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    full_w = LossWeights(**full_cfg["model"]["weights"])
    ot_terms = {k: 0.0 for k in ("ot", "ot_batch") if getattr(full_w, k, 0.0) > 0}
    variants = {"plain": LossWeights(**plain_cfg["model"]["weights"]),
                "negatives": dataclasses.replace(full_w, **ot_terms), "full": full_w}
    contrastive = losses.ContrastiveLossConfig(**full_cfg["model"]["contrastive"])
    module = EventAlignModule(cfg["model"], contrastive=contrastive, weights=full_w).train()
    model = module.model

    def step(weights: LossWeights) -> Callable[[], None]:
        def run() -> None:
            module.weights = weights  # one model for every variant: the objectives are read per step
            module.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # self.log without a Trainer
                module.training_step(batch, 0).backward()
        return run

    def image_only() -> None:
        model.zero_grad(set_to_none=True)
        model.encode_image(batch["images"]).sum().backward()

    def with_regions() -> None:
        model.zero_grad(set_to_none=True)
        img, regions, _ = model.encode_image_and_regions(batch["images"], batch["boxes"], batch["box_mask"])
        (img.sum() + regions.sum()).backward()

    with torch.no_grad():
        _, regions, region_mask = model.encode_image_and_regions(batch["images"], batch["boxes"], batch["box_mask"])
        length = batch["arg_tokens"].shape[-1]
        args, neg = (model.encode_text(batch[k].reshape(-1, length)).reshape(*batch[k].shape[:-1], -1)
                     for k in ("arg_tokens", "neg_arg_tokens"))
    leaves = [t.clone().requires_grad_() for t in (args, regions, neg)]
    c, w = module.ot_config, full_w
    solver = {"eps": c.eps, "n_iters": c.n_iters, "reg_m": c.reg_m, "method": c.method, "grad": c.grad}

    def ot_only() -> None:  # the OT terms the full config switches on, on the step's embeddings
        for t in leaves:
            t.grad = None
        total = leaves[0].sum() * 0
        if "ot" in ot_terms:
            total = total + ot_alignment_loss(leaves[0], leaves[1], batch["arg_mask"], region_mask, leaves[2],
                                              batch["neg_arg_mask"], margin=w.ot_margin,
                                              contrastive_weight=w.ot_contrastive, **solver).loss
        if "ot_batch" in ot_terms:
            total = total + losses.ot_contrastive_loss(leaves[0], batch["arg_mask"], leaves[1], region_mask,
                                                       temperature=w.ot_temperature, gather=False, **solver)
        total.backward()

    ms = _median_ms({**{k: step(v) for k, v in variants.items()}, "image_only": image_only,
                     "with_regions": with_regions, "ot": ot_only}, reps)
    parts = {"negative_texts": ms["negatives"] - ms["plain"], "region_pooling": ms["with_regions"] - ms["image_only"],
             "ot": ms["ot"]}
    parts["argument_texts"] = ms["full"] - ms["negatives"] - parts["region_pooling"] - parts["ot"]
    return {"plain_step_ms": ms["plain"], "full_step_ms": ms["full"], "extra_ms": ms["full"] - ms["plain"],
            **{f"{k}_ms": v for k, v in parts.items()}, "ot_terms": sorted(ot_terms)}


# --------------------------------------------------------------------------- the benchmark
def bench_config(name: str, cfg: dict[str, Any], shards: list[str], work: Path, rounds: int, workers: int,
                 threads: int, split_reps: int) -> dict[str, Any]:
    """Interleaved runs of the three trainers on one model config, and the full mode's cost split."""
    data = extract_eventworld(shards, work / name / "data", cfg["steps"] * cfg["batch"])
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNS}
    for i in range(rounds):
        for run in RUNS:
            runs[run].append(run_child(run, cfg, data, work / name / f"{run}-{i}", workers, threads))
    sps = {r: statistics.median(x["sps"] for x in v) for r, v in runs.items()}
    cpu = {r: statistics.median(x["sps_cpu"] for x in v) for r, v in runs.items()}
    out = {
        "openclip_sps": sps["openclip"], "ours_plain_sps": sps["ours_plain"], "ours_full_sps": sps["ours_full"],
        "ratio_plain": sps["ours_plain"] / sps["openclip"], "ratio_full": sps["ours_full"] / sps["openclip"],
        "peak_rss_mb": {r: max(x["peak_rss_mb"] for x in v) for r, v in runs.items()},
        "sps_per_round": {r: [x["sps"] for x in v] for r, v in runs.items()},
        "sps_main_cpu": cpu, "ratio_plain_main_cpu": cpu["ours_plain"] / cpu["openclip"],
        "model": cfg["model"], "image_size": cfg["image_size"], "batch": cfg["batch"], "steps": cfg["steps"],
        "warmup_steps": cfg["warmup"],
    }
    if split_reps > 0:
        out["full_mode_split"] = full_mode_split(cfg, data["shard"], split_reps)
    return out


def bench(configs: dict[str, dict[str, Any]], shards: list[str], rounds: int = 2, workers: int = 1,
          threads: int = 1, split_reps: int = 5) -> dict[str, Any]:
    """{config name: figures} plus the run settings; temp data and run folders are removed afterwards."""
    import torch

    torch.set_num_threads(threads)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="perf_train-") as tmp:
        for name, cfg in configs.items():
            res[name] = bench_config(name, cfg, shards, Path(tmp), rounds, workers, threads, split_reps)
    res["settings"] = {"rounds": rounds, "workers": workers, "threads": threads, "precision": "fp32",
                       "device": "cpu", "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    return res


def table(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"fp32 CPU, {s['threads']} thread(s), {s['workers']} data worker(s), {s['rounds']} interleaved rounds, "
             f"load average {s['load_average'][0]:.2f}",
             "| config | open_clip samples/s | ours plain | ours full | ratio plain | ratio full | "
             "peak RSS MB (open_clip / plain / full) |", "|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        if name == "settings":
            continue
        rss = " / ".join(f"{r['peak_rss_mb'][k]:.0f}" for k in RUNS)
        lines.append(f"| {name} ({r['model']}, {r['image_size']} px, batch {r['batch']}) | {r['openclip_sps']:.2f} | "
                     f"{r['ours_plain_sps']:.2f} | {r['ours_full_sps']:.2f} | {r['ratio_plain']:.3f} | "
                     f"{r['ratio_full']:.3f} | {rss} |")
    for name, r in res.items():
        if name != "settings" and "full_mode_split" in r:
            sp = r["full_mode_split"]
            lines.append(f"{name} full-mode extra per step: {sp['extra_ms']:.1f} ms over a "
                         f"{sp['plain_step_ms']:.1f} ms plain fwd+bwd = negative texts "
                         f"{sp['negative_texts_ms']:.1f} + region pooling {sp['region_pooling_ms']:.1f} + OT "
                         f"{sp['ot_ms']:.1f} + argument texts {sp['argument_texts_ms']:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD]:
        kind, stamps, threads, _sep, *rest = argv[1:]
        return _child(kind, stamps, int(threads), rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, one round, tiny config only")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three runs")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers, both trainers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both trainers")
    parser.add_argument("--split-reps", type=int, default=5, help="repetitions for the full-mode split (0: skip)")
    parser.add_argument("--shards", default=str(REPO / "shards" / "eventworld" / "train-*.tar"))
    opts = parser.parse_args(argv)
    from align.shardlist import expand_shards

    names = opts.configs or (["tiny"] if opts.quick else list(CONFIGS))
    configs = {n: {**CONFIGS[n], **(QUICK[n] if opts.quick else {})} for n in names}
    rounds = 1 if opts.quick else opts.rounds
    res = bench(configs, expand_shards(opts.shards, "--shards"), rounds=rounds, workers=opts.workers,
                threads=opts.threads, split_reps=2 if opts.quick else opts.split_reps)
    print(json.dumps(res) if opts.json else table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
