"""The training recipe's option groups (`model.optim`, `model.ot`, `model.weights`, `model.evaluation`).

Plain dataclasses so LightningCLI shows every field with its docstring in `align fit --help` and checkpoints store
them as dicts; `align.module.EventAlignModule` takes one of each.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.ot import GradMode, Marginals, Method


@dataclass
class OptimConfig:
    """AdamW with per-step linear warmup then cosine decay to `min_lr_ratio * lr`.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decay of the weight matrices (not of biases, norms or the logit scale).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: optimizer steps of linear warmup from 0 to `lr`.
        min_lr_ratio: learning rate at the end of the cosine decay, as a fraction of `lr`.
        fused: torch's fused AdamW kernel (one kernel for all parameters instead of a loop of small ops). null:
            fused when every trainable parameter is on a CPU or CUDA device, where torch has the kernel.
        clip_grad_norm: clip the global gradient norm to this value (null: no clipping). It works in both modes;
            with `accumulate_batches` > 1 it replaces `trainer.gradient_clip_val`, which Lightning refuses under
            manual optimization.
    """

    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    fused: bool | None = None
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"OptimConfig.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")


@dataclass
class OTConfig:
    """Solver of the OT argument-alignment head (see `align/ot.py`).

    Attributes:
        eps: entropic regularisation of the transport plan.
        n_iters: solver iterations.
        reg_m: marginal relaxation for unbalanced OT, so regions may stay unmatched (null: balanced).
        method: OT solver.
        grad: gradients through the cost only (plan detached: envelope) or through unrolled iterations.
        marginals: "assignment": each argument carries one region's worth of mass and the regions no argument
            names go to a slack row (`align.ot.assignment_plan`), so bystanders neither pull on arguments nor add to
            the distance; "uniform": every region is transported. Needs reg_m null.
    """

    eps: float = 0.1
    n_iters: int = 50
    reg_m: float | None = None
    method: Method = "sinkhorn_stabilized"
    grad: GradMode = "envelope"
    marginals: Marginals = "assignment"

    def __post_init__(self) -> None:
        if self.marginals == "assignment" and self.reg_m is not None:
            raise ValueError("OTConfig: marginals 'assignment' is balanced by construction; set reg_m: null or "
                             "marginals: uniform")


@dataclass
class LossWeights:
    """How much each objective counts. A weight of 0 switches the objective (and its compute) off.

    Attributes:
        contrastive: weight of the image-text contrastive loss.
        hard_negatives: include the sample's K hard negatives as extra columns of the contrastive loss.
        ot: weight of the OT argument-alignment loss (distance of the true structure + its contrastive hinge).
        ot_contrastive: weight of the hinge: true structure closer than role-swapped / replaced ones.
        ot_margin: margin of that hinge.
        ot_distance: weight of the true structure's own OT distance inside the OT loss. Trained from scratch it
            pulls every region towards every argument and collapses them onto one point (grounding at chance);
            0 keeps only the relative terms (the hinge and `ot_batch`).
        ot_batch: weight of the cross-sample OT contrast (`align.losses.ot_contrastive_loss`): a sample's
            arguments must be OT-closer to its own image's regions than to every other image's in the batch
            (gathered across ranks), and the reverse. Weakly supervised, by captions only; it is what makes
            region embeddings discriminative enough to ground arguments.
        ot_temperature: temperature of that contrast over OT distances (which lie in [0, 2]).
        event_type: weight of the event-type heads on the image and the primary text (progressive stage 1).
    """

    contrastive: float = 1.0
    hard_negatives: bool = True
    ot: float = 0.0
    ot_contrastive: float = 1.0
    ot_margin: float = 0.1
    ot_distance: float = 1.0
    ot_batch: float = 0.0
    ot_temperature: float = 0.05
    event_type: float = 0.0

    def __post_init__(self) -> None:
        for name in ("contrastive", "ot", "ot_contrastive", "ot_distance", "ot_batch", "event_type"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {getattr(self, name)}")
        if self.ot_temperature <= 0:
            raise ValueError(f"LossWeights.ot_temperature must be > 0, got {self.ot_temperature}")


@dataclass
class EvalConfig:
    """Evaluation options.

    Attributes:
        retrieval_k: cut-offs of the test-set retrieval hit rates (image->text and text->image).
        grounding_iou: IoU with the gold box at which a grounded argument counts as correct.
        grounding_decoder: marginals of the plan an argument's region is read from (`align.ot.grounding_plan`):
            "assignment" (one region per argument, the rest to a slack row) or "uniform" (every region spent).
        grounding_share: an argument's box is the union of the regions carrying at least this share of its top
            region's mass (`align.grounding.ground_union`), so a plural argument spans its instances; 1: the top
            region only.
    """

    retrieval_k: tuple[int, ...] = (1, 5, 10)
    grounding_iou: float = 0.5
    grounding_decoder: Marginals = "assignment"
    grounding_share: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 < self.grounding_share <= 1.0:
            raise ValueError(f"EvalConfig.grounding_share must be in (0, 1], got {self.grounding_share}")
