"""Trimmed, length-bucketed text encoding (EventCLIP.encode_text) against open_clip's own padded encode_text.

The trimmed path must give the same embeddings and parameter gradients as open_clip for every tower it takes, and
every tower it cannot prove identical must go through open_clip's call unchanged.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import open_clip
import pytest
import torch

from align import model as model_mod
from align.model import EventCLIP, _bucket_ends

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "models" / "EventCLIP-Tiny.json"
# Mixed lengths: one token of text, argument phrases, a description, the empty text, and one the tokenizer cuts at
# the context length (its EOT sits in the last slot, so one bucket runs untrimmed).
TEXTS = [
    "a",
    "Agent: police",
    "Target: a protester in a red jacket",
    "Police officers arrest a protester outside the parliament building in the capital on Monday.",
    "",
    " ".join(["demonstrators marched"] * 60),
    "Victim: two civilians",
]


def _config(directory: Path, name: str, custom_text: bool = False, **text_cfg: object) -> str:
    """EventCLIP-Tiny's config with `text_cfg` overrides, written to `directory`/`name`.json."""
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"].update(text_cfg)
    if custom_text:
        cfg["custom_text"] = True
    path = directory / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _compare(model: EventCLIP, tokens: torch.Tensor, atol: float = 1e-5, grad_atol: float = 5e-5) -> None:
    """Same normalised embeddings and the same gradient on every parameter as open_clip's padded call. Gradients
    get a looser `grad_atol`: a shared parameter (positional embedding) sums over rows in another order, by thread."""
    weights = torch.randn(tokens.shape[0], model.embed_dim, generator=torch.Generator().manual_seed(1))

    def run(fn: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        emb = fn(tokens)
        (emb * weights).sum().backward()
        return emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected, expected_grads = run(lambda t: model.clip.encode_text(t, normalize=True))
    got, got_grads = run(model.encode_text)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4)
    assert got_grads.keys() == expected_grads.keys() and got_grads
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=grad_atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def _spy_encode_text(model: EventCLIP, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of open_clip's own encode_text (the fallback)."""
    calls: list[int] = []
    real = model.clip.encode_text
    monkeypatch.setattr(model.clip, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _spy_lengths(model: EventCLIP, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the sequence lengths the text transformer of a trimmed model runs on."""
    transformer = model.clip.get_submodule(model._causal_text[0]).transformer
    seen: list[int] = []
    real = transformer.forward
    monkeypatch.setattr(transformer, "forward", lambda x, attn_mask=None: seen.append(x.shape[1])
                        or real(x, attn_mask=attn_mask))
    return seen


@pytest.mark.parametrize("name", ["EventCLIP-Tiny", "EventCLIP-TinyRN",
                                  pytest.param("ViT-B-32", marks=pytest.mark.slow),  # full-size towers: 25-40 s each
                                  pytest.param("RN50", marks=pytest.mark.slow)])
def test_trimmed_matches_open_clip(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = EventCLIP(name).train()
    assert model._causal_text == ("", "argmax", model.clip.text_eos_id)
    tokens = model.tokenizer(TEXTS)
    context = tokens.shape[1]
    assert tokens[5, -1] == tokens.max()  # the long text ends in EOT at the last slot
    seen, fallback = _spy_lengths(model, monkeypatch), _spy_encode_text(model, monkeypatch)
    model.encode_text(tokens)
    assert seen[-1] == context and min(seen) < context and not fallback
    seen.clear()
    model.encode_text(tokens[[0, 1, 3, 6]])  # no full-length text: nothing runs at the context length
    assert max(seen) == int(tokens[3].argmax()) + 1 < context
    monkeypatch.undo()
    _compare(model, tokens)


def test_rows_keep_their_order_and_repeats() -> None:
    torch.manual_seed(0)
    model = EventCLIP("EventCLIP-Tiny").eval()
    tokens = model.tokenizer(TEXTS)
    perm = torch.tensor([3, 0, 5, 0, 6, 1, 4, 2, 3])
    with torch.no_grad():
        single = torch.cat([model.encode_text(tokens[i : i + 1]) for i in perm.tolist()])
        torch.testing.assert_close(model.encode_text(tokens[perm]), single, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single, model.clip.encode_text(tokens[perm], normalize=True), atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = EventCLIP("EventCLIP-Tiny", grad_checkpointing=True).train()
    calls = []
    real = open_clip.transformer.checkpoint
    monkeypatch.setattr(open_clip.transformer, "checkpoint", lambda *a, **k: calls.append(a[1].shape[1])
                        or real(*a, **k))
    tokens = model.tokenizer(TEXTS)
    _compare(model, tokens)
    padded, trimmed = calls[:4], calls[4:]  # open_clip's reference call first: 4 blocks at the context length
    assert padded == [tokens.shape[1]] * 4 and len(trimmed) % 4 == 0 and min(trimmed) < tokens.shape[1]


@pytest.mark.parametrize(("pool", "eos"), [("eos", 49407), ("eos", 0), ("first", None)])
def test_other_pool_types(tmp_path: Path, pool: str, eos: int | None) -> None:
    torch.manual_seed(0)
    extra = {"eos_id": eos} if eos is not None else {}
    model = EventCLIP(_config(tmp_path, f"EventCLIP-TestPool-{pool}-{eos}", pool_type=pool, **extra)).train()
    assert model._causal_text is not None and model._causal_text[1] == pool
    _compare(model, model.tokenizer(TEXTS))


def test_custom_text_causal_tower(tmp_path: Path) -> None:
    """CustomTextCLIP with open_clip's causal TextTransformer (the EVA / ViTamin / PE layout), custom blocks."""
    torch.manual_seed(0)
    model = EventCLIP(_config(tmp_path, "EventCLIP-TestCustom", custom_text=True, qk_norm=True, proj_bias=True))
    assert isinstance(model.clip, open_clip.CustomTextCLIP) and model._causal_text[0] == "text"
    assert type(model.clip.text.transformer.resblocks[0]) is open_clip.transformer.CustomResidualAttentionBlock
    _compare(model.train(), model.tokenizer(TEXTS))


@pytest.mark.parametrize(
    ("custom_text", "text_cfg"),
    [
        (False, {"pool_type": "last"}),
        (False, {"no_causal_mask": True}),
        (True, {"no_causal_mask": True, "pool_type": "last"}),
        (True, {"embed_cls": True}),
    ],
    ids=["last-pool", "bidirectional", "siglip-like", "cls-token"],
)
def test_fallback_for_unhandled_towers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, custom_text: bool, text_cfg: dict[str, object]
) -> None:
    torch.manual_seed(0)
    name = "EventCLIP-TestFallback-" + "-".join(f"{k}{v}" for k, v in text_cfg.items()) + str(custom_text)
    model = EventCLIP(_config(tmp_path, name, custom_text=custom_text, **text_cfg)).eval()
    assert model._causal_text is None
    tokens = model.tokenizer(TEXTS)
    with torch.no_grad():
        expected = model.clip.encode_text(tokens, normalize=True)
        fallback = _spy_encode_text(model, monkeypatch)
        got = model.encode_text(tokens)
    assert fallback == [1]
    assert torch.equal(got, expected)


def test_fallback_for_hf_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_model import _local_hf_tokenizer
    from transformers import BertConfig, BertModel

    vocab = _local_hf_tokenizer(tmp_path / "tok")
    # open_clip loads HF tower weights by default: a tiny random BERT saved locally stands in (no download)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)).save_pretrained(str(tmp_path / "bert"))
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"] = {"hf_model_name": str(tmp_path / "bert"), "hf_tokenizer_name": str(tmp_path / "tok"),
                       "hf_model_pretrained": False, "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler",
                       "context_length": 8}
    path = tmp_path / "EventCLIP-TestHFTower.json"
    path.write_text(json.dumps(cfg))
    model = EventCLIP(str(path)).eval()
    assert model._causal_text is None
    tokens = model.tokenizer(["police arrest a man", "protesters march"])
    with torch.no_grad():
        expected = model.clip.encode_text(tokens, normalize=True)
        calls = _spy_encode_text(model, monkeypatch)
        got = model.encode_text(tokens)
    assert calls == [1] and got.shape == (2, model.embed_dim)
    assert torch.equal(got, expected)


def test_modified_block_falls_back() -> None:
    """A block open_clip did not build (here: a subclass) may mix positions: no trimming."""

    class Mixing(open_clip.transformer.ResidualAttentionBlock):
        pass

    model = EventCLIP("EventCLIP-Tiny")
    assert model_mod._causal_text_tower(model.clip) is not None
    model.clip.transformer.resblocks[0].__class__ = Mixing
    assert model_mod._causal_text_tower(model.clip) is None
    model.clip.attn_mask = torch.zeros_like(model.clip.attn_mask)  # a mask that is not causal
    model.clip.transformer.resblocks[0].__class__ = open_clip.transformer.ResidualAttentionBlock
    assert model_mod._causal_text_tower(model.clip) is None


def _brute_force(lengths: list[int], call: float) -> float:
    """Cheapest cost over every split of ascending `lengths` into contiguous runs."""
    n, best = len(lengths), float("inf")
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            ends = [*cuts, n]
            starts = [0, *cuts]
            best = min(best, sum((e - s) * lengths[e - 1] + call for s, e in zip(starts, ends)))
    return best


def test_bucket_ends_are_optimal() -> None:
    assert _bucket_ends([3, 3, 3], 32) == [3]
    assert _bucket_ends([2] * 100 + [30] * 10, 32) == [100, 110]  # short phrases apart from long descriptions
    assert _bucket_ends([2] * 3 + [12], 32) == [4]  # too few short rows to pay for a second call
    assert _bucket_ends([2] * 3 + [30], 32) == [3, 4]
    rng = random.Random(0)
    for _ in range(60):
        lengths = sorted(rng.randint(1, 20) for _ in range(rng.randint(1, 9)))
        call = rng.choice([0.0, 4.0, 32.0])
        ends = _bucket_ends(lengths, call)
        assert ends[-1] == len(lengths) and ends == sorted(set(ends))
        cost = sum((e - s) * lengths[e - 1] + call for s, e in zip([0, *ends[:-1]], ends))
        assert cost == pytest.approx(_brute_force(lengths, call))
