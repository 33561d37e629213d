"""Quality ablation on EventWorld (`make bench-quality`): plain CLIP / + hard negatives / + OT / full, same data,
same model, same step budget, each tested on the EventWorld test split.

Usage: python benchmarks/quality.py [--json] [--steps N] [--out benchmarks/results/quality.json]
       [--shards shards/eventworld] [--runs runs/quality] [--model NAME=CONFIG ...]

The four models are four configs that differ only in `model.weights` (tests/test_configs.py checks it):

| name | config | objectives |
|---|---|---|
| `clip` | configs/eventworld-clip-baseline.yaml | image-caption contrastive only |
| `clip+hardneg` | configs/ablation-hardneg.yaml | + the K hard negatives as extra contrastive columns |
| `clip+ot` | configs/ablation-ot.yaml | + the OT argument head (cross-sample OT contrast, role hinge), no hard negs |
| `full` | configs/demo.yaml | hard negatives + OT (what `make demo` trains) |

Each model trains with `align.demo.train_and_test` in RUNS/NAME-STEPSsteps-SHA-CODE (SHA: a prefix of the
config file's sha256, CODE: of `code_digest()`, the library's training code and the EventWorld version; a killed
run resumes from its last checkpoint) and its test metrics go into OUT (`{"models": {name: {"hardneg_acc": {kind:
acc}, "retrieval": {...}, "grounding_acc", "train_seconds", "global_step", ...}}, "targets": {...}, "met":
{...}}`), rewritten atomically after every model; a model already in OUT with the same config (path and
content), library code, EventWorld version, steps and shards is not trained again. The EventWorld shards are
rendered first (8,000 samples, seed 0, as `make demo`) when missing or of another world version (that set is moved
aside). `--steps` overrides every config's `trainer.max_steps` (the
default is the configs' own budget, the demo's). Plain CLIP is the named peer: the table gives each model's
role_swap gain over it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.atomic import atomic_write_text  # noqa: E402
from align.demo import RETRIEVAL_KEYS, ensure_eventworld, train_and_test  # noqa: E402
from data_gen.eventworld import WORLD_VERSION  # noqa: E402

MODELS = {
    "clip": "configs/eventworld-clip-baseline.yaml",
    "clip+hardneg": "configs/ablation-hardneg.yaml",
    "clip+ot": "configs/ablation-ot.yaml",
    "full": "configs/demo.yaml",
}
PEER, FULL = "clip", "full"
KINDS = ("type_swap", "role_swap", "arg_replace")
# The targets (on the benchmark, not in tests): full model vs plain CLIP on the same budget.
TARGETS = {"role_swap": 0.90, "role_swap_gain_over_clip": 0.30, "type_swap": 0.95, "grounding_acc": 0.80}


def _steps_of(config: Path) -> int:
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    steps = (cfg.get("trainer") or {}).get("max_steps")
    if not isinstance(steps, int) or steps <= 0:
        raise SystemExit(f"{config}: trainer.max_steps must be a positive integer (or pass --steps)")
    return steps


def _load(out: Path) -> dict[str, Any]:
    if not out.exists():
        return {"models": {}}
    try:
        doc = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"{out} is not valid JSON ({e}); delete it to start over") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise SystemExit(f"{out}: expected an object with a 'models' mapping; delete it to start over")
    return doc


def met(models: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Each target against the full model (and the plain-CLIP peer for the gain); None when a model is missing."""
    full, peer = models.get(FULL), models.get(PEER)

    def hn(r: dict[str, Any] | None, kind: str) -> float | None:
        return None if r is None else r.get("hardneg_acc", {}).get(kind)

    values = {"role_swap": hn(full, "role_swap"), "type_swap": hn(full, "type_swap"),
              "grounding_acc": None if full is None else full.get("grounding_acc"),
              "role_swap_gain_over_clip": _gain(hn(full, "role_swap"), hn(peer, "role_swap"))}
    return {k: None if values[k] is None else bool(values[k] >= t) for k, t in TARGETS.items()}


def _gain(x: float | None, peer: float | None) -> float | None:
    return None if x is None or peer is None else x - peer


def table(doc: dict[str, Any]) -> str:
    """Markdown: one row per model, the plain-CLIP gain in role_swap, and the targets row."""
    models = doc["models"]
    peer_rs = models.get(PEER, {}).get("hardneg_acc", {}).get("role_swap")
    head = ["model", *KINDS, "role_swap vs clip", *RETRIEVAL_KEYS, "grounding_acc", "steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in models.items():
        hn = r.get("hardneg_acc", {})
        gain = _gain(hn.get("role_swap"), peer_rs)
        cells = [f"`{name}`", *(_fmt(hn.get(k)) for k in KINDS), "n/a" if gain is None else f"{gain:+.3f}",
                 *(_fmt(r.get("retrieval", {}).get(k)) for k in RETRIEVAL_KEYS), _fmt(r.get("grounding_acc")),
                 str(r.get("global_step", "n/a")), f"{r.get('train_seconds', float('nan')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ok = doc.get("met") or met(models)

    def target(key: str, text: str) -> str:
        verdict = {True: "met", False: "not met", None: "n/a"}[ok.get(key)]
        return f"{text} (**{verdict}**)"

    cells = ["target (full)", target("type_swap", f">= {TARGETS['type_swap']}"),
             target("role_swap", f">= {TARGETS['role_swap']}"), "",
             target("role_swap_gain_over_clip", f">= +{TARGETS['role_swap_gain_over_clip']}"),
             *[""] * len(RETRIEVAL_KEYS), target("grounding_acc", f">= {TARGETS['grounding_acc']}"), "", ""]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _rel(path: Path) -> str:
    """The path relative to the repository when inside it, so results do not depend on the checkout's location."""
    path = path.resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def _model_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--model expects NAME=CONFIG, got {text!r}")
    return name, path


def code_digest() -> str:
    """sha256 of the library's training code (`align/*.py`), tiny model configs and the EventWorld version: a result
    computed by other code is stale even when the config file is the same (a changed default changes what the
    config means), and so is one (or a checkpoint) made on another world's pictures and captions."""
    h = hashlib.sha256(f"eventworld v{WORLD_VERSION}\0".encode())
    for path in sorted([*(REPO / "align").glob("*.py"), *(REPO / "configs" / "models").glob("*.json")]):
        h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/quality.py", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="also print the JSON document")
    p.add_argument("--steps", type=int, default=None, help="override every config's trainer.max_steps")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    p.add_argument("--shards", type=Path, default=REPO / "shards" / "eventworld")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "quality", help="run folders (checkpoints, logs)")
    p.add_argument("--num-samples", type=int, default=8000, help="EventWorld size when the shards are missing")
    p.add_argument("--model", type=_model_arg, action="append", default=None, metavar="NAME=CONFIG",
                   help="models to train instead of the four ablation configs (repeatable)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        p.error("--steps must be positive")
    models = dict(args.model) if args.model else {k: str(REPO / v) for k, v in MODELS.items()}
    configs = {name: Path(path) for name, path in models.items()}
    for name, config in configs.items():
        if not config.is_file():
            p.error(f"model {name}: config {config} not found")

    ensure_eventworld(args.shards, args.num_samples, 0, 2)
    doc = _load(args.out)
    code = code_digest()
    for i, (name, config) in enumerate(configs.items()):
        steps = args.steps or _steps_of(config)
        sha = hashlib.sha256(config.read_bytes()).hexdigest()
        want = {"config": _rel(config), "config_sha256": sha, "code_sha256": code, "max_steps": steps,
                "shards": _rel(args.shards), "world_version": WORLD_VERSION}
        done = doc["models"].get(name)
        if done and all(done.get(k) == v for k, v in want.items()):
            print(f"[quality] {i + 1}/{len(configs)} {name}: already in {args.out}, skipped", file=sys.stderr)
            continue
        print(f"[quality] {i + 1}/{len(configs)} {name}: training {config} for {steps} steps", file=sys.stderr)
        results = train_and_test(config, args.shards, args.runs / f"{name}-{steps}steps-{sha[:8]}-{code[:8]}", steps)
        doc["models"][name] = {**want, **results}
        doc["targets"], doc["met"] = TARGETS, met(doc["models"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    doc["targets"], doc["met"] = TARGETS, met(doc["models"])
    if args.json:
        print(json.dumps(doc, indent=1))
    print("\n" + table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
