"""`align export`: round trip against a direct encode, fp16, resume without duplicates, refusals, bad shards."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import align.export as ex
from align.export import ExportError, load, run_export
from align.index import main as index_main
from align.inference import encode_images, encode_texts, load_image, load_module, scale_boxes
from align.schema import Sample

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def shard_records(path: Path) -> list[tuple[Sample, bytes]]:
    """(record, image bytes) of a shard, in tar order."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.rsplit(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(Sample.from_json(v["json"]), v["jpg"]) for v in members.values()]


def write_shard(path: Path, records: list[tuple[str, bytes, bytes]]) -> Path:
    """A tar of (key, json bytes, jpg bytes)."""
    with tarfile.open(path, "w") as tar:
        for key, record, image in records:
            for ext, data in (("json", record), ("jpg", image)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def two_shards(tiny_shards: Path) -> list[str]:
    return [str(p) for p in sorted(tiny_shards.glob("train-*.tar"))[:2]]


def test_round_trip_matches_direct_encode(tiny_ckpt: Path, tiny_shards: Path, tmp_path: Path) -> None:
    shards = two_shards(tiny_shards)
    out = tmp_path / "emb"
    args = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--quiet", "--batch-size", "3", "--negatives"]
    assert ex.main([*args, "--data", shards[0], "--data", shards[1]]) == 0
    exp = load(out)
    assert exp.complete and exp.manifest["dim"] == 128 and exp.manifest["region_boxes"].startswith("original")
    records = [r for s in shards for r in shard_records(Path(s))]
    assert exp["image"].keys == [s.key for s, _ in records]
    assert exp["image"].vectors.shape == (len(records), 128) and exp["image"].vectors.dtype == np.float32
    regions = [(s.key, list(g.box)) for s, _ in records for g in s.regions]
    assert [(r["key"], r["box"]) for r in exp["region"].rows] == regions  # boxes in original pixels
    n_texts = sum(len(s.positives) + len(s.negatives) for s, _ in records)
    assert len(exp["text"]) == n_texts and sum(r["negative"] for r in exp["text"].rows) > 0

    module = load_module(tiny_ckpt)
    sample, jpg = records[0]
    x, size = load_image(jpg, module.image_spec)
    boxes = scale_boxes(torch.tensor([[g.box for g in sample.regions]]), size, 128)
    img, reg, mask = encode_images(module, x[None], boxes, torch.ones(boxes.shape[:2], dtype=torch.bool))
    np.testing.assert_allclose(exp["image"].vectors[0], img[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(exp["region"].vectors[: len(sample.regions)], reg[0].numpy(), atol=1e-5)
    texts = exp["text"].rows[:3]
    np.testing.assert_allclose(exp["text"].vectors[:3], encode_texts(module, [t["text"] for t in texts]).numpy(),
                               atol=1e-5)
    prompts = exp["prompt"]
    assert sum(r["kind"] == "event_type" for r in prompts.rows) == 8
    assert any(r["key"] == "role:Justice.Arrest-Jail:Agent" for r in prompts.rows)

    half = tmp_path / "emb16"
    assert ex.main([*args, "--data", shards[0], "--data", shards[1], "--out", str(half), "--dtype", "fp16"]) == 0
    exp16 = load(half)
    assert exp16["image"].vectors.dtype == np.float16 and exp16["image"].keys == exp["image"].keys
    for kind in ("image", "region", "text", "prompt"):
        assert exp16[kind].rows == exp[kind].rows
        np.testing.assert_allclose(exp16[kind].vectors.astype(np.float32), exp[kind].vectors, atol=2e-3)


def test_interrupted_export_resumes_without_duplicates(tiny_ckpt: Path, tiny_shards: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shards = two_shards(tiny_shards)
    reference = tmp_path / "ref"
    run_export(tiny_ckpt, shards, reference, progress=False)
    real = ex.export_shard

    def crash_on_second(url: str, out: str, part: str, *a: object) -> dict:
        if part == "part-00001":
            raise KeyboardInterrupt  # like a Ctrl-C between parts
        return real(url, out, part, *a)

    out = tmp_path / "emb"
    monkeypatch.setattr(ex, "export_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_export(tiny_ckpt, shards, out, progress=False)
    assert list(json.loads((out / "export.json").read_text())["parts"]) == ["part-00000"]
    assert not load(out).complete
    monkeypatch.setattr(ex, "export_shard", real)
    (out / ".tmp-part-00001.image.npy.1.abc").write_bytes(b"half a file")  # what a kill -9 leaves
    run_export(tiny_ckpt, shards, out, progress=False)
    # crash after a part's files were written but before export.json recorded it
    manifest = json.loads((out / "export.json").read_text())
    del manifest["parts"]["part-00001"]
    (out / "export.json").write_text(json.dumps(manifest))
    run_export(tiny_ckpt, shards, out, progress=False)
    got, want = load(out), load(reference)
    assert not list(out.glob(".tmp-*"))
    for kind in ("image", "region", "text"):
        assert got[kind].rows == want[kind].rows
        np.testing.assert_array_equal(got[kind].vectors, want[kind].vectors)
    assert len(set(got["image"].keys)) == len(got["image"].keys)


def test_refuses_another_checkpoint_or_settings(tiny_ckpt: Path, tiny_shards: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    shard = two_shards(tiny_shards)[0]
    out = tmp_path / "emb"
    base = ["--data", shard, "--out", str(out), "--quiet"]
    assert ex.main(["--ckpt", str(tiny_ckpt), *base]) == 0
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 0.01
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    assert ex.main(["--ckpt", str(other), *base]) == 2
    assert "holds an export of checkpoint" in capsys.readouterr().err
    assert ex.main(["--ckpt", str(tiny_ckpt), *base, "--dtype", "fp16"]) == 2
    assert "dtype was 'fp32', now 'fp16'" in capsys.readouterr().err
    assert ex.main(["--ckpt", str(tmp_path / "missing.ckpt"), *base]) == 2
    assert "missing.ckpt: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and not an export folder"):
        run_export(tiny_ckpt, [shard], tmp_path / "junk", progress=False)


def test_shards_without_regions_and_bad_images(tiny_ckpt: Path, tiny_shards: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    records = shard_records(Path(two_shards(tiny_shards)[0]))
    rows = []
    for i, (sample, jpg) in enumerate(records):
        sample.regions = []
        rows.append((sample.key, sample.to_json().encode(), b"\xff\xd8\xff not a jpeg" if i == 2 else jpg))
    shard = write_shard(tmp_path / "noregions-000000.tar", rows)
    out = tmp_path / "emb"
    with caplog.at_level(logging.WARNING, logger="align.export"):
        assert ex.main(["--ckpt", str(tiny_ckpt), "--data", str(shard), "--out", str(out), "--quiet"]) == 0
    bad_key = records[2][0].key
    assert any(bad_key in m and "noregions-000000.tar" in m and "bad_image" in m for m in caplog.messages)
    assert "no regions in these shards" in capsys.readouterr().err
    exp = load(out)
    assert exp.manifest["parts"]["part-00000"]["skipped"] == {"bad_image": 1}
    assert exp["image"].keys == [s.key for s, _ in records if s.key != bad_key]
    assert exp["region"].vectors.shape == (0, 128) and len(exp["text"]) > 0
    assert index_main(["build", "--emb", str(out), "--kind", "region", "--out", str(tmp_path / "r.faiss")]) == 2
    assert "no region embeddings (its shards have no regions)" in capsys.readouterr().err
