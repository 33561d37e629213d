"""Zero-shot M2E2 image event extraction: the scorer on hand-made cases, and predict-mee on tiny shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from align.cli import main as align_main
from align.mee import evaluate_mee, max_matching
from data_gen.eventworld.m2e2 import read_m2e2

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

ATTACK = "Conflict.Attack"


def ev(event_type: str, **roles: list[list[float]]) -> dict:
    return {"event_type": event_type, "role": roles}


def scores(gold: dict, pred: dict, mode: str) -> tuple[dict, dict]:
    r = evaluate_mee(gold, pred, mode)
    return r["event"], r["argument"]


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        align_main(argv)
    return int(e.value.code)


# ---------------------------------------------------------------------------- scoring
GOLD = {
    "a": ev(ATTACK, Attacker=[[0, 0, 10, 10], [50, 50, 60, 60]], Target=[[20, 20, 40, 40]]),
    "b": ev("Contact.Meet", Participant=[[0, 0, 10, 20], [0, 0, 10, 20], [30, 0, 40, 20]], Place=[[0, 0, 99, 99]]),
}


@pytest.mark.parametrize("mode", ["strict", "legacy"])
def test_gold_against_itself_scores_one(mode: str) -> None:
    event, arg = scores(GOLD, GOLD, mode)
    assert event["f1"] == arg["f1"] == 1.0
    # Place is not scored and the repeated Participant box counts once
    assert (arg["gold"], arg["predicted"], event["gold"]) == (5, 5, 2)


@pytest.mark.parametrize("mode", ["strict", "legacy"])
def test_empty_prediction_has_zero_recall(mode: str) -> None:
    event, arg = scores(GOLD, {}, mode)
    assert event["recall"] == arg["recall"] == event["f1"] == arg["f1"] == 0.0
    assert (event["predicted"], arg["predicted"]) == (0, 0)


def test_two_boxes_on_one_gold_box_count_once_in_strict_twice_in_legacy() -> None:
    gold = {"a": ev(ATTACK, Attacker=[[0, 0, 10, 10], [50, 50, 60, 60]])}
    pred = {"a": ev(ATTACK, Attacker=[[0, 0, 10, 10], [1, 0, 10, 10]])}  # both IoU >= 0.5 with the first gold box
    _, strict = scores(gold, pred, "strict")
    _, legacy = scores(gold, pred, "legacy")
    assert (strict["correct"], strict["precision"], strict["recall"]) == (1, 0.5, 0.5)
    assert (legacy["correct"], legacy["precision"], legacy["recall"]) == (2, 1.0, 1.0)


def test_wrong_event_type_voids_arguments_only_in_strict() -> None:
    gold = {"a": ev(ATTACK, Instrument=[[0, 0, 10, 10]])}
    pred = {"a": ev("Conflict.Demonstrate", Instrument=[[0, 0, 10, 10]])}
    for mode, correct in (("strict", 0), ("legacy", 1)):
        event, arg = scores(gold, pred, mode)
        assert event["correct"] == 0 and event["precision"] == 0.0
        assert arg["correct"] == correct and arg["predicted"] == arg["gold"] == 1


def test_box_inside_gold_counts_only_in_legacy() -> None:
    gold = {"a": ev(ATTACK, Target=[[0, 0, 40, 40]])}
    pred = {"a": ev(ATTACK, Target=[[5, 5, 15, 15]])}  # IoU 0.0625, but wholly inside the gold box
    assert scores(gold, pred, "strict")[1]["correct"] == 0
    assert scores(gold, pred, "legacy")[1]["correct"] == 1


def test_role_must_match_and_extra_images_count_as_predictions() -> None:
    gold = {"a": ev(ATTACK, Attacker=[[0, 0, 10, 10]])}
    pred = {"a": ev(ATTACK, Target=[[0, 0, 10, 10]]), "extra": ev(ATTACK, Attacker=[[0, 0, 10, 10]])}
    for mode in ("strict", "legacy"):
        event, arg = scores(gold, pred, mode)
        assert (event["correct"], event["predicted"], event["gold"]) == (1, 2, 1)
        assert (arg["correct"], arg["predicted"], arg["gold"]) == (0, 2, 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_mee(gold, pred, "loose")


def test_one_to_one_matching_is_maximum() -> None:
    # greedy row-by-row would pair row 0 with column 0 and leave row 1 unmatched
    assert max_matching(np.array([[True, True], [True, False]])) == 2
    assert max_matching(np.zeros((3, 0), dtype=bool)) == 0
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for _ in range(200):
        ok = rng.random((rng.integers(1, 7), rng.integers(1, 7))) < 0.4
        rows, cols = optimize.linear_sum_assignment(-ok.astype(float))
        assert max_matching(ok) == int(ok[rows, cols].sum())


def test_eval_mee_cli_reads_m2e2_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = {"x": {"event_type": "Conflict:Attack", "role": {"Attacker": [["soldier", 0, 0, 10, 10]]}},
            "y": {"event_type": "Contact:Meet", "role": {"Entity": [["official", 0, 0, 10, 10]]}}}
    pred = {"x": {"event_type": "Conflict.Attack", "role": {"Attacker": [[0, 0, 10, 10]]}},
            "y": {"event_type": "Contact:Meet", "role": {"Entity": [[50, 50, 60, 60]]}}}
    (tmp_path / "g.json").write_text(json.dumps(gold))
    (tmp_path / "p.json").write_text(json.dumps(pred))
    argv = ["eval-mee", "--gold", str(tmp_path / "g.json"), "--pred", str(tmp_path / "p.json")]
    assert run([*argv, "--mode", "strict", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "strict" and result["event"]["f1"] == 1.0
    assert (result["argument"]["correct"], result["argument"]["gold"]) == (1, 2)
    assert run([*argv, "--mode", "legacy"]) == 0
    table = capsys.readouterr().out
    assert "legacy" in table and "| argument | 0.500 | 0.500 | 0.500 | 1 | 2 | 2 |" in table
    assert run(["eval-mee", "--gold", str(tmp_path / "missing.json"), "--pred", str(tmp_path / "p.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------- predict-mee on tiny shards
def extract_images(shard_dir: Path, out: Path) -> Path:
    out.mkdir()
    for shard in sorted(shard_dir.glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    (out / m.name).write_bytes(tar.extractfile(m).read())
    return out


def check_predictions(path: Path, gold: dict, size: int = 128) -> dict:
    pred = read_m2e2(path)  # valid M2E2 JSON, ontology types and roles
    assert set(pred) == set(gold)
    for entry in pred.values():
        assert entry["role"], "every type has a non-Place role, so one box per role"
        for boxes in entry["role"].values():
            assert len(boxes) == 1
            x1, y1, x2, y2 = boxes[0]
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
    return pred


def test_predict_mee_on_shards_and_folder(tiny_shards: Path, tiny_ckpt: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    gold_path = tiny_shards / "m2e2_gold_test.json"
    gold = read_m2e2(gold_path)
    out = tmp_path / "pred_record.json"
    assert run(["predict-mee", "--ckpt", str(tiny_ckpt), "--images", str(tiny_shards / "test-*.tar"),
                "--boxes", "record", "--out", str(out), "--quiet"]) == 0
    pred = check_predictions(out, gold)
    raw = json.loads(out.read_text())
    regions = {}
    for shard in sorted(tiny_shards.glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    rec = json.loads(tar.extractfile(m).read())
                    regions[rec["key"]] = [r["box"] for r in rec["regions"]]
    for key, entry in raw.items():
        assert ":" in entry["event_type"] and 0 < entry["scores"]["event_type"] <= 1
        for boxes in entry["role"].values():
            assert any(np.allclose(boxes[0], b, atol=0.05) for b in regions[key])  # one of the record's boxes
    assert run(["eval-mee", "--gold", str(gold_path), "--pred", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"]["both"] == len(gold) and result["argument"]["predicted"] == sum(
        len(e["role"]) for e in pred.values())

    folder = extract_images(tiny_shards, tmp_path / "images")
    out_dir = tmp_path / "pred_grid.json"
    assert run(["predict-mee", "--ckpt", str(tiny_ckpt), "--images", str(folder), "--out", str(out_dir),
                "--prompt-style", "short", "--quiet"]) == 0
    check_predictions(out_dir, gold)


def test_predict_mee_detector_boxes_and_bad_images(tiny_shards: Path, tiny_ckpt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = extract_images(tiny_shards, tmp_path / "images")
    ids = sorted(p.stem for p in folder.glob("*.jpg"))
    det = tmp_path / "det.json"
    det.write_text(json.dumps({i: [[10, 20, 60, 90, "person", 0.9], [-5, 0, 30, 200]] if i != ids[0] else []
                               for i in ids}))
    out = tmp_path / "pred.json"
    base = ["predict-mee", "--ckpt", str(tiny_ckpt), "--images", str(folder), "--out", str(out), "--quiet"]
    assert run([*base, "--boxes", str(det)]) == 0
    pred = read_m2e2(out)
    assert pred[ids[0]]["role"] == {} and all(pred[i]["role"] for i in ids[1:])  # no candidates, no arguments
    allowed = ([10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 30.0, 128.0])  # the second one clipped to the image
    for entry in pred.values():
        assert all(boxes[0] in allowed for boxes in entry["role"].values())
    assert run([*base, "--boxes", "record"]) == 2
    assert "--boxes record needs shard samples" in capsys.readouterr().err

    det.write_text(json.dumps({ids[0]: [[0, 0, 5, 5]]}))
    assert run([*base, "--boxes", str(det)]) == 2
    assert f"no candidate boxes for image {ids[1]!r}" in capsys.readouterr().err

    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert run(base) == 2
    assert "broken.jpg: cannot decode image" in capsys.readouterr().err
    assert run([*base, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped (cannot decode):" in err and "broken.jpg" in err and "1 skipped" in err
    assert "broken" not in json.loads(out.read_text()) and len(json.loads(out.read_text())) == len(ids)

    missing = tmp_path / "nope.ckpt"
    assert run(["predict-mee", "--ckpt", str(missing), "--images", str(folder), "--out", str(out)]) == 2
    assert f"{missing}: checkpoint not found" in capsys.readouterr().err
    assert run(["predict-mee", "--ckpt", str(tiny_ckpt), "--images", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "none: not a folder of images" in capsys.readouterr().err


def test_predict_mee_names_bad_shard_image(tiny_shards: Path, tiny_ckpt: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    shard = tmp_path / "bad-000000.tar"
    with tarfile.open(shard, "w") as tar:
        data = b"\xff\xd8 truncated"
        info = tarfile.TarInfo("k1.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert run(["predict-mee", "--ckpt", str(tiny_ckpt), "--images", str(shard), "--out",
                str(tmp_path / "p.json"), "--quiet"]) == 2
    assert f"{shard}:k1.jpg: cannot decode image" in capsys.readouterr().err
