"""Fixtures shared by several test modules: tiny EventWorld shards and the BPE tokenizer.

A module that defines a fixture of the same name keeps its own (pytest's closest definition wins).
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

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
