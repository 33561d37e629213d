"""Every shipped config parses with the real `align` parser (types, keys and class paths checked, nothing built), and
the model JSONs are valid open_clip configs whose input size matches the configs that use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import pytest
import yaml

import align.model  # noqa: F401  registers configs/models with open_clip
from align.cli import run_cli, stage_configs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FIT_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "stages" not in yaml.safe_load(p.read_text()))
PROGRESSIVE_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p not in FIT_CONFIGS)
MODEL_JSONS = sorted((CONFIG_DIR / "models").glob("*.json"))
# run_cli is given args while pytest's own argv is set; LightningCLI warns about that mix
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def parse_fit(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`align fit --config PATH --print_config`: a full parse and validation that exits before instantiation."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(path), "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{path} does not parse:\n{err[-2000:]}"
    return yaml.safe_load(out)


def model_image_size(name: str) -> int:
    cfg = open_clip.get_model_config(name)
    assert cfg is not None, f"open_clip knows no model {name!r}"
    return cfg["vision_cfg"]["image_size"]


def test_the_shipped_configs_are_found() -> None:
    names = {p.name for p in FIT_CONFIGS + PROGRESSIVE_CONFIGS}
    assert {"demo.yaml", "eventworld-clip-baseline.yaml", "eventworld-event.yaml", "vit-b-32-gpu.yaml",
            "progressive.yaml", "ablation-hardneg.yaml", "ablation-ot.yaml"} <= names
    assert [p.name for p in PROGRESSIVE_CONFIGS] == ["progressive.yaml"]


@pytest.mark.parametrize("path", FIT_CONFIGS, ids=lambda p: p.name)
def test_fit_config_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = parse_fit(path, capsys)
    assert cfg["model"]["model_name"] == raw["model"]["model_name"]
    assert cfg["data"]["image_size"] == model_image_size(cfg["model"]["model_name"])
    for key, value in raw["model"].get("weights", {}).items():
        assert cfg["model"]["weights"][key] == value
    assert cfg["checkpoint"]["save_last"] is True


def test_baseline_is_plain_clip_and_event_config_is_not(capsys: pytest.CaptureFixture[str]) -> None:
    base = parse_fit(CONFIG_DIR / "eventworld-clip-baseline.yaml", capsys)
    event = parse_fit(CONFIG_DIR / "eventworld-event.yaml", capsys)
    demo = parse_fit(CONFIG_DIR / "demo.yaml", capsys)
    assert base["model"]["weights"]["hard_negatives"] is False and base["model"]["weights"]["ot"] == 0.0
    assert event["model"]["weights"]["hard_negatives"] is True and event["model"]["weights"]["ot"] > 0
    assert base["data"] == demo["data"] and base["trainer"]["max_steps"] == demo["trainer"]["max_steps"]
    assert event["trainer"]["max_steps"] > demo["trainer"]["max_steps"]


def test_gpu_config(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_fit(CONFIG_DIR / "vit-b-32-gpu.yaml", capsys)
    t = cfg["trainer"]
    assert (t["accelerator"], t["devices"], t["strategy"], t["num_nodes"], t["precision"]) == (
        "gpu", -1, "ddp", 1, "bf16-mixed")
    assert cfg["model"]["model_name"] == "ViT-B-32" and cfg["model"]["pretrained"] is None
    assert cfg["data"]["image_size"] == 224 and cfg["data"]["num_workers"] == 8


# benchmarks/quality.py's ablation: config -> (hard negatives on, OT head on)
ABLATION = {"eventworld-clip-baseline.yaml": (False, False), "ablation-hardneg.yaml": (True, False),
            "ablation-ot.yaml": (False, True), "demo.yaml": (True, True)}


def test_ablation_configs_differ_only_in_objectives(capsys: pytest.CaptureFixture[str]) -> None:
    cfgs = {name: parse_fit(CONFIG_DIR / name, capsys) for name in ABLATION}
    demo = cfgs["demo.yaml"]
    for name, (negatives, ot) in ABLATION.items():
        cfg, w = cfgs[name], cfgs[name]["model"]["weights"]
        assert w["hard_negatives"] is negatives, name
        assert (w["ot"] > 0 and w["ot_batch"] > 0) if ot else (w["ot"] == 0 and w["ot_batch"] == 0), name
        assert cfg["data"] == demo["data"], f"{name}: the ablation uses the demo's data"
        assert cfg["trainer"]["max_steps"] == demo["trainer"]["max_steps"], f"{name}: and its budget"
        assert ({k: v for k, v in cfg["model"].items() if k != "weights"}
                == {k: v for k, v in demo["model"].items() if k != "weights"}), f"{name}: and its model and optimizer"
        if ot:  # the OT head is configured as in the full model
            assert {k: v for k, v in w.items() if k.startswith("ot")} == {
                k: v for k, v in demo["model"]["weights"].items() if k.startswith("ot")}, name
    # the full model trains the cross-sample contrast and not the plain OT distance, which collapses from scratch
    assert demo["model"]["weights"]["ot_distance"] == 0.0


@pytest.mark.parametrize("path", PROGRESSIVE_CONFIGS, ids=lambda p: p.name)
def test_progressive_stages_parse(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stages = stage_configs(str(path))
    assert len(stages) >= 2
    names = [name for name, _ in stages]
    assert len(set(names)) == len(names), "stage names must differ: each stage runs in its own folder"
    parsed = []
    for i, (name, stage_cfg) in enumerate(stages):
        assert "name" not in stage_cfg and "stages" not in stage_cfg
        stage_file = tmp_path / f"{name}.yaml"
        stage_file.write_text(yaml.safe_dump(stage_cfg))
        cfg = parse_fit(stage_file, capsys)
        assert cfg["trainer"]["default_root_dir"].endswith(name)
        prev_dir = stages[i - 1][1]["trainer"]["default_root_dir"] if i else None
        assert cfg["model"]["init_from"] == (str(Path(prev_dir) / "checkpoints" / "last.ckpt") if i else None)
        parsed.append(cfg)
    if path.name == "progressive.yaml":
        (n1, _), (n2, _) = stages
        w1, w2 = parsed[0]["model"]["weights"], parsed[1]["model"]["weights"]
        assert (n1, n2) == ("stage1-caption-types", "stage2-event-ot")
        assert (w1["hard_negatives"], w1["ot"], w1["event_type"]) == (False, 0.0, 1.0)
        assert (w2["hard_negatives"], w2["ot"], w2["event_type"]) == (True, 0.5, 0.0)
        assert parsed[0]["trainer"]["max_steps"] < parsed[1]["trainer"]["max_steps"]
        # keys a stage does not override come from the base config
        assert w1["ot_margin"] == w2["ot_margin"] == 0.1
        assert parsed[0]["data"] == parsed[1]["data"]


@pytest.mark.parametrize("path", MODEL_JSONS, ids=lambda p: p.name)
def test_model_json_is_an_open_clip_config(path: Path) -> None:
    cfg = open_clip.get_model_config(path.stem)
    assert cfg == json.loads(path.read_text())
    assert cfg["embed_dim"] > 0 and cfg["vision_cfg"]["image_size"] > 0 and cfg["text_cfg"]["context_length"] > 0
