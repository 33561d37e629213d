"""Batched masked OT (align.ot) against POT, plus gradients, empty sets, the OT loss and grounding."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from align.ot import cosine_cost, ground, ot_alignment_loss, pairwise_ot_distance, solve_ot

SINKHORN = ["sinkhorn_stabilized", "sinkhorn_log"]
ALL = [*SINKHORN, "ipot"]


def _problem(seed: int, b: int, n: int, m: int, p_mask: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(b, n, m, generator=g, dtype=torch.float64) * 2
    rows = torch.rand(b, n, generator=g) > p_mask
    cols = torch.rand(b, m, generator=g) > p_mask
    return cost, rows, cols


def _sub(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, i: int) -> np.ndarray:
    return cost[i][rows[i]][:, cols[i]].numpy()


def _uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def _pot_each(cost, rows, cols, fn) -> np.ndarray:
    out = []
    for i in range(cost.shape[0]):
        c = _sub(cost, rows, cols, i)
        out.append(0.0 if c.size == 0 else float(fn(_uniform(c.shape[0]), _uniform(c.shape[1]), c)))
    return np.array(out)


@pytest.mark.parametrize("method", SINKHORN)
def test_fixed_iterations_match_pot_sinkhorn_log(method):
    cost, _, _ = _problem(0, 6, 5, 9)
    ours = solve_ot(cost, eps=0.1, n_iters=50, tol=None, method=method)
    for i in range(cost.shape[0]):
        a, b = _uniform(5), _uniform(9)
        plan = ot.sinkhorn(a, b, cost[i].numpy(), 0.1, method="sinkhorn_log", numItermax=50, stopThr=0, warn=False)
        np.testing.assert_allclose(ours.plan[i].numpy(), plan, atol=1e-9)
        assert abs(ours.distance[i].item() - float((plan * cost[i].numpy()).sum())) < 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), n=st.integers(1, 5), m=st.integers(1, 7),
       method=st.sampled_from(SINKHORN))
def test_masked_samples_match_pot_on_subproblems(seed, b, n, m, method):
    cost, rows, cols = _problem(seed, b, n, m)
    ours = solve_ot(cost, rows, cols, eps=0.2, n_iters=40, tol=None, method=method)
    ref = _pot_each(cost, rows, cols, lambda a, b_, c: ot.sinkhorn2(
        a, b_, c, 0.2, method="sinkhorn_log", numItermax=40, stopThr=0, warn=False))
    np.testing.assert_allclose(ours.distance.numpy(), ref, atol=1e-4)
    pair = rows[:, :, None] & cols[:, None, :]
    assert (ours.plan[~pair] == 0).all()


@pytest.mark.parametrize("method", SINKHORN)
def test_float32_converged_matches_pot(method):
    cost, rows, cols = _problem(1, 8, 6, 12)
    ours = solve_ot(cost.float(), rows, cols, eps=0.1, n_iters=2000, tol=1e-7, method=method)
    ref = _pot_each(cost, rows, cols, lambda a, b, c: ot.sinkhorn2(a, b, c, 0.1, method="sinkhorn_log",
                                                                  numItermax=5000, stopThr=1e-12))
    np.testing.assert_allclose(ours.distance.numpy(), ref, atol=1e-4)


def test_given_marginals_match_pot():
    cost, rows, cols = _problem(2, 3, 4, 6, p_mask=0.0)
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(3, 6, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    ours = solve_ot(cost, a=a, b=b, eps=0.1, n_iters=3000, tol=1e-12, method="sinkhorn_stabilized")
    for i in range(3):
        ref = ot.sinkhorn2(a[i].numpy(), b[i].numpy(), cost[i].numpy(), 0.1, method="sinkhorn_log",
                           numItermax=5000, stopThr=1e-13)
        assert abs(ours.distance[i].item() - float(ref)) < 1e-4


@pytest.mark.parametrize("method", SINKHORN)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unbalanced_matches_pot(method, dtype):
    cost, rows, cols = _problem(4, 5, 4, 7)
    ours = solve_ot(cost.to(dtype), rows, cols, eps=0.1, reg_m=0.5, n_iters=3000, tol=1e-12, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _pot_each(cost, rows, cols, lambda a, b, c: ot.unbalanced.sinkhorn_unbalanced2(
            a, b, c, 0.1, 0.5, numItermax=10_000, stopThr=1e-14))
    np.testing.assert_allclose(ours.distance.double().numpy(), ref, atol=1e-4)
    # mass is allowed to stay unmatched: the plan carries less than the full unit mass
    assert (ours.plan.sum((1, 2)) < 1 - 1e-3).any()


def test_ipot_converges_to_exact_ot():
    cost, rows, cols = _problem(5, 6, 5, 8)
    ours = solve_ot(cost, rows, cols, eps=0.1, n_iters=2000, tol=1e-10, method="ipot")
    ref = _pot_each(cost, rows, cols, ot.emd2)
    np.testing.assert_allclose(ours.distance.numpy(), ref, atol=1e-4)
    entropic = solve_ot(cost, rows, cols, eps=0.1, n_iters=2000, tol=1e-10)
    assert (entropic.distance.numpy() - ref).max() > 1e-3  # entropic OT is biased; IPOT removes the bias


@pytest.mark.parametrize(("method", "reg_m"), [(m, None) for m in ALL] + [(m, 0.7) for m in SINKHORN])
def test_gradcheck_unrolled(method, reg_m):
    cost, rows, cols = _problem(6, 2, 3, 4, p_mask=0.0)
    rows[1, 2] = False
    cols[0, 0] = False

    def fn(c):
        return solve_ot(c, rows, cols, eps=0.3, n_iters=12, tol=None, method=method, reg_m=reg_m,
                        grad="unrolled", absorb_every=4).distance

    assert torch.autograd.gradcheck(fn, (cost.clone().requires_grad_(),), atol=1e-6)


def test_gradcheck_unrolled_marginals():
    cost, _, _ = _problem(7, 2, 3, 4)
    a = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)

    def fn(a_):
        return solve_ot(cost, a=a_, eps=0.3, n_iters=10, tol=None, grad="unrolled").distance

    assert torch.autograd.gradcheck(fn, (a,), atol=1e-6)


@pytest.mark.parametrize("method", ALL)
def test_envelope_gradient_is_the_plan(method):
    cost, rows, cols = _problem(8, 3, 4, 5)
    c = cost.clone().requires_grad_()
    res = solve_ot(c, rows, cols, eps=0.2, n_iters=30, tol=None, method=method)
    assert not res.plan.requires_grad
    res.distance.sum().backward()
    torch.testing.assert_close(c.grad, res.plan)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_empty_sets_are_finite(method, grad):
    cost = torch.randn(4, 3, 5)
    cost[0] = float("nan")  # garbage in fully padded samples must not leak
    rows = torch.tensor([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    cols = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    c = cost.clone().requires_grad_()
    res = solve_ot(c, rows, cols, eps=0.05, n_iters=25, tol=None, method=method, grad=grad)
    assert torch.isfinite(res.distance).all() and torch.isfinite(res.plan).all()
    assert res.distance[[0, 1, 3]].abs().max() == 0 and res.plan[[0, 1, 3]].abs().max() == 0
    res.distance.sum().backward()
    assert torch.isfinite(c.grad).all()
    assert c.grad[[0, 1, 3]].abs().max() == 0


@pytest.mark.parametrize("eps", [0.07, 0.005])  # 0.07: scaling updates near the safe span; 0.005: log fallback
def test_small_eps_float32_stabilized_agrees_with_log(eps):
    cost, rows, cols = _problem(9, 4, 6, 10)
    kw = dict(eps=eps, n_iters=500, tol=None)
    stab = solve_ot(cost.float(), rows, cols, method="sinkhorn_stabilized", **kw)
    log = solve_ot(cost.float(), rows, cols, method="sinkhorn_log", **kw)
    assert torch.isfinite(stab.plan).all()
    torch.testing.assert_close(stab.distance, log.distance, atol=1e-5, rtol=0)
    torch.testing.assert_close(stab.plan, log.plan, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_zero_sized_dimensions(shape):
    c = torch.rand(*shape, requires_grad=True)
    res = solve_ot(c, grad="unrolled", n_iters=5, tol=None)
    assert res.distance.shape == (shape[0],) and res.plan.shape == shape
    assert torch.isfinite(res.distance).all() and (res.distance == 0).all()
    res.distance.sum().backward()
    assert torch.isfinite(c.grad).all()


def test_tolerance_stops_early_and_fixed_mode_runs_all():
    cost, rows, cols = _problem(10, 3, 4, 6)
    early = solve_ot(cost, rows, cols, eps=0.5, n_iters=10_000, tol=1e-9)
    ref = solve_ot(cost, rows, cols, eps=0.5, n_iters=3000, tol=None)
    torch.testing.assert_close(early.distance, ref.distance, atol=1e-7, rtol=0)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="cost must be"):
        solve_ot(torch.rand(3, 4))
    with pytest.raises(ValueError, match="row_mask"):
        solve_ot(torch.rand(2, 3, 4), row_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="method"):
        solve_ot(torch.rand(2, 3, 4), method="emd")
    with pytest.raises(ValueError, match="ipot"):
        solve_ot(torch.rand(2, 3, 4), method="ipot", reg_m=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        solve_ot(torch.rand(2, 3, 4), a=-torch.ones(2, 3))


def _onehots(*idx: int, d: int = 6) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64)[list(idx)]


def test_loss_toy_case():
    # 2 args x 2 regions, arg i matches region i exactly: d_true = 0.
    args = _onehots(0, 1)[None]
    regions = _onehots(0, 1)[None]
    # negative 1: both args unrelated to every region (d = 1); negative 2: only the first arg matches (d = 0.5);
    # negative 3 does not exist and must be ignored even though it would give a large hinge.
    negs = torch.stack([_onehots(2, 3), _onehots(0, 4), _onehots(0, 1)])[None]
    amask = torch.ones(1, 2, dtype=torch.bool)
    rmask = torch.ones(1, 2, dtype=torch.bool)
    nmask = torch.tensor([[True, True, False]])
    # IPOT gives the exact OT values; entropic Sinkhorn is within its (small) bias.
    for kw, tol in [(dict(method="ipot", eps=0.1, n_iters=100), 1e-6), (dict(eps=0.01, n_iters=200), 5e-3)]:
        out = ot_alignment_loss(args, regions, amask, rmask, negs, nmask, margin=0.8, **kw)
        assert out.d_true.item() == pytest.approx(0.0, abs=tol)
        assert out.d_neg[0, :2].tolist() == pytest.approx([1.0, 0.5], abs=tol)
        # loss = d_true + mean(max(0, 0.8 + 0 - 1), max(0, 0.8 + 0 - 0.5)) = 0 + (0 + 0.3) / 2
        assert out.loss.item() == pytest.approx(0.15, abs=tol)
        assert out.plan[0].diagonal().tolist() == pytest.approx([0.5, 0.5], abs=tol)


def test_loss_finite_without_arguments_or_negatives():
    args = torch.randn(3, 4, 8, requires_grad=True)
    regions = torch.randn(3, 5, 8, requires_grad=True)
    amask = torch.zeros(3, 4, dtype=torch.bool)
    rmask = torch.ones(3, 5, dtype=torch.bool)
    negs = torch.randn(3, 2, 4, 8, requires_grad=True)
    for neg, nmask in [(None, None), (negs, torch.zeros(3, 2, dtype=torch.bool)), (negs, None)]:
        out = ot_alignment_loss(args, regions, amask, rmask, neg, nmask)
        assert out.loss.item() == 0
        out.loss.backward()
        for t in (args, regions, negs):
            assert t.grad is None or torch.isfinite(t.grad).all()
    amask[1, :2] = True
    out = ot_alignment_loss(args, regions, amask, rmask, negs, margin=5.0, grad="unrolled")
    out.loss.backward()
    assert out.loss.item() > 0 and torch.isfinite(args.grad).all() and args.grad[1, :2].abs().sum() > 0


def test_cosine_cost_zero_vector_is_finite():
    c = cosine_cost(torch.zeros(1, 2, 3), torch.randn(1, 4, 3))
    assert torch.isfinite(c).all() and torch.allclose(c, torch.ones_like(c))


def test_ground_picks_matching_box():
    args = _onehots(0, 1, 2)[None]
    regions = _onehots(1, 5, 0, 2)[None]  # arg0 -> region 2, arg1 -> region 0, arg2 -> region 3 (masked out)
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 5, 8, 8], [20, 20, 30, 30], [1, 2, 3, 4]]], dtype=torch.float64)
    amask = torch.tensor([[True, True, False]])
    rmask = torch.tensor([[True, True, True, False]])
    plan = solve_ot(cosine_cost(args, regions), amask, rmask, eps=0.01, n_iters=200).plan
    idx, chosen = ground(plan, boxes, amask, rmask)
    assert idx.tolist() == [[2, 0, -1]]
    assert chosen[0].tolist() == [[20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 0, 0]]
    idx, chosen = ground(plan, boxes, amask, torch.zeros_like(rmask))
    assert idx.tolist() == [[-1, -1, -1]] and chosen.abs().sum() == 0


def test_distance_weight_zero_keeps_only_the_hinge():
    args, regions = _onehots(0, 1)[None], _onehots(0, 2)[None]  # arg1 matches nothing: d_true = 0.5
    negs = _onehots(3, 4)[None, None]  # d_neg = 1
    ones = torch.ones(1, 2, dtype=torch.bool)
    kw = dict(method="ipot", eps=0.1, n_iters=100, margin=0.8)
    full = ot_alignment_loss(args, regions, ones, ones, negs, **kw)
    hinge_only = ot_alignment_loss(args, regions, ones, ones, negs, distance_weight=0.0, **kw)
    assert full.loss.item() == pytest.approx(0.5 + 0.3, abs=1e-6)
    assert hinge_only.loss.item() == pytest.approx(0.3, abs=1e-6)
    assert torch.equal(full.plan, hinge_only.plan)


def test_pairwise_distance_matches_one_problem_at_a_time():
    g = torch.Generator().manual_seed(3)
    args, regions = torch.randn(3, 4, 8, generator=g), torch.randn(5, 6, 8, generator=g)
    amask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    rmask = torch.rand(5, 6, generator=g) > 0.3
    rmask[2] = False
    d = pairwise_ot_distance(args, amask, regions, rmask, eps=0.1, n_iters=30)
    assert d.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            one = ot_alignment_loss(args[i:i + 1], regions[j:j + 1], amask[i:i + 1], rmask[j:j + 1], eps=0.1,
                                    n_iters=30)
            assert d[i, j].item() == pytest.approx(one.d_true.item(), abs=1e-5), (i, j)
    assert (d[2] == 0).all() and (d[:, 2] == 0).all()  # no arguments / no regions
    # matching sets are closer than unrelated ones
    same = pairwise_ot_distance(_onehots(0, 1)[None], torch.ones(1, 2, dtype=torch.bool),
                                torch.stack([_onehots(1, 0), _onehots(2, 3)]), torch.ones(2, 2, dtype=torch.bool),
                                eps=0.01, n_iters=100)
    assert same[0, 0].item() < 0.05 and same[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_pairwise_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="region_emb"):
        pairwise_ot_distance(torch.rand(2, 3, 4), torch.ones(2, 3), torch.rand(2, 3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError, match="arg_mask"):
        pairwise_ot_distance(torch.rand(2, 3, 4), torch.ones(2, 2), torch.rand(2, 3, 4), torch.ones(2, 3))
