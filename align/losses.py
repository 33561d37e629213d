"""Image-text contrastive losses with several positives and hard negatives per image, correct under DDP.

Every image is scored against the columns {every gathered image's positives, its own hard negatives (or, with
`use_negatives_of_others`, every gathered image's hard negatives)}; its own positives are the targets. Every
local positive text is scored against every gathered image (text -> image). As in open_clip's
`local_loss=True, gather_with_grad=True`, each rank computes the loss for its local rows only, against columns
all-gathered with gradient. The per-rank loss is normalised by (global row count / world size), so the mean of
the per-rank losses equals the single-process loss on the full batch, and DDP's gradient averaging gives the
parameters exactly the full-batch gradient (the gradient on a rank's local embeddings is world_size times the
full-batch one before that averaging). Without an initialised process group it is a plain single-process loss.

Variants (per row; `eps` is the label smoothing, spread uniformly over the row's valid columns):
- `ce`: InfoNCE. `multi_positive="logsumexp"` (MIL-NCE): -log(sum_{pos} p_j); with one positive it is the
  usual cross-entropy. `multi_positive="primary"`: the first valid positive is the target and the image's other
  positives are left out of the softmax (they are neither target nor negative).
  With smoothing: (1 - eps) * that - eps * mean_{valid} log p_j (equals torch's `label_smoothing`).
- `kl`: KL(q || softmax) with q = (1 - eps) * uniform(positives) + eps * uniform(valid columns).
- `bce`: SigLIP sigmoid loss, sum over the row's valid columns of BCE(scale * sim + bias, y), y = 1 for the
  image's positives and 0 otherwise (smoothed to 1 - eps/2 and eps/2); `bias` is learnable or fixed.

`ot_contrastive_loss` is the fine-grained counterpart: InfoNCE over OT distances between every sample's argument
set and every (gathered) image's region set, with the same gather-with-gradient and normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from align.ot import GradMode, Marginals, Method, pairwise_ot_distance

Variant = Literal["ce", "bce", "kl"]
MultiPositive = Literal["logsumexp", "primary"]


@dataclass
class ContrastiveLossConfig:
    """Options of `ContrastiveLoss`; see the module docstring for what each variant computes.

    Attributes:
        hard_negative_weight: each hard-negative column counts as this many negatives (ce / kl: log of it added to
            its logit; bce: its term multiplied by it); 1 = a plain column. Up-weights the confusable texts
            (role swaps, type swaps) against the easy in-batch captions.
    """

    variant: Variant = "ce"
    label_smoothing: float = 0.0
    max_logit_scale: float = 100.0
    use_negatives_of_others: bool = False
    multi_positive: MultiPositive = "logsumexp"
    symmetric: bool = True  # total = (i2t + t2i) / 2; False: i2t only
    bias_init: float = -10.0  # bce only, SigLIP's init
    learn_bias: bool = True  # bce only
    hard_negative_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.hard_negative_weight > 0:
            raise ValueError(f"ContrastiveLossConfig.hard_negative_weight must be > 0, got {self.hard_negative_weight}")
        if self.variant not in ("ce", "bce", "kl"):
            raise ValueError(f"ContrastiveLossConfig.variant must be 'ce', 'bce' or 'kl', got {self.variant!r}")
        if self.multi_positive not in ("logsumexp", "primary"):
            raise ValueError(f"ContrastiveLossConfig.multi_positive must be 'logsumexp' or 'primary', "
                             f"got {self.multi_positive!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"ContrastiveLossConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_logit_scale <= 0:
            raise ValueError(f"ContrastiveLossConfig.max_logit_scale must be > 0, got {self.max_logit_scale}")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's slice.

    Written here rather than `torch.distributed.nn.functional.all_gather` (deprecated in torch 2.x) so that it
    works on any backend (all_reduce only, no reduce_scatter / all_to_all).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]  # type: ignore[attr-defined]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return torch.cat(out)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = ctx.rank * ctx.rows  # type: ignore[attr-defined]
        return grad[start:start + ctx.rows]  # type: ignore[attr-defined]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _pad(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Zero/False-pad the leading dims of `x` up to `sizes` (all_gather needs equal shapes on every rank)."""
    pad: list[int] = []
    for dim in reversed(range(x.dim())):
        pad += [0, sizes[dim] - x.shape[dim]] if dim < len(sizes) else [0, 0]
    return F.pad(x, pad) if any(pad) else x


def _gather_nograd(x: Tensor) -> Tensor:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _Batch(NamedTuple):
    """The global batch as seen by one rank; `offset` is the global index of this rank's first image."""

    image: Tensor
    positives: Tensor
    positive_mask: Tensor
    negatives: Tensor | None
    negative_mask: Tensor | None
    offset: int
    world_size: int


def _gather_batch(image: Tensor, positives: Tensor, positive_mask: Tensor, negatives: Tensor, negative_mask: Tensor,
                  with_negatives: bool, gather: bool = True) -> _Batch:
    """All-gather (with gradient) the images, positives and, if asked, negatives of every rank.

    Ranks may hold different B, P and K: tensors are padded to the largest, gathered, and padded rows dropped.
    """
    if not gather or not _distributed():
        return _Batch(image, positives, positive_mask, negatives if with_negatives else None,
                      negative_mask if with_negatives else None, 0, 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = _gather_nograd(torch.tensor([[image.shape[0], positives.shape[1], negatives.shape[1]]],
                                        device=image.device)).tolist()
    b_max, p_max, k_max = (max(s[i] for s in sizes) for i in range(3))
    keep = torch.cat([torch.arange(b, device=image.device) + r * b_max for r, (b, _, _) in enumerate(sizes)])

    def gather(x: Tensor, shape: tuple[int, ...], grad: bool) -> Tensor:
        x = _pad(x, shape)
        out = _GatherWithGrad.apply(x) if grad else _gather_nograd(x.to(torch.uint8)).bool()
        return out[keep]

    g_neg = g_neg_mask = None
    if with_negatives and k_max > 0:
        g_neg = gather(negatives, (b_max, k_max), True)
        g_neg_mask = gather(negative_mask, (b_max, k_max), False)
    elif with_negatives:
        n = keep.shape[0]
        g_neg, g_neg_mask = negatives.new_zeros(n, 0, image.shape[1]), negative_mask.new_zeros(n, 0)
    return _Batch(gather(image, (b_max,), True), gather(positives, (b_max, p_max), True),
                  gather(positive_mask, (b_max, p_max), False), g_neg, g_neg_mask,
                  sum(s[0] for s in sizes[:rank]), world)


def _check_inputs(image: Tensor, positives: Tensor, positive_mask: Tensor, negatives: Tensor,
                  negative_mask: Tensor) -> None:
    """Raise a ValueError naming the argument and rows that are wrong, before any collective is entered."""
    if image.dim() != 2:
        raise ValueError(f"ContrastiveLoss: image must be (B, D), got shape {tuple(image.shape)}")
    b, d = image.shape
    for name, emb, mask in (("positives", positives, positive_mask), ("negatives", negatives, negative_mask)):
        if emb.dim() != 3 or emb.shape[0] != b or emb.shape[2] != d:
            raise ValueError(f"ContrastiveLoss: {name} must be (B={b}, N, D={d}), got shape {tuple(emb.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(emb.shape[:2]):
            raise ValueError(f"ContrastiveLoss: {name} mask must be a bool tensor of shape {tuple(emb.shape[:2])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    empty = (~positive_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"ContrastiveLoss: image rows {empty} have no positive text (positive_mask all false); "
                         "every image needs at least one")


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision embeddings (autocast) are upcast: exp/log-softmax of scaled logits need fp32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _first_true(mask: Tensor) -> Tensor:
    """Index of the first True along the last dim (argmax returns the first maximum)."""
    return mask.to(torch.uint8).argmax(dim=-1)


class ContrastiveLoss(nn.Module):
    """Image <-> text contrastive loss with several positives and hard negatives per image (see module doc)."""

    def __init__(self, config: ContrastiveLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or ContrastiveLossConfig()
        bias = torch.tensor(float(self.config.bias_init))
        if self.config.variant == "bce" and self.config.learn_bias:
            self.bias = nn.Parameter(bias)
        else:  # fixed bias for bce; None (unused) for ce and kl
            self.register_buffer("bias", bias if self.config.variant == "bce" else None)

    def _row_loss(self, logits: Tensor, valid: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Per-row loss; `valid` marks the row's columns, `target` (a subset of valid) its positives; `weight`
        (bce only) scales each column's term."""
        eps = self.config.label_smoothing
        if self.config.variant == "bce":
            y = target.to(logits.dtype) * (1.0 - eps) + eps / 2
            bce = F.binary_cross_entropy_with_logits(logits + self.bias, y, reduction="none")
            return torch.where(valid, bce if weight is None else bce * weight, 0.0).sum(dim=1)
        logp = torch.where(valid, torch.log_softmax(logits.masked_fill(~valid, -math.inf), dim=1), 0.0)
        n_valid = valid.sum(dim=1)
        if self.config.variant == "ce":
            pos = -logp.masked_fill(~target, -math.inf).logsumexp(dim=1)
            return (1.0 - eps) * pos - eps * logp.sum(dim=1) / n_valid if eps else pos
        tgt, val = target.to(logits.dtype), valid.to(logits.dtype)
        q = (1.0 - eps) * tgt / tgt.sum(dim=1, keepdim=True) + eps * val / n_valid[:, None]
        return torch.where(valid, torch.xlogy(q, q) - q * logp, 0.0).sum(dim=1)

    def forward(self, image: Tensor, positives: Tensor, positive_mask: Tensor, negatives: Tensor | None,
                negative_mask: Tensor | None, logit_scale: Tensor,
                gather: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for this rank's rows and {"i2t", "t2i", "logit_scale", "bias" (bce)} (detached) for logging.

        image (B, D) and texts (B, P, D) / (B, K, D) are L2-normalised embeddings; masks are bool (B, P) / (B, K);
        negatives may be None or have K = 0; logit_scale is the model's log-space parameter. `gather=False` keeps the
        loss rank-local (evaluation, where ranks may see different numbers of batches and must not wait on each other).
        """
        if negatives is None:
            negatives = image.new_zeros(image.shape[0], 0, image.shape[1])
            negative_mask = torch.zeros(image.shape[0], 0, dtype=torch.bool, device=image.device)
        elif negative_mask is None:
            raise ValueError("ContrastiveLoss: negative_mask is required when negatives are given")
        _check_inputs(image, positives, positive_mask, negatives, negative_mask)
        cfg = self.config
        image, positives, negatives = map(_at_least_fp32, (image, positives, negatives))
        scale = _at_least_fp32(logit_scale).exp().clamp(max=cfg.max_logit_scale)
        g = _gather_batch(image, positives, positive_mask, negatives, negative_mask, cfg.use_negatives_of_others,
                          gather)
        b, n_global = image.shape[0], g.image.shape[0]
        rows = torch.arange(b, device=image.device) + g.offset

        # image -> text: columns are every gathered positive, then the hard negatives.
        pos_valid = g.positive_mask.flatten()
        owner = torch.arange(n_global, device=image.device).repeat_interleave(g.positive_mask.shape[1])
        target = (owner[None] == rows[:, None]) & pos_valid[None]
        valid = pos_valid[None].expand(b, -1)
        if cfg.variant == "ce" and cfg.multi_positive == "primary":
            primary = torch.zeros_like(target).scatter_(1, _first_true(target)[:, None], True)
            valid, target = valid & ~(target & ~primary), primary
        sims = [image @ g.positives.flatten(0, 1).T]
        if g.negatives is not None:
            sims.append(image @ g.negatives.flatten(0, 1).T)
            neg_valid = g.negative_mask.flatten()[None].expand(b, -1)
        else:
            sims.append(torch.einsum("bd,bkd->bk", image, negatives))
            neg_valid = negative_mask
        n_pos = sims[0].shape[1]
        logits = scale * torch.cat(sims, dim=1)
        valid = torch.cat([valid, neg_valid], dim=1)
        target = torch.cat([target, torch.zeros_like(neg_valid)], dim=1)
        weight = None
        if cfg.hard_negative_weight != 1.0:
            is_neg = torch.arange(logits.shape[1], device=logits.device) >= n_pos
            if cfg.variant == "bce":
                weight = torch.where(is_neg, cfg.hard_negative_weight, 1.0).to(logits.dtype)
            else:
                logits = logits + is_neg.to(logits.dtype) * math.log(cfg.hard_negative_weight)
        i2t = self._row_loss(logits, valid, target, weight).sum() / (n_global / g.world_size)

        # text -> image: each local positive against every gathered image.
        text_owner = positive_mask.nonzero()[:, 0] + g.offset
        t_logits = scale * positives[positive_mask] @ g.image.T
        t_target = torch.arange(n_global, device=image.device)[None] == text_owner[:, None]
        t2i = self._row_loss(t_logits, torch.ones_like(t_target), t_target).sum()
        t2i = t2i / (g.positive_mask.sum() / g.world_size)

        loss = (i2t + t2i) / 2 if cfg.symmetric else i2t
        parts = {"i2t": i2t.detach(), "t2i": t2i.detach(), "logit_scale": scale.detach()}
        if self.bias is not None:
            parts["bias"] = self.bias.detach()
        return loss, parts


def hard_negative_correct(image: Tensor, positives: Tensor, positive_mask: Tensor, negatives: Tensor,
                          negative_mask: Tensor) -> Tensor:
    """(B, K) bools: sim(image, primary positive) > sim(image, negative k); False where negative_mask is False.

    The primary positive is the first valid one, the description the hard negatives are derived from.
    Accuracy = result.sum() / negative_mask.sum().
    """
    _check_inputs(image, positives, positive_mask, negatives, negative_mask)
    primary = positives[torch.arange(image.shape[0], device=image.device), _first_true(positive_mask)]
    pos_sim = (image * primary).sum(dim=-1)
    neg_sim = torch.einsum("bd,bkd->bk", image, negatives)
    return (pos_sim[:, None] > neg_sim) & negative_mask


def _gather_sets(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, int]:
    """All-gather padded sets (B, N, D) with gradient and their (B, N) masks; ranks may differ in B and N.

    Returns the gathered sets, their masks and the global index of this rank's first row.
    """
    sizes = _gather_nograd(torch.tensor([list(mask.shape)], device=emb.device)).tolist()
    b_max, n_max = (max(s[i] for s in sizes) for i in range(2))
    keep = torch.cat([torch.arange(b, device=emb.device) + r * b_max for r, (b, _) in enumerate(sizes)])
    g_emb = _GatherWithGrad.apply(_pad(emb, (b_max, n_max)))[keep]
    g_mask = _gather_nograd(_pad(mask, (b_max, n_max)).to(torch.uint8)).bool()[keep]
    return g_emb, g_mask, sum(s[0] for s in sizes[:dist.get_rank()])


def ot_contrastive_loss(arg_emb: Tensor, arg_mask: Tensor, region_emb: Tensor, region_mask: Tensor, *,
                        temperature: float = 0.05, gather: bool = True, eps: float = 0.1, n_iters: int = 50,
                        reg_m: float | None = None, method: Method = "sinkhorn_stabilized",
                        grad: GradMode = "envelope", marginals: Marginals = "uniform") -> Tensor:
    """Weakly supervised fine-grained contrast: a sample's arguments are OT-closer to its own image's regions than
    to any other image's in the batch, and an image's regions closer to its own arguments than to other samples'.

    arg_emb (B, N, D) / region_emb (B, M, D) with bool masks (B, N) / (B, M). D[i, j] = OT distance of sample i's
    arguments to image j's regions (`pairwise_ot_distance`); logits -D / temperature; InfoNCE on the diagonal,
    arguments->image and image->arguments averaged. Only captions supervise it (no gold boxes): unlike the plain
    distance it cannot be lowered by collapsing every embedding onto one point. Samples without arguments or regions
    are neither rows nor targets (an image without regions is no candidate; one without arguments still is).
    Under DDP the sets are all-gathered with gradient and the loss is normalised as in `ContrastiveLoss` (the mean
    over ranks equals the single-process loss on the full batch). 0 (with a graph) when no sample qualifies.
    """
    if temperature <= 0:
        raise ValueError(f"ot_contrastive_loss: temperature must be > 0, got {temperature}")
    arg_mask, region_mask = arg_mask.bool(), region_mask.bool()
    arg_emb, region_emb = _at_least_fp32(arg_emb), _at_least_fp32(region_emb)
    solver = {"eps": eps, "n_iters": n_iters, "reg_m": reg_m, "method": method, "grad": grad, "marginals": marginals}
    if gather and _distributed():
        g_args, g_arg_mask, offset = _gather_sets(arg_emb, arg_mask)
        g_regions, g_region_mask, _ = _gather_sets(region_emb, region_mask)
        world = dist.get_world_size()
        d_ar = pairwise_ot_distance(arg_emb, arg_mask, g_regions, g_region_mask, **solver)
        d_ra = pairwise_ot_distance(g_args, g_arg_mask, region_emb, region_mask, **solver).T
    else:
        g_arg_mask, g_region_mask, offset, world = arg_mask, region_mask, 0, 1
        d_ar = pairwise_ot_distance(arg_emb, arg_mask, region_emb, region_mask, **solver)
        d_ra = d_ar.T
    rows = torch.arange(arg_emb.shape[0], device=arg_emb.device)
    own = rows + offset

    def nce(dist_: Tensor, candidates: Tensor) -> Tensor:
        # finite fill, not -inf: a row with no candidate stays finite and so do its (unused) gradients
        logits = (-dist_ / temperature).masked_fill(~candidates[None], -1e4)
        return -torch.log_softmax(logits, dim=1)[rows, own]

    valid = arg_mask.any(1) & region_mask.any(1)
    per_row = (nce(d_ar, g_region_mask.any(1)) + nce(d_ra, g_arg_mask.any(1))) / 2
    n_global = (g_arg_mask.any(1) & g_region_mask.any(1)).sum()
    return torch.where(valid, per_row, 0.0).sum() / (n_global / world).clamp_min(1 / world)
