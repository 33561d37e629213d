"""Event-aware CLIP: an open_clip model that also embeds image regions into the shared image/text space.

The OT loss aligns argument phrases with image regions, so regions must live in the same space as texts. A region
is RoIAligned from the vision tower's last spatial feature map and sent through the tower's own head:

* ViT: the patch-token grid after the last block (and ``ln_post``, in the order the tower's own pooling uses;
  the class token is not in the grid), RoIAligned to ``roi_output_size``^2 cells, averaged, then ``proj``.
  This is exactly the tower's ``pool_type='avg'`` path restricted to the box, so a whole-image box reproduces
  mean patch pooling.
* ModifiedResNet (RN50 style): the ``layer4`` map (before attention pooling), RoIAligned, then the tower's own
  ``attnpool`` over the region cells (its query is their mean; its positional embedding is resized to the cell
  grid), which ends in ``c_proj``. This is RegionCLIP's recipe (Zhong et al., CVPR 2022); with
  ``roi_output_size`` equal to the feature grid a whole-image box reproduces the global image embedding.
  ``region_head="res5"`` RoIAligns the ``layer3`` map instead (twice as fine: ``2 * roi_output_size`` cells) and
  runs ``layer4`` on each region before ``attnpool``: Faster R-CNN's C4 head (He et al. 2017), so a small box
  (a phone in a hand) is not a quarter of one ``layer4`` cell shared with its holder. The same whole-image
  identity holds (``layer4`` halves the RoI grid); the price is ``layer4`` once per region. The regions' pass
  through ``layer4`` uses (and never updates) the BatchNorm running statistics, as Faster R-CNN freezes them.
* timm conv towers (ConvNeXt, ResNet, ...): the trunk's NCHW ``forward_features`` map, RoIAligned, then the
  trunk's own head (global pool over the cells, any head norm) and open_clip's projection head.

Text goes through open_clip's own causal text transformer, trimmed: token i only attends to tokens <= i, so every
position up to the pooled one (EOT for ``argmax``) is independent of the padding after it. ``encode_text`` cuts each
row at its pooled position, sorts the rows by that length and runs the tower on a few length buckets (one
embedding lookup for all), which gives open_clip's embeddings at a fraction of the 77-token (32 for the tiny
configs) cost. Towers where that is not provably the same (HF towers, no causal mask, CoCa's class token, ``last``
pooling, blocks open_clip did not build) fall back to open_clip's own ``encode_text``. The blocks keep open_clip's
additive causal mask: SDPA with ``is_causal`` instead was within 4% on CPU (EventCLIP-Tiny fwd+bwd), not worth a
copy of open_clip's block.

Checkpoints go through open_clip's own loader (``weights_only`` torch.load or safetensors) and are saved in
open_clip's format, so they stay usable with plain open_clip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import (
    Attention,
    CustomResidualAttentionBlock,
    ResidualAttentionBlock,
    TextTransformer,
    Transformer,
    VisionTransformer,
)
from torch import nn
from torchvision.ops import roi_align

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Fixed cost of one more text-tower call (fwd+bwd: launches, a weight-gradient write per call), in padded tokens: a
# length bucket is only opened when it saves more tokens than this. CPU: a linear fit of time against N x L gave
# 29 tokens for EventCLIP-Tiny and 21 for ViT-B-32 (one thread). Accelerators run short sequences near their launch
# floor, so there a bucket must save far more; that figure is an estimate, not a measurement.
BUCKET_CALL_TOKENS = {"cpu": 32, "other": 4096}
RegionHead = Literal["pool", "res5"]
REGION_HEADS = ("pool", "res5")

if CONFIG_DIR.is_dir():  # the tiny EventCLIP-* configs; absent only in a non-editable install
    open_clip.add_model_config(CONFIG_DIR)


def _register_config_file(path: Path) -> str:
    """Register a standalone open_clip config JSON and return its model name (the file stem)."""
    if not path.is_file():
        raise FileNotFoundError(f"model config file not found: {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model config {path} is not valid JSON: {e}") from e
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(f"model config {path} lacks required keys {missing}")
    open_clip.add_model_config(path)
    return path.stem


def _checkpoint_file(pretrained: str | None) -> Path | None:
    """Return the checkpoint path if `pretrained` names a file (else it is an open_clip tag or None)."""
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    looks_like_path = path.suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in pretrained or path.exists()
    if not looks_like_path:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"unsupported checkpoint format {path}: expected one of {CHECKPOINT_SUFFIXES}")
    return path


def _load_checkpoint(clip: nn.Module, path: Path, model_name: str) -> None:
    """Load an open_clip-format state dict with open_clip's loader (weights_only, strict)."""
    try:
        open_clip.load_checkpoint(clip, str(path), strict=True, weights_only=True)
    except Exception as e:  # any failure here is about this file: corrupt, pickled objects, wrong architecture
        raise ValueError(f"could not load checkpoint {path} into model {model_name!r}: {type(e).__name__}: {e}") from e


def _attnpool_cells(pool: AttentionPool2d, cells: torch.Tensor) -> torch.Tensor:
    """Run a ModifiedResNet attention pool over (K, C, s, s) region cells, resizing its positional embedding."""
    k, c, s, _ = cells.shape
    pos = pool.positional_embedding
    g = math.isqrt(pos.shape[0] - 1)
    if s != g:
        grid = pos[1:].reshape(1, g, g, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(s * s, c)])
    x = cells.flatten(2).permute(2, 0, 1)  # (s*s, K, C), the layout AttentionPool2d.forward uses
    x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pos[:, None, :].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=x[:1],  # only the mean (query) token's output is used, as in AttentionPool2d
        key=x,
        value=x,
        embed_dim_to_check=c,
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=pool.training,
        need_weights=False,
    )
    return out[0]


@contextmanager
def _running_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` normalise with their running statistics and leave them alone, in training too.

    For the res5 region head: regions are a different population from whole images (hundreds of crops a batch), so
    their batch statistics would drag the running ones away from what the global embedding is normalised with at
    evaluation (on EventWorld, image->text hit@1 fell from 0.30 to 0.17 after 400 steps); and with running
    statistics a region is embedded the same way in training and at inference.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.train(False)
    try:
        yield
    finally:
        for m in bns:
            m.train(True)


def _causal_text_tower(clip: nn.Module) -> tuple[str, str, int | None] | None:
    """(submodule path, pool type, EOS id) of a text tower that trimming reproduces exactly, else None.

    Exact means: open_clip's unmodified ``CLIP.encode_text`` or ``TextTransformer.forward`` (no class token, no pad
    mask, no token outputs), a strictly causal additive mask, pooling at a position computed from the tokens alone
    (``argmax``, ``eos``, ``first``), and open_clip's own blocks, where only attention mixes positions.
    """
    if type(clip).encode_text is open_clip.model.CLIP.encode_text:
        path, tower, pool, eos = "", clip, clip.text_pool_type, clip.text_eos_id
    elif type(clip).encode_text is open_clip.model.CustomTextCLIP.encode_text and type(clip.text) is TextTransformer:
        path, tower, pool, eos = "text", clip.text, clip.text.pool_type, clip.text.eos_id
        if tower.cls_emb is not None or tower.use_pad_mask or tower.output_tokens:
            return None
    else:
        return None
    mask = tower.attn_mask
    if pool not in ("argmax", "eos", "first") or mask is None or type(tower.transformer) is not Transformer:
        return None
    if not torch.equal(mask, torch.full_like(mask, float("-inf")).triu(1)):
        return None
    for block in tower.transformer.resblocks:
        plain = type(block) is ResidualAttentionBlock and type(block.attn) is nn.MultiheadAttention
        if not (plain or (type(block) is CustomResidualAttentionBlock and type(block.attn) is Attention)):
            return None
    return path, pool, eos


def _bucket_ends(lengths: list[int], call_tokens: float) -> list[int]:
    """Exclusive ends of the runs that split ascending `lengths` with the fewest padded tokens + `call_tokens` per
    run (an exact search over the cut points where the length changes; at most context-length many)."""
    cuts = [i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] != lengths[i]]
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for j in cuts:
        best[j] = min((best[i][0] + (j - i) * lengths[j - 1] + call_tokens, [*best[i][1], j])
                      for i in (0, *cuts) if i < j)
    return best[len(lengths)][1]


class EventCLIP(nn.Module):
    """open_clip model with global image/text embeddings plus region embeddings from one backbone pass."""

    def __init__(
        self,
        model_name: str = "EventCLIP-Tiny",
        pretrained: str | None = None,
        precision: str = "fp32",
        lock_image: bool = False,
        lock_text: bool = False,
        grad_checkpointing: bool = False,
        roi_output_size: int = 2,
        grid_regions: int = 3,
        region_head: RegionHead = "pool",
    ) -> None:
        """Build `model_name` (open_clip name, EventCLIP-* config, or a config .json path).

        `pretrained` is an open_clip tag (downloaded by open_clip) or a local .pt/.pth/.bin/.safetensors file.
        `grid_regions` n gives the n x n grid of regions used when no boxes are passed. `region_head`: "pool"
        (RoIAlign the last map, then the tower's pooling) or "res5" (ModifiedResNet only: RoIAlign ``layer3``,
        run ``layer4`` per region; see the module docstring).
        """
        super().__init__()
        if roi_output_size < 1 or grid_regions < 1:
            raise ValueError(f"roi_output_size and grid_regions must be >= 1, got {roi_output_size}, {grid_regions}")
        if region_head not in REGION_HEADS:
            raise ValueError(f"region_head must be one of {REGION_HEADS}, got {region_head!r}")
        name = _register_config_file(Path(model_name)) if model_name.endswith(".json") else model_name
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            tiny = [m for m in open_clip.list_models() if m.startswith("EventCLIP")]
            raise ValueError(
                f"unknown model {model_name!r}: not an open_clip config (see open_clip.list_models()); "
                f"tiny configs: {tiny}"
            )
        checkpoint = _checkpoint_file(pretrained)
        # Regions need the full patch grid, so patch dropout is always off.
        self.clip = open_clip.create_model(
            name, pretrained=None if checkpoint else pretrained, precision=precision, force_patch_dropout=0.0
        )
        if checkpoint is not None:
            _load_checkpoint(self.clip, checkpoint, name)
        self.model_name = name
        self.tokenizer: Callable[[list[str]], torch.Tensor] = open_clip.get_tokenizer(name)
        self.embed_dim = int(cfg["embed_dim"])
        size = self.clip.visual.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height != width:
            raise ValueError(f"model {name!r} has non-square input {height}x{width}; region boxes assume square")
        self.image_size = int(height)
        if region_head == "res5" and not isinstance(self.clip.visual, ModifiedResNet):
            raise ValueError(f"region_head 'res5' needs a ModifiedResNet tower, {name!r} has "
                             f"{type(self.clip.visual).__name__}")
        self.roi_output_size = roi_output_size
        self.grid_regions = grid_regions
        self.region_head = region_head
        self._input_dtype = open_clip.get_input_dtype(precision)
        if lock_image:  # LiT; frozen BN statistics so a locked ResNet does not drift either
            self.clip.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        if lock_text:
            self.clip.lock_text_tower()
        # A no-op for ModifiedResNet in open_clip: there it only covers the text tower.
        self.clip.set_grad_checkpointing(grad_checkpointing)
        self._causal_text = _causal_text_tower(self.clip)

    @property
    def logit_scale(self) -> nn.Parameter:
        """Learnable log temperature, as in open_clip."""
        return self.clip.logit_scale

    @property
    def preprocess_cfg(self) -> dict:
        """open_clip preprocessing settings (size, mean, std, interpolation) for building image transforms."""
        return open_clip.get_model_preprocess_cfg(self.clip)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D) L2-normalised text embeddings, as open_clip's ``encode_text`` gives them.

        Causal towers run trimmed to each row's pooled position, in length buckets (see the module docstring);
        this reads the lengths on the host, one device sync per call.
        """
        if self._causal_text is None or tokens.ndim != 2 or tokens.shape[0] == 0:
            return self.clip.encode_text(tokens, normalize=True)
        return F.normalize(self._encode_text_trimmed(tokens), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, D) L2-normalised image embeddings."""
        return self.clip.encode_image(self._check_images(images), normalize=True)

    def encode_image_and_regions(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global and region embeddings from one backbone pass.

        `boxes` (B, R, 4) are xyxy pixels of the input image (clipped to it); `box_mask` (B, R) marks real boxes
        (default: all). Without boxes every image gets the `grid_regions` x `grid_regions` grid. Returns
        normalised (B, D) globals, (B, R, D) regions (zeros where masked out) and the (B, R) bool mask.
        """
        images = self._check_images(images)
        batch = images.shape[0]
        if boxes is None:
            if box_mask is not None:
                raise ValueError("box_mask given without boxes")
            boxes = self.grid_boxes(self.image_size, self.grid_regions).to(images.device).expand(batch, -1, -1)
        boxes, box_mask = self._check_boxes(boxes, box_mask, batch, images.device)
        fmap, pooled = self._features(images)
        regions = self._regions(fmap, boxes, box_mask, pooled.dtype)
        return F.normalize(pooled, dim=-1), regions, box_mask

    @staticmethod
    def grid_boxes(image_size: int, n: int) -> torch.Tensor:
        """(n*n, 4) xyxy pixel boxes tiling a square image row by row."""
        edges = torch.linspace(0.0, float(image_size), n + 1)
        y0, x0 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
        y1, x1 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
        return torch.stack([x0, y0, x1, y1], dim=-1).reshape(n * n, 4)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write the open_clip-format state dict (.safetensors, else torch .pt) loadable via `pretrained`."""
        path = Path(path)
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"unsupported checkpoint format {path}: expected one of {CHECKPOINT_SUFFIXES}")
        state = {k: v.detach().contiguous().cpu() for k, v in self.clip.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    # -- internals -------------------------------------------------------------------------------------------

    def _encode_text_trimmed(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's causal ``encode_text`` (unnormalised) on rows cut after their pooled position, by buckets."""
        path, pool, eos = self._causal_text
        tower = self.clip.get_submodule(path)
        if pool == "argmax":  # the pooled positions exactly as open_clip's text_global_pool finds them
            pos = tokens.argmax(dim=-1)
        elif pool == "eos":
            pos = (tokens == eos).int().argmax(dim=-1)
        else:
            pos = torch.zeros_like(tokens[:, 0])
        order = torch.argsort(pos, stable=True)
        pos = pos[order]
        lengths = (pos + 1).tolist()
        dtype = tower.transformer.get_cast_dtype()
        # One embedding lookup for every bucket: its backward writes a dense vocabulary-sized gradient per call.
        x = tower.token_embedding(tokens[order, : lengths[-1]]).to(dtype)
        x = x + tower.positional_embedding[: lengths[-1]].to(dtype)
        pooled, start = [], 0
        for end in _bucket_ends(lengths, BUCKET_CALL_TOKENS.get(tokens.device.type, BUCKET_CALL_TOKENS["other"])):
            n = lengths[end - 1]
            h = tower.transformer(x[start:end, :n], attn_mask=tower.attn_mask[:n, :n])
            pooled.append(h[torch.arange(end - start, device=h.device), pos[start:end]])
            start = end
        out = tower.ln_final(torch.cat(pooled))  # per-token LayerNorm: pooling first changes nothing
        proj = tower.text_projection
        if proj is not None:
            out = proj(out) if isinstance(proj, nn.Linear) else out @ proj
        return out[torch.argsort(order)]

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Reject wrongly shaped batches early (positional embeddings fix the size) and cast to the model dtype."""
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        return images.to(dtype=self._input_dtype) if self._input_dtype is not None else images

    def _check_boxes(
        self, boxes: torch.Tensor, box_mask: torch.Tensor | None, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate shapes, clip boxes to the image, and reject empty real boxes with their position."""
        if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B={batch}, R, 4), got {tuple(boxes.shape)}")
        boxes = boxes.to(device=device, dtype=torch.float32)
        if box_mask is None:
            box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=device)
        elif tuple(box_mask.shape) != tuple(boxes.shape[:2]):
            raise ValueError(f"box_mask must be {tuple(boxes.shape[:2])}, got {tuple(box_mask.shape)}")
        box_mask = box_mask.to(device=device, dtype=torch.bool)
        clipped = boxes.clamp(0.0, float(self.image_size))
        empty = ~((clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1]))  # also NaN
        bad = (box_mask & empty).nonzero()
        if len(bad):
            b, r = bad[0].tolist()
            raise ValueError(
                f"box {r} of image {b} is empty or non-finite after clipping to the "
                f"{self.image_size}px image: {boxes[b, r].tolist()}"
            )
        return clipped, box_mask

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass: (B, C, h, w) feature map for regions and the tower's (B, D) global embedding."""
        visual = self.clip.visual
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg") or visual.proj is None:
                raise ValueError(
                    f"model {self.model_name!r}: region pooling needs a ViT with tok/avg pooling "
                    "and a projection (no attentional pooler)"
                )
            x = visual.transformer(visual._embeds(images))
            pooled, tokens = visual._pool(x)  # tokens: patch tokens, after ln_post unless final_ln_after_pool
            h, w = visual.grid_size
            fmap = tokens.reshape(images.shape[0], h, w, -1).permute(0, 3, 1, 2)
            return fmap, pooled @ visual.proj
        if isinstance(visual, ModifiedResNet):
            c4 = visual.layer3(visual.layer2(visual.layer1(visual.stem(images))))
            fmap = visual.layer4(c4)
            return (c4 if self.region_head == "res5" else fmap), visual.attnpool(fmap)
        if isinstance(visual, TimmModel):
            if "pool" in visual.head._modules:
                raise ValueError(
                    f"model {self.model_name!r}: timm attention-pool heads are fixed to the full "
                    "feature grid; use timm_pool 'avg' for region embeddings"
                )
            fmap = visual.trunk.forward_features(images)
            if fmap.ndim != 4 or fmap.shape[1] != visual.trunk.num_features:
                raise ValueError(
                    f"model {self.model_name!r}: timm trunk gives {tuple(fmap.shape)} features, "
                    "not an NCHW map; region embeddings need a convolutional timm tower"
                )
            return fmap, visual.head(visual.trunk.forward_head(fmap))
        raise ValueError(
            f"model {self.model_name!r}: region embeddings support open_clip ViT, ModifiedResNet and timm "
            f"conv towers, not {type(visual).__name__}"
        )

    def _region_head(self, cells: torch.Tensor) -> torch.Tensor:
        """(K, C, s, s) RoI cells -> (K, D) unnormalised embeddings through the tower's own head."""
        visual = self.clip.visual
        if isinstance(visual, ModifiedResNet):
            if self.region_head == "res5":
                with _running_bn_stats(visual.layer4):
                    cells = visual.layer4(cells)
            return _attnpool_cells(visual.attnpool, cells)
        if isinstance(visual, TimmModel):
            return visual.head(visual.trunk.forward_head(cells))
        pooled = cells.mean(dim=(2, 3))
        if visual.final_ln_after_pool:
            pooled = visual.ln_post(pooled)
        return pooled @ visual.proj

    def _regions(
        self, fmap: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """RoIAlign the real boxes, embed them, and scatter into a zero-padded (B, R, D) tensor of `dtype`."""
        out = fmap.new_zeros(*box_mask.shape, self.embed_dim, dtype=dtype)
        idx = box_mask.nonzero()
        if len(idx) == 0:
            return out
        rois = torch.cat([idx[:, :1].to(boxes.dtype), boxes[idx[:, 0], idx[:, 1]]], dim=1)
        # aligned=True + adaptive sampling: a whole-image box samples exactly the cell centres.
        cells = roi_align(
            fmap.float(),
            rois,
            output_size=self.roi_output_size * (2 if self.region_head == "res5" else 1),  # layer4 halves it
            spatial_scale=fmap.shape[-1] / self.image_size,
            sampling_ratio=-1,
            aligned=True,
        ).to(fmap.dtype)
        emb = F.normalize(self._region_head(cells), dim=-1)
        return out.index_put((idx[:, 0], idx[:, 1]), emb.to(out.dtype))
