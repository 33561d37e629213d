"""Contrastive losses: hand-computed toy cases per variant, masking, smoothing, clamping and gradients; the
cross-sample OT contrast by hand, and under DDP (2 gloo processes) against the single-process loss."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from align.losses import ContrastiveLoss, ContrastiveLossConfig, hard_negative_correct, ot_contrastive_loss
from align.ot import pairwise_ot_distance

LOG10 = math.log(10.0)  # logit scale 10: the logits below are 10 x the cosine similarities


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def loss_fn(**kw: object) -> ContrastiveLoss:
    return ContrastiveLoss(ContrastiveLossConfig(**kw))  # type: ignore[arg-type]


# Toy batch: 2 images, 1 positive and 1 hard negative each, in 2-D so every similarity is readable.
# sims: img0.pos0 = 1, img0.pos1 = .6, img0.neg0 = .8, img0.neg1 = 0
#       img1.pos0 = 0, img1.pos1 = .8, img1.neg1 = 1,  img1.neg0 = .6
IMG = t([[1.0, 0.0], [0.0, 1.0]])
POS = t([[[1.0, 0.0]], [[0.6, 0.8]]])
NEG = t([[[0.8, 0.6]], [[0.0, 1.0]]])
ONE = torch.ones(2, 1, dtype=torch.bool)


def nll(logits: list[float], target: int) -> float:
    z = np.array(logits, dtype=np.float64)
    return float(np.log(np.exp(z).sum()) - z[target])


def bce(x: float, y: float) -> float:
    return float(np.log1p(np.exp(x)) - y * x)  # softplus(x) - y x


def test_ce_toy_by_hand() -> None:
    i2t = (nll([10, 6, 8], 0) + nll([0, 8, 10], 1)) / 2  # row i: [pos0, pos1, own negative]
    t2i = (nll([10, 0], 0) + nll([6, 8], 1)) / 2  # text j against [img0, img1]
    loss, parts = loss_fn(variant="ce")(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)
    assert parts["t2i"].item() == pytest.approx(t2i, rel=1e-9)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)


def test_ce_toy_with_negatives_of_others() -> None:
    i2t = (nll([10, 6, 8, 0], 0) + nll([0, 8, 6, 10], 1)) / 2  # row i: [pos0, pos1, neg0, neg1]
    _, parts = loss_fn(variant="ce", use_negatives_of_others=True)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)


def test_hard_negative_weight_by_hand() -> None:
    # ce: the own negative (last column) counts 3 times: logit + log 3; t2i has no hard negatives and is unchanged
    i2t = (nll([10, 6, 8 + math.log(3)], 0) + nll([0, 8, 10 + math.log(3)], 1)) / 2
    loss, parts = loss_fn(variant="ce", hard_negative_weight=3.0)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)
    assert parts["t2i"].item() == pytest.approx((nll([10, 0], 0) + nll([6, 8], 1)) / 2, rel=1e-9)
    # bce: the negative columns' terms are multiplied by 3
    b = -5.0
    i2t = (bce(10 + b, 1) + bce(6 + b, 0) + 3 * bce(8 + b, 0) + bce(0 + b, 0) + bce(8 + b, 1) + 3 * bce(10 + b, 0)) / 2
    _, parts = loss_fn(variant="bce", bias_init=b, hard_negative_weight=3.0)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)
    with pytest.raises(ValueError, match="hard_negative_weight"):
        ContrastiveLossConfig(hard_negative_weight=0.0)


def test_bce_toy_by_hand() -> None:
    b = -5.0
    i2t = (bce(10 + b, 1) + bce(6 + b, 0) + bce(8 + b, 0) + bce(0 + b, 0) + bce(8 + b, 1) + bce(10 + b, 0)) / 2
    t2i = (bce(10 + b, 1) + bce(0 + b, 0) + bce(6 + b, 0) + bce(8 + b, 1)) / 2
    module = loss_fn(variant="bce", bias_init=b, learn_bias=False)
    loss, parts = module(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)
    assert parts["t2i"].item() == pytest.approx(t2i, rel=1e-9)
    assert parts["bias"].item() == b
    assert "bias" not in dict(module.named_parameters()) and "bias" in dict(module.named_buffers())


def test_bce_smoothing_by_hand() -> None:
    b, eps = -5.0, 0.2
    hi, lo = 1 - eps / 2, eps / 2
    i2t = (bce(10 + b, hi) + bce(6 + b, lo) + bce(8 + b, lo) + bce(0 + b, lo) + bce(8 + b, hi) + bce(10 + b, lo)) / 2
    _, parts = loss_fn(variant="bce", bias_init=b, label_smoothing=eps)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)


# Multi-positive toy: img0 has two positives (pos0 and pos0b), img1 one (its second slot is padding).
# sims: img0.[pos0, pos0b, pos1, neg0] = [1, .6, 0, .8]; img1.[pos0, pos0b, pos1, neg1] = [0, .8, 1, .6]
MP_POS = t([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 0.0]]])
MP_MASK = torch.tensor([[True, True], [True, False]])
MP_NEG = t([[[0.8, 0.6]], [[0.8, 0.6]]])


def test_kl_multi_positive_smoothing_by_hand() -> None:
    eps = 0.1
    rows = []
    for logits, targets in (([10, 6, 0, 8], [0, 1]), ([0, 8, 10, 6], [2])):
        z = np.array(logits, dtype=np.float64)
        logp = z - np.log(np.exp(z).sum())
        q = np.full(4, eps / 4)
        q[targets] += (1 - eps) / len(targets)
        rows.append(float((q * (np.log(q) - logp)).sum()))
    _, parts = loss_fn(variant="kl", label_smoothing=eps)(IMG, MP_POS, MP_MASK, MP_NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(sum(rows) / 2, rel=1e-9)


def test_ce_multi_positive_forms_by_hand() -> None:
    lse = lambda z: float(np.log(np.exp(np.array(z, dtype=np.float64)).sum()))  # noqa: E731
    logsumexp_form = ((lse([10, 6, 0, 8]) - lse([10, 6])) + nll([0, 8, 10, 6], 2)) / 2
    primary_form = (nll([10, 0, 8], 0) + nll([0, 8, 10, 6], 2)) / 2  # img0's other positive left out
    _, parts = loss_fn(variant="ce")(IMG, MP_POS, MP_MASK, MP_NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(logsumexp_form, rel=1e-9)
    _, parts = loss_fn(variant="ce", multi_positive="primary")(IMG, MP_POS, MP_MASK, MP_NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(primary_form, rel=1e-9)
    # t2i: three texts (pos0, pos0b -> img0; pos1 -> img1) against [img0, img1]
    t2i = (nll([10, 0], 0) + nll([6, 8], 0) + nll([0, 10], 1)) / 3
    assert parts["t2i"].item() == pytest.approx(t2i, rel=1e-9)


def test_bce_multi_positive_by_hand() -> None:
    b = -5.0
    i2t = (bce(10 + b, 1) + bce(6 + b, 1) + bce(0 + b, 0) + bce(8 + b, 0)
           + bce(0 + b, 0) + bce(8 + b, 0) + bce(10 + b, 1) + bce(6 + b, 0)) / 2
    module = loss_fn(variant="bce", bias_init=b)
    _, parts = module(IMG, MP_POS, MP_MASK, MP_NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(i2t, rel=1e-9)


def test_ce_label_smoothing_matches_torch() -> None:
    eps = 0.1
    logits = torch.tensor([[10.0, 6, 8], [0, 8, 10]], dtype=torch.float64)
    expected = F.cross_entropy(logits, torch.tensor([0, 1]), label_smoothing=eps).item()
    plain = F.cross_entropy(logits, torch.tensor([0, 1])).item()
    _, parts = loss_fn(variant="ce", label_smoothing=eps)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert parts["i2t"].item() == pytest.approx(expected, rel=1e-9)
    assert expected != pytest.approx(plain)


def test_kl_without_smoothing_equals_ce_for_one_positive() -> None:
    ce, _ = loss_fn(variant="ce")(IMG, POS, ONE, NEG, ONE, t(LOG10))
    kl, _ = loss_fn(variant="kl")(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert kl.item() == pytest.approx(ce.item(), rel=1e-9)


def random_batch(b: int = 4, p: int = 2, k: int = 3, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    pos = F.normalize(torch.randn(b, p, d, generator=g), dim=-1)
    neg = F.normalize(torch.randn(b, k, d, generator=g), dim=-1)
    pos_mask = torch.ones(b, p, dtype=torch.bool)
    pos_mask[1::2, 1:] = False
    neg_mask = torch.rand(b, k, generator=g) > 0.3
    return img, pos, pos_mask, neg, neg_mask


CONFIGS = [dict(variant="ce"), dict(variant="ce", multi_positive="primary", label_smoothing=0.1),
           dict(variant="bce"), dict(variant="bce", label_smoothing=0.1, use_negatives_of_others=True),
           dict(variant="kl", label_smoothing=0.1), dict(variant="kl", use_negatives_of_others=True)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_loss_drops_when_positive_gets_closer(config: dict) -> None:
    img, pos, pos_mask, neg, neg_mask = random_batch()
    module = loss_fn(**config)
    before, _ = module(img, pos, pos_mask, neg, neg_mask, torch.tensor(LOG10))
    closer = F.normalize(pos + img[:, None], dim=-1)
    after, _ = module(img, closer, pos_mask, neg, neg_mask, torch.tensor(LOG10))
    assert after.item() < before.item()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_no_negatives_and_masked_negatives(config: dict) -> None:
    img, pos, pos_mask, neg, _ = random_batch()
    module = loss_fn(**config)
    scale = torch.tensor(LOG10)
    none, _ = module(img, pos, pos_mask, None, None, scale)
    empty, _ = module(img, pos, pos_mask, neg[:, :0], torch.zeros(4, 0, dtype=torch.bool), scale)
    masked, _ = module(img, pos, pos_mask, neg, torch.zeros(4, 3, dtype=torch.bool), scale)
    assert torch.isfinite(none)
    assert none.item() == pytest.approx(empty.item(), rel=1e-9)
    assert none.item() == pytest.approx(masked.item(), rel=1e-6)  # masked negatives are really ignored


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_gradients_finite(config: dict) -> None:
    img, pos, pos_mask, neg, neg_mask = (x.requires_grad_() if x.is_floating_point() else x for x in random_batch())
    neg_mask[0] = False  # a row with every negative masked
    scale = torch.tensor(LOG10, requires_grad=True)
    module = loss_fn(**config)
    loss, _ = module(img, pos, pos_mask, neg, neg_mask, scale)
    loss.backward()
    grads = [img.grad, pos.grad, neg.grad, scale.grad]
    if config["variant"] == "bce":
        grads.append(module.bias.grad)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert neg.grad[0].abs().sum() == 0 and pos.grad[1, 1].abs().sum() == 0  # masked slots get no gradient
    assert img.grad.abs().sum() > 0 and scale.grad.abs() > 0


def test_logit_scale_is_clamped() -> None:
    img, pos, pos_mask, neg, neg_mask = random_batch()
    module = loss_fn(variant="ce", max_logit_scale=50.0)
    scale = torch.tensor(math.log(1000.0), requires_grad=True)
    high, parts = module(img, pos, pos_mask, neg, neg_mask, scale)
    at_max, _ = module(img, pos, pos_mask, neg, neg_mask, torch.tensor(math.log(50.0)))
    assert parts["logit_scale"].item() == pytest.approx(50.0)
    assert high.item() == pytest.approx(at_max.item(), rel=1e-9)
    high.backward()
    assert scale.grad.item() == 0.0


def test_half_precision_inputs_give_fp32_loss() -> None:
    img, pos, pos_mask, neg, neg_mask = random_batch()
    ref, _ = loss_fn(variant="ce")(img, pos, pos_mask, neg, neg_mask, torch.tensor(LOG10))
    half, _ = loss_fn(variant="ce")(img.bfloat16(), pos.bfloat16(), pos_mask, neg.bfloat16(), neg_mask,
                                    torch.tensor(LOG10))
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), rel=0.05)


def test_symmetric_off_is_i2t_only() -> None:
    loss, parts = loss_fn(variant="ce", symmetric=False)(IMG, POS, ONE, NEG, ONE, t(LOG10))
    assert loss.item() == parts["i2t"].item()


def test_bad_inputs_are_named() -> None:
    img, pos, pos_mask, neg, neg_mask = random_batch()
    module = loss_fn()
    scale = torch.tensor(LOG10)
    no_pos = pos_mask.clone()
    no_pos[2] = False
    with pytest.raises(ValueError, match=r"image rows \[2\] have no positive"):
        module(img, pos, no_pos, neg, neg_mask, scale)
    with pytest.raises(ValueError, match="positives must be"):
        module(img, pos[:3], pos_mask[:3], neg, neg_mask, scale)
    with pytest.raises(ValueError, match="negatives mask must be a bool"):
        module(img, pos, pos_mask, neg, neg_mask.float(), scale)
    with pytest.raises(ValueError, match="negative_mask is required"):
        module(img, pos, pos_mask, neg, None, scale)
    with pytest.raises(ValueError, match="variant"):
        ContrastiveLossConfig(variant="nce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_smoothing"):
        ContrastiveLossConfig(label_smoothing=1.0)


def test_hard_negative_correct_toy() -> None:
    # img0: primary pos0 (sim 1) beats neg .8 and loses to nothing; img1: pos1 (.8) loses to neg1 (1), beats .6
    neg = t([[[0.8, 0.6], [1.0, 0.0]], [[0.0, 1.0], [0.8, 0.6]]])
    neg_mask = torch.tensor([[True, False], [True, True]])
    out = hard_negative_correct(IMG, POS, ONE, neg, neg_mask)
    assert out.dtype == torch.bool and out.tolist() == [[True, False], [False, True]]
    # the primary positive is the first valid one: make slot 0 invalid so pos1b (sim 0) is compared instead
    pos = t([[[1.0, 0.0]], [[0.6, 0.8]]]).repeat(1, 2, 1)
    pos[1, 1] = t([1.0, 0.0])
    out = hard_negative_correct(IMG, pos, torch.tensor([[True, True], [False, True]]), neg, neg_mask)
    assert out.tolist() == [[True, False], [False, False]]


# ----------------------------------------------------------------------------- cross-sample OT contrast
OT_KW = dict(eps=0.1, n_iters=30)


def ot_batch(b: int = 5, n: int = 3, m: int = 4, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    args, regions = torch.randn(b, n, d, generator=g), torch.randn(b, m, d, generator=g)
    amask, rmask = torch.rand(b, n, generator=g) > 0.3, torch.rand(b, m, generator=g) > 0.3
    amask[:, 0] = rmask[:, 0] = True
    amask[1] = False  # sample 1: no arguments (a candidate image, not a row)
    rmask[3] = False  # image 3: no regions (no candidate, not a row)
    return args, amask, regions, rmask


def test_ot_contrastive_by_hand() -> None:
    args, amask, regions, rmask = ot_batch()
    loss = ot_contrastive_loss(args, amask, regions, rmask, temperature=0.1, **OT_KW)
    d = pairwise_ot_distance(args, amask, regions, rmask, **OT_KW).double()
    rows = []
    for i in (0, 2, 4):  # samples with arguments and regions
        a2r = [-d[i, j].item() / 0.1 for j in range(5) if j != 3]  # images with regions
        r2a = [-d[j, i].item() / 0.1 for j in range(5) if j != 1]  # samples with arguments
        rows.append((nll(a2r, [j for j in range(5) if j != 3].index(i))
                     + nll(r2a, [j for j in range(5) if j != 1].index(i))) / 2)
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-5)


def test_ot_contrastive_prefers_own_regions() -> None:
    # every sample's two arguments match its own two regions exactly: the loss is near 0, shuffled it is not
    eye = torch.eye(8)
    args = torch.stack([eye[[2 * i, 2 * i + 1]] for i in range(4)])
    ones = torch.ones(4, 2, dtype=torch.bool)
    matched = ot_contrastive_loss(args, ones, args.flip(1), ones, temperature=0.05, eps=0.01, n_iters=100)
    shuffled = ot_contrastive_loss(args, ones, args.roll(1, 0), ones, temperature=0.05, eps=0.01, n_iters=100)
    assert matched.item() < 1e-3 and shuffled.item() > 10


def test_ot_contrastive_gradients_and_empty_batch() -> None:
    args, amask, regions, rmask = (x.requires_grad_() if x.is_floating_point() else x for x in ot_batch())
    ot_contrastive_loss(args, amask, regions, rmask, **OT_KW).backward()
    assert torch.isfinite(args.grad).all() and torch.isfinite(regions.grad).all()
    assert args.grad[1].abs().sum() == 0 and regions.grad[3].abs().sum() == 0  # masked sets get nothing
    assert args.grad[0].abs().sum() > 0 and regions.grad[0].abs().sum() > 0
    empty = ot_contrastive_loss(args, torch.zeros_like(amask), regions, rmask, **OT_KW)
    assert empty.item() == 0.0
    empty.backward()
    with pytest.raises(ValueError, match="temperature"):
        ot_contrastive_loss(args, amask, regions, rmask, temperature=0.0)


# Rank 0 holds samples 0-2 with all 3 argument slots, rank 1 samples 3-4 with 2 slots (slot 2 is masked for them in
# the full batch), so the gather pads both B and N.
OT_SPLITS = [(slice(0, 3), 3), (slice(3, 5), 2)]


def _ot_case(args: torch.Tensor, amask: torch.Tensor, regions: torch.Tensor,
             rmask: torch.Tensor) -> dict[str, torch.Tensor]:
    args, regions = args.clone().requires_grad_(), regions.clone().requires_grad_()
    loss = ot_contrastive_loss(args, amask, regions, rmask, temperature=0.1, **OT_KW)
    loss.backward()
    return {"loss": loss.detach(), "args": args.grad, "regions": regions.grad}


def _full_ot_batch() -> tuple[torch.Tensor, ...]:
    args, amask, regions, rmask = ot_batch()
    amask[3:, 2] = False
    return args, amask, regions, rmask


def _ot_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        args, amask, regions, rmask = _full_ot_batch()
        rows, n = OT_SPLITS[rank]
        torch.save(_ot_case(args[rows, :n], amask[rows, :n], regions[rows], rmask[rows]),
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ot_contrastive_ddp_matches_single_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ot_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    full = _ot_case(*_full_ot_batch())
    close = dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, full["loss"], **close)
    for g, (rows, n) in zip(got, OT_SPLITS):  # DDP averages gradients over the 2 ranks
        torch.testing.assert_close(g["args"] / 2, full["args"][rows, :n], **close)
        torch.testing.assert_close(g["regions"] / 2, full["regions"][rows], **close)


def test_loss_weights_reject_bad_values() -> None:
    from align.hparams import LossWeights

    with pytest.raises(ValueError, match="ot_batch"):
        LossWeights(ot_batch=-1.0)
    with pytest.raises(ValueError, match="ot_temperature"):
        LossWeights(ot_temperature=0.0)
    assert LossWeights(ot=0.5, ot_batch=1.0, ot_distance=0.0).ot_batch == 1.0
