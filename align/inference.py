"""Using a trained checkpoint outside the Trainer: load it, read images, encode texts and images.

Every downstream command (`align export`, `align ground`, `align predict-mee`, the evaluation benchmarks) goes
through these functions, so a checkpoint is read one way (no unpickling) and an image is preprocessed exactly
as `align.batch` does during training (resize to the model's square input without keeping the aspect ratio,
so boxes map by a plain scale).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align.batch import ImageDecoder, ImageError
from align.data import CLIP_MEAN, CLIP_STD
from align.hparams import EvalConfig, LossWeights, OptimConfig, OTConfig
from align.losses import ContrastiveLossConfig
from align.module import EventAlignModule

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default bomb limit, as in EventDataModule


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not one of this library's; the message names the file."""


@dataclass(frozen=True)
class ImageSpec:
    """How the checkpoint's model wants its images: square side in pixels and normalisation."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


_CONFIG_CLASSES = {"contrastive": ContrastiveLossConfig, "weights": LossWeights, "ot": OTConfig,
                   "optim": OptimConfig, "evaluation": EvalConfig}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with `weights_only=True`; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not an `align fit` checkpoint (needs 'state_dict' and 'hyper_parameters')")
    return ckpt


def load_module(path: str | Path, device: str | torch.device = "cpu") -> EventAlignModule:
    """The trained `EventAlignModule` of an `align fit` checkpoint, in eval mode on `device`."""
    ckpt = read_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    hp.pop("init_from", None)  # the weights below replace whatever started the run
    hp.pop("pretrained", None)  # and no download or local file is needed to rebuild the towers
    for name, cls in _CONFIG_CLASSES.items():
        if isinstance(hp.get(name), dict):
            hp[name] = cls(**hp[name])
    quiet = logging.getLogger()  # open_clip warns "initialized randomly"; the weights are loaded just below
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        module = EventAlignModule(**hp)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its hyper-parameters: {e}") from e
    finally:
        quiet.setLevel(level)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [m for m in missing if not m.startswith(("hardneg_acc", "grounding_acc"))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match {hp.get('model_name')}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    module.image_spec = image_spec(ckpt, module)
    return module.eval().to(device)


def image_spec(ckpt: dict[str, Any], module: EventAlignModule) -> ImageSpec:
    """Image size and normalisation the run trained with (the data config in the checkpoint), else CLIP's."""
    data = ckpt.get("datamodule_hyper_parameters") or (ckpt.get("eventalign") or {}).get("config", {}).get("data") or {}
    mean, std = tuple(data.get("mean") or CLIP_MEAN), tuple(data.get("std") or CLIP_STD)
    return ImageSpec(size=module.model.image_size, mean=mean, std=std)  # type: ignore[arg-type]


def load_image(source: str | Path | bytes, spec: ImageSpec,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Tensor, tuple[int, int]]:
    """(3, S, S) normalised tensor and the original (width, height), decoded by the training loader's own
    `ImageDecoder`. Errors name the file: FileNotFoundError, or ValueError (an `ImageError`, whose `reason` is the
    loader's skip counter key) for an image that is too large or cannot be decoded."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        x, size = ImageDecoder(spec.size, spec.mean, spec.std, max_pixels)(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: image not found") from e
    except ImageError as e:
        raise ImageError(e.reason, f"{name}: {e}") from e
    return torch.from_numpy(x), size


def scale_boxes(boxes: Tensor, size: tuple[int, int], side: int, inverse: bool = False) -> Tensor:
    """xyxy boxes from original (width, height) pixels to the model's `side` x `side` input, or back."""
    w, h = size
    s = boxes.new_tensor([side / w, side / h, side / w, side / h])
    return boxes / s if inverse else boxes * s


@torch.no_grad()
def encode_texts(module: EventAlignModule, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """(N, D) normalised float32 text embeddings on the module's device."""
    device = next(module.parameters()).device
    out = [module.model.encode_text(module.model.tokenizer(list(texts[i:i + batch_size])).to(device)).float()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, module.model.embed_dim, device=device)


@torch.no_grad()
def encode_images(module: EventAlignModule, images: Tensor, boxes: Tensor | None = None,
                  box_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Global (B, D), region (B, R, D) embeddings and the region mask, for model-input-pixel `boxes`
    (B, R, 4); without boxes, the model's grid regions."""
    device = next(module.parameters()).device
    b = boxes.to(device) if boxes is not None else None
    m = box_mask.to(device) if box_mask is not None else None
    img, regions, mask = module.model.encode_image_and_regions(images.to(device), b, m)
    return img.float(), regions.float(), mask


def type_prompts(module: EventAlignModule, style: str = "long") -> tuple[list[str], list[str]]:
    """(type names, prompt texts) for zero-shot event typing: each type's template with role placeholders; `long`
    (the default) is the kind of text the demo configs train on as positives (the ablation's full model types 0.64
    of the EventWorld test images right with `long`, 0.08 with `short`)."""
    names = list(module.ontology.type_names)
    return names, [module.ontology[n].render({}, style=style) for n in names]
