"""`data-gen eventworld` end to end: shards, manifest, M2E2 gold, resume, config refusal, preview."""

import json

import webdataset as wds

from align.ontology import Ontology
from align.schema import Sample
from data_gen.cli import main
from data_gen.shards import MANIFEST, iter_records


def _run(out, *extra):
    return main(["eventworld", "--out", str(out), "--num-samples", "40", "--samples-per-shard", "16", "--quiet",
                 *extra])


def test_shards_manifest_and_gold(tmp_path):
    assert _run(tmp_path) == 0
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["splits"] == {"train": 32, "val": 4, "test": 4} and manifest["num_samples"] == 40
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "val-000000.tar"]
    ontology = Ontology.default()
    samples = list(iter_records(sorted(tmp_path.glob("train-*.tar")), with_images=True))
    assert len({s.key for s in samples}) == 32
    for s in samples:
        s.validate(ontology)
        assert s.image[:2] == b"\xff\xd8" and s.provenance["split"] == "train"
        kinds = {d.kind for d in s.positives}
        assert {"caption", "short", "long"} <= kinds
        assert {n.kind for n in s.negatives} >= {"type_swap", "arg_replace"}
        positives = {d.text.lower() for d in s.positives}
        assert not positives & {n.text.lower() for n in s.negatives}
    gold = json.loads((tmp_path / "m2e2_gold_test.json").read_text())
    assert len(gold) == 4
    items = list(wds.WebDataset(str(tmp_path / "val-000000.tar"), shardshuffle=False).decode("pil"))
    assert len(items) == 4 and items[0]["jpg"].size == (128, 128)
    assert Sample.from_dict(items[0]["json"]).events


def test_rerun_is_a_no_op_and_other_config_is_refused(tmp_path, capsys):
    assert _run(tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")}
    (tmp_path / "train-000001.tar").unlink()  # as if the run had died before this shard
    assert _run(tmp_path) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")} == before  # deterministic rebuild
    assert _run(tmp_path, "--seed", "1") == 1
    assert "different configuration" in capsys.readouterr().err


def test_preview_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["eventworld", "--preview", str(out), "--image-size", "64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_clear(tmp_path, capsys):
    assert _run(tmp_path, "--splits", "train=x") == 2
    assert "--splits" in capsys.readouterr().err
    assert _run(tmp_path, "--negatives", "type_swap=two") == 2
