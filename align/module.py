"""LightningModule: event-aware contrastive pretraining with hard negatives and OT argument alignment.

One module covers every recipe in `configs/`: plain CLIP (no negatives, no OT), + hard negatives, + OT,
and the progressive stages (event-type heads first, then hard negatives + OT). The OT head has three terms
(`LossWeights`): the true structure's OT distance, a hinge against role-swapped / replaced structures, and a
cross-sample contrast of OT distances (`align.losses.ot_contrastive_loss`) that grounds arguments from captions
alone. The batch format is the one documented in `align/data.py`. With `accumulate_batches` > 1 an optimizer step
spans several loader batches whose losses are computed together (`align/accumulate.py`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from itertools import islice
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchvision.ops import box_iou

from align import __version__
from align.accumulate import cached_backward, optimizer_steps
from align.grounding import ground_union
from align.hparams import EvalConfig, LossWeights, OptimConfig, OTConfig
from align.losses import ContrastiveLoss, ContrastiveLossConfig, hard_negative_correct, ot_contrastive_loss
from align.model import EventCLIP, RegionHead
from align.ontology import Ontology
from align.ot import grounding_plan, ot_alignment_loss
from align.schema import NEGATIVE_KINDS


class EventAlignModule(L.LightningModule):
    """Trains `EventCLIP` with contrastive, hard-negative, OT and event-type objectives."""

    def __init__(
        self,
        model_name: str = "EventCLIP-Tiny",
        pretrained: str | None = None,
        init_from: str | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        grad_checkpointing: bool = False,
        region_head: RegionHead = "pool",
        contrastive: ContrastiveLossConfig = ContrastiveLossConfig(),  # noqa: B008
        weights: LossWeights = LossWeights(),  # noqa: B008
        ot: OTConfig = OTConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        evaluation: EvalConfig = EvalConfig(),  # noqa: B008
        ontology: str | None = None,
        accumulate_batches: int = 1,
    ) -> None:
        """
        Args:
            model_name: open_clip model name (`ViT-B-32`, `RN50`, ...) or a tiny config from `configs/models/`.
            pretrained: open_clip pretrained tag or a local .pt / .safetensors checkpoint of the CLIP model.
            init_from: a Lightning checkpoint of this module whose weights start this run (progressive stages).
            lock_image: freeze the image tower (LiT).
            lock_text: freeze the text tower.
            grad_checkpointing: trade compute for memory in both towers.
            region_head: region features (`align.model`): "pool" (RoIAlign the last feature map) or "res5"
                (ResNet towers: RoIAlign layer3 and run layer4 per region, fine enough for small objects).
            contrastive: image-text contrastive loss variant (ce | bce | kl) and options.
            weights: which objectives are on and how much each counts.
            ot: optimal-transport solver options for the argument alignment head.
            optim: optimizer and learning-rate schedule.
            evaluation: evaluation options.
            ontology: path of a YAML/JSON ontology (default: the 8 M2E2 types).
            accumulate_batches: loader batches per optimizer step, with every loss (contrastive, hard negatives, OT,
                cross-sample OT) computed over all of them together, so N batches of B train like one batch of
                N*B at the activation memory of B, for one more forward pass (a feature cache, as in GradCache).
                Above 1 the module optimizes manually and one training step takes N loader batches (fewer at an
                epoch's end): `max_steps`, `global_step`, `val_check_interval`, `log_every_n_steps` and the
                checkpoint intervals count optimizer steps, and validation also runs at each epoch's end. Leave
                `trainer.accumulate_grad_batches` at 1 (it only sums per-batch losses; Lightning refuses it
                here) and clip with `optim.clip_grad_norm` instead of `trainer.gradient_clip_val`.
        """
        super().__init__()
        self.save_hyperparameters({
            "model_name": model_name, "pretrained": pretrained, "init_from": init_from, "lock_image": lock_image,
            "lock_text": lock_text, "grad_checkpointing": grad_checkpointing, "region_head": region_head,
            "contrastive": asdict(contrastive), "weights": asdict(weights), "ot": asdict(ot), "optim": asdict(optim),
            "evaluation": asdict(evaluation),
            "ontology": ontology, "accumulate_batches": accumulate_batches,
        })
        self.weights, self.ot_config, self.optim, self.evaluation = weights, ot, optim, evaluation
        self.ontology = Ontology.load(ontology) if ontology else Ontology.default()
        self.model = EventCLIP(model_name, pretrained=pretrained, lock_image=lock_image, lock_text=lock_text,
                               grad_checkpointing=grad_checkpointing, region_head=region_head)
        self.contrastive = ContrastiveLoss(contrastive)
        n_types = len(self.ontology.type_names)
        self.image_type_head = nn.Linear(self.model.embed_dim, n_types)
        self.text_type_head = nn.Linear(self.model.embed_dim, n_types)
        if weights.event_type == 0:  # DDP fails on trainable parameters that no loss uses
            self.image_type_head.requires_grad_(False)
            self.text_type_head.requires_grad_(False)
        self.hardneg_acc = nn.ModuleDict({k: MeanMetric() for k in NEGATIVE_KINDS})
        self.grounding_acc = MeanMetric()
        self._test_embeddings: list[tuple[Tensor, Tensor]] = []
        self.test_results: dict[str, Any] = {}
        if init_from:
            self._load_init(init_from)
        if accumulate_batches < 1:
            raise ValueError(f"accumulate_batches must be >= 1, got {accumulate_batches}")
        self.accumulate_batches = accumulate_batches
        if accumulate_batches > 1:
            self.automatic_optimization = False
            # Lightning hands `training_step` the loader's iterator, not one batch, when its signature asks for
            # `dataloader_iter`: one call then takes N batches and makes one optimizer step, so every counter and
            # logger sees optimizer steps and no micro-batch is left pending between calls (or in a checkpoint).
            self.training_step = self._accumulated_training_step  # type: ignore[method-assign]

    # ------------------------------------------------------------------ setup
    def _load_init(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.load_state_dict(state.get("state_dict", state), strict=False)
        if unexpected or [m for m in missing if not m.startswith(("hardneg_acc", "grounding_acc"))]:
            raise RuntimeError(f"{path}: checkpoint does not match model {self.hparams.model_name}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def setup(self, stage: str) -> None:
        """Hand the model's tokenizer to the data module and check that image sizes agree."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if getattr(dm, "tokenizer", None) is None:
            dm.tokenizer = self.model.tokenizer
        size = getattr(dm.hparams, "image_size", self.model.image_size)
        if size != self.model.image_size:
            raise ValueError(f"data.image_size={size} but model {self.hparams.model_name} takes "
                             f"{self.model.image_size} px images; set data.image_size: {self.model.image_size}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["eventalign_version"] = __version__

    # ------------------------------------------------------------------ encoding
    def _encode_texts(self, *groups: tuple[Tensor, Tensor]) -> list[Tensor]:
        """Encode every valid text of several padded (…, L) token tensors in one tower call.

        Each distinct token row goes through the tower once (a role-swapped argument list repeats most of the true
        one's phrases); repeats share its embedding, and so their gradients add up as if encoded apart.
        """
        flat = [tokens[mask] for tokens, mask in groups]
        sizes = [f.shape[0] for f in flat]
        emb = None
        if sum(sizes):
            unique, inverse = torch.unique(torch.cat(flat), dim=0, return_inverse=True)
            emb = self.model.encode_text(unique)[inverse]
        out = []
        for (tokens, mask), chunk in zip(groups, emb.split(sizes) if emb is not None else [None] * len(groups)):
            full = tokens.new_zeros((*mask.shape, self.model.embed_dim), dtype=torch.float32)
            if chunk is not None and chunk.numel():
                full = full.to(chunk.dtype)
                full[mask] = chunk
            out.append(full)
        return out

    def _forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        w = self.weights
        use_ot = w.ot > 0 or w.ot_batch > 0 or not self.training
        use_negs = w.hard_negatives or not self.training
        boxes = batch["boxes"] if use_ot else None
        image, regions, region_mask = self.model.encode_image_and_regions(
            batch["images"], boxes, batch["box_mask"] if use_ot else None)
        groups = [(batch["pos_tokens"], batch["pos_mask"])]
        if use_negs:
            groups.append((batch["neg_tokens"], batch["neg_mask"]))
        if use_ot:
            groups.append((batch["arg_tokens"], batch["arg_mask"]))
            if w.ot_contrastive > 0 and (w.ot > 0 or not self.training):
                # (B, Kn, N): a corrupted structure keeps the argument slots of the true one
                neg_arg_mask = batch["neg_arg_mask"][:, :, None] & batch["arg_mask"][:, None, :]
                groups.append((batch["neg_arg_tokens"], neg_arg_mask))
        texts = self._encode_texts(*groups)
        out = {"image": image, "regions": regions, "region_mask": region_mask, "pos": texts[0]}
        if use_negs:
            out["neg"] = texts[1]
        if use_ot:
            out["args"] = texts[2 if use_negs else 1]
            if len(texts) > (3 if use_negs else 2):
                out["neg_args"] = texts[-1]
        return out

    # ------------------------------------------------------------------ losses
    def _losses(self, batch: dict[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
        w = self.weights
        neg = out.get("neg") if w.hard_negatives else None
        loss_c, parts = self.contrastive(out["image"], out["pos"], batch["pos_mask"], neg,
                                         batch["neg_mask"] if neg is not None else None, self.model.logit_scale,
                                         gather=self.training)
        losses = {"contrastive": loss_c, "logit_scale": parts["logit_scale"]}
        total = w.contrastive * loss_c
        if w.ot > 0:
            ot_out = self._ot(batch, out, with_negatives=w.ot_contrastive > 0)
            losses["ot"] = ot_out.loss
            total = total + w.ot * ot_out.loss
        if w.ot_batch > 0:
            c = self.ot_config
            loss_b = ot_contrastive_loss(out["args"], batch["arg_mask"], out["regions"], out["region_mask"],
                                         temperature=w.ot_temperature, gather=self.training, eps=c.eps,
                                         n_iters=c.n_iters, reg_m=c.reg_m, method=c.method, grad=c.grad,
                                         marginals=c.marginals)
            losses["ot_batch"] = loss_b
            total = total + w.ot_batch * loss_b
        if w.event_type > 0:
            target = batch["event_type"]
            logits_i, logits_t = self.image_type_head(out["image"]), self.text_type_head(out["pos"][:, 0])
            if (target >= 0).any():
                loss_t = (F.cross_entropy(logits_i, target, ignore_index=-1)
                          + F.cross_entropy(logits_t, target, ignore_index=-1)) / 2
            else:  # a batch without typed events still uses the heads, as DDP requires of every parameter
                loss_t = 0.0 * (logits_i.sum() + logits_t.sum())
            losses["event_type"] = loss_t
            total = total + w.event_type * loss_t
        losses["loss"] = total
        return losses

    def _ot(self, batch: dict[str, Any], out: dict[str, Tensor], with_negatives: bool) -> Any:
        c, w = self.ot_config, self.weights
        neg = out.get("neg_args") if with_negatives else None
        return ot_alignment_loss(
            out["args"], out["regions"], batch["arg_mask"], out["region_mask"], neg,
            batch["neg_arg_mask"] if neg is not None else None, margin=w.ot_margin,
            contrastive_weight=w.ot_contrastive, distance_weight=w.ot_distance, eps=c.eps, n_iters=c.n_iters,
            reg_m=c.reg_m, method=c.method, grad=c.grad, marginals=c.marginals)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self._forward(batch)
        losses = self._losses(batch, out)
        self._log_train(batch, out, losses)
        return losses["loss"]

    def _accumulated_training_step(self, dataloader_iter: Iterator[tuple[Any, int, int]]) -> None:
        """One optimizer step over the next `accumulate_batches` loader batches, losses over all of them at once."""
        batches = [self._batch_to_device(batch) for batch, _, _ in islice(dataloader_iter, self.accumulate_batches)]
        if not batches:
            raise StopIteration  # the loader is exhausted: Lightning ends the epoch
        opt, sched = self.optimizers(), self.lr_schedulers()
        batch, out, losses = cached_backward(batches, self._forward, self._losses, self, self.manual_backward,
                                             lambda last: opt.toggle_model(sync_grad=last))
        opt.step()  # clipping: on_before_optimizer_step, after AMP unscaling
        opt.zero_grad()
        sched.step()
        self._log_train(batch, out, losses)

    def _batch_to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What the fit loop does to each batch before `training_step`, except when the step takes the iterator
        (the data module's `on_before_batch_transfer` takes off the stream position that resumes the data)."""
        batch = self._on_before_batch_transfer(self.trainer.precision_plugin.convert_input(batch), dataloader_idx=0)
        return self.trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _log_train(self, batch: dict[str, Any], out: dict[str, Tensor], losses: dict[str, Tensor]) -> None:
        bs = batch["images"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        self._log_in_batch_retrieval("train", out, batch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip to `optim.clip_grad_norm`; Lightning calls this after AMP unscaling, in both optimization modes."""
        if self.optim.clip_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.clip_grad_norm, gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------ evaluation
    def _log_in_batch_retrieval(self, stage: str, out: dict[str, Tensor], batch: dict[str, Any]) -> None:
        sims = out["image"].detach() @ out["pos"][:, 0].detach().T
        target = torch.arange(sims.shape[0], device=sims.device)
        bs = sims.shape[0]
        for k in (1, 5):
            # every key on every batch (hit@k is 1 when k >= batch size): under DDP each rank must sync the
            # same keys at epoch end, or the one with a short last batch leaves the others waiting forever
            hit = (sims.topk(min(k, bs), dim=1).indices == target[:, None]).any(1).float().mean()
            self.log(f"{stage}/i2t_hit@{k}", hit, batch_size=bs, sync_dist=stage != "train")

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = self._forward(batch)
        losses = self._losses(batch, out)
        bs = batch["images"].shape[0]
        self.log(f"{stage}/loss", losses["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        self._log_in_batch_retrieval(stage, out, batch)
        correct = hard_negative_correct(out["image"], out["pos"], batch["pos_mask"], out["neg"], batch["neg_mask"])
        for i, kind in enumerate(NEGATIVE_KINDS):
            sel = batch["neg_kinds"] == i
            if sel.any():
                self.hardneg_acc[kind].update(correct[sel].float())
        self._update_grounding(batch, out)
        return out

    def _update_grounding(self, batch: dict[str, Any], out: dict[str, Tensor]) -> None:
        gold_mask = batch["arg_box_mask"] & batch["arg_mask"]
        if not gold_mask.any() or not batch["box_mask"].any():
            return
        c = self.ot_config
        plan = grounding_plan(out["args"], out["regions"], batch["arg_mask"], out["region_mask"],
                              marginals=self.evaluation.grounding_decoder, eps=c.eps, n_iters=c.n_iters,
                              reg_m=c.reg_m, method=c.method)
        _, pred_boxes = ground_union(plan, batch["boxes"], batch["arg_mask"], out["region_mask"],
                                     self.evaluation.grounding_share)
        iou = box_iou(pred_boxes[gold_mask], batch["arg_boxes"][gold_mask]).diagonal()
        self.grounding_acc.update((iou >= self.evaluation.grounding_iou).float())

    def _log_eval_metrics(self, stage: str) -> dict[str, float]:
        # compute() syncs across ranks, so every rank calls it for every metric, updated locally or not
        results = {}
        metrics = {**{f"hardneg_acc/{k}": m for k, m in self.hardneg_acc.items()}, "grounding_acc": self.grounding_acc}
        for name, metric in metrics.items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                value = float(metric.compute())
            if not math.isnan(value):  # NaN: no rank saw a case
                results[name] = value
            metric.reset()
        for k, v in results.items():
            self.log(f"{stage}/{k}", v, sync_dist=False)
        return results

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._eval_step("test", batch)
        self._test_embeddings.append((out["image"].float().cpu(), out["pos"][:, 0].float().cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_embeddings = []

    def on_test_epoch_end(self) -> None:
        metrics = self._log_eval_metrics("test")
        empty = torch.zeros(0, self.model.embed_dim)  # a rank may hold no test batch
        images = self._gather_rows(torch.cat([empty] + [i for i, _ in self._test_embeddings]))
        texts = self._gather_rows(torch.cat([empty] + [t for _, t in self._test_embeddings]))
        retrieval = retrieval_hits(images, texts, self.evaluation.retrieval_k)
        for name, v in retrieval.items():  # the same on every rank: nothing to sync
            self.log(f"test/{name}", v)
        self.test_results = {
            "hardneg_acc": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("hardneg_acc/")},
            "retrieval": retrieval, "grounding_acc": metrics.get("grounding_acc"), "num_samples": len(images),
        }

    def _gather_rows(self, rows: Tensor) -> Tensor:
        """Every rank's rows, rank after rank, on every rank (CPU); ranks may hold different counts, so each pads to
        the largest and the padding is cut off again."""
        if self.trainer.world_size == 1:
            return rows
        rows = rows.to(self.device)  # NCCL gathers device tensors only
        counts = self.all_gather(torch.tensor(rows.shape[0], device=self.device)).view(-1).tolist()
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = self.all_gather(padded)  # (world, max count, ...)
        return torch.cat([g[:n] for g, n in zip(gathered, counts)]).cpu()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "logit_scale" in name or "bias" in name else decay).append(p)
        o = self.optim
        fused = o.fused if o.fused is not None else all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=o.betas, eps=o.eps,
                                fused=fused)
        total = optimizer_steps(self.trainer, self.accumulate_batches)
        warmup = min(o.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def retrieval_hits(images: Tensor, texts: Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   chunk: int = 1024) -> dict[str, float]:
    """Hit rate @k both ways over a paired set (row i of images matches row i of texts).

    A query hits at k when fewer than k candidates score strictly higher than its match, so a tie counts for the
    match and the result does not depend on the order of the rows (DDP gathers them in another order than one
    process reads them). Queries go `chunk` at a time: memory O(chunk * n), not O(n^2).
    """

    def above_match(queries: Tensor, candidates: Tensor, first: int) -> Tensor:
        sims = queries @ candidates.T  # row r's match is candidate first + r
        match = sims[torch.arange(sims.shape[0]), torch.arange(first, first + sims.shape[0])]
        return (sims > match[:, None]).sum(1)

    out: dict[str, float] = {}
    for name, queries, candidates in (("i2t", images, texts), ("t2i", texts, images)):
        above = torch.cat([torch.zeros(0, dtype=torch.long)]
                          + [above_match(queries[i: i + chunk], candidates, i) for i in range(0, len(queries), chunk)])
        out.update({f"{name}_hit@{k}": float((above < k).float().mean()) for k in ks})  # NaN for an empty set
    return out
