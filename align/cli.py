"""`align` command line.

    align fit|validate|test|predict --config configs/X.yaml [--ckpt_path last]   (LightningCLI)
    align progressive --config configs/progressive.yaml                          (stage-wise recipe)
    align export | index | ground | predict-mee | eval-mee ...                    (using a trained checkpoint)

Every checkpoint carries the resolved config and the library version; `last.ckpt` and the best (by
`val/loss`) are written every `checkpoint.every_n_train_steps` steps, so `--ckpt_path last` resumes
the global step, optimizer, scheduler and the position in the training data after a crash.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from align import __version__
from align.atomic import atomic_open, atomic_write_text
from align.data import EventDataModule
from align.module import EventAlignModule


class StoreConfig(Callback):
    """Puts the resolved run config and the library version into every checkpoint."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["eventalign"] = {"version": __version__, "config": self.config}


class SaveFinalStep(Callback):
    """Writes `last.ckpt` after the final step (`max_steps`) when it falls between two step checkpoints, so the run's
    final weights are kept; saved at the point ModelCheckpoint uses, so a resume continues exactly."""

    def __init__(self, checkpoint: ModelCheckpoint, every_n_train_steps: int | None) -> None:
        self.checkpoint, self.every = checkpoint, every_n_train_steps

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, ckpt = trainer.global_step, self.checkpoint
        if step == trainer.max_steps and ckpt.dirpath and (not self.every or step % self.every):
            # through ModelCheckpoint, so it records the save: otherwise its train-end hook writes the same
            # weights again beside it as `last-v1.ckpt`
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target and renamed: a crash or `kill -9` during a save
    leaves the previous `last.ckpt` whole (Lightning's own writer truncates the target first)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


class AlignCLI(LightningCLI):
    """LightningCLI with step-based last/best checkpoints and the config stored in each checkpoint."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.every_n_train_steps": 100,
            "checkpoint.filename": "best-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def before_instantiate_classes(self) -> None:
        sub = self.config.get(self.subcommand) if self.subcommand else self.config
        # checkpoints go under the run's root folder unless a dirpath was given
        ckpt = sub.get("checkpoint")
        if ckpt is not None and not ckpt.get("dirpath"):
            root = sub["trainer"].get("default_root_dir") or "."
            ckpt["dirpath"] = str(Path(root) / "checkpoints")
        if "weights_only" in sub and sub["weights_only"] is None:  # --ckpt_path files load without unpickling
            sub["weights_only"] = True

    def after_instantiate_classes(self) -> None:
        sub = self.config.get(self.subcommand) if self.subcommand else self.config
        resolved = yaml.safe_load(self._parser(self.subcommand).dump(sub, skip_check=True))
        self.trainer.callbacks.append(StoreConfig(resolved))
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin is kept
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        ckpt = self.trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.save_last:
            self.trainer.callbacks.append(SaveFinalStep(ckpt, sub["checkpoint"].get("every_n_train_steps")))


# Lightning warnings that do not apply here and would bury the real ones in every run's output.
QUIET_WARNINGS = (
    # ShardStream splits shards over workers and caps each worker, so its __len__ is exact
    r".*`IterableDataset` has `__len__` defined.*",
    # Lightning's own pytree helper on torch >= 2.10
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # `python -m align.demo --out ...` passes the fit arguments explicitly
    r".*LightningCLI's args parameter is intended to run from within Python.*",
)


def run_cli(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> AlignCLI:
    torch.set_float32_matmul_precision("high")
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    return AlignCLI(EventAlignModule, EventDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


# ---------------------------------------------------------------------------- progressive recipes
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def stage_configs(config_path: str) -> list[tuple[str, dict[str, Any]]]:
    """A recipe's stages as (name, fit config): each stage (minus `name`) deep-merged over the base config, run in
    DEFAULT_ROOT_DIR/NAME, and from stage 2 on started from the previous stage's `checkpoints/last.ckpt`."""
    cfg = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    stages = cfg.pop("stages", None) if isinstance(cfg, dict) else None
    if not stages or not all(isinstance(s, dict) for s in stages):
        raise SystemExit(f"{config_path}: a progressive config needs a non-empty 'stages' list of mappings")
    root = Path(cfg.get("trainer", {}).get("default_root_dir") or "runs/progressive")
    previous: Path | None = None
    out = []
    for i, stage in enumerate(stages):
        name = stage.pop("name", f"stage{i + 1}")
        stage_cfg = _merge(cfg, stage)
        stage_dir = root / name
        stage_cfg.setdefault("trainer", {})["default_root_dir"] = str(stage_dir)
        if previous is not None:
            stage_cfg.setdefault("model", {})["init_from"] = str(previous)
        previous = stage_dir / "checkpoints" / "last.ckpt"
        out.append((name, stage_cfg))
    return out


def progressive(config_path: str) -> list[Path]:
    """Run each stage of a recipe in order; stage k starts from stage k-1's last weights. A finished stage
    (its `done.json` exists) is skipped on a re-run, an unfinished one resumes from its last checkpoint."""
    stages = stage_configs(config_path)
    finished = []
    for i, (name, stage_cfg) in enumerate(stages):
        stage_dir = Path(stage_cfg["trainer"]["default_root_dir"])
        last = stage_dir / "checkpoints" / "last.ckpt"
        done = stage_dir / "done.json"
        if not done.exists():
            print(f"[progressive] stage {i + 1}/{len(stages)}: {name}", file=sys.stderr)
            cli = run_cli(stage_cfg, run=False)
            cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last.exists() else None,
                            weights_only=True)
            cli.trainer.save_checkpoint(last)
            if cli.trainer.is_global_zero:
                atomic_write_text(done, json.dumps({"stage": name, "global_step": cli.trainer.global_step}) + "\n")
        finished.append(last)
    return finished


# commands that use a trained checkpoint: name -> (module, function taking argv and returning an exit code)
TOOLS = {
    "export": ("align.export", "main"),
    "index": ("align.index", "main"),
    "ground": ("align.ground", "main"),
    "predict-mee": ("align.mee", "predict_main"),
    "eval-mee": ("align.mee", "eval_main"),
}


def main(argv: list[str] | None = None) -> None:
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in TOOLS:
        module, func = TOOLS[argv[0]]
        raise SystemExit(getattr(importlib.import_module(module), func)(argv[1:]))
    if argv[:1] == ["progressive"]:
        if len(argv) != 3 or argv[1] != "--config":
            raise SystemExit("usage: align progressive --config CONFIG.yaml")
        progressive(argv[2])
        return
    run_cli(None if from_shell else argv)  # LightningCLI warns when given the shell's own arguments


if __name__ == "__main__":
    main()
