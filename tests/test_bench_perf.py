"""The two speed benchmarks' core functions on tiny data: `benchmarks/perf_train.py` (open_clip's trainer vs `align
fit` plain and full) and `benchmarks/perf_loader.py` (EventDataModule vs a plain PIL DataLoader). They check what
the JSON holds and that the same samples reach both sides, never how fast anything is."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import webdataset as wds

from align.schema import Sample

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import perf_loader  # noqa: E402
import perf_train  # noqa: E402


def _train_shards(shards: Path) -> list[str]:
    return sorted(str(p) for p in shards.glob("train-*.tar"))


def test_extract_writes_the_same_samples_for_both_sides(shards: Path, tmp_path: Path) -> None:
    data = perf_train.extract_eventworld(_train_shards(shards), tmp_path, 12)
    with open(data["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ours = list(wds.WebDataset(str(data["shard"]), shardshuffle=False))
    assert len(rows) == len(ours) == data["num_samples"] == 12
    sizes = json.loads((data["shard"].parent / "sizes.json").read_text())
    assert sizes == {data["shard"].name: 12}
    for row, rec in zip(rows, ours):
        assert Path(row["filepath"]).read_bytes() == rec["jpg"]
        sample = Sample.from_json(rec["json"])
        assert Path(row["filepath"]).stem == sample.key
        assert row["caption"] == next(d.text for d in sample.positives if d.kind == "long")
    with pytest.raises(ValueError, match="only 12 complete samples"):
        perf_train.extract_eventworld([str(data["shard"])], tmp_path / "more", 13)


@pytest.mark.slow  # three trainer processes: about 30 s on a quiet 2-core machine, a minute under load
def test_perf_train_json_schema(shards: Path) -> None:
    cfg = {"model": "EventCLIP-Tiny", "image_size": 128, "batch": 4, "steps": 3, "warmup": 1}
    res = perf_train.bench({"tiny": cfg}, _train_shards(shards), rounds=1, workers=0, threads=1, split_reps=1)
    r = res["tiny"]
    for key in ("openclip_sps", "ours_plain_sps", "ours_full_sps"):
        assert r[key] > 0
    assert r["ratio_plain"] == pytest.approx(r["ours_plain_sps"] / r["openclip_sps"])
    assert set(r["peak_rss_mb"]) == set(perf_train.RUNS) and min(r["peak_rss_mb"].values()) > 50
    split = r["full_mode_split"]
    assert {"plain_step_ms", "full_step_ms", "extra_ms", "negative_texts_ms", "region_pooling_ms", "ot_ms",
            "argument_texts_ms"} <= set(split)
    parts = sum(split[f"{k}_ms"] for k in ("negative_texts", "region_pooling", "ot", "argument_texts"))
    assert parts == pytest.approx(split["extra_ms"])
    assert res["settings"]["threads"] == 1 and len(res["settings"]["load_average"]) == 3
    json.dumps(res)
    assert "| tiny (EventCLIP-Tiny" in perf_train.table(res)


def test_perf_loader_json_schema(shards: Path) -> None:
    res = perf_loader.bench(_train_shards(shards), samples=24, workers=(0, 1), rounds=1, batch=4)
    assert set(res["plain_sps"]) == set(res["ours_sps"]) == {"0", "1"}
    assert min(res["plain_sps"].values()) > 0 and min(res["ours_sps"].values()) > 0
    best_plain, best_ours = max(res["plain_sps"].values()), max(res["ours_sps"].values())
    assert res["ratio"] == pytest.approx(best_ours / best_plain)
    assert res["ours_sps"][str(res["best_workers"]["ours"])] == best_ours
    assert res["ratio_cpu_0_workers"] == pytest.approx(res["ours_sps_cpu_0_workers"] / res["plain_sps_cpu_0_workers"])
    json.dumps(res)
    assert "ratio at each side's best worker count" in perf_loader.table(res)


def test_plain_dataset_reads_the_csv(shards: Path, tmp_path: Path, tokenizer) -> None:
    data = perf_train.extract_eventworld(_train_shards(shards), tmp_path, 4)
    ds = perf_loader.PlainCaptions(data["csv"], 64, tokenizer)
    image, tokens = ds[0]
    assert len(ds) == 4 and tuple(image.shape) == (3, 64, 64) and tokens.ndim == 1 and tokens[0] > 0
