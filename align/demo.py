"""`make demo`: EventWorld shards (made when missing) -> train a config -> test split -> report.

    python -m align.demo --shards shards/eventworld --out runs/demo [--config configs/demo.yaml]

Writes `OUT/report.json` ({"models": {name: {"hardneg_acc": {kind: acc}, "retrieval": {...},
"grounding_acc": x}}, ...}) and `OUT/report.md`, and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from align.atomic import atomic_write_text
from align.schema import NEGATIVE_KINDS
from data_gen.cli import main as data_gen_main
from data_gen.eventworld import WORLD_VERSION
from data_gen.eventworld.cli import stored_world_version
from data_gen.shards import MANIFEST, ShardError

RUN_STAMP = "shards.json"  # in a demo run folder: which shard set it trains on
RETRIEVAL_KEYS = tuple(f"{d}_hit@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))


def ensure_eventworld(shards: Path, num_samples: int, seed: int, workers: int) -> None:
    """Render the EventWorld shards unless a finished set of this world version is already there (a partial set
    resumes). A set of another world version is moved aside to `<dir>.stale-v<old>`, never deleted (it may hold
    what an earlier report was computed on), and the set is rendered anew."""
    try:
        old = stored_world_version(shards)
    except ShardError as e:
        raise SystemExit(str(e)) from e
    if old is not None and old != WORLD_VERSION:
        stale = move_aside(shards, f"stale-v{old}")
        print(f"{shards} held EventWorld version {old} shards; this is version {WORLD_VERSION}: moved them to "
              f"{stale} and rendering anew")
    manifest = shards / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("num_samples") == num_samples:
        print(f"using EventWorld shards in {shards}")
        return
    code = data_gen_main(["eventworld", "--out", str(shards), "--num-samples", str(num_samples),
                          "--seed", str(seed), "--workers", str(workers)])
    if code:
        raise SystemExit(code)


def move_aside(path: Path, tag: str) -> Path:
    """Rename `path` to `<path>.<tag>` (`-2`, `-3`, ... when taken) and return the new name: never deleted."""
    target, n = path.with_name(f"{path.name}.{tag}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{tag}-{n}")
    path.rename(target)
    return target


def claim_run(out: Path, shards: Path) -> None:
    """Let `out` resume only a run trained on these very shards (`RUN_STAMP` holds the sha256 of their manifest,
    which lists every shard's sha256). A run made on other shards, e.g. an older EventWorld version, or one from
    before stamps, is moved aside to `<out>.stale` instead of being continued or reported on the new data."""
    stamp = out / RUN_STAMP
    want = {"shards": str(shards), "manifest_sha256": hashlib.sha256((shards / MANIFEST).read_bytes()).hexdigest()}
    if (out / "checkpoints").exists():
        have = json.loads(stamp.read_text(encoding="utf-8")) if stamp.exists() else {}
        if have.get("manifest_sha256") != want["manifest_sha256"]:
            print(f"{out} holds a run trained on other shards: moved it to {move_aside(out, 'stale')}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(want, indent=1) + "\n")


def train_and_test(config: Path, shards: Path, out: Path, max_steps: int | None) -> dict[str, Any]:
    """Fit `config` on the shards, then test the final weights; returns the test metrics."""
    from align.cli import run_cli  # heavy imports only when training

    args = ["--config", str(config), "--trainer.default_root_dir", str(out),
            "--data.train", str(shards / "train-*.tar"),
            "--data.val", str(shards / "val-*.tar"), "--data.test", str(shards / "test-*.tar")]
    loggers = _loggers_in(config, out)
    if loggers is not None:
        args += ["--trainer.logger", json.dumps(loggers)]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    cli = run_cli(args, run=False)
    start = time.perf_counter()
    last = out / "checkpoints" / "last.ckpt"
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    train_s = time.perf_counter() - start
    cli.trainer.test(cli.model, cli.datamodule)
    results = dict(cli.model.test_results)
    results["train_seconds"] = round(train_s, 1)
    results["global_step"] = cli.trainer.global_step
    return results


def _loggers_in(config: Path, out: Path) -> list[dict[str, Any]] | None:
    """The config's loggers with every `save_dir` moved to `out`, so logs land beside the run's checkpoints (a config
    names its own run folder, which a second run of it in another folder must not write into)."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    loggers = (cfg.get("trainer") or {}).get("logger")
    if not isinstance(loggers, list) or not all(isinstance(lg, dict) for lg in loggers):
        return None
    moved = copy.deepcopy(loggers)
    for lg in moved:
        if isinstance(lg.get("init_args"), dict) and "save_dir" in lg["init_args"]:
            lg["init_args"]["save_dir"] = str(out)
    return moved


def report_markdown(models: dict[str, dict[str, Any]]) -> str:
    head = ["model", *NEGATIVE_KINDS[:3], *RETRIEVAL_KEYS, "grounding_acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in models.items():
        cells = [name] + [_fmt(r.get("hardneg_acc", {}).get(k)) for k in NEGATIVE_KINDS[:3]]
        cells += [_fmt(r.get("retrieval", {}).get(k)) for k in RETRIEVAL_KEYS] + [_fmt(r.get("grounding_acc"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m align.demo", description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, default=Path("shards/eventworld"))
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    p.add_argument("--num-samples", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="override the config's trainer.max_steps")
    args = p.parse_args(argv)

    ensure_eventworld(args.shards, args.num_samples, args.seed, args.workers)
    claim_run(args.out, args.shards)
    name = args.config.stem
    results = train_and_test(args.config, args.shards, args.out, args.max_steps)
    report = {"models": {name: results}, "shards": str(args.shards), "config": str(args.config)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=1) + "\n")
    table = report_markdown(report["models"])
    atomic_write_text(args.out / "report.md", f"# Demo report\n\nTest split of {args.shards}.\n\n{table}")
    print("\n" + table)
    print(f"report: {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
