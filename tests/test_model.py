"""Tests for align.model.EventCLIP: tiny configs, region embeddings, checkpoints, tower locking, HF tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.utils import FrozenBatchNorm2d

from align.model import EventCLIP

SIZE = 128
WHOLE = [0.0, 0.0, float(SIZE), float(SIZE)]
TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "models" / "EventCLIP-Tiny.json"


def _images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _boxes() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images, three slots: image 0 has two boxes, image 1 one box; the rest is padding."""
    boxes = torch.tensor(
        [
            [WHOLE, [10.0, 12.0, 60.0, 90.0], [0.0, 0.0, 0.0, 0.0]],
            [[30.0, 5.0, 127.0, 64.0], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return boxes, mask


@pytest.fixture(scope="module")
def vit() -> EventCLIP:
    torch.manual_seed(0)
    return EventCLIP("EventCLIP-Tiny").eval()


@pytest.fixture(scope="module")
def rn() -> EventCLIP:
    """open_clip zero-inits each block's last BN, which leaves a fresh ResNet nearly blind to its input (features
    ~1e-3 against positional embeddings ~4e-2); unit BN scales give the region tests real signal to compare."""
    torch.manual_seed(0)
    model = EventCLIP("EventCLIP-TinyRN").eval()
    with torch.no_grad():
        for m in model.clip.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return model


def _tiny_config(directory: Path, name: str, **vision_cfg: object) -> Path:
    """Write EventCLIP-Tiny's config with another vision tower to `directory`/`name`.json."""
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["vision_cfg"] = {"image_size": SIZE, **vision_cfg}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def timm_convnext(tmp_path_factory: pytest.TempPathFactory) -> EventCLIP:
    """A timm ConvNeXt tower (timm's own tiny test model, built without any download)."""
    config = _tiny_config(tmp_path_factory.mktemp("cfg"), "EventCLIP-TestTimm", timm_model_name="test_convnext")
    torch.manual_seed(0)
    return EventCLIP(str(config)).eval()


@pytest.fixture(params=["vit", "rn", "timm_convnext"])
def model(request: pytest.FixtureRequest) -> EventCLIP:
    return request.getfixturevalue(request.param)


def test_tiny_config_matches_contract(vit: EventCLIP) -> None:
    assert (vit.embed_dim, vit.image_size) == (128, SIZE)
    assert vit.clip.visual.grid_size == (8, 8)
    assert vit.tokenizer(["a soldier fires at a crowd"]).shape == (1, 32)
    assert isinstance(vit.logit_scale, torch.nn.Parameter)
    assert vit.preprocess_cfg["size"] == (SIZE, SIZE)


def test_forward_backward(model: EventCLIP) -> None:
    model.zero_grad(set_to_none=True)
    boxes, mask = _boxes()
    img, regions, out_mask = model.encode_image_and_regions(_images(), boxes, mask)
    txt = model.encode_text(model.tokenizer(["protesters march", "police arrest a man"]))
    assert img.shape == txt.shape == (2, 128)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(2)
    loss = F.cross_entropy(logits, target) + (regions[out_mask] @ txt.T).sum()
    loss.backward()
    visual = list(model.clip.visual.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in visual if p.requires_grad)
    assert model.clip.token_embedding.weight.grad is not None
    assert model.logit_scale.grad is not None


def test_encode_image_matches_single_pass(model: EventCLIP) -> None:
    images = _images()
    with torch.no_grad():
        glob, _, _ = model.encode_image_and_regions(images)
        assert torch.allclose(glob, model.encode_image(images), atol=1e-6)


def test_region_shapes_and_masks(model: EventCLIP) -> None:
    boxes, mask = _boxes()
    with torch.no_grad():
        _, regions, out_mask = model.encode_image_and_regions(_images(), boxes, mask)
    assert regions.shape == (2, 3, 128)
    assert torch.equal(out_mask, mask)
    assert torch.count_nonzero(regions[~mask]) == 0
    assert torch.allclose(regions[mask].norm(dim=-1), torch.ones(3), atol=1e-5)
    # Padded slots must not influence real ones; real boxes alone give the same embeddings.
    with torch.no_grad():
        _, alone, _ = model.encode_image_and_regions(_images()[:1], boxes[:1, :2])
    assert torch.allclose(alone[0], regions[0, :2], atol=1e-5)


def test_no_real_boxes_gives_zeros(vit: EventCLIP) -> None:
    boxes, _ = _boxes()
    with torch.no_grad():
        _, regions, mask = vit.encode_image_and_regions(_images(), boxes, torch.zeros(2, 3, dtype=torch.bool))
    assert not mask.any() and torch.count_nonzero(regions) == 0


def test_grid_boxes() -> None:
    grid = EventCLIP.grid_boxes(128, 2)
    expected = torch.tensor([[0, 0, 64, 64], [64, 0, 128, 64], [0, 64, 64, 128], [64, 64, 128, 128]]).float()
    assert torch.equal(grid, expected)
    assert EventCLIP.grid_boxes(100, 3).shape == (9, 4)


def test_default_regions_are_grid(vit: EventCLIP) -> None:
    images = _images()
    with torch.no_grad():
        _, regions, mask = vit.encode_image_and_regions(images)
        explicit = EventCLIP.grid_boxes(SIZE, vit.grid_regions).expand(2, -1, -1)
        _, expected, _ = vit.encode_image_and_regions(images, explicit)
    assert regions.shape == (2, vit.grid_regions**2, 128) and mask.all()
    assert torch.allclose(regions, expected)


@pytest.mark.parametrize("roi", [1, 2, 8])
@pytest.mark.parametrize("final_ln_after_pool", [False, True])
def test_whole_image_box_equals_mean_patch_pooling(vit: EventCLIP, roi: int, final_ln_after_pool: bool) -> None:
    """With the ViT's pool type set to 'avg', a whole-image box reproduces its global embedding."""
    visual = vit.clip.visual
    old = (visual.pool_type, visual.final_ln_after_pool, vit.roi_output_size)
    visual.pool_type, visual.final_ln_after_pool, vit.roi_output_size = "avg", final_ln_after_pool, roi
    try:
        images = _images()
        with torch.no_grad():
            glob, regions, _ = vit.encode_image_and_regions(images, torch.tensor([[WHOLE]] * 2))
            reference = vit.encode_image(images)
    finally:
        visual.pool_type, visual.final_ln_after_pool, vit.roi_output_size = old
    assert torch.allclose(glob, reference, atol=1e-6)
    assert torch.allclose(regions[:, 0], reference, atol=1e-5)


def test_whole_image_box_matches_manual_patch_mean(vit: EventCLIP) -> None:
    """Default 'tok' model: whole box == mean of ln_post patch tokens through proj (class token excluded)."""
    visual = vit.clip.visual
    images = _images()
    with torch.no_grad():
        tokens = visual.transformer(visual._embeds(images))
        manual = F.normalize(visual.ln_post(tokens[:, 1:]).mean(dim=1) @ visual.proj, dim=-1)
        glob, regions, _ = vit.encode_image_and_regions(images, torch.tensor([[WHOLE]] * 2))
    assert torch.allclose(regions[:, 0], manual, atol=1e-5)
    assert not torch.allclose(glob, manual, atol=1e-3)  # the global path really uses the class token


def test_resnet_whole_image_box_equals_attnpool(rn: EventCLIP) -> None:
    """With one RoI cell per feature cell, a whole-image box runs the global attention pool exactly."""
    grid = SIZE // 32
    old, rn.roi_output_size = rn.roi_output_size, grid
    try:
        images = _images()
        with torch.no_grad():
            glob, regions, _ = rn.encode_image_and_regions(images, torch.tensor([[WHOLE]] * 2))
    finally:
        rn.roi_output_size = old
    assert torch.allclose(regions[:, 0], glob, atol=1e-5)


@pytest.mark.parametrize("roi", [2, 4])
def test_timm_whole_image_box_equals_global(timm_convnext: EventCLIP, roi: int) -> None:
    """timm avg-pool head: a whole-image box averages exactly the 4x4 map the global head averages."""
    old, timm_convnext.roi_output_size = timm_convnext.roi_output_size, roi
    try:
        with torch.no_grad():
            glob, regions, _ = timm_convnext.encode_image_and_regions(_images(), torch.tensor([[WHOLE]] * 2))
    finally:
        timm_convnext.roi_output_size = old
    assert torch.allclose(regions[:, 0], glob, atol=1e-5)


def test_token_only_timm_tower_is_rejected(tmp_path: Path) -> None:
    model = EventCLIP(str(_tiny_config(tmp_path, "EventCLIP-TestTimmViT", timm_model_name="test_vit")))
    assert model.encode_image(_images(1)).shape == (1, 128)  # global embeddings still work
    with pytest.raises(ValueError, match="not an NCHW map"):
        model.encode_image_and_regions(_images(1))


def test_regions_differ_by_box(model: EventCLIP) -> None:
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0], [64.0, 64.0, 128.0, 128.0]]])
    with torch.no_grad():
        _, regions, _ = model.encode_image_and_regions(_images(1), boxes)
    assert not torch.allclose(regions[0, 0], regions[0, 1], atol=1e-3)


def _save_plain(model: EventCLIP, path: Path) -> None:
    state = model.clip.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(vit: EventCLIP, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    _save_plain(vit, path)
    torch.manual_seed(123)  # a different random init, so equality proves the weights were loaded
    loaded = EventCLIP("EventCLIP-Tiny", pretrained=str(path)).eval()
    boxes, mask = _boxes()
    tokens = vit.tokenizer(["a bomb explodes in a market"])
    with torch.no_grad():
        for a, b in zip(
            vit.encode_image_and_regions(_images(), boxes, mask),
            loaded.encode_image_and_regions(_images(), boxes, mask),
        ):
            assert torch.equal(a, b)
        assert torch.equal(vit.encode_text(tokens), loaded.encode_text(tokens))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_checkpoint_writes_open_clip_format(vit: EventCLIP, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"saved{suffix}"
    assert vit.save_checkpoint(path) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    state, expected = open_clip.factory.load_state_dict(str(path)), vit.clip.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match=r"saved\.ckpt"):
        vit.save_checkpoint(tmp_path / "saved.ckpt")


def test_missing_checkpoint_names_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        EventCLIP("EventCLIP-Tiny", pretrained=str(path))


@pytest.mark.parametrize("name", ["bad.pt", "bad.safetensors"])
def test_corrupt_checkpoint_names_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        EventCLIP("EventCLIP-Tiny", pretrained=str(path))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only loading: a checkpoint holding arbitrary Python objects is not unpickled."""
    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": Path("/etc")}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        EventCLIP("EventCLIP-Tiny", pretrained=str(path))


def test_wrong_architecture_checkpoint(rn: EventCLIP, tmp_path: Path) -> None:
    path = rn.save_checkpoint(tmp_path / "rn.safetensors")
    with pytest.raises(ValueError, match=r"rn\.safetensors.*EventCLIP-Tiny"):
        EventCLIP("EventCLIP-Tiny", pretrained=str(path))


def test_unsupported_checkpoint_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="weights.txt"):
        EventCLIP("EventCLIP-Tiny", pretrained=str(path))


@pytest.mark.parametrize(
    ("name", "tower"), [("EventCLIP-Tiny", "image"), ("EventCLIP-Tiny", "text"), ("EventCLIP-TinyRN", "image")]
)
def test_locked_tower_gets_no_grad(name: str, tower: str) -> None:
    model = EventCLIP(name, lock_image=tower == "image", lock_text=tower == "text")
    clip = model.clip
    text_params = [p for n, p in clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    locked, free = (list(clip.visual.parameters()), text_params)
    if tower == "text":
        locked, free = free, locked
    assert not any(p.requires_grad for p in locked) and all(p.requires_grad for p in free)
    img, regions, mask = model.encode_image_and_regions(_images(), *_boxes())
    txt = model.encode_text(model.tokenizer(["a", "b"]))
    (model.logit_scale.exp() * (img @ txt.T).sum() + (regions[mask] @ txt.T).sum()).backward()
    assert all(p.grad is None for p in locked)
    assert all(p.grad is not None for p in free)
    assert model.logit_scale.grad is not None
    if name == "EventCLIP-TinyRN" and tower == "image":  # locked BN statistics do not drift either
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in clip.visual.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in clip.visual.modules())


def test_grad_checkpointing_passes_through(vit: EventCLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = EventCLIP("EventCLIP-Tiny", grad_checkpointing=True).eval()
    ckpt.clip.load_state_dict(vit.clip.state_dict())
    assert ckpt.clip.visual.transformer.grad_checkpointing and ckpt.clip.transformer.grad_checkpointing
    calls = []
    real = open_clip.transformer.checkpoint
    monkeypatch.setattr(open_clip.transformer, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))

    def grads(model: EventCLIP) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        _, regions, mask = model.encode_image_and_regions(_images(), *_boxes())
        txt = model.encode_text(model.tokenizer(["a", "b"]))
        (regions[mask] @ txt.T).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads(vit)
    assert not calls
    got = grads(ckpt)
    assert len(calls) == 8  # 4 vision + 4 text blocks, each checkpointed
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], atol=1e-5) for k in expected)


def _local_hf_tokenizer(directory: Path) -> dict[str, int]:
    """A tiny WordLevel tokenizer saved as a local HF tokenizer directory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "police", "arrest", "a", "man", "protesters", "march"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(str(directory))
    return vocab


def test_local_hf_tokenizer_config(tmp_path: Path) -> None:
    vocab = _local_hf_tokenizer(tmp_path / "tok")
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"].update(
        hf_tokenizer_name=str(tmp_path / "tok"),
        vocab_size=len(vocab),
        context_length=8,
        pool_type="eos",
        eos_id=vocab["[SEP]"],
        pad_id=vocab["[PAD]"],
    )
    config = tmp_path / "EventCLIP-TestLocalHF.json"
    config.write_text(json.dumps(cfg))
    model = EventCLIP(str(config))
    assert isinstance(model.tokenizer, open_clip.tokenizer.HFTokenizer)
    tokens = model.tokenizer(["police arrest a man", "protesters march"])
    expected = [[2, 4, 5, 6, 7, 3, 0, 0], [2, 8, 9, 3, 0, 0, 0, 0]]
    assert tokens.tolist() == expected
    assert open_clip.get_tokenizer("EventCLIP-TestLocalHF")(["protesters march"]).tolist() == expected[1:]
    txt = model.encode_text(tokens)
    assert txt.shape == (2, 128) and torch.isfinite(txt).all()
    txt.sum().backward()
    assert model.clip.token_embedding.weight.grad is not None


def test_bf16_precision_regions() -> None:
    model = EventCLIP("EventCLIP-Tiny", precision="bf16").eval()
    with torch.no_grad():
        img, regions, mask = model.encode_image_and_regions(_images(), *_boxes())
    assert img.dtype == regions.dtype == torch.bfloat16
    assert torch.isfinite(regions.float()).all() and mask.sum() == 3


def test_cpu_autocast_bf16(model: EventCLIP) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, regions, mask = model.encode_image_and_regions(_images(), *_boxes())
        txt = model.encode_text(model.tokenizer(["a", "b"]))
    (img.float().sum() + regions.float().sum() + txt.float().sum()).backward()
    assert regions.dtype == img.dtype == torch.bfloat16 and torch.isfinite(regions.float()).all()
    assert torch.count_nonzero(regions[~mask]) == 0
    model.zero_grad(set_to_none=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(vit: EventCLIP) -> None:
    gpu = EventCLIP("EventCLIP-Tiny").cuda().eval()
    gpu.clip.load_state_dict(vit.clip.state_dict())
    boxes, mask = _boxes()
    with torch.no_grad():
        expected = vit.encode_image_and_regions(_images(), boxes, mask)
        got = gpu.encode_image_and_regions(_images().cuda(), boxes.cuda(), mask.cuda())
    for a, b in zip(expected, got):
        assert torch.allclose(a.float(), b.cpu().float(), atol=1e-3)


def test_bad_inputs_are_named(vit: EventCLIP, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 128, 128\)"):
        vit.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="box 1 of image 0 is empty"):
        vit.encode_image_and_regions(_images(1), torch.tensor([[WHOLE, [50.0, 50.0, 50.0, 80.0]]]))
    with pytest.raises(ValueError, match="box 0 of image 1"):
        vit.encode_image_and_regions(_images(), torch.tensor([[WHOLE], [[200.0, 0.0, 300.0, 10.0]]]))
    with pytest.raises(ValueError, match="boxes must be"):
        vit.encode_image_and_regions(_images(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="box_mask must be"):
        vit.encode_image_and_regions(_images(), torch.tensor([[WHOLE]] * 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="box_mask given without boxes"):
        vit.encode_image_and_regions(_images(), None, torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown model 'NoSuchModel'"):
        EventCLIP("NoSuchModel")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        EventCLIP(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"embed_dim": 8}')
    with pytest.raises(ValueError, match=r"broken\.json lacks required keys"):
        EventCLIP(str(broken))


def test_out_of_image_boxes_are_clipped(vit: EventCLIP) -> None:
    with torch.no_grad():
        _, a, _ = vit.encode_image_and_regions(_images(1), torch.tensor([[[-20.0, -5.0, 300.0, 128.5]]]))
        _, b, _ = vit.encode_image_and_regions(_images(1), torch.tensor([[WHOLE]]))
    assert torch.allclose(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_full_size_architectures_random_init(name: str) -> None:
    model = EventCLIP(name, pretrained=None).eval()
    images = torch.randn(1, 3, model.image_size, model.image_size)
    boxes = torch.tensor([[[0.0, 0.0, 100.0, 120.0], [50.0, 60.0, 224.0, 224.0]]])
    with torch.no_grad():
        img, regions, mask = model.encode_image_and_regions(images, boxes)
    assert img.shape == (1, model.embed_dim) and regions.shape == (1, 2, model.embed_dim) and mask.all()
