"""`align ground`: proposals, box files, OT grounding as in training, the JSON + PNG output and bad input."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from align.cli import main as align_main
from align.ground import PALETTE, draw_grounding, grid_proposals, ground, ot_ground, read_boxes
from align.inference import load_module
from align.ot import ground as ground_plan
from align.schema import Argument, Event, Trigger

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        align_main(argv)
    return int(e.value.code)


@pytest.fixture(scope="module")
def eventworld_image(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The first EventWorld test image as a file, and its record."""
    out = tmp_path_factory.mktemp("ground_image")
    with tarfile.open(sorted(tiny_shards.glob("test-*.tar"))[0]) as tar:
        names = sorted(m.name for m in tar)
        record = json.loads(tar.extractfile(names[1]).read())
        path = out / names[0]
        path.write_bytes(tar.extractfile(names[0]).read())
    return path, record


class FixedExtractor:
    """A caption IE backend that returns one given event (keeps unit tests free of spaCy)."""

    name = "fixed"

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    def extract(self, texts: list[str]) -> list[list[Event]]:
        return [list(self.events) for _ in texts]


def test_grid_proposals_cover_the_image() -> None:
    for w, h in ((128, 128), (300, 200)):
        boxes = grid_proposals(w, h)
        assert [0.0, 0.0, float(w), float(h)] in boxes
        assert len(boxes) == len({tuple(b) for b in boxes}) > 100
        assert all(0 <= x1 < x2 <= w + 1e-6 and 0 <= y1 < y2 <= h + 1e-6 for x1, y1, x2, y2 in boxes)
        assert any((y2 - y1) / h > 1.9 * (x2 - x1) / w for x1, y1, x2, y2 in boxes)  # tall windows (people)


def test_read_boxes_list_and_detector_files(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text("[[1, 2, 30, 40], [0, 0, 5.5, 5]]")
    assert read_boxes(path, "img") == [[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 5.5, 5.0]]
    path.write_text(json.dumps({"img": [[1, 2, 30, 40, "person", 0.8]], "other": []}))
    assert read_boxes(path, "img") == [[1.0, 2.0, 30.0, 40.0]]
    with pytest.raises(ValueError, match="no entry for image 'x'"):
        read_boxes(path, "x")
    path.write_text("[[1, 2, 30, 40], [5, 5, 1, 1]]")
    with pytest.raises(ValueError, match=r"b.json: box 1: expected \[x1, y1, x2, y2\]"):
        read_boxes(path, "img")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="b.json: cannot read boxes"):
        read_boxes(path, "img")


def test_ot_ground_matches_the_training_metric(tiny_ckpt: Path) -> None:
    """Same plan and argmax as the module's own grounding (`EventAlignModule._ot` + `align.ot.ground`)."""
    module = load_module(tiny_ckpt)
    g = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(2, 3, module.model.embed_dim, generator=g), dim=-1)
    regions = torch.nn.functional.normalize(torch.randn(2, 5, module.model.embed_dim, generator=g), dim=-1)
    text_mask = torch.tensor([[True, True, True], [True, True, False]])
    region_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    idx, sim, share = ot_ground(module, texts, text_mask, regions, region_mask)
    batch = {"arg_mask": text_mask}
    plan = module._ot(batch, {"args": texts, "regions": regions, "region_mask": region_mask}, False).plan
    expected, _ = ground_plan(plan, torch.zeros(2, 5, 4), text_mask, region_mask)
    assert torch.equal(idx, expected) and idx[1, 2] == -1 and (idx[1, :2] < 3).all()
    chosen = (texts[0] @ regions[0].T)[torch.arange(3), idx[0]]
    assert torch.allclose(sim[0], chosen, atol=1e-5) and ((share > 0) & (share <= 1))[text_mask].all()


def test_ground_one_box_per_argument(tiny_ckpt: Path, eventworld_image: tuple[Path, dict]) -> None:
    path, record = eventworld_image
    module = load_module(tiny_ckpt)
    args = [Argument("Agent", "a policeman"), Argument("Person", "a protester")]
    event = Event("Justice.Arrest-Jail", Trigger("arrests", 0, 7), args)
    given = [[0, 0, 64, 128], [64, 0, 128, 128], [-10, -10, 0, 0]]  # the last lies outside: dropped
    out = ground(module, path, "whatever", boxes=given, extractor=FixedExtractor([event]))
    assert out["event_type"] == "Justice.Arrest-Jail" and out["event_source"] == "text"
    assert out["regions"] == {"source": "boxes", "count": 2}
    assert [(a["role"], a["text"]) for a in out["arguments"]] == [("Agent", "a policeman"), ("Person", "a protester")]
    for a in out["arguments"]:  # the union of its picked boxes, the top one among them
        picked = [given[i] for i in a["regions"]]
        assert a["top_region"] in a["regions"] and set(a["regions"]) <= {0, 1}
        assert a["box"] == [min(b[0] for b in picked), min(b[1] for b in picked), max(b[2] for b in picked),
                            max(b[3] for b in picked)]
    assert abs(sum(out["image_type_scores"].values()) - 1) < 1e-3 and len(out["image_type_scores"]) == 8

    none = ground(module, path, "nothing happens", extractor=FixedExtractor([]))
    assert none["arguments"] == [] and none["event_source"] == "image" and "no event" in none["note"]
    assert none["event_type"] == next(iter(none["image_type_scores"]))  # the image's best type
    assert none["regions"]["source"] == "grid" and record["width"] == 128
    with pytest.raises(ValueError, match="none of the 1 candidate boxes lies inside"):
        ground(module, path, "x", boxes=[[200, 200, 300, 300]], extractor=FixedExtractor([event]))


def test_draw_grounding_upscales_and_colours_roles() -> None:
    image = Image.new("RGB", (128, 96), (128, 128, 128))
    items = [{"role": "Agent", "box": [10, 40, 50, 90], "text": "a policeman"},
             {"role": "Person", "box": [70, 40, 120, 90]}, {"role": "Agent", "box": [60, 10, 70, 30]}]
    out = draw_grounding(image, items, title="Justice.Arrest-Jail")
    scale = 4.0  # 384 / 96
    assert out.width == 512 and out.height > 384
    title_h = out.height - 384
    px = out.load()
    assert px[round(10 * scale), round(80 * scale) + title_h] == PALETTE[0]  # left edge of the first Agent box
    assert px[round(120 * scale) - 1, round(80 * scale) + title_h] == PALETTE[1]  # right edge of the Person box
    assert px[round(60 * scale), round(25 * scale) + title_h] == PALETTE[0]  # same role, same colour
    assert draw_grounding(Image.new("RGB", (1000, 800)), items).size == (1000, 800)  # large images keep their size


def test_ground_cli_writes_json_and_png(tiny_ckpt: Path, eventworld_image: tuple[Path, dict], tmp_path: Path) -> None:
    path, record = eventworld_image
    out_json, out_png = tmp_path / "g.json", tmp_path / "g.png"
    assert run(["ground", "--ckpt", str(tiny_ckpt), "--image", str(path), "--text", record["caption"],
                "--out-json", str(out_json), "--out-png", str(out_png)]) == 0
    result = json.loads(out_json.read_text())
    assert result["event_source"] == "text" and result["arguments"]  # EventWorld captions have events
    for a in result["arguments"]:
        x1, y1, x2, y2 = a["box"]
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128 and a["text"] in record["caption"]
        assert a["regions"] == [a["top_region"]]  # sliding windows overlap: never a union of them
    with Image.open(out_png) as png:
        assert png.width == 384 and png.height > 384

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({path.stem: [r["box"] + [r["label"]] for r in record["regions"]]}))
    assert run(["ground", "--ckpt", str(tiny_ckpt), "--image", str(path), "--text", record["caption"],
                "--boxes", str(boxes), "--out-json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["regions"] == {"source": "boxes", "count": len(record["regions"])}
    region_boxes = [[round(v, 1) for v in r["box"]] for r in record["regions"]]
    for a in result["arguments"]:  # object boxes: the union of the picked ones (one, or a plural's instances)
        picked = [region_boxes[i] for i in a["regions"]]
        assert a["box"] == [min(b[0] for b in picked), min(b[1] for b in picked), max(b[2] for b in picked),
                            max(b[3] for b in picked)]


def test_ground_cli_bad_input_names_the_file(tiny_ckpt: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    missing = tmp_path / "missing.ckpt"
    assert run(["ground", "--ckpt", str(missing), "--image", str(bad), "--text", "x"]) == 2
    assert f"{missing}: checkpoint not found" in capsys.readouterr().err
    assert run(["ground", "--ckpt", str(tiny_ckpt), "--image", str(bad), "--text", "x"]) == 2
    assert f"{bad}: cannot decode image" in capsys.readouterr().err
    assert run(["ground", "--ckpt", str(tiny_ckpt), "--image", str(tmp_path / "nope.jpg"), "--text", "x"]) == 2
    assert "nope.jpg: image not found" in capsys.readouterr().err


def test_grounding_error_kinds() -> None:
    """benchmarks/grounding_errors.py: each miss gets the cause the breakdown reports."""
    from benchmarks.grounding_errors import classify

    boxes = torch.tensor([[0.0, 0, 20, 40], [30, 0, 50, 40], [2, 20, 8, 26], [0, 0, 128, 128], [80, 0, 100, 40]])
    other = torch.tensor([[80.0, 0, 100, 40]])

    def kind(pred: list[float], gold: list[float]) -> str:
        return classify(torch.tensor(pred), torch.tensor(gold), boxes, other, 128, 0.5, 0.5)[0]

    assert kind([0, 0, 20, 40], [0, 0, 20, 40]) == "correct"
    assert kind([0, 0, 20, 40], [0, 0, 50, 40]) == "unreachable"  # the group of two: no single candidate covers it
    assert kind([0, 0, 50, 40], [0, 0, 50, 40]) == "correct"  # ... their union does
    assert kind([0, 0, 128, 128], [0, 0, 20, 40]) == "whole_image"
    assert kind([0, 0, 20, 40], [0, 0, 128, 128]) == "whole_image"
    assert kind([0, 0, 20, 40], [2, 20, 8, 26]) == "right_object"  # the holder for what it holds
    assert kind([80, 0, 100, 40], [30, 0, 50, 40]) == "other_argument"
    assert kind([0, 0, 20, 40], [30, 0, 50, 40]) == "wrong_object"


def test_grounding_errors_benchmark_end_to_end(tiny_ckpt: Path, tiny_shards: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.grounding_errors import ERRORS
    from benchmarks.grounding_errors import main as errors_main

    out = tmp_path / "errors.json"
    assert errors_main(["--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards / "test-*.tar"), "--json",
                        "--out", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = json.loads(out.read_text())["rows"]
    assert rep["all"]["count"] == len(rows) > 0 and rep["meta"]["share"] == 0.7  # the checkpoint's default
    assert rep["all"]["acc"] + sum(rep["all"][e] for e in ERRORS) == pytest.approx(1.0)
    assert rep["all"]["ceiling"] == pytest.approx(sum(r["reachable"] for r in rows) / len(rows))
    assert sum(g["count"] for g in rep["by"]["role"].values()) == len(rows)
    assert {r["instances"] for r in rows} <= {1, 2, "3+", "?"} and all(r["role"] and r["text"] for r in rows)
    assert errors_main(["--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards / "test-*.tar"), "--share", "1"]) == 0
    assert "| role | count | acc | ceiling | union |" in capsys.readouterr().out
