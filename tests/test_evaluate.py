"""`benchmarks/evaluate.py`: every metric family for model, plain-CLIP and blind columns, chance-exact blind
retrieval, oracle cases that must score 1.0, the figures, the cache and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.eval_blind import BigramLM, TrainStats
from benchmarks.eval_plots import read_metrics_csv
from benchmarks.evaluate import (
    chance_retrieval,
    event_type_metrics,
    grounding_metrics,
    hardneg_metrics,
    main,
    retrieval_metrics,
)

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

RETRIEVAL_KEYS = {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("hit@1", "hit@5", "hit@10", "mrr")}
CSV = """epoch,step,train/loss,val/loss,val/hardneg_acc/role_swap,val/hardneg_acc/type_swap
0,9,3.5,,,
0,19,3.1,,,
0,19,,2.9,0.55,0.6
0,29,2.5,,,
0,39,2.0,,,
0,39,,1.9,0.7,0.8
"""


def test_retrieval_oracle_scores_one_and_query_blind_ranking_scores_chance() -> None:
    n = 12
    perfect = retrieval_metrics(torch.eye(n) + 0.01 * torch.rand(n, n))
    assert set(perfect) == RETRIEVAL_KEYS and all(v == pytest.approx(1.0) for v in perfect.values())
    # any score s(i, j) = N * a(j) + b(i): each image ranks texts the same way, each text the images the same way
    gen = torch.Generator().manual_seed(0)  # scores kept > 0: torchmetrics' MRR mis-ranks an exact 0 score
    a, b = torch.randperm(n, generator=gen).double() + 1, torch.randperm(n, generator=gen).double() + 1
    blind = retrieval_metrics(n * a[None, :] + b[:, None])
    chance = chance_retrieval(n)
    assert chance["i2t_hit@5"] == 5 / 12 and chance["t2i_hit@10"] == 10 / 12
    assert blind == pytest.approx(chance, abs=1e-6)
    assert retrieval_metrics(torch.eye(n).flip(1))["i2t_hit@1"] == 0.0


def test_event_type_confusion_oracle_and_padding() -> None:
    names = ["A", "B", "C"]
    gold = torch.tensor([0, 1, 2, 2, 1, -1])
    perfect = event_type_metrics(gold.clamp_min(0), gold, names)
    assert perfect["acc"] == 1.0 and perfect["count"] == 5
    assert perfect["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert perfect["per_type"] == {"A": 1.0, "B": 1.0, "C": 1.0}
    r = event_type_metrics(torch.tensor([1, 1, 2, 0, 1, 0]), gold, names)
    assert r["acc"] == pytest.approx(3 / 5) and r["confusion"][0] == [0, 1, 0] and r["confusion"][2] == [1, 0, 1]


def test_hardneg_and_grounding_metrics() -> None:
    correct = torch.tensor([[True, False, False], [True, True, False]])
    kinds = torch.tensor([[0, 1, -1], [0, 1, 2]])
    r = hardneg_metrics(correct, kinds)
    assert r["acc"] == pytest.approx({"type_swap": 1.0, "role_swap": 0.5, "arg_replace": 0.0, "all": 0.6})
    assert r["count"]["all"] == 5
    gold = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 40, 40]]])
    valid = torch.tensor([[True, True]])
    roles = [["Agent", "Victim"]]
    assert grounding_metrics(gold.clone(), gold, valid, roles, 0.5)["acc"] == 1.0
    shifted = gold.clone()
    shifted[0, 1] += 15  # IoU 25/775: a miss
    r = grounding_metrics(shifted, gold, valid, roles, 0.5)
    assert r["acc"] == 0.5 and r["by_role"] == {"Agent": 1.0, "Victim": 0.0}


def test_language_prior_and_box_prior() -> None:
    lm = BigramLM(["A soldier arrested a protester in a market"] * 5 + ["Police arrested a journalist"] * 3)
    assert lm.score("a soldier arrested a protester") > lm.score("a protester arrested a soldier")
    assert lm.score("A SOLDIER arrested") == lm.score("a soldier arrested")  # case is invisible to CLIP too
    stats = TrainStats.__new__(TrainStats)
    stats.role_mean = {"Agent": np.array([0.25, 0.5, 0.2, 0.6])}
    boxes = np.array([[60.0, 40, 90, 110], [20, 30, 45, 110], [0, 0, 128, 128]])
    assert stats.choose_region("Agent", boxes, 128, 128) == 1
    assert stats.choose_region("Unseen", boxes, 128, 128) == 2  # the largest region
    assert stats.choose_region("Agent", boxes[:0], 128, 128) == -1


def test_evaluate_end_to_end(tiny_shards: Path, tiny_ckpt: Path, tmp_path: Path,  # noqa: F811
                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text(CSV)
    out = tmp_path / "eval"
    args = ["--ckpt", str(tiny_ckpt), "--baseline-ckpt", str(tiny_ckpt), "--shards", str(tiny_shards / "test-*.tar"),
            "--out", str(out), "--run", str(run), "--limit", "4", "--examples", "2", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "eval.json").read_text())
    n = report["meta"]["num_samples"]
    assert n == 4 and report["meta"]["gold"] and report["meta"]["mee_boxes"] == "record"
    models = report["models"]
    assert set(models) == {"model", "plain_clip", "blind"}
    for name, r in models.items():
        assert set(r) == {"retrieval", "hardneg", "grounding", "event_type", "mee"}, name
        assert set(r["retrieval"]) == RETRIEVAL_KEYS
        assert {"type_swap", "role_swap", "arg_replace", "all"} <= set(r["hardneg"]["acc"])
        assert 0.0 <= r["grounding"]["acc"] <= 1.0 and r["grounding"]["count"] > 0
        assert len(r["event_type"]["confusion"]) == 8 and sum(map(sum, r["event_type"]["confusion"])) == n
        for mode in ("strict", "legacy"):
            assert {"event", "argument"} <= set(r["mee"][mode]) and r["mee"][mode]["images"]["gold"] == n
    assert models["blind"]["retrieval"] == pytest.approx(chance_retrieval(n), abs=1e-6)
    assert models["plain_clip"] == models["model"]  # same checkpoint, same numbers: evaluation is deterministic
    # MEE event precision is the zero-shot type accuracy: both take the argmax over the same type prompts
    assert models["model"]["mee"]["strict"]["event"]["precision"] == pytest.approx(models["model"]["event_type"]["acc"])
    for png in ("retrieval_grid", "retrieval_grid_plain_clip", "grounding", "confusion", "curves"):
        with Image.open(out / f"{png}.png") as im:
            assert im.format == "PNG" and im.width > 200, png
    md = (out / "eval.md").read_text()
    assert "| i2t_hit@1 |" in md and "plain CLIP" in md and "MEE, strict" in md
    assert json.loads((out / "mee_model.json").read_text())

    # a re-run resumes from the cached outputs of both checkpoints and reports the same numbers
    assert main([*args, "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "model: reusing" in captured.err and "plain_clip: reusing" in captured.err
    assert json.loads(captured.out)["models"] == models


def test_training_curves_csv_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "csv" / "version_3").mkdir(parents=True)
    (tmp_path / "csv" / "version_3" / "metrics.csv").write_text(CSV)
    series = read_metrics_csv(tmp_path)
    assert series["train/loss"] == [(9, 3.5), (19, 3.1), (29, 2.5), (39, 2.0)]
    assert series["val/hardneg_acc/type_swap"] == [(19, 0.6), (39, 0.8)]
    with pytest.raises(FileNotFoundError, match="nowhere: no csv/version_"):
        read_metrics_csv(tmp_path / "nowhere")
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.ckpt: checkpoint not found" in capsys.readouterr().err
