"""Batched, masked optimal transport between argument nodes and image regions (CLIP-Event's OT loss).

Every sample in a batch has its own number of arguments (rows) and regions (columns); padding is described by
boolean masks, so one call solves B problems with no Python loop over samples. Three solvers:

* ``"sinkhorn_stabilized"`` (default): entropic Sinkhorn with log-domain potentials absorbed into the kernel every
  ``absorb_every`` iterations (Schmitzer 2019); between absorptions it runs cheap scaling updates, which is what makes
  it fast on CPU. Its iterates equal ``"sinkhorn_log"``'s. When a cheap bound on the kernel's dynamic range
  ((max - min cost over the batch, padding counted as 0) / eps) exceeds ``_SAFE_SPAN`` (30 in float32, 300 in
  float64), scaling updates could underflow, and it runs ``"sinkhorn_log"`` instead (same result, slower).
* ``"sinkhorn_log"``: plain log-domain Sinkhorn (logsumexp updates); slower, the reference for tiny ``eps``.
* ``"ipot"``: inexact proximal point OT (Xie et al. 2019); ``eps`` is the proximal step beta and the plan converges
  to the exact (unregularised) OT plan as ``n_iters`` grows.

With ``reg_m`` set, the Sinkhorn solvers solve KL-relaxed unbalanced OT (POT's ``sinkhorn_unbalanced`` with
``reg_type="kl"``), so regions may stay unmatched. The distance returned is the linear cost ``<P, C>`` (what POT's
``sinkhorn2`` / ``sinkhorn_unbalanced2`` return).

Marginals of the OT head and of grounding (`grounding_plan`, then `ground`): with ``"uniform"`` ones every region
must be transported, so the regions no argument names (bystanders, a truncated argument's object) are absorbed by
some argument, in training (a pull towards them) and in grounding (a wrong pick), and an argument is spread over
several regions when regions outnumber arguments. ``"assignment"`` (`assignment_plan`) gives each argument one
region's worth of mass and sends the rest to a slack row: an entropic one-to-one assignment (the optimal
assignment as ``eps`` -> 0).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Method = Literal["sinkhorn_stabilized", "sinkhorn_log", "ipot"]
GradMode = Literal["envelope", "unrolled"]
Marginals = Literal["uniform", "assignment"]
METHODS = ("sinkhorn_stabilized", "sinkhorn_log", "ipot")
GRAD_MODES = ("envelope", "unrolled")
MARGINALS = ("uniform", "assignment")


# Largest log-kernel range for which scaling updates stay far from under/overflow (plan ratios >= exp(-2 span)).
_SAFE_SPAN = {torch.float32: 30.0, torch.float64: 300.0}
_FILL = -1e4  # log kernel on masked pairs


class OTResult(NamedTuple):
    distance: Tensor  # (B,) linear transport cost <P, C>; 0 for empty samples
    plan: Tensor  # (B, N, M) transport plan; zero on masked rows/columns and for empty samples


class OTLossOutput(NamedTuple):
    loss: Tensor  # scalar
    d_true: Tensor  # (B,) OT distance of the true structure
    d_neg: Tensor  # (B, K) OT distance of each negative (0 where it does not exist)
    plan: Tensor  # (B, N, M) plan of the true structure, for grounding


class _Problem(NamedTuple):
    cost: Tensor  # (B, N, M) cost, 0 on invalid pairs
    log_k: Tensor  # (B, N, M) finite log kernel
    la: Tensor  # (B, N) finite log row marginal (0 on masked rows)
    lb: Tensor  # (B, M)
    a: Tensor  # (B, N) row marginal, 0 on masked rows
    b: Tensor  # (B, M)
    rows: Tensor  # (B, N) bool effective row mask (all True for an empty sample's dummy problem)
    cols: Tensor  # (B, M) bool
    fi: float  # reg_m / (reg_m + eps); 1 for balanced OT


def solve_ot(
    cost: Tensor,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float = 0.1,
    n_iters: int = 100,
    tol: float | None = 1e-6,
    reg_m: float | None = None,
    method: Method = "sinkhorn_stabilized",
    grad: GradMode = "envelope",
    check_every: int = 10,
    absorb_every: int = 10,
    ipot_inner: int = 1,
) -> OTResult:
    """Solve B masked entropic (or proximal) OT problems at once.

    cost (B, N, M); row_mask (B, N) / col_mask (B, M) mark real arguments / regions (default: all real); a (B, N) and
    b (B, M) are marginals (default: uniform over the real entries; entries <= 0 count as masked). ``tol``: stop once
    the L1 change of the plan over ``check_every`` iterations is below it for every sample (one host sync per check);
    ``tol=None`` or 0 runs exactly ``n_iters`` iterations (benchmark mode, no syncs). ``reg_m``: KL marginal
    relaxation (tau) for unbalanced OT; None = balanced.

    Gradients: ``grad="envelope"`` (default) runs the solver without autograd and returns ``distance = <P, C>`` with
    the plan P detached, so d distance / d cost = P (envelope theorem for the regularised objective; no gradient to
    the marginals, cheap in memory). ``grad="unrolled"`` backpropagates through every iteration: exact gradients of
    the computed value w.r.t. cost and marginals, memory O(n_iters * B * N * M).

    Samples with no real row or no real column get distance 0 and an all-zero plan, with zero (finite) gradients.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_iters < 1 or check_every < 1 or absorb_every < 1 or ipot_inner < 1:
        raise ValueError("n_iters, check_every, absorb_every and ipot_inner must be >= 1")
    if reg_m is not None and not reg_m > 0:
        raise ValueError(f"reg_m must be > 0 or None, got {reg_m}")
    if reg_m is not None and method == "ipot":
        raise ValueError("method='ipot' solves balanced OT only; use a Sinkhorn method with reg_m")
    dtype = torch.promote_types(cost.dtype, torch.float32)
    cost = cost.to(dtype)
    bsz, n, m = cost.shape
    rows = _mask(row_mask, (bsz, n), "row_mask", cost.device)
    cols = _mask(col_mask, (bsz, m), "col_mask", cost.device)
    if a is not None:
        rows = rows & (_marginal(a, (bsz, n), "a") > 0)
    if b is not None:
        cols = cols & (_marginal(b, (bsz, m), "b") > 0)
    ok = rows.any(1) & cols.any(1)
    pairs = rows[:, :, None] & cols[:, None, :]
    cost = torch.where(pairs, cost, 0.0)  # padding may hold anything, NaN included

    with torch.set_grad_enabled(grad == "unrolled" and torch.is_grad_enabled()):
        prob = _prepare(cost, pairs, rows, cols, ok, a, b, eps, reg_m)
        tol_ = tol if tol else None
        if cost.numel() == 0:
            plan = torch.zeros_like(cost)
        elif method == "sinkhorn_stabilized" and _span_bound(prob, eps) <= _SAFE_SPAN.get(dtype, 30.0):
            plan = _sinkhorn_stabilized(prob, n_iters, tol_, check_every, absorb_every)
        elif method == "ipot":
            plan = _ipot(prob, n_iters, tol_, check_every, ipot_inner)
        else:
            plan = _sinkhorn_log(prob, n_iters, tol_, check_every)
        plan = plan * ok[:, None, None].to(dtype)
    if grad == "envelope":
        plan = plan.detach()
    return OTResult((plan * cost).sum((1, 2)), plan)


def _mask(mask: Tensor | None, shape: tuple[int, int], name: str, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.bool)


def _marginal(w: Tensor, shape: tuple[int, int], name: str) -> Tensor:
    if tuple(w.shape) != shape:
        raise ValueError(f"marginal {name} must have shape {shape}, got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"marginal {name} must be finite and non-negative")
    return w


def _prepare(
    cost: Tensor, pairs: Tensor, rows: Tensor, cols: Tensor, ok: Tensor, a: Tensor | None, b: Tensor | None,
    eps: float, reg_m: float | None,
) -> _Problem:
    """Replace empty samples by a harmless dummy problem (all-real uniform) so no NaN can arise; masked out later.

    The log kernel is _FILL on masked pairs: finite (no NaN in logsumexp gradients) yet exp() of it is 0.
    """
    rows = rows | ~ok[:, None]
    cols = cols | ~ok[:, None]
    pairs = pairs | ~ok[:, None, None]
    a = _fill_marginal(a, rows, ok, cost.dtype)
    b = _fill_marginal(b, cols, ok, cost.dtype)
    la = torch.log(torch.where(rows, a, torch.ones_like(a)))
    lb = torch.log(torch.where(cols, b, torch.ones_like(b)))
    log_k = -cost / eps
    if reg_m is None:
        fi = 1.0
    else:
        fi = reg_m / (reg_m + eps)
        log_k = log_k + la[:, :, None] + lb[:, None, :]  # KL prior a b^T, as POT's reg_type="kl"
    return _Problem(cost, log_k.masked_fill(~pairs, _FILL), la, lb, a, b, rows, cols, fi)


def _span_bound(p: _Problem, eps: float) -> float:
    """Upper bound on max - min of the log kernel over real pairs (global, cheap; padded costs count as 0)."""
    span = (p.cost.amax() - p.cost.amin()) / eps
    if p.fi != 1.0:
        span = span + (p.la.amax() - p.la.amin()) + (p.lb.amax() - p.lb.amin())
    return float(span.detach())


def _fill_marginal(w: Tensor | None, mask: Tensor, ok: Tensor, dtype: torch.dtype) -> Tensor:
    maskf = mask.to(dtype)
    uniform = maskf / maskf.sum(1, keepdim=True).clamp_min(1)
    if w is None:
        return uniform
    w = w.to(dtype) * maskf
    return torch.where(ok[:, None], w, uniform)


def _neg_inf(x: Tensor) -> Tensor:
    return torch.full((), -math.inf, dtype=x.dtype, device=x.device)


def _converged(plan: Tensor, prev: Tensor | None, tol: float) -> bool:
    return prev is not None and bool(((plan - prev).abs().sum((1, 2)) < tol).all())


def _sinkhorn_log(p: _Problem, n_iters: int, tol: float | None, check_every: int) -> Tensor:
    """Log-domain Sinkhorn; potentials are -inf on masked entries (which drop out of every logsumexp)."""
    ninf = _neg_inf(p.log_k)
    u = torch.where(p.rows, 0.0, ninf)
    prev = None
    for it in range(1, n_iters + 1):
        v, u = _log_step(p, u, ninf)
        if tol is not None and it % check_every == 0:
            plan = torch.exp(p.log_k + u[:, :, None] + v[:, None, :])
            if _converged(plan, prev, tol):
                return plan
            prev = plan
    return torch.exp(p.log_k + u[:, :, None] + v[:, None, :])


def _log_step(p: _Problem, u: Tensor, ninf: Tensor) -> tuple[Tensor, Tensor]:
    """One log-domain iteration (column update, then row update: POT's order, iterate for iterate)."""
    v = torch.where(p.cols, p.fi * (p.lb - torch.logsumexp(p.log_k + u[:, :, None], 1)), ninf)
    u = torch.where(p.rows, p.fi * (p.la - torch.logsumexp(p.log_k + v[:, None, :], 2)), ninf)
    return v, u


def _sinkhorn_stabilized(p: _Problem, n_iters: int, tol: float | None, check_every: int, absorb_every: int) -> Tensor:
    """Scaling updates on the kernel exp(log_k + f + g); log potentials f, g absorb the scalings every block.

    Scalings are 0 on masked entries (so masked kernel entries never contribute) and potentials stay finite there.
    Denominators are clamped at the dtype's tiny: an underflowed sum gives a large finite step, never inf or NaN.
    """
    zero = torch.zeros((), dtype=p.log_k.dtype, device=p.log_k.device)
    if p.fi == 1.0:  # balanced: a constant start potential does not change the iterates; it puts the kernel's peak at 1
        f = torch.where(p.rows, -p.log_k.amax((1, 2))[:, None], zero)
        g, first = torch.zeros_like(p.lb), 1
    else:  # unbalanced: iteration 1 in the log domain, so the iterates equal sinkhorn_log's
        ninf = _neg_inf(p.log_k)
        g, f = _log_step(p, torch.where(p.rows, 0.0, ninf), ninf)
        f, g, first = torch.where(p.rows, f, zero), torch.where(p.cols, g, zero), 2
    tiny = torch.finfo(f.dtype).tiny
    # Row vectors (B, 1, N) / (B, 1, M): each update is a batched vector-matrix product (bmm), fast on CPU.
    rows, cols, a, b = p.rows[:, None], p.cols[:, None], p.a[:, None], p.b[:, None]
    f, g = f[:, None], g[:, None]
    a_safe, b_safe = torch.where(rows, a, 1.0), torch.where(cols, b, 1.0)
    kern = torch.exp(p.log_k + f.transpose(1, 2) + g)
    if p.fi != 1.0:  # unbalanced: (ratio)^fi * exp((fi - 1) * potential) keeps the update exact after absorption
        f_scale, g_scale = torch.exp((p.fi - 1.0) * f), torch.exp((p.fi - 1.0) * g)
    us, vs = rows.to(f.dtype), cols.to(f.dtype)
    prev = None
    for it in range(first, n_iters + 1):  # balanced: marginals are 0 on masked entries, so are their scalings
        den_v = torch.bmm(us, kern).clamp_min(tiny)
        vs = b / den_v if p.fi == 1.0 else torch.where(cols, (b_safe / den_v) ** p.fi * g_scale, zero)
        den_u = torch.bmm(vs, kern.transpose(1, 2)).clamp_min(tiny)
        us = a / den_u if p.fi == 1.0 else torch.where(rows, (a_safe / den_u) ** p.fi * f_scale, zero)
        if tol is not None and it % check_every == 0:
            plan = kern * us.transpose(1, 2) * vs
            if _converged(plan, prev, tol):
                return plan
            prev = plan
        if (it - first + 1) % absorb_every == 0 and it < n_iters:
            f = f + torch.log(torch.where(rows, us, 1.0))
            g = g + torch.log(torch.where(cols, vs, 1.0))
            kern = torch.exp(p.log_k + f.transpose(1, 2) + g)
            if p.fi != 1.0:
                f_scale, g_scale = torch.exp((p.fi - 1.0) * f), torch.exp((p.fi - 1.0) * g)
            us, vs = rows.to(f.dtype), cols.to(f.dtype)
    return kern * us.transpose(1, 2) * vs


def _ipot(p: _Problem, n_iters: int, tol: float | None, check_every: int, inner: int) -> Tensor:
    """IPOT (Xie et al. 2019, Alg. 1) in the log domain: T <- argmin <C,T> + beta KL(T || T_prev), inexactly.

    beta is eps, already folded into log_k = -C / beta; the column scaling v persists across outer steps as in
    the paper.
    """
    ninf = _neg_inf(p.log_k)
    pair = p.rows[:, :, None] & p.cols[:, None, :]
    zero = torch.zeros((), dtype=p.log_k.dtype, device=p.log_k.device)
    log_t = torch.zeros_like(p.log_k)
    v = torch.where(p.cols, 0.0, ninf)
    prev = None
    for it in range(1, n_iters + 1):
        log_q = log_t + p.log_k  # log_k = -C / beta
        for _ in range(inner):
            u = torch.where(p.rows, p.la - torch.logsumexp(log_q + v[:, None, :], 2), ninf)
            v = torch.where(p.cols, p.lb - torch.logsumexp(log_q + u[:, :, None], 1), ninf)
        log_t = torch.where(pair, log_q + u[:, :, None] + v[:, None, :], zero)
        if tol is not None and it % check_every == 0:
            plan = torch.where(pair, torch.exp(log_t), zero)
            if _converged(plan, prev, tol):
                return plan
            prev = plan
    return torch.where(pair, torch.exp(log_t), zero)


def cosine_cost(x: Tensor, y: Tensor) -> Tensor:
    """1 - cosine similarity between (..., N, D) and (..., M, D) -> (..., N, M); zero vectors give cost 1, not NaN."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)


def ot_alignment_loss(
    arg_emb: Tensor,
    region_emb: Tensor,
    arg_mask: Tensor,
    region_mask: Tensor,
    neg_arg_emb: Tensor | None = None,
    neg_mask: Tensor | None = None,
    *,
    margin: float = 0.2,
    contrastive_weight: float = 1.0,
    distance_weight: float = 1.0,
    eps: float = 0.1,
    n_iters: int = 50,
    reg_m: float | None = None,
    method: Method = "sinkhorn_stabilized",
    grad: GradMode = "envelope",
    marginals: Marginals = "uniform",
) -> OTLossOutput:
    """CLIP-Event OT argument-alignment loss.

    arg_emb (B, N, D): embeddings of "role: argument phrase" (and the trigger) per event; region_emb (B, M, D);
    masks (B, N) / (B, M). neg_arg_emb (B, K, N, D): corrupted structures (role swap / argument replacement) sharing
    arg_mask, with neg_mask (B, K) marking which exist. Cost is 1 - cosine. Loss = mean over samples that have
    arguments and regions of distance_weight * d_true + contrastive_weight * mean over existing negatives of
    max(0, margin + d_true - d_neg). Terms with nothing to average contribute 0 (finite, zero gradient).
    The true and negative problems are solved in one batched call.

    ``marginals="assignment"`` solves every structure with `assignment_plan`'s marginals (one region's worth of mass
    per argument, unnamed regions to a slack row) instead of uniform ones, so no argument is pulled towards a
    bystander's region; the distance is then the mean cost per unit of argument mass (see `_transport`).

    ``distance_weight=0`` keeps only the relative (hinge) term: the plain distance pulls every region towards every
    argument of its image, which from scratch collapses all region and argument embeddings onto one point
    (pair it with `pairwise_ot_distance` in a cross-sample contrast instead, see `align.losses.ot_contrastive_loss`).
    """
    if arg_emb.dim() != 3 or region_emb.dim() != 3 or arg_emb.shape[0] != region_emb.shape[0]:
        raise ValueError(f"arg_emb (B, N, D) and region_emb (B, M, D) expected, got {tuple(arg_emb.shape)} "
                         f"and {tuple(region_emb.shape)}")
    bsz, n, _ = arg_emb.shape
    m = region_emb.shape[1]
    arg_mask, region_mask = arg_mask.bool(), region_mask.bool()
    costs, rows = [cosine_cost(arg_emb, region_emb)], [arg_mask]
    k = 0
    if neg_arg_emb is not None:
        if neg_arg_emb.dim() != 4 or neg_arg_emb.shape[0] != bsz or neg_arg_emb.shape[2] != n:
            raise ValueError(f"neg_arg_emb must be (B={bsz}, K, N={n}, D), got {tuple(neg_arg_emb.shape)}")
        k = neg_arg_emb.shape[1]
        if neg_mask is None:
            neg_mask = torch.ones(bsz, k, dtype=torch.bool, device=arg_emb.device)
        if tuple(neg_mask.shape) != (bsz, k):
            raise ValueError(f"neg_mask must be (B={bsz}, K={k}), got {tuple(neg_mask.shape)}")
        neg_mask = neg_mask.bool()
        costs.append(cosine_cost(neg_arg_emb, region_emb[:, None]).reshape(bsz * k, n, m))
        rows.append((arg_mask[:, None, :] & neg_mask[:, :, None]).reshape(bsz * k, n))
    cols = torch.cat([region_mask, region_mask.repeat_interleave(k, 0)])
    res = _transport(torch.cat(costs), torch.cat(rows), cols, marginals, eps=eps, n_iters=n_iters, reg_m=reg_m,
                     method=method, grad=grad)
    d_true, plan = res.distance[:bsz], res.plan[:bsz]
    valid = (arg_mask.any(1) & region_mask.any(1)).to(d_true.dtype)
    loss = distance_weight * (d_true * valid).sum() / valid.sum().clamp_min(1)
    d_neg = res.distance[bsz:].reshape(bsz, k)
    if k:
        exists = (neg_mask & valid.bool()[:, None]).to(d_true.dtype)
        hinge = torch.relu(margin + d_true[:, None] - d_neg) * exists
        loss = loss + contrastive_weight * hinge.sum() / exists.sum().clamp_min(1)
    return OTLossOutput(loss, d_true, d_neg, plan)


def pairwise_ot_distance(
    arg_emb: Tensor,
    arg_mask: Tensor,
    region_emb: Tensor,
    region_mask: Tensor,
    *,
    eps: float = 0.1,
    n_iters: int = 50,
    reg_m: float | None = None,
    method: Method = "sinkhorn_stabilized",
    grad: GradMode = "envelope",
    marginals: Marginals = "uniform",
) -> Tensor:
    """OT distance of every argument set to every region set: (Bq, N, D) x (Bk, M, D) -> (Bq, Bk).

    Entry (i, j) is the distance of sample i's arguments to image j's regions (cost 1 - cosine), all Bq * Bk
    problems solved in one batched call; it is 0 where i has no argument or j no region (mask those pairs).
    The diagonal of a square call equals `ot_alignment_loss`'s d_true (with the same ``marginals``).
    """
    if arg_emb.dim() != 3 or region_emb.dim() != 3 or arg_emb.shape[-1] != region_emb.shape[-1]:
        raise ValueError(f"arg_emb (Bq, N, D) and region_emb (Bk, M, D) expected, got {tuple(arg_emb.shape)} and "
                         f"{tuple(region_emb.shape)}")
    bq, n, _ = arg_emb.shape
    bk, m, _ = region_emb.shape
    if tuple(arg_mask.shape) != (bq, n) or tuple(region_mask.shape) != (bk, m):
        raise ValueError(f"arg_mask must be {(bq, n)} and region_mask {(bk, m)}, got {tuple(arg_mask.shape)} and "
                         f"{tuple(region_mask.shape)}")
    x, y = F.normalize(arg_emb, dim=-1), F.normalize(region_emb, dim=-1)
    cost = 1.0 - torch.einsum("ind,jmd->ijnm", x, y)
    rows = arg_mask.bool()[:, None, :].expand(bq, bk, n).reshape(bq * bk, n)
    cols = region_mask.bool()[None].expand(bq, bk, m).reshape(bq * bk, m)
    res = _transport(cost.reshape(bq * bk, n, m), rows, cols, marginals, eps=eps, n_iters=n_iters, reg_m=reg_m,
                     method=method, grad=grad)
    return res.distance.reshape(bq, bk)


def _transport(cost: Tensor, rows: Tensor, cols: Tensor, marginals: Marginals, *, eps: float, n_iters: int,
               reg_m: float | None, method: Method, grad: GradMode) -> OTResult:
    """The plan and distance of the OT head: uniform marginals (`solve_ot`), or `assignment_plan`'s, whose distance
    is the mean cost per unit of argument mass <P, C> / <P, 1> (the slack's constant cost left out), so that images
    with more regions than arguments are not made closer by the slack's share of the mass."""
    if marginals not in MARGINALS:
        raise ValueError(f"marginals must be one of {MARGINALS}, got {marginals!r}")
    if marginals == "uniform":
        return solve_ot(cost, rows, cols, eps=eps, n_iters=n_iters, tol=None, reg_m=reg_m, method=method, grad=grad)
    if reg_m is not None:
        raise ValueError("marginals='assignment' is balanced by construction; set reg_m=None")
    plan = assignment_plan(cost, rows, cols, eps=eps, n_iters=n_iters, method=method, grad=grad)
    cost = torch.where(rows.bool()[:, :, None] & cols.bool()[:, None, :], cost, 0.0)  # padding may hold anything
    return OTResult((plan * cost).sum((1, 2)) / plan.sum((1, 2)).clamp_min(1e-12), plan)


def ground(plan: Tensor, boxes: Tensor, arg_mask: Tensor, region_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Ground each argument to the region carrying most of its transported mass (argmax of its plan row; the plan
    from `grounding_plan`).

    plan (B, N, M), boxes (B, M, 4), masks (B, N) / (B, M). Returns region indices (B, N), -1 for padded arguments
    or samples without regions, and the chosen boxes (B, N, 4), zeros where the index is -1.
    """
    if plan.dim() != 3 or tuple(boxes.shape) != (plan.shape[0], plan.shape[2], 4):
        raise ValueError(f"plan (B, N, M) and boxes (B, M, 4) expected, got {tuple(plan.shape)} and "
                         f"{tuple(boxes.shape)}")
    region_mask, arg_mask = region_mask.bool(), arg_mask.bool()
    scores = plan.masked_fill(~region_mask[:, None, :], -math.inf)
    idx = scores.argmax(2)
    found = arg_mask & region_mask.any(1, keepdim=True)
    idx = torch.where(found, idx, torch.full_like(idx, -1))
    chosen = torch.gather(boxes, 1, idx.clamp_min(0)[:, :, None].expand(-1, -1, 4))
    chosen = chosen * found[:, :, None].to(chosen.dtype)
    return idx, chosen


def assignment_plan(
    cost: Tensor,
    row_mask: Tensor,
    col_mask: Tensor,
    *,
    eps: float = 0.1,
    n_iters: int = 100,
    method: Method = "sinkhorn_stabilized",
    grad: GradMode = "envelope",
) -> Tensor:
    """Entropic one-to-one assignment of rows (arguments) to columns (regions): (B, N, M) plan.

    With n real rows and m real columns, every row and every column carries 1 / max(n, m); a slack row takes the
    m - n columns left over (a slack column the rows left over when n > m) at a constant cost, which an entropic
    plan ignores (a constant row is absorbed by its potential). So no region has to be spent on an argument, and no
    argument is spread over several regions because regions outnumber arguments; as ``eps`` -> 0 the plan tends to
    the minimum-cost matching of arguments to distinct regions. Returns the real rows and columns only (the slack
    dropped); zero on masked entries and for samples without a real row or column.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}")
    bsz, n, m = cost.shape
    rows = _mask(row_mask, (bsz, n), "row_mask", cost.device)
    cols = _mask(col_mask, (bsz, m), "col_mask", cost.device)
    dtype = torch.promote_types(cost.dtype, torch.float32)
    n_real, m_real = rows.sum(1, keepdim=True).to(dtype), cols.sum(1, keepdim=True).to(dtype)
    unit = 1.0 / torch.maximum(n_real, m_real).clamp_min(1.0)
    a = torch.cat([rows.to(dtype) * unit, (m_real - n_real).clamp_min(0) * unit], 1)
    b = torch.cat([cols.to(dtype) * unit, (n_real - m_real).clamp_min(0) * unit], 1)
    plan = solve_ot(F.pad(cost, (0, 1, 0, 1)), a > 0, b > 0, a, b, eps=eps, n_iters=n_iters, tol=None,
                    method=method, grad=grad).plan
    return plan[:, :n, :m]  # masked entries are 0 in solve_ot's plan, so a sample with no real row or column is 0


def grounding_plan(
    arg_emb: Tensor,
    region_emb: Tensor,
    arg_mask: Tensor,
    region_mask: Tensor,
    *,
    marginals: Marginals = "assignment",
    eps: float = 0.1,
    n_iters: int = 50,
    reg_m: float | None = None,
    method: Method = "sinkhorn_stabilized",
) -> Tensor:
    """The plan that `ground` reads argument regions from, cost 1 - cosine: (B, N, D) x (B, M, D) -> (B, N, M).

    The plan `ot_alignment_loss` returns with the same options (``reg_m`` applies to ``"uniform"`` only; the
    assignment is balanced by construction). ``"assignment"`` grounds better than ``"uniform"`` on EventWorld's
    validation split, for the full model and for plain CLIP alike, whatever marginals the head trained with.
    """
    cost = cosine_cost(arg_emb, region_emb)
    return _transport(cost, arg_mask, region_mask, marginals, eps=eps, n_iters=n_iters,
                      reg_m=reg_m if marginals == "uniform" else None, method=method, grad="envelope").plan
