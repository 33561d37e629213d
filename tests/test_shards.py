"""Shard writer: atomic shards, manifest, resume after interruption, refusal of mixed configs."""

import io
import json
import os
from dataclasses import dataclass

import pytest
import webdataset as wds
from PIL import Image

from align.schema import Event, Sample, Trigger
from data_gen.shards import (
    MANIFEST,
    SIZES,
    TMP_PREFIX,
    ShardError,
    ShardPlan,
    ShardSet,
    count_tar_samples,
    iter_records,
    parse_splits,
)


def _jpeg(index: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (index * 7 % 256, 50, 90)).save(buf, "JPEG")
    return buf.getvalue()


@dataclass
class Synthetic:
    """Picklable sample factory; `fail_at` raises to simulate a crash, `skip_every` skips inputs."""

    fail_at: int = -1
    skip_every: int = 0

    def __call__(self, index: int):
        if index == self.fail_at:
            raise RuntimeError("simulated crash")
        if self.skip_every and index % self.skip_every == 0:
            return None, "unreadable_image"
        return Sample(f"s{index:05d}", f"caption {index}", 16, 16, [Event("Life.Die", Trigger("died"))], 0,
                      image=_jpeg(index))


CONFIG = {"generator": "test", "n": 25}


def _plans():
    splits = parse_splits("train=0.8,test=0.2", 25)
    return [ShardPlan(name, r, 6) for name, r in splits.items()]


def _keys(out):
    return [s.key for s in iter_records(sorted(out.glob("*.tar")))]


def test_writes_shards_manifest_and_sizes(tmp_path):
    shards = ShardSet(tmp_path, CONFIG)
    shards.write(_plans(), Synthetic(), progress=False)
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar",
                     "train-000003.tar"]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["num_samples"] == 25 and manifest["splits"] == {"train": 20, "test": 5}
    assert manifest["config"] == CONFIG and manifest["library_version"] and manifest["schema_version"] == 1
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    sizes = json.loads((tmp_path / SIZES).read_text())
    assert sizes["train-000003.tar"] == 2 and sum(sizes.values()) == 25
    assert sorted(_keys(tmp_path)) == [f"s{i:05d}" for i in range(25)]


def test_plain_webdataset_reads_the_shards(tmp_path):
    ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(), progress=False)
    urls = str(tmp_path / "train-{000000..000003}.tar")
    items = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(items) == 20
    assert items[0]["jpg"].size == (16, 16)
    assert Sample.from_dict(items[0]["json"]).key == items[0]["__key__"]


def test_same_samples_same_bytes(tmp_path):
    for d in ("a", "b"):
        ShardSet(tmp_path / d, CONFIG).write(_plans(), Synthetic(), progress=False)
    for p in (tmp_path / "a").glob("*.tar"):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()


def test_crash_mid_run_then_resume_keeps_every_key_once(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(fail_at=14), progress=False)
    done = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert done == ["train-000000.tar", "train-000001.tar"]  # finished shards kept, no partial shard visible
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))
    before = {n: (tmp_path / n).stat().st_mtime_ns for n in done}
    ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(), progress=False)
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in done} == before  # complete shards are not rewritten
    keys = _keys(tmp_path)
    assert sorted(keys) == [f"s{i:05d}" for i in range(25)] and len(keys) == len(set(keys))
    assert json.loads((tmp_path / MANIFEST).read_text())["num_samples"] == 25


def test_shard_renamed_but_not_in_manifest_is_adopted(tmp_path):
    shards = ShardSet(tmp_path, CONFIG)
    shards.write(_plans(), Synthetic(), progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["shards"] = manifest["shards"][:1]  # as if the process died right after a rename
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(fail_at=0), progress=False)  # nothing is rebuilt
    assert json.loads((tmp_path / MANIFEST).read_text())["num_samples"] == 25


def test_leftover_temporary_files_are_cleaned(tmp_path):
    (tmp_path / f"{TMP_PREFIX}train-000000.tar.123").write_bytes(b"partial")
    (tmp_path / MANIFEST).write_text(json.dumps({"config": CONFIG, "shards": []}))
    ShardSet(tmp_path, CONFIG)
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_different_config_is_refused(tmp_path):
    ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(), progress=False)
    with pytest.raises(ShardError, match="different configuration"):
        ShardSet(tmp_path, {**CONFIG, "n": 26})


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not empty"):
        ShardSet(tmp_path, CONFIG)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ShardError, match="not writable"):
            ShardSet(tmp_path, CONFIG)
    finally:
        tmp_path.chmod(0o700)


def test_output_path_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardError, match="cannot create output directory"):
        ShardSet(tmp_path / "file" / "out", CONFIG)


def test_write_error_is_clear_and_earlier_shards_survive(tmp_path, monkeypatch):
    shards = ShardSet(tmp_path, CONFIG)
    plans = _plans()
    shards.write(plans[:1], Synthetic(), progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")}
    real_replace = os.replace

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ShardError, match="No space left on device") as err:
        shards.write(plans, Synthetic(), progress=False)
    assert "test-000000.tar" in str(err.value)
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")} == before
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_skipped_inputs_are_counted(tmp_path):
    ShardSet(tmp_path, CONFIG).write(_plans(), Synthetic(skip_every=5), progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["skipped"] == {"unreadable_image": 5} and manifest["num_samples"] == 20


def test_parallel_workers_match_serial(tmp_path):
    ShardSet(tmp_path / "serial", CONFIG).write(_plans(), Synthetic(), progress=False)
    ShardSet(tmp_path / "par", CONFIG).write(_plans(), Synthetic(), workers=2, progress=False)
    for p in (tmp_path / "serial").glob("*.tar"):
        assert p.read_bytes() == (tmp_path / "par" / p.name).read_bytes()


def test_corrupt_shard_named_in_error(tmp_path):
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(ShardError, match="x.tar"):
        count_tar_samples(bad)


@pytest.mark.parametrize("spec", ["train=a", "=0.5", "train=0.5,train=0.5", "train=0"])
def test_bad_splits(spec):
    with pytest.raises(ValueError, match="--splits"):
        parse_splits(spec, 10)


def test_splits_cover_all_samples():
    r = parse_splits("train=0.8,val=0.1,test=0.1", 2001)
    assert [len(v) for v in r.values()] == [1601, 200, 200] and r["test"].stop == 2001
