"""Data loading throughput: `EventDataModule` over shards vs a plain PyTorch DataLoader reading the same JPEGs with PIL.

Usage: python benchmarks/perf_loader.py [--json] [--quick] [--samples 1600] [--workers 0 1 2] [--rounds 3]
       [--shards 'shards/eventworld/train-*.tar'] [--copied-headers]

The first `--samples` EventWorld training records are written as JPEG files + a CSV (the `long` description as the
caption) and as one shard of the same records (`perf_train.extract_eventworld`), which is then rewritten by
`data_gen.shards.write_shard` so its tar headers are the ones `data-gen` writes now (no PAX header per member;
shards written before that change, such as `shards/eventworld`, have one: `--copied-headers` keeps them, to measure
such shards). The plain loader is what a user would write for CLIP training: a map-style Dataset that opens each
JPEG with PIL, converts to RGB, resizes to the model size (bicubic, no crop, as ours), applies torchvision `ToTensor`
+ `Normalize` (CLIP mean/std) and tokenises the caption with the same open_clip tokenizer;
`DataLoader(batch_size, shuffle=True, drop_last=True)`. Ours is
`EventDataModule.train_dataloader()` with the demo config's data settings (configs/demo.yaml: `long` positive, 4
template hard negatives, 12 regions, 4 arguments, 1 corrupted structure per sample), so it also parses the JSON
record, picks negatives and argument structures and tokenises all their texts.

Both read one epoch of the same samples with the same batch size and worker count; samples/s counts the batches
after the first (worker start-up and our shuffle-buffer fill are excluded on both sides). Runs interleave (plain,
ours) per worker count over `--rounds`; figures are medians. `ratio` = ours / plain at each side's best worker
count. torch runs one thread in the main process (workers use one each, PyTorch's default). With 0 workers the
same batches are also timed in CPU time of the process (`*_sps_cpu_0_workers`, `ratio_cpu_0_workers`), which other
jobs on a shared machine disturb much less than wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from perf_train import CONFIGS, REPO, extract_eventworld  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402


class PlainCaptions(Dataset):
    """(image tensor, tokens) from a `filepath`/`caption` CSV, decoded with PIL: the peer pipeline."""

    def __init__(self, csv_path: Path, image_size: int, tokenizer: Any) -> None:
        from torchvision import transforms

        from align.data import CLIP_MEAN, CLIP_STD

        with open(csv_path, newline="", encoding="utf-8") as f:
            self.rows = [(r["filepath"], r["caption"]) for r in csv.DictReader(f, delimiter="\t")]
        self.size, self.tokenizer = image_size, tokenizer
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, caption = self.rows[i]
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return self.to_tensor(rgb), self.tokenizer([caption])[0]


def _steady_sps(batches: Iterable[Any], batch_size: int) -> tuple[float, float]:
    """Samples per second of wall time and of this process's CPU time, over all batches after the first."""
    n, t_first, c_first = 0, 0.0, 0.0
    for n, _ in enumerate(batches, 1):
        if n == 1:
            t_first, c_first = time.perf_counter(), time.process_time()
    if n < 2:
        raise ValueError("need at least 2 batches to time a loader")
    samples = batch_size * (n - 1)
    return samples / (time.perf_counter() - t_first), samples / (time.process_time() - c_first)


def rewrite_shard(path: Path) -> None:
    """Rewrite a shard's records, in order, through `data_gen.shards.write_shard` (the tar headers data-gen writes)."""
    from align.schema import IMAGE_EXT, RECORD_EXT, Sample
    from data_gen.shards import write_shard

    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    keys = dict.fromkeys(name.partition(".")[0] for name in members)
    write_shard(path, [Sample.from_json(members[f"{k}.{RECORD_EXT}"], image=members[f"{k}.{IMAGE_EXT}"]) for k in keys])


def bench(shards: list[str], samples: int = 1600, workers: tuple[int, ...] = (0, 1, 2), rounds: int = 3,
          config: str = "tiny", batch: int | None = None, copied_headers: bool = False) -> dict[str, Any]:
    """{"plain_sps", "ours_sps"} per worker count, the best of each, `ratio` and the run settings; `batch`
    overrides the config's batch size; `copied_headers` keeps the source shards' tar headers."""
    import open_clip
    import yaml

    import align.model  # noqa: F401  registers the EventCLIP-* configs with open_clip
    from align.data import EventDataModule

    torch.set_num_threads(1)
    cfg = {**CONFIGS[config], **({"batch": batch} if batch else {})}
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    data_kw = {k: v for k, v in demo["data"].items() if k not in ("train", "val", "test", "num_workers")}
    data_kw.update(batch_size=cfg["batch"], image_size=cfg["image_size"], samples_per_epoch=samples)
    tokenizer = open_clip.get_tokenizer(cfg["model"])
    plain_sps: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
    ours_sps: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory(prefix="perf_loader-") as tmp:
        data = extract_eventworld(shards, Path(tmp), samples)
        if not copied_headers:
            rewrite_shard(data["shard"])
        plain_ds = PlainCaptions(data["csv"], cfg["image_size"], tokenizer)
        for _ in range(rounds):
            for w in workers:
                loader = DataLoader(plain_ds, batch_size=cfg["batch"], shuffle=True, num_workers=w, drop_last=True)
                plain_sps[w].append(_steady_sps(loader, cfg["batch"]))
                dm = EventDataModule(train=str(data["shard"]), num_workers=w, **data_kw)
                dm.tokenizer = tokenizer
                ours_sps[w].append(_steady_sps(dm.train_dataloader(), cfg["batch"]))
    plain = {str(w): statistics.median(x[0] for x in v) for w, v in plain_sps.items()}
    ours = {str(w): statistics.median(x[0] for x in v) for w, v in ours_sps.items()}
    best_plain, best_ours = max(plain, key=plain.get), max(ours, key=ours.get)
    return {
        "plain_sps": plain, "ours_sps": ours, "ratio": ours[best_ours] / plain[best_plain],
        "best_workers": {"plain": int(best_plain), "ours": int(best_ours)},
        "ratio_per_workers": {w: ours[w] / plain[w] for w in plain},
        **(_cpu_figures(plain_sps[0], ours_sps[0]) if 0 in workers else {}),
        "settings": {"samples": samples, "batch": cfg["batch"], "image_size": cfg["image_size"], "rounds": rounds,
                     "shard_headers": "copied" if copied_headers else "write_shard",
                     "load_average": list(os.getloadavg()), "cpus": os.cpu_count()},
    }


def _cpu_figures(plain: list[tuple[float, float]], ours: list[tuple[float, float]]) -> dict[str, float]:
    """With 0 workers all loading runs in this process: samples per CPU-second, little disturbed by other jobs."""
    p, o = statistics.median(x[1] for x in plain), statistics.median(x[1] for x in ours)
    return {"plain_sps_cpu_0_workers": p, "ours_sps_cpu_0_workers": o, "ratio_cpu_0_workers": o / p}


def table(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"{s['samples']} samples, batch {s['batch']}, {s['image_size']} px, {s['rounds']} interleaved rounds, "
             f"shard tar headers {s['shard_headers']}, load average {s['load_average'][0]:.2f}",
             "| workers | plain DataLoader + PIL (samples/s) | EventDataModule (samples/s) | ours / plain |",
             "|---|---|---|---|"]
    for w in res["plain_sps"]:
        lines.append(f"| {w} | {res['plain_sps'][w]:.1f} | {res['ours_sps'][w]:.1f} | "
                     f"{res['ratio_per_workers'][w]:.3f} |")
    b = res["best_workers"]
    lines.append(f"ratio at each side's best worker count (plain {b['plain']}, ours {b['ours']}): {res['ratio']:.3f}")
    if "ratio_cpu_0_workers" in res:
        lines.append(f"0 workers, samples per CPU-second: plain {res['plain_sps_cpu_0_workers']:.1f}, ours "
                     f"{res['ours_sps_cpu_0_workers']:.1f}, ratio {res['ratio_cpu_0_workers']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: 320 samples, one round")
    parser.add_argument("--samples", type=int, default=1600)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", default=str(REPO / "shards" / "eventworld" / "train-*.tar"))
    parser.add_argument("--copied-headers", action="store_true",
                        help="keep the source shards' tar headers instead of rewriting the shard with write_shard")
    opts = parser.parse_args(argv)
    from align.shardlist import expand_shards

    res = bench(expand_shards(opts.shards, "--shards"), samples=320 if opts.quick else opts.samples,
                workers=tuple(opts.workers), rounds=1 if opts.quick else opts.rounds,
                copied_headers=opts.copied_headers)
    print(json.dumps(res) if opts.json else table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
