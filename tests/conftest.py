"""Fixtures shared by several test modules: tiny EventWorld shards, the BPE tokenizer, and a trained checkpoint
(`tiny_ckpt`, a 4-step full-mode fit on `tiny_shards`) for the tests of the commands that use one."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import yaml

from data_gen.cli import main as data_gen_main


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 EventWorld samples of 128 px, 8 per shard (train/val/test, manifest and M2E2 gold files)."""
    out = tmp_path_factory.mktemp("eventworld")
    code = data_gen_main(["eventworld", "--out", str(out), "--num-samples", "96", "--samples-per-shard", "8",
                          "--seed", "0", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tokenizer():
    """open_clip's BPE tokenizer (the vocabulary ships inside open_clip: no download)."""
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 EventWorld samples at 128 px, 8 per shard, with M2E2 gold files for every split."""
    out = tmp_path_factory.mktemp("tiny_eventworld")
    assert data_gen_main(["eventworld", "--out", str(out), "--num-samples", "48", "--samples-per-shard", "8",
                          "--seed", "1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.ckpt` of a 4-step full-mode fit (hard negatives + OT) of EventCLIP-Tiny on `tiny_shards`."""
    from align.cli import run_cli  # Lightning only for the tests that train, not at collection

    root = tmp_path_factory.mktemp("tiny_fit")
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "default_root_dir": str(root), "enable_progress_bar": False,
                    "enable_model_summary": False, "logger": False},
        "checkpoint": {"every_n_train_steps": 4, "monitor": None},
        "model": {"model_name": "EventCLIP-Tiny", "weights": {"hard_negatives": True, "ot": 0.5}},
        "data": {"train": str(tiny_shards / "train-*.tar"), "batch_size": 8, "num_workers": 0,
                 "image_size": 128, "positive_kinds": ["long"], "num_negatives": 2, "shuffle_buffer": 8},
    }
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", str(path)])
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return last
