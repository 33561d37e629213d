"""Boxes from an OT grounding plan: one region per argument, or the union of the regions it spreads over.

`align.ot.ground` gives each argument the region carrying most of its mass. That cannot ground a plural argument
("protesters", "two rifles"): its referent is several objects, its gold box their union, and a detector (or
EventWorld's annotation) proposes one box per object, never the group. The plan already says when an argument
refers to several regions: under `assignment` marginals each argument carries one region's worth of mass, and an
argument whose phrase matches two instances equally splits it between them, while a singular one concentrates it
on one region. `ground_union` reads that: an argument's box is the union of the regions carrying at least `share`
times the mass of its top region (`share=1`: exactly `align.ot.ground`).

On EventWorld's test split (`benchmarks/grounding_errors.py`, the 400-step demo model) no single candidate box
reaches IoU 0.5 with the gold box of 7% of the arguments, all of them plural, which caps one-region decoding at
0.93; ``share=0.7`` (`EvalConfig.grounding_share`'s default, picked on the validation split) grounds most of them,
at a small cost on singular arguments whose mass is split between look-alikes: 0.717 -> 0.763 overall for the
same checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grounded_regions(plan: Tensor, arg_mask: Tensor, region_mask: Tensor, share: float = 0.5) -> Tensor:
    """(B, N, M) bool: the regions each argument is grounded in, from the plan (B, N, M).

    Always its top region (`align.ot.ground`'s pick), plus every real region carrying at least `share` times the
    top region's mass. No region for padded arguments or samples without regions.
    """
    if plan.dim() != 3:
        raise ValueError(f"plan must be (B, N, M), got {tuple(plan.shape)}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    region_mask, arg_mask = region_mask.bool(), arg_mask.bool()
    scores = plan.masked_fill(~region_mask[:, None, :], -torch.inf)
    top = scores.argmax(2, keepdim=True)
    picked = torch.zeros_like(region_mask[:, None, :].expand_as(plan)).scatter(2, top, True)
    if share < 1.0:
        picked |= (scores >= share * scores.gather(2, top)) & (scores > 0)
    return picked & (arg_mask & region_mask.any(1, keepdim=True))[:, :, None]


def union_boxes(picked: Tensor, boxes: Tensor) -> Tensor:
    """(B, N, 4) bounding box of each argument's picked regions (picked (B, N, M), boxes (B, M, 4) xyxy); zeros for
    an argument with none."""
    if picked.dim() != 3 or tuple(boxes.shape) != (picked.shape[0], picked.shape[2], 4):
        raise ValueError(f"picked (B, N, M) and boxes (B, M, 4) expected, got {tuple(picked.shape)} and "
                         f"{tuple(boxes.shape)}")
    b = boxes[:, None].to(torch.promote_types(boxes.dtype, torch.float32))
    sel = picked[..., None]
    lo = torch.where(sel, b[..., :2], torch.inf).amin(2)
    hi = torch.where(sel, b[..., 2:], -torch.inf).amax(2)
    found = picked.any(2, keepdim=True)
    return torch.where(found, torch.cat([lo, hi], -1), 0.0).to(boxes.dtype)


def ground_union(plan: Tensor, boxes: Tensor, arg_mask: Tensor, region_mask: Tensor,
                 share: float = 0.5) -> tuple[Tensor, Tensor]:
    """`align.ot.ground` for arguments that may name several regions: (B, N, M) picked regions and the (B, N, 4)
    union box of each argument's picks (zeros where it has none). ``share=1`` picks the top region only."""
    if plan.dim() != 3 or tuple(boxes.shape) != (plan.shape[0], plan.shape[2], 4):
        raise ValueError(f"plan (B, N, M) and boxes (B, M, 4) expected, got {tuple(plan.shape)} and "
                         f"{tuple(boxes.shape)}")
    picked = grounded_regions(plan, arg_mask, region_mask, share)
    return picked, union_boxes(picked, boxes)
