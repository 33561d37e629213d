"""Assignment marginals (`align.ot.assignment_plan`): exact grounding picks on small costs (`grounding_plan`), and
in the OT head (`marginals="assignment"`) a bystander region neither costs nor pulls. Union decoding
(`align.grounding.ground_union`): a plural argument spans the instances its mass is split over. The res5 RoI head
(`EventCLIP(region_head="res5")`): region features fine enough to tell a small object from its holder."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import roi_align

from align.grounding import ground_union, grounded_regions, union_boxes
from align.model import EventCLIP, _attnpool_cells
from align.ot import (
    assignment_plan,
    cosine_cost,
    ground,
    grounding_plan,
    ot_alignment_loss,
    pairwise_ot_distance,
    solve_ot,
)

BOXES = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]], dtype=torch.float64)


def _pick(plan: torch.Tensor, amask: torch.Tensor, rmask: torch.Tensor) -> list[list[int]]:
    return ground(plan, BOXES[:, : plan.shape[2]].expand(plan.shape[0], -1, -1), amask, rmask)[0].tolist()


def test_one_argument_takes_its_cheapest_region_not_the_uniform_plan_row() -> None:
    # One argument, three regions: the balanced plan must ship every region's mass to it (a uniform row, no
    # information); the assignment sends the two unnamed regions to the slack row.
    cost = torch.tensor([[[0.9, 0.1, 0.5]]], dtype=torch.float64)
    amask, rmask = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    balanced = solve_ot(cost, amask, rmask, eps=0.1, n_iters=100).plan
    assert torch.allclose(balanced, torch.full_like(balanced, 1 / 3))
    assert _pick(assignment_plan(cost, amask, rmask, eps=0.1, n_iters=100), amask, rmask) == [[1]]


def test_two_arguments_wanting_one_region_get_distinct_regions() -> None:
    # Both prefer region 0; the cheapest one-to-one matching is arg0 -> 1, arg1 -> 0 (0.3 + 0.2 < 0.1 + 0.9).
    cost = torch.tensor([[[0.1, 0.3, 1.0], [0.2, 0.9, 1.0]]], dtype=torch.float64)
    amask, rmask = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    assert cost.argmin(2).tolist() == [[0, 0]]
    # the balanced plan must also spend region 2 (which nobody wants) and hands it to arg1
    assert _pick(solve_ot(cost, amask, rmask, eps=0.02, n_iters=500).plan, amask, rmask) == [[1, 2]]
    assert _pick(assignment_plan(cost, amask, rmask, eps=0.02, n_iters=500), amask, rmask) == [[1, 0]]


def test_assignment_marginals_masks_and_empty_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 3, 4, generator=gen, dtype=torch.float64)
    amask = torch.tensor([[True, True, False], [True, True, True], [False, False, False], [True, True, True]])
    rmask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, True, True, True],
                          [False, False, False, False]])
    plan = assignment_plan(cost, amask, rmask, eps=0.05, n_iters=2000)
    # sample 0: 2 arguments, 4 regions -> every argument and every region carries 1/4 (regions partly to slack)
    assert torch.allclose(plan[0, :2].sum(1), torch.full((2,), 0.25, dtype=torch.float64), atol=1e-6)
    assert (plan[0].sum(0) <= 0.25 + 1e-6).all() and plan[0, 2].abs().sum() == 0
    # sample 1: 3 arguments, 2 regions -> each region is full (1/3), each argument carries at most 1/3
    assert torch.allclose(plan[1, :, :2].sum(0), torch.full((2,), 1 / 3, dtype=torch.float64), atol=1e-6)
    assert (plan[1].sum(1) <= 1 / 3 + 1e-6).all() and plan[1, :, 2:].abs().sum() == 0
    # samples without an argument or without a region: an all-zero plan and no pick
    assert plan[2:].abs().sum() == 0
    assert _pick(plan, amask, rmask)[2:] == [[-1, -1, -1]] * 2


def test_small_eps_assignment_equals_the_brute_force_matching() -> None:
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for _ in range(40):
        n, m = int(torch.randint(1, 4, (), generator=gen)), int(torch.randint(3, 5, (), generator=gen))
        cost = torch.randint(0, 20, (1, n, m), generator=gen).double() / 10  # costs in [0, 2], like 1 - cosine
        totals = sorted((sum(float(cost[0, i, j]) for i, j in enumerate(p)), p)
                        for p in itertools.permutations(range(m), n))
        if len(totals) > 1 and totals[1][0] - totals[0][0] < 0.1:
            continue  # near-tie: any solver may pick either matching
        amask, rmask = torch.ones(1, n, dtype=torch.bool), torch.ones(1, m, dtype=torch.bool)
        plan = assignment_plan(cost, amask, rmask, eps=0.005, n_iters=3000, method="sinkhorn_log")
        assert _pick(plan, amask, rmask) == [list(totals[0][1])]
        checked += 1
    assert checked >= 15


def test_grounding_plan_is_the_ot_heads_plan() -> None:
    gen = torch.Generator().manual_seed(2)
    args, regions = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)
    amask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    rmask = torch.tensor([[True] * 5, [True] * 5, [True, True, True, False, False]])
    for marginals in ("uniform", "assignment"):
        head = ot_alignment_loss(args, regions, amask, rmask, eps=0.1, n_iters=50, marginals=marginals).plan
        plan = grounding_plan(args, regions, amask, rmask, marginals=marginals, eps=0.1, n_iters=50)
        assert torch.allclose(plan, head, atol=1e-6)
    assign = grounding_plan(args, regions, amask, rmask, eps=0.1, n_iters=50)  # the default
    assert torch.allclose(assign, assignment_plan(cosine_cost(args, regions), amask, rmask, eps=0.1, n_iters=50))
    # reg_m relaxes the uniform plan only; the assignment is balanced by construction
    relaxed = grounding_plan(args, regions, amask, rmask, marginals="uniform", reg_m=0.5)
    assert not torch.allclose(relaxed, grounding_plan(args, regions, amask, rmask, marginals="uniform"), atol=1e-4)
    assert torch.equal(grounding_plan(args, regions, amask, rmask, reg_m=0.5), grounding_plan(args, regions, amask,
                                                                                            rmask))


def test_assignment_marginals_ignore_a_bystander_region() -> None:
    # One argument equal to region 0; region 1 (orthogonal) is a bystander no argument names.
    args = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    amask, rmask = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    uniform = ot_alignment_loss(args, regions, amask, rmask, eps=0.05, n_iters=200)
    assert uniform.d_true.item() == pytest.approx(0.5, abs=1e-5)  # half the mass must go to the bystander
    (g_uniform,) = torch.autograd.grad(uniform.d_true.sum(), regions)
    assigned = ot_alignment_loss(args, regions, amask, rmask, eps=0.05, n_iters=200, marginals="assignment")
    assert assigned.d_true.item() == pytest.approx(0.0, abs=1e-4)  # the mean cost of the argument's own match
    (g_assigned,) = torch.autograd.grad(assigned.d_true.sum(), regions)
    assert g_uniform[0, 1].abs().sum() > 0.1 and g_assigned[0, 1].abs().sum() < 1e-6  # no pull on the bystander


def test_pairwise_assignment_diagonal_is_the_heads_distance_and_bad_options_are_refused() -> None:
    gen = torch.Generator().manual_seed(3)
    args, regions = torch.randn(3, 3, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)
    amask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    rmask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 5])
    pair = pairwise_ot_distance(args, amask, regions, rmask, marginals="assignment")
    head = ot_alignment_loss(args, regions, amask, rmask, marginals="assignment")
    assert torch.allclose(pair.diagonal(), head.d_true, atol=1e-5) and head.d_true[2] == 0
    with pytest.raises(ValueError, match="set reg_m=None"):
        pairwise_ot_distance(args, amask, regions, rmask, marginals="assignment", reg_m=1.0)
    with pytest.raises(ValueError, match="marginals must be one of"):
        ot_alignment_loss(args, regions, amask, rmask, marginals="sparse")  # type: ignore[arg-type]


def test_union_of_one_region_is_the_argmax_decoder() -> None:
    gen = torch.Generator().manual_seed(4)
    plan = torch.rand(3, 3, 4, generator=gen, dtype=torch.float64)
    amask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    rmask = torch.tensor([[True] * 4, [True, False, True, False], [False] * 4])
    boxes = BOXES.expand(3, -1, -1)
    idx, chosen = ground(plan, boxes, amask, rmask)
    picked, union = ground_union(plan, boxes, amask, rmask, share=1.0)
    assert torch.equal(union, chosen)
    assert torch.equal(picked.sum(2), (idx >= 0).long())  # one region each, none for padding or no regions
    assert torch.equal(picked.float().argmax(2).masked_fill(idx < 0, -1), idx)


def test_plural_argument_spans_the_instances_its_mass_is_split_over() -> None:
    # Arg 0 ("protesters") matches regions 0 and 1 equally, arg 1 ("a policeman") region 3 alone; region 2 is a
    # bystander. The assignment plan splits arg 0's mass over its two instances and concentrates arg 1's.
    cost = torch.tensor([[[0.1, 0.1, 1.0, 1.0], [1.0, 1.0, 1.0, 0.1]]], dtype=torch.float64)
    amask, rmask = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    plan = assignment_plan(cost, amask, rmask, eps=0.05, n_iters=500)
    picked, union = ground_union(plan, BOXES, amask, rmask, share=0.5)
    assert picked[0].tolist() == [[True, True, False, False], [False, False, False, True]]
    assert union[0].tolist() == [[0, 0, 30, 10], [60, 0, 70, 10]]
    single = ground_union(plan, BOXES, amask, rmask, share=1.0)[1]
    assert single[0, 0].tolist() in ([0, 0, 10, 10], [20, 0, 30, 10])  # one instance only: IoU 0.5 at best
    # a region with less than `share` of the top mass stays out: uneven split 0.1 vs 0.3 cost
    uneven = assignment_plan(torch.tensor([[[0.1, 0.3, 1.0, 1.0]]], dtype=torch.float64), amask[:, :1], rmask,
                             eps=0.05, n_iters=500)
    assert grounded_regions(uneven, amask[:, :1], rmask, share=0.5)[0, 0].tolist() == [True, False, False, False]
    assert grounded_regions(uneven, amask[:, :1], rmask, share=0.01)[0, 0].tolist() == [True, True, False, False]


def test_union_boxes_and_bad_inputs() -> None:
    picked = torch.tensor([[[True, False, True, False], [False, False, False, False]]])
    assert union_boxes(picked, BOXES.float()).tolist() == [[[0, 0, 50, 10], [0, 0, 0, 0]]]
    plan = torch.rand(1, 2, 4)
    with pytest.raises(ValueError, match="share must be in"):
        grounded_regions(plan, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool), share=0.0)
    with pytest.raises(ValueError, match=r"boxes \(B, M, 4\)"):
        ground_union(plan, BOXES[:, :3], torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- region features: the res5 RoI head
def _rn(region_head: str) -> EventCLIP:
    """Tiny ResNet with unit BN scales (open_clip zero-inits each block's last BN, leaving a fresh tower nearly
    blind to its input)."""
    torch.manual_seed(0)
    model = EventCLIP("EventCLIP-TinyRN", region_head=region_head)  # type: ignore[arg-type]
    with torch.no_grad():
        for m in model.clip.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return model.eval()


def test_res5_head_whole_image_box_is_the_global_embedding_and_small_boxes_get_their_own_layer4() -> None:
    res5, pool = _rn("res5"), _rn("pool")
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    boxes = torch.tensor([[[0.0, 0.0, 128.0, 128.0], [40.0, 40.0, 52.0, 56.0]]] * 2)
    res5.roi_output_size = pool.roi_output_size = 128 // 32  # one RoI cell per final feature cell
    with torch.no_grad():
        glob, r5, _ = res5.encode_image_and_regions(images, boxes)
        _, rp, _ = pool.encode_image_and_regions(images, boxes)
    assert torch.allclose(r5[:, 0], glob, atol=1e-5) and torch.allclose(rp[:, 0], glob, atol=1e-5)
    visual = res5.clip.visual
    with torch.no_grad():  # by hand: RoIAlign the layer3 map to 2 x 4 cells, layer4, attention pool
        c4 = visual.layer3(visual.layer2(visual.layer1(visual.stem(images))))
        rois = torch.tensor([[0.0, 40.0, 40.0, 52.0, 56.0]])
        cells = roi_align(c4, rois, output_size=8, spatial_scale=c4.shape[-1] / 128, sampling_ratio=-1, aligned=True)
        manual = torch.nn.functional.normalize(_attnpool_cells(visual.attnpool, visual.layer4(cells)), dim=-1)
    err_res5, err_pool = (r5[0, 1] - manual[0]).abs().max(), (rp[0, 1] - manual[0]).abs().max()
    assert err_res5 < 1e-6 and err_pool > 30 * err_res5  # the pool head's layer4 cells give another embedding


def test_res5_head_trains_layer4_through_the_regions_and_is_refused_elsewhere() -> None:
    model, alone = _rn("res5").train(), _rn("res5").train()
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor([[[10.0, 10.0, 40.0, 60.0], [60.0, 70.0, 70.0, 90.0]]] * 2)
    glob, regions, _ = model.encode_image_and_regions(images, boxes)
    (glob.sum() + regions.sum()).backward()
    assert model.clip.visual.layer4[0].conv1.weight.grad.abs().sum() > 0 and model.clip.visual.layer4[0].bn1.training
    # the regions' layer4 pass neither updates the BatchNorm running statistics (the global pass alone does) ...
    with torch.no_grad():
        alone.clip.visual(images)
    for bn, ref in zip(model.clip.visual.layer4.modules(), alone.clip.visual.layer4.modules()):
        if isinstance(bn, torch.nn.BatchNorm2d):
            assert torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var)
    # ... nor normalises with the batch's: with the same layer3 map (the stages before layer4 in eval mode), a
    # region is embedded as evaluation embeds it with the running statistics the global pass has just updated
    model.eval()
    model.clip.visual.layer4.train()
    with torch.no_grad():
        _, train_regions, _ = model.encode_image_and_regions(images, boxes)
        model.eval()
        _, eval_regions, _ = model.encode_image_and_regions(images, boxes)
    assert torch.allclose(train_regions, eval_regions, atol=1e-6)
    with pytest.raises(ValueError, match="needs a ModifiedResNet"):
        EventCLIP("EventCLIP-Tiny", region_head="res5")
    with pytest.raises(ValueError, match="region_head must be one of"):
        EventCLIP("EventCLIP-TinyRN", region_head="fpn")  # type: ignore[arg-type]


def test_module_region_head_reaches_the_model_and_comes_back_from_a_checkpoint(tmp_path) -> None:
    from align.inference import load_module
    from align.module import EventAlignModule

    module = EventAlignModule("EventCLIP-TinyRN", region_head="res5")
    assert module.model.region_head == "res5" and module.hparams["region_head"] == "res5"
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    again = load_module(path)
    assert again.model.region_head == "res5"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), module.state_dict().values()))
    assert EventAlignModule("EventCLIP-TinyRN").model.region_head == "pool", "old checkpoints keep the pool head"
