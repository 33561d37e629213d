"""Resume and DDP correctness on tiny EventWorld shards (CPU):

* a run resumed from a checkpoint trains on the very batches (same keys, same order) that the uninterrupted run
  trained on after that step: 0, 1 and 2 loader workers, resampled or read-once streams, mid-epoch, at an epoch's
  end and in a later epoch, through `align fit --ckpt_path` too, and on each of 2 DDP ranks (gloo);
* changed stream settings restart the epoch, with a warning, instead of resuming somewhere else;
* `trainer.test` on 2 gloo processes scores retrieval over the whole test split (every rank's embeddings) and
  reports what one process reports, also when the split has fewer shards than ranks.

A linear probe stands in for the model where only the data stream matters, so those tests train in no time.
"""

from __future__ import annotations

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
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from align.cli import run_cli
from align.data import EventDataModule

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning"),
              pytest.mark.filterwarnings("ignore:The dirpath has changed"),  # resumed runs write elsewhere
              pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")]


class Probe(LightningModule):
    """A linear layer on mean pixel colours."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        self.trainer.datamodule.tokenizer = self.tokenizer  # what EventAlignModule does with its model's tokenizer

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.lin(batch["images"].mean((2, 3))).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordKeys(Callback):
    """The sample keys of every training batch, by the global step it trains."""

    def __init__(self) -> None:
        self.keys: dict[int, list[str]] = {}
        self.rank = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        assert "position" not in batch, "the data module takes the stream position off before the step"
        self.keys[trainer.global_step] = list(batch["keys"])
        self.rank = trainer.global_rank


def probe_fit(root: Path, tokenizer: Any, data: dict[str, Any], max_steps: int, ckpt: Path | None = None,
              **trainer: Any) -> RecordKeys:
    """Fit the probe with a kept checkpoint every 3 steps; the keys trained on, by step."""
    dm = EventDataModule(batch_size=4, image_size=32, shuffle_buffer=16, num_negatives=1, **data)
    record = RecordKeys()
    fitter = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
                     callbacks=[record, ModelCheckpoint(dirpath=root, filename="step-{step}", every_n_train_steps=3,
                                                        save_top_k=-1, auto_insert_metric_name=False)], **trainer)
    fitter.fit(Probe(tokenizer), datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return record


RESAMPLED = {"samples_per_epoch": 20}  # 5 batches an epoch; 2 workers make 3 + 2
# 3 shards of 8, read once: 2 workers make 4 + 2 batches, so worker 1 runs dry before worker 0 does
READ_ONCE = {"resampled": False, "train": "train-{000000..000002}.tar"}


@pytest.mark.parametrize(("num_workers", "stream"), [(0, RESAMPLED), (1, RESAMPLED), (2, RESAMPLED), (2, READ_ONCE)],
                         ids=["0-resampled", "1-resampled", "2-resampled", "2-read-once"])
def test_resumed_run_trains_on_the_batches_of_the_uninterrupted_one(shards: Path, tokenizer: Any, tmp_path: Path,
                                                                    num_workers: int, stream: dict[str, Any]) -> None:
    data = {"train": "train-*.tar", **stream, "num_workers": num_workers}
    data["train"] = str(shards / data["train"])
    steps = 11
    full = probe_fit(tmp_path / "full", tokenizer, data, steps).keys
    per_epoch = 5 if stream is RESAMPLED else 6
    assert sorted(full) == list(range(steps)) and full[0] != full[per_epoch], "every step; epochs differ"
    for k in (3, 6, 9):  # mid-epoch (worker 1's turn with 2 workers), at or near an epoch end, in a later epoch
        ckpt = tmp_path / "full" / f"step-{k}.ckpt"
        (position,) = torch.load(ckpt, map_location="cpu", weights_only=True)["EventDataModule"]["positions"]
        assert position["epoch"] == (k - 1) // per_epoch
        assert sum(b for _, b in position["workers"]) == (k - 1) % per_epoch + 1, "batches trained on, not fetched"
        resumed = probe_fit(tmp_path / f"from{k}", tokenizer, data, steps, ckpt).keys
        assert resumed == {s: full[s] for s in range(k, steps)}, f"resumed at step {k}"


def test_resume_with_other_stream_settings_restarts_the_epoch(shards: Path, tokenizer: Any, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    data = {"train": str(shards / "train-*.tar"), "num_workers": 0, **RESAMPLED}
    first = probe_fit(tmp_path / "first", tokenizer, data, 3).keys
    other = {**data, "seed": 1}
    resumed = probe_fit(tmp_path / "resumed", tokenizer, other, 5, tmp_path / "first" / "step-3.ckpt").keys
    assert "train data position not restored: seed changed" in caplog.text
    fresh = probe_fit(tmp_path / "fresh", tokenizer, other, 5).keys
    assert resumed == {3: fresh[0], 4: fresh[1]}, "the epoch starts from its first batch"
    assert fresh[0] != first[0], "the seed changes the stream"


def test_resume_through_the_cli(shards: Path, tmp_path: Path) -> None:
    """`align fit --ckpt_path` with the real model, as after a crash: the same batches follow the checkpoint."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 5, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "default_root_dir": str(tmp_path / "full"), "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "checkpoint": {"every_n_train_steps": 2, "save_top_k": -1, "monitor": None, "filename": "step-{step}"},
        "model": {"model_name": "EventCLIP-Tiny", "weights": {"hard_negatives": False}},
        "data": {"train": str(shards / "train-*.tar"), "batch_size": 2, "num_workers": 1, "image_size": 128,
                 "positive_kinds": ["long"], "num_negatives": 1, "shuffle_buffer": 16, "samples_per_epoch": 6},
    }
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump(cfg))

    def fit(*args: str, ckpt: Path | None = None) -> dict[int, list[str]]:
        cli = run_cli(["--config", str(config), *args], run=False)
        record = RecordKeys()
        cli.trainer.callbacks.append(record)
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt, weights_only=True)
        return record.keys

    full = fit()
    resumed = fit("--trainer.default_root_dir", str(tmp_path / "resumed"),
                  ckpt=tmp_path / "full" / "checkpoints" / "step-4.ckpt")  # epochs of 3 batches: mid-epoch 1
    assert sorted(full) == list(range(5)) and resumed == {4: full[4]}


def test_fewer_shards_than_ranks_split_records(shards: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    test = str(shards / "test-000000.tar")  # one shard of 8 samples
    split, lengths = {}, []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        for workers in (0, 2):
            dm = EventDataModule(test=test, batch_size=3, num_workers=workers, image_size=128)
            dm.tokenizer = tokenizer
            loader = dm.test_dataloader()
            split[rank, workers] = [k for batch in loader for k in batch["keys"]]
            lengths.append((len(loader), sum(1 for _ in loader)))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    dm = EventDataModule(test=test, batch_size=3, num_workers=0, image_size=128)
    dm.tokenizer = tokenizer
    everything = [k for batch in dm.test_dataloader() for k in batch["keys"]]
    assert len(everything) == 8
    for workers in (0, 2):  # every record on exactly one rank, alternating
        assert split[0, workers] == everything[0::2] and split[1, workers] == everything[1::2]
    assert all(n == m for n, m in lengths) and lengths[0] == (2, 2), "4 records on rank 0: batches of 3 and 1"
    monkeypatch.setenv("WORLD_SIZE", "9")
    with pytest.raises(ValueError, match="8 samples cannot give each of 9 ranks one"):
        EventDataModule(test=test, image_size=128).test_dataloader()


DRIVER = """
import json, sys
from align.cli import run_cli
from align.data import EventDataModule

config, ckpt, out, one_shard = sys.argv[1:5]
cli = run_cli(["--config", config, *sys.argv[5:]], run=False)
settings = {k: v for k, v in cli.datamodule.hparams.items() if not k.startswith("_")}
results = {}
for name, pattern in (("split", None), ("one_shard", one_shard)):
    dm = cli.datamodule if pattern is None else EventDataModule(**{**settings, "test": pattern})
    logged = cli.trainer.test(cli.model, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)[0]
    results[name] = {"results": cli.model.test_results, "logged": logged}
with open(f"{out}.rank{cli.trainer.global_rank}.json", "w") as f:
    json.dump(results, f)
"""


def test_ddp_test_scores_retrieval_over_every_rank(shards: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path)},
        "model": {"model_name": "EventCLIP-Tiny"},
        "data": {"test": str(shards / "test-*.tar"), "batch_size": 4, "num_workers": 0, "image_size": 128,
                 "positive_kinds": ["long"], "num_negatives": 4, "max_regions": 12, "max_arguments": 4,
                 "num_arg_negatives": 1},
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    one_shard = str(shards / "test-000000.tar")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for devices in (1, 2):
        cmd = [sys.executable, str(driver), str(path), str(tiny_ckpt), str(tmp_path / f"dev{devices}"), one_shard,
               "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    single = json.loads((tmp_path / "dev1.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"dev2.rank{r}.json").read_text()) for r in (0, 1)]
    assert single["split"]["results"]["num_samples"] == 9 and single["one_shard"]["results"]["num_samples"] == 8
    for name in ("split", "one_shard"):
        expected = single[name]["results"]
        for rank in ranks:
            got = rank[name]["results"]
            assert got["num_samples"] == expected["num_samples"], name
            assert got["retrieval"] == expected["retrieval"], name
            assert got["hardneg_acc"] == pytest.approx(expected["hardneg_acc"], abs=1e-6), name
            assert got["grounding_acc"] == pytest.approx(expected["grounding_acc"], abs=1e-6), name
            for key, value in expected["retrieval"].items():
                assert rank[name]["logged"][f"test/{key}"] == pytest.approx(value, abs=1e-6), (name, key)


FIT_DRIVER = """
import json, sys
from pathlib import Path

import open_clip

tests, root, train, out, ckpt = sys.argv[1:]
sys.path.insert(0, tests)
from test_resume_ddp import probe_fit

data = {"train": train, "samples_per_epoch": 40, "num_workers": 0}  # 5 batches an epoch on each of 2 ranks
record = probe_fit(Path(root), open_clip.get_tokenizer("ViT-B-32"), data, 7, Path(ckpt) if ckpt != "-" else None,
                   devices=2, strategy="ddp")
with open(f"{out}.rank{record.rank}.json", "w") as f:
    json.dump(record.keys, f)
"""


def test_ddp_resume_continues_each_ranks_stream(shards: Path, tmp_path: Path) -> None:
    # One shard with 3 undecodable records among 8 good ones, drawn again and again: each rank's shuffle meets the
    # bad ones at other times, so at the checkpoint the ranks' streams stand at different record counts (13, 18).
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes((shards / "train-000000.tar").read_bytes())
    with tarfile.open(shard, "a") as tar:
        for i in range(3):
            for name, payload in ((f"zz-bad{i}.jpg", b"not a jpeg"), (f"zz-bad{i}.json", b'{"key": ')):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    driver = tmp_path / "driver.py"
    driver.write_text(FIT_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name, ckpt in (("full", "-"), ("resumed", str(tmp_path / "full" / "step-3.ckpt"))):
        cmd = [sys.executable, str(driver), str(REPO / "tests"), str(tmp_path / name), str(shard),
               str(tmp_path / name), ckpt]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    positions = torch.load(tmp_path / "full" / "step-3.ckpt", map_location="cpu",
                           weights_only=True)["EventDataModule"]["positions"]
    assert len(positions) == 2 and positions[0]["workers"] != positions[1]["workers"], "each rank's own position"
    for rank in (0, 1):
        full, resumed = (json.loads((tmp_path / f"{name}.rank{rank}.json").read_text()) for name in ("full", "resumed"))
        assert sorted(map(int, full)) == list(range(7))
        assert resumed == {str(s): full[str(s)] for s in range(3, 7)}, f"rank {rank}"
