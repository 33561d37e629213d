"""Loading a trained checkpoint outside the Trainer: same weights, same preprocessing, clear errors."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image

from align.inference import (
    CheckpointError,
    encode_images,
    encode_texts,
    load_image,
    load_module,
    scale_boxes,
    type_prompts,
)

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def test_load_module_restores_trained_weights(tiny_ckpt: Path) -> None:
    module = load_module(tiny_ckpt)
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in module.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name
    assert not module.training and module.image_spec.size == module.model.image_size == 128
    names, prompts = type_prompts(module)
    assert len(names) == len(prompts) == 8 and all(prompts)
    emb = encode_texts(module, prompts)
    assert emb.shape == (8, module.model.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(8), atol=1e-5)


def test_load_image_and_encode(tiny_ckpt: Path) -> None:
    module = load_module(tiny_ckpt)
    buf = BytesIO()
    Image.new("RGB", (200, 100), (200, 30, 30)).save(buf, format="PNG")
    x, size = load_image(buf.getvalue(), module.image_spec)
    assert x.shape == (3, 128, 128) and size == (200, 100)
    boxes = scale_boxes(torch.tensor([[[0.0, 0.0, 100.0, 100.0]]]), size, 128)
    assert torch.allclose(boxes, torch.tensor([[[0.0, 0.0, 64.0, 128.0]]]))
    assert torch.allclose(scale_boxes(boxes, size, 128, inverse=True), torch.tensor([[[0.0, 0.0, 100.0, 100.0]]]))
    img, regions, mask = encode_images(module, x[None], boxes, torch.ones(1, 1, dtype=torch.bool))
    assert img.shape == (1, module.model.embed_dim) and regions.shape == (1, 1, module.model.embed_dim)
    assert mask.all()


def test_bad_inputs_name_the_file(tmp_path: Path, tiny_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.ckpt: checkpoint not found"):
        load_module(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable"):
        load_module(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.ckpt: not an `align fit` checkpoint"):
        load_module(foreign)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    module = load_module(tiny_ckpt)
    with pytest.raises(ValueError, match="bad.jpg: cannot decode image"):
        load_image(bad, module.image_spec)
    with pytest.raises(FileNotFoundError, match="nope.png: image not found"):
        load_image(tmp_path / "nope.png", module.image_spec)
