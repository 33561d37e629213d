"""End-to-end training through the `align` CLI on tiny EventWorld shards (CPU, EventCLIP-Tiny): the loss goes down,
runs resume from step checkpoints that load without pickle, the test stage reports every metric, corrupt samples
are skipped and counted, two-process DDP runs, progressive stages chain their weights, `--help` documents
the arguments, and the quality ablation (benchmarks/quality.py) writes its table and resumes."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import align.cli
from align.cli import progressive, run_cli
from align.module import EventAlignModule
from align.schema import NEGATIVE_KINDS

REPO = Path(__file__).resolve().parent.parent
# run_cli is given args while pytest's own argv is set; LightningCLI warns about that mix
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def write_config(path: Path, shards: Path, root: Path, max_steps: int, *, every: int = 10, **extra: Any) -> Path:
    """A fit config in the layout of configs/demo.yaml, sized for tests: batch 8, full mode (negatives + OT)."""
    cfg: dict[str, Any] = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": every,
            "check_val_every_n_epoch": None, "limit_val_batches": 1, "num_sanity_val_steps": 0,
            "log_every_n_steps": 1, "default_root_dir": str(root), "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(root), "name": "csv"}}],
        },
        "checkpoint": {"every_n_train_steps": every},
        "model": {"model_name": "EventCLIP-Tiny",
                  "weights": {"hard_negatives": True, "ot": 0.5, "ot_distance": 0.0, "ot_batch": 1.0},
                  "optim": {"lr": 1.0e-3, "warmup_steps": 2}},
        "data": {"train": str(shards / "train-*.tar"), "val": str(shards / "val-*.tar"),
                 "test": str(shards / "test-*.tar"), "batch_size": 8, "num_workers": 0, "image_size": 128,
                 "positive_kinds": ["long"], "num_negatives": 4, "max_regions": 12, "max_arguments": 4,
                 "num_arg_negatives": 1, "shuffle_buffer": 32},
    }
    for key, value in extra.items():
        cfg = align.cli._merge(cfg, {key: value})
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged(root: Path, key: str, version: int = 0) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from the CSV logger."""
    with open(root / "csv" / f"version_{version}" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def fitted(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    root = tmp_path_factory.mktemp("fit20")
    cfg = write_config(root / "fit.yaml", shards, root, max_steps=20)
    return run_cli(["fit", "--config", str(cfg)]), root


def test_fit_loss_decreases(fitted: tuple[Any, Path]) -> None:
    cli, root = fitted
    assert cli.trainer.global_step == 20
    losses = [v for _, v in logged(root, "train/loss")]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, f"loss did not go down: first 5 {first:.3f}, last 5 {last:.3f}"
    assert logged(root, "train/ot"), "full mode trains the OT head"
    assert logged(root, "train/ot_batch"), "and its cross-sample contrast"
    assert logged(root, "val/loss")


def test_test_stage_reports_every_metric(fitted: tuple[Any, Path]) -> None:
    cli, _ = fitted
    cli.trainer.test(cli.model, cli.datamodule)
    r = cli.model.test_results
    assert r["num_samples"] == 9  # the whole test split
    assert set(r["hardneg_acc"]) == {"type_swap", "role_swap", "arg_replace"} <= set(NEGATIVE_KINDS)
    assert set(r["retrieval"]) == {f"{d}_hit@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    values = [*r["hardneg_acc"].values(), *r["retrieval"].values(), r["grounding_acc"]]
    assert all(0.0 <= v <= 1.0 for v in values), r
    assert r["retrieval"]["i2t_hit@10"] == 1.0  # 9 candidates: the match is always in the top 10


def test_resume_from_last_checkpoint(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fit.yaml", shards, tmp_path, max_steps=6, every=3)
    first = run_cli(["fit", "--config", str(cfg)])
    assert first.trainer.global_step == 6
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # no pickled objects in a checkpoint
    assert ckpt["global_step"] == 6
    assert ckpt["eventalign"]["version"] == align.__version__
    stored = ckpt["eventalign"]["config"]
    assert stored["model"]["weights"]["ot"] == 0.5 and stored["data"]["batch_size"] == 8
    assert stored["trainer"]["max_steps"] == 6
    assert ckpt["optimizer_states"] and ckpt["optimizer_states"][0]["state"], "optimizer moments are saved"
    assert ckpt["lr_schedulers"]

    resumed = run_cli(["fit", "--config", str(cfg), "--trainer.max_steps", "10", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 10
    steps = [s for s, _ in logged(tmp_path, "train/loss", version=1)]
    assert steps == list(range(6, 10)), "the resumed run continues at step 6"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["eventalign"]["config"]["trainer"]["max_steps"] == 10
    assert not list(last.parent.glob("last-v*.ckpt")), "the final step is saved once, as last.ckpt"
    assert ckpt["eventalign"]["config"]["weights_only"] is True, "the resume loaded the checkpoint without pickle"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_are_skipped_and_counted(shards: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shard = data / "train-000000.tar"
    shard.write_bytes((shards / "train-000000.tar").read_bytes())
    with tarfile.open(shard) as tar:
        record = next(json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json"))
        jpeg = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg"))
    record["key"] = "zz-bad-image"
    with tarfile.open(shard, "a") as tar:
        _add_member(tar, "zz-bad-image.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG")
        _add_member(tar, "zz-bad-image.json", json.dumps(record).encode())
        _add_member(tar, "zz-bad-json.jpg", jpeg)
        _add_member(tar, "zz-bad-json.json", b'{"key": "zz-bad-json", "caption": ')
    cfg = write_config(tmp_path / "fit.yaml", data, tmp_path, max_steps=4, every=100,
                       trainer={"limit_val_batches": 0},
                       data={"train": str(shard), "val": None, "test": None, "batch_size": 4,
                             "samples_per_epoch": 16, "shuffle_buffer": 0})
    cli = run_cli(["fit", "--config", str(cfg)])
    assert cli.trainer.global_step == 4
    # 4 batches of 4 read the 10-sample shard at least once: both bad samples were met
    assert cli.datamodule.skipped["bad_image"] >= 1
    assert cli.datamodule.skipped["bad_json"] >= 1


def test_ddp_two_cpu_processes(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fit.yaml", shards, tmp_path, max_steps=4, every=2)
    cmd = [sys.executable, "-m", "align.cli", "fit", "--config", str(cfg), "--trainer.devices", "2",
           "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert int(ckpt["eventalign"]["config"]["trainer"]["devices"]) == 2
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr, "the second rank joined"
    assert logged(tmp_path, "val/loss"), "validation ran on both ranks"


def test_progressive_chains_stage_weights_and_skips_finished(shards: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = yaml.safe_load(write_config(tmp_path / "base.yaml", shards, tmp_path / "runs", max_steps=3,
                                       every=3).read_text())
    base["stages"] = [
        {"name": "types", "model": {"weights": {"hard_negatives": False, "ot": 0.0, "event_type": 1.0}}},
        {"name": "event-ot", "trainer": {"max_steps": 2},
         "model": {"weights": {"hard_negatives": True, "ot": 0.5, "event_type": 0.0}}},
    ]
    recipe = tmp_path / "progressive.yaml"
    recipe.write_text(yaml.safe_dump(base))

    loaded: list[tuple[str, dict[str, torch.Tensor]]] = []
    load_init = EventAlignModule._load_init

    def spy(self: EventAlignModule, path: str) -> None:
        load_init(self, path)
        loaded.append((path, {k: v.detach().clone() for k, v in self.state_dict().items()}))

    monkeypatch.setattr(EventAlignModule, "_load_init", spy)
    last1, last2 = progressive(str(recipe))
    assert last1 == tmp_path / "runs" / "types" / "checkpoints" / "last.ckpt" and last2.is_file()
    assert json.loads((last1.parent.parent / "done.json").read_text())["global_step"] == 3

    # stage 2 was built from stage 1's final weights
    assert [p for p, _ in loaded] == [str(last1)]
    stage1 = torch.load(last1, map_location="cpu", weights_only=True)["state_dict"]
    initial = loaded[0][1]
    for name in ("model.clip.logit_scale", "image_type_head.weight", "model.clip.token_embedding.weight"):
        assert torch.equal(initial[name], stage1[name]), name
    stage2 = torch.load(last2, map_location="cpu", weights_only=True)
    assert stage2["global_step"] == 2
    assert stage2["hyper_parameters"]["init_from"] == str(last1)
    assert stage2["hyper_parameters"]["weights"]["ot"] == 0.5
    assert not torch.equal(stage2["state_dict"]["model.clip.token_embedding.weight"],
                           stage1["model.clip.token_embedding.weight"]), "stage 2 trained"

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(align.cli, "run_cli", no_training)
    assert progressive(str(recipe)) == [last1, last2]


def test_fit_help_documents_arguments() -> None:
    proc = subprocess.run([sys.executable, "-m", "align.cli", "fit", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())  # undo argparse's line wrapping
    assert "include the sample's K hard negatives as extra columns of the contrastive loss" in text
    assert "Training shard pattern(s)" in text and "Hard negative kinds to sample from" in text
    assert "--checkpoint.every_n_train_steps" in text and "--ckpt_path" in text
    assert "--model.weights.ot_batch" in text and "weight of the cross-sample OT contrast" in text


def test_quality_ablation_writes_table_and_resumes(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    plain = write_config(tmp_path / "plain.yaml", shards, tmp_path / "unused", max_steps=50,
                         model={"weights": {"hard_negatives": False, "ot": 0.0, "ot_batch": 0.0}})
    full = write_config(tmp_path / "full.yaml", shards, tmp_path / "unused", max_steps=50)
    out = tmp_path / "quality.json"
    argv = ["--steps", "2", "--out", str(out), "--shards", str(shards), "--runs", str(tmp_path / "runs"),
            "--num-samples", "96", "--model", f"clip={plain}", "--model", f"full={full}", "--json"]
    assert quality.main(argv) == 0
    doc = json.loads(out.read_text())
    assert list(doc["models"]) == ["clip", "full"]
    for r in doc["models"].values():
        assert r["global_step"] == 2 and r["max_steps"] == 2 and r["train_seconds"] > 0
        assert set(r["hardneg_acc"]) == {"type_swap", "role_swap", "arg_replace"}
        assert set(r["retrieval"]) == {f"{d}_hit@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
        assert 0.0 <= r["grounding_acc"] <= 1.0
    assert set(doc["met"]) == set(doc["targets"]) and all(isinstance(v, bool) for v in doc["met"].values())
    full_doc = doc["models"]["full"]
    assert full_doc["code_sha256"] == quality.code_digest()
    run = tmp_path / "runs" / f"full-2steps-{full_doc['config_sha256'][:8]}-{full_doc['code_sha256'][:8]}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run / "csv").is_dir() and not (tmp_path / "unused").exists(), "logs go beside the checkpoints"
    printed = capsys.readouterr().out
    assert "| `full` |" in printed and "target (full)" in printed and '"models"' in printed

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(quality, "train_and_test", no_training)
    assert quality.main(argv) == 0
    assert json.loads(out.read_text()) == doc
    monkeypatch.setattr(quality, "code_digest", lambda: "0" * 64)  # so is one trained by other library code
    with pytest.raises(AssertionError, match="trained again"):
        quality.main(argv)
    monkeypatch.undo()
    monkeypatch.setattr(quality, "train_and_test", no_training)
    full.write_text(full.read_text() + "# edited\n")  # a changed config is trained again
    with pytest.raises(AssertionError, match="trained again"):
        quality.main(argv)


def test_demo_reports_and_never_continues_a_run_made_on_other_shards(shards: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from align import demo

    cfg = write_config(tmp_path / "demo.yaml", shards, tmp_path / "unused", max_steps=50)
    out = tmp_path / "demo"
    argv = ["--shards", str(shards), "--out", str(out), "--config", str(cfg), "--num-samples", "96",
            "--max-steps", "2"]
    assert demo.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["demo"]["global_step"] == 2
    assert set(report["models"]["demo"]["hardneg_acc"]) >= {"type_swap", "role_swap", "arg_replace"}
    assert "| demo |" in (out / "report.md").read_text() and "| demo |" in capsys.readouterr().out
    first = (out / "checkpoints" / "last.ckpt").read_bytes()

    assert demo.main(argv) == 0, "the same shards: the finished run is reused, not trained again"
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == first and not list(tmp_path.glob("demo.stale*"))

    stamp = json.loads((out / demo.RUN_STAMP).read_text())
    (out / demo.RUN_STAMP).write_text(json.dumps({**stamp, "manifest_sha256": "0" * 64}))  # as if other shards
    assert demo.main(argv) == 0
    assert (tmp_path / "demo.stale" / "checkpoints" / "last.ckpt").read_bytes() == first, "moved aside, intact"
    assert "trained on other shards" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["models"]["demo"]["global_step"] == 2


def test_encode_texts_encodes_each_distinct_text_once_with_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    module = EventAlignModule("EventCLIP-Tiny")
    tok = module.model.tokenizer
    pos = tok(["a soldier arrests a protester", "a van drives"]).reshape(2, 1, -1)
    args = tok(["Agent: a soldier", "Person: a protester", "Agent: a soldier", "Vehicle: a van"]).reshape(2, 2, -1)
    arg_mask = torch.tensor([[True, True], [True, False]])  # the masked slot is not encoded at all
    calls: list[int] = []
    encode = module.model.encode_text

    def counting(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.shape[0])
        return encode(tokens)

    monkeypatch.setattr(module.model, "encode_text", counting)
    out_pos, out_args = module._encode_texts((pos, torch.ones(2, 1, dtype=torch.bool)), (args, arg_mask))
    assert calls == [4], "5 valid texts, 4 distinct: one tower call"
    (out_pos.sum() + (out_args * torch.arange(1.0, 3.0)[None, :, None]).sum()).backward()
    dedup = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    ref_pos, ref_args = encode(pos[:, 0]), encode(args[arg_mask])  # each text on its own row
    torch.testing.assert_close(out_pos[:, 0].detach(), ref_pos.detach())
    torch.testing.assert_close(out_args[arg_mask].detach(), ref_args.detach())
    assert out_args[1, 1].abs().sum() == 0
    (ref_pos.sum() + (ref_args * torch.tensor([1.0, 2.0, 1.0])[:, None]).sum()).backward()
    for name, grad in dedup.items():
        torch.testing.assert_close(grad, module.get_parameter(name).grad, atol=1e-5, rtol=1e-4, msg=name)
