"""Feature-cache gradient accumulation (`accumulate_batches`, `align/accumulate.py`) and the fused AdamW option.

One optimizer step over two micro-batches of B must give the parameters the gradient of the automatic path on the
concatenated 2B batch (every loss term on); dropout masks are replayed and BatchNorm statistics updated once per
micro-batch; `align fit --model.accumulate_batches 2` counts optimizer steps, resumes, and divides the schedule."""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from test_train import logged, write_config
from torch.utils.data import DataLoader

from align.accumulate import cached_backward, concat_batches
from align.cli import run_cli
from align.data import EventDataModule
from align.hparams import LossWeights, OptimConfig
from align.module import EventAlignModule

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning",
                                        "ignore:Found `dataloader_iter` argument:UserWarning",
                                        "ignore:You are using the `dataloader_iter` step flavor:UserWarning")

# every term of the training loss on: contrastive with hard negatives, OT distance + hinge, cross-sample OT, types
ALL_TERMS = LossWeights(hard_negatives=True, ot=0.5, ot_contrastive=1.0, ot_distance=1.0, ot_batch=1.0,
                        event_type=0.5)


@pytest.fixture(scope="module")
def batch(shards: Path) -> dict[str, Any]:
    """The first 8 validation samples as one training-format batch for EventCLIP-Tiny (32-token context)."""
    dm = EventDataModule(val=str(shards / "val-*.tar"), batch_size=8, num_workers=0, image_size=128,
                         positive_kinds=("long",), num_negatives=4, max_regions=12, max_arguments=4,
                         num_arg_negatives=1)
    dm.tokenizer = EventAlignModule("EventCLIP-Tiny").model.tokenizer
    out = next(iter(dm.val_dataloader()))
    out.pop("position", None)  # the data module's stream position, taken off before a step sees the batch
    assert out["images"].shape[0] == 8 and out["neg_arg_mask"].any() and (out["event_type"] >= 0).any()
    return out


def split(batch: dict[str, Any], parts: int, samples: int = 8) -> list[dict[str, Any]]:
    """The first `samples` of the batch as `parts` equal micro-batches."""
    size = samples // parts
    return [{k: v[i: i + size] for k, v in batch.items()} for i in range(0, samples, size)]


class CaptureGrads(L.Callback):
    """The parameters' gradients and the logged losses of the (only) optimizer step."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


def one_step(module: EventAlignModule, batches: list[dict[str, Any]]) -> CaptureGrads:
    capture = CaptureGrads()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[capture])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.global_step == 1
    return capture


def test_two_micro_batches_give_the_gradient_of_the_concatenated_batch(batch: dict[str, Any]) -> None:
    torch.manual_seed(0)
    auto = EventAlignModule("EventCLIP-Tiny", weights=ALL_TERMS)
    cached = EventAlignModule("EventCLIP-Tiny", weights=ALL_TERMS, accumulate_batches=2)
    cached.load_state_dict(auto.state_dict())
    assert auto.automatic_optimization and not cached.automatic_optimization

    ref = one_step(auto, [batch])
    got = one_step(cached, split(batch, 2))
    for key in ("loss", "contrastive", "ot", "ot_batch", "event_type"):
        assert ref.metrics[f"train/{key}"] > 0, key
        assert got.metrics[f"train/{key}"] == pytest.approx(ref.metrics[f"train/{key}"], rel=1e-4, abs=1e-6), key
    assert got.metrics["train/i2t_hit@1"] == ref.metrics["train/i2t_hit@1"], "retrieval over all 8 samples"
    assert set(got.grads) == set(ref.grads)
    for name in ("model.clip.logit_scale", "image_type_head.weight", "text_type_head.bias"):
        assert name in ref.grads, "parameters the losses use directly get their gradient too"
    for name, grad in ref.grads.items():
        torch.testing.assert_close(got.grads[name], grad, atol=2e-5, rtol=1e-3, msg=name)
    # a contrast that only looked within each micro-batch of 4 would give another gradient
    local = EventAlignModule("EventCLIP-Tiny", weights=ALL_TERMS)
    local.load_state_dict(auto.state_dict())
    first = one_step(local, split(batch, 2)[:1])
    assert not torch.allclose(first.grads["model.clip.logit_scale"], ref.grads["model.clip.logit_scale"])


def ddp_worker(rank: int, port: int, micro: list[dict[str, Any]], out: Path) -> None:
    """Rank r of 2 takes micro-batches r and r + 2 of 4: one step over all of them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = EventAlignModule("EventCLIP-Tiny", weights=ALL_TERMS, accumulate_batches=2)
    capture = CaptureGrads()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[capture])
    trainer.fit(module, train_dataloaders=DataLoader(micro[rank::2], batch_size=None))
    if rank == 0:
        torch.save(capture.grads, out)


@pytest.mark.slow
def test_ddp_accumulation_gives_the_gradient_of_the_whole_batch(batch: dict[str, Any], tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(ddp_worker, args=(port, split(batch, 4), tmp_path / "grads.pt"), nprocs=2)
    grads = torch.load(tmp_path / "grads.pt", weights_only=True)  # after DDP's averaging over the ranks
    torch.manual_seed(0)
    ref = one_step(EventAlignModule("EventCLIP-Tiny", weights=ALL_TERMS), [batch])
    assert set(grads) == set(ref.grads)
    for name, grad in ref.grads.items():
        torch.testing.assert_close(grads[name], grad, atol=2e-5, rtol=1e-3, msg=name)


def test_dropout_is_replayed_and_batchnorm_statistics_update_once(batch: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    module = EventAlignModule("EventCLIP-TinyRN", weights=ALL_TERMS)  # a ResNet tower: BatchNorm
    module.train()
    encode_text, encode_image = module.model.encode_text, module.model.encode_image_and_regions

    def text_dropout(tokens: torch.Tensor) -> torch.Tensor:
        return F.dropout(encode_text(tokens), 0.3)

    def image_dropout(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, regions, mask = encode_image(*args)
        return F.dropout(image, 0.3), F.dropout(regions, 0.3), mask

    monkeypatch.setattr(module.model, "encode_text", text_dropout)
    monkeypatch.setattr(module.model, "encode_image_and_regions", image_dropout)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    micro = split(batch, 2, samples=4)

    def reference() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Both micro-batches in one graph: the gradient the cache must reproduce, dropout masks included."""
        module.load_state_dict(initial)
        module.zero_grad()
        torch.manual_seed(1)
        out = concat_batches([module._forward(b) for b in micro])
        module._losses(concat_batches(micro), out)["loss"].backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, torch.get_rng_state()

    def cached() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        module.load_state_dict(initial)
        module.zero_grad()
        torch.manual_seed(1)
        cached_backward(micro, module._forward, module._losses, module, torch.Tensor.backward,
                        lambda last: nullcontext())
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, torch.get_rng_state()

    ref_grads, ref_rng = reference()
    ref_state = {k: v.clone() for k, v in module.state_dict().items()}
    assert any("running_mean" in k for k in ref_state)
    grads, rng = cached()
    assert torch.equal(rng, ref_rng), "the RNG goes on as after one pass"
    for name, value in module.state_dict().items():  # BatchNorm running statistics: one update per micro-batch
        assert torch.equal(value, ref_state[name]), name
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)

    with torch.no_grad():  # the masks matter: without the replay the re-encode would draw other ones
        assert not torch.equal(module._forward(micro[0])["pos"], module._forward(micro[0])["pos"])


def test_fit_counts_optimizer_steps_and_resumes(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fit.yaml", shards, tmp_path, max_steps=2, every=2,
                       model={"accumulate_batches": 2, "optim": {"clip_grad_norm": 1.0}},
                       data={"batch_size": 2})
    first = run_cli(["fit", "--config", str(cfg)])
    assert first.trainer.global_step == 2
    assert first.model.optimizers().param_groups[0]["fused"] is True
    assert [s for s, _ in logged(tmp_path, "train/loss")] == [0, 1], "one log row per optimizer step"
    assert logged(tmp_path, "train/ot") and logged(tmp_path, "train/ot_batch")
    assert [s for s, _ in logged(tmp_path, "val/loss")] == [1], "validation after 2 optimizer steps"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["accumulate_batches"] == 2

    resumed = run_cli(["fit", "--config", str(cfg), "--trainer.max_steps", "3", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 3
    assert [s for s, _ in logged(tmp_path, "train/loss", version=1)] == [2], "the resumed run goes on at step 2"


def test_schedule_counts_optimizer_steps_when_epochs_bound_the_run(batch: dict[str, Any]) -> None:
    # one epoch of 4 loader batches = 2 optimizer steps: warmup 1 step, then the cosine reaches 0 at step 2
    # (a schedule over 4 steps would still be at its peak)
    module = EventAlignModule("EventCLIP-Tiny", accumulate_batches=2, optim=OptimConfig(warmup_steps=2))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(split(batch, 4), batch_size=None))
    assert trainer.global_step == 2
    assert module.lr_schedulers().get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_trainer_accumulation_is_refused_with_accumulate_batches(batch: dict[str, Any]) -> None:
    module = EventAlignModule("EventCLIP-Tiny", accumulate_batches=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, accumulate_grad_batches=2)
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches"):
        trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    with pytest.raises(ValueError, match="accumulate_batches"):
        EventAlignModule("EventCLIP-Tiny", accumulate_batches=0)


@pytest.mark.parametrize(("fused", "expected"), [(None, True), (False, False), (True, True)])
def test_fused_adamw_option(fused: bool | None, expected: bool) -> None:
    module = EventAlignModule("EventCLIP-Tiny", optim=OptimConfig(fused=fused))
    module.trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    opt = module.configure_optimizers()["optimizer"]
    assert bool(opt.defaults["fused"]) is expected
