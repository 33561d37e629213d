"""Gradient accumulation that keeps in-batch negatives meaningful: a feature cache in the style of GradCache
(Gao et al. 2021) and open_clip's `--accum-freq`.

With plain accumulation each micro-batch's contrastive loss contrasts only its own B samples, so N micro-batches
do not train like one batch of N*B. Here every loss sees all N micro-batches at once, while activations are only
ever held for one micro-batch:

1. encode every micro-batch without grad and concatenate the representations (the RNG state before each pass is
   kept; BatchNorm running statistics are put back, so the re-encode below updates them once, as usual);
2. compute the losses on the whole set with the representations as leaf tensors, and take the gradient with
   respect to them and to the parameters that the losses use directly (logit scale, type heads);
3. re-encode each micro-batch with grad under its saved RNG state (same dropout masks) and backpropagate
   sum(rep * d loss / d rep); the direct parameters' gradients join the last micro-batch's backward.

The parameter gradients are those of one backward pass over the concatenated batch, at the cost of one more
forward pass. `align.module.EventAlignModule(accumulate_batches=N)` drives it from Lightning; `optimizer_steps`
gives such a run's schedule length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Batch = dict[str, Any]
Encode = Callable[[Batch], dict[str, Tensor]]
LossFn = Callable[[Batch, dict[str, Tensor]], dict[str, Tensor]]


def concat_batches(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Join micro-batches (or their encoder outputs) along the sample axis: tensors by `torch.cat` (the batch
    contract pads every field to fixed sizes, so only dim 0 differs), lists end to end."""
    out: dict[str, Any] = {}
    for key, first in batches[0].items():
        values = [b[key] for b in batches]
        if isinstance(first, Tensor):
            out[key] = torch.cat(values)
        elif isinstance(first, list):
            out[key] = [x for v in values for x in v]
        else:
            raise TypeError(f"cannot concatenate batch field {key!r} of type {type(first).__name__}")
    return out


class RngState:
    """The torch RNG state (CPU, and the CUDA device's when on one) at one point, to replay random ops exactly."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None and self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextmanager
def kept_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Put BatchNorm running statistics back after the block: the no-grad pass must leave them as they were."""
    saved = [(buf, buf.clone()) for m in module.modules() if isinstance(m, _BatchNorm)
             for buf in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def cached_backward(
    batches: Sequence[Batch],
    encode: Encode,
    loss_fn: LossFn,
    module: nn.Module,
    backward: Callable[[Tensor], None],
    sync: Callable[[bool], AbstractContextManager[Any]],
) -> tuple[Batch, dict[str, Tensor], dict[str, Tensor]]:
    """Add to the `.grad` of `module`'s trainable parameters the gradient of `loss_fn` over all `batches` together.

    Args:
        batches: the micro-batches, on the module's device.
        encode: batch -> dict of representations (floating tensors get gradients; others, e.g. masks, are kept).
        loss_fn: (concatenated batch, concatenated representations) -> dict of losses with the total in `"loss"`.
        module: the module whose parameters `encode` and `loss_fn` use.
        backward: runs the backward pass of a scalar (Lightning's `manual_backward`, so AMP loss scaling applies
            once, to the surrogate losses; the gradients of step 2 are taken unscaled in fp32).
        sync: `sync(last)` is entered around each micro-batch's re-encode and backward; under DDP it must block the
            gradient all-reduce unless `last` is True.

    Returns:
        The concatenated batch, the detached concatenated representations and the detached losses.
    """
    device = next(module.parameters()).device
    states, parts = [], []
    for batch in batches:
        states.append(RngState(device))
        with torch.no_grad(), kept_norm_statistics(module):
            parts.append(encode(batch))
    after = RngState(device)

    full = concat_batches(batches)
    reps = {k: v.detach().float().requires_grad_() if v.is_floating_point() else v
            for k, v in concat_batches(parts).items()}
    leaves = [k for k, v in reps.items() if v.requires_grad]
    losses = loss_fn(full, reps)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(losses["loss"], [reps[k] for k in leaves] + params, allow_unused=True)
    sizes = [next(iter(p.values())).shape[0] for p in parts]
    rep_grads = {k: g.split(sizes) for k, g in zip(leaves, grads) if g is not None}
    direct = [(p, g) for p, g in zip(params, grads[len(leaves):]) if g is not None]

    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with sync(last):
            states[i].restore()
            out = encode(batch)
            terms = [(out[k].float() * g[i]).sum() for k, g in rep_grads.items() if out[k].requires_grad]
            if last:
                terms += [(p.float() * g.float()).sum() for p, g in direct]
            if terms:
                backward(torch.stack(terms).sum())
    after.restore()  # the RNG continues as after one pass over the micro-batches
    return full, {k: v.detach() for k, v in reps.items()}, {k: v.detach() for k, v in losses.items()}


def optimizer_steps(trainer: L.Trainer, accumulate_batches: int) -> int:
    """Optimizer steps of a run (the length of its learning-rate schedule) when each takes `accumulate_batches`
    loader batches (an epoch's last step, fewer): under manual optimization Lightning's `estimated_stepping_batches`
    counts loader batches, except where `max_steps`, which counts optimizer steps, is what ends the run."""
    total = trainer.estimated_stepping_batches  # loads the train loader if needed: num_training_batches is known
    if accumulate_batches > 1 and trainer.max_epochs not in (None, -1) and math.isfinite(trainer.num_training_batches):
        total = math.ceil(trainer.num_training_batches / accumulate_batches) * max(trainer.max_epochs, 1)
        if trainer.max_steps != -1:
            total = min(total, trainer.max_steps)
    return max(1, int(total))
