"""`align ground`: which box in an image each argument of a sentence's event refers to.

    align ground --ckpt C --image IMG --text "..." [--boxes BOXES.json] [--out-json G.json] [--out-png G.png]

The text goes through the project's caption IE (`data_gen.extract`, backend `rules`); when it finds several
events, the salient one is picked with the image's zero-shot type scores as prior (`data_gen.salient`). Each
argument is encoded as `"Role: text"`, the format the OT head was trained on (`align.batch`), and the OT plan
between arguments and candidate regions (`align.ot`, solver options from the checkpoint's `ot` config)
grounds every argument in the region carrying most of its mass. With `--boxes` (object boxes) an argument that
spreads its mass over several objects ("protesters") gets their union (`align.grounding.ground_union` with the
checkpoint's `grounding_share`); sliding windows overlap, so there each argument keeps its top window. A text
without an extractable event gets the image's zero-shot event type and no arguments, and the JSON says so in
`note`.

Candidate regions: `--boxes` (a JSON list of `[x1, y1, x2, y2]` in the image's pixels, or a detector file
`{image_id: [[x1, y1, x2, y2, label?, score?], ...]}` as `data-gen build --regions json:` reads, keyed by the
image's file stem), else `grid_proposals`: sliding windows at 5 scales and 3 aspect ratios (EventWorld and most
user images come without a detector). Boxes are clipped to the image; ones wholly outside are dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from align.atomic import atomic_open, atomic_write_text
from align.grounding import grounded_regions, union_boxes
from align.inference import (
    CheckpointError,
    encode_images,
    encode_texts,
    load_image,
    load_module,
    scale_boxes,
    type_prompts,
)
from align.module import EventAlignModule
from align.ot import cosine_cost, grounding_plan
from align.ot import ground as ground_plan

Box = list[float]
# window side as a fraction of the image side, and (width, height) multipliers: square, tall (people), wide
GRID_SCALES = (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 6)
GRID_ASPECTS = ((1.0, 1.0), (1.0, 2.0), (2.0, 1.0))
PALETTE = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (0, 160, 160),
           (240, 50, 230), (128, 128, 0), (170, 110, 40), (0, 0, 128))


# --------------------------------------------------------------------------- candidate regions
def grid_proposals(width: int, height: int, scales: Sequence[float] = GRID_SCALES,
                   aspects: Sequence[tuple[float, float]] = GRID_ASPECTS, overlap: float = 0.5) -> list[Box]:
    """Multi-scale sliding windows in pixels: for each scale s and aspect (a, b), windows of s*a x s*b of the
    image's width x height (those that fit), evenly spaced so neighbours overlap by about `overlap`."""
    out: list[Box] = []
    for s in scales:
        for ax, ay in aspects:
            if s * ax > 1.0 or s * ay > 1.0:
                continue
            w, h = width * s * ax, height * s * ay
            nx = max(1, round((width - w) / (w * (1 - overlap))) + 1)
            ny = max(1, round((height - h) / (h * (1 - overlap))) + 1)
            for j in range(ny):
                for i in range(nx):
                    x = (width - w) * i / (nx - 1) if nx > 1 else 0.0
                    y = (height - h) * j / (ny - 1) if ny > 1 else 0.0
                    box = [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]
                    if box not in out:
                        out.append(box)
    return out


def clip_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> list[Box]:
    """Boxes clipped to the image; boxes with no area inside it are dropped."""
    out = []
    for x1, y1, x2, y2 in boxes:
        b = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if b[2] > b[0] and b[3] > b[1]:
            out.append(b)
    return out


def read_boxes(path: str | Path, image_id: str) -> list[Box]:
    """Candidate boxes from a JSON list `[[x1, y1, x2, y2], ...]` or a detector file keyed by image id."""
    from data_gen.build import RegionsError, load_detections

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read boxes: {e}") from e
    if isinstance(data, dict):
        try:
            detections = load_detections(str(path), fresh=True)
        except RegionsError as e:
            raise ValueError(str(e)) from e
        if image_id not in detections:
            raise ValueError(f"{path}: no entry for image {image_id!r}")
        return [list(box) for box, _, _ in detections[image_id]]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of [x1, y1, x2, y2] boxes or {{image_id: [...]}}")
    for i, b in enumerate(data):
        ok = isinstance(b, list) and len(b) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        if not ok or b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"{path}: box {i}: expected [x1, y1, x2, y2] with x1 <= x2, y1 <= y2, got {b!r}")
    return [[float(v) for v in b] for b in data]


# --------------------------------------------------------------------------- OT grounding
def module_plan(module: EventAlignModule, texts: Tensor, text_mask: Tensor, regions: Tensor,
                region_mask: Tensor) -> Tensor:
    """The (B, N, R) grounding plan of texts (B, N, D) over regions (B, R, D), as the module's metric builds it."""
    c = module.ot_config
    return grounding_plan(texts, regions, text_mask, region_mask, marginals=module.evaluation.grounding_decoder,
                          eps=c.eps, n_iters=c.n_iters, reg_m=c.reg_m, method=c.method)


@torch.no_grad()
def ot_ground(module: EventAlignModule, texts: Tensor, text_mask: Tensor, regions: Tensor,
              region_mask: Tensor, plan: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Ground texts (B, N, D) in regions (B, R, D) with the module's OT solver: per text the region index
    (-1 where masked or no region), its cosine similarity, and the share of the text's mass it carries.
    `plan`: `module_plan`'s, when the caller already has it."""
    cost = cosine_cost(texts, regions)
    plan = module_plan(module, texts, text_mask, regions, region_mask) if plan is None else plan
    dummy = torch.zeros(*regions.shape[:2], 4, device=regions.device)
    idx, _ = ground_plan(plan, dummy, text_mask, region_mask)
    at = idx.clamp_min(0)[..., None]
    sim = (1.0 - cost).gather(2, at)[..., 0]
    share = plan.gather(2, at)[..., 0] / plan.sum(2).clamp_min(1e-12)
    found = idx >= 0
    return idx, torch.where(found, sim, 0.0), torch.where(found, share, 0.0)


def type_scores(module: EventAlignModule, image_emb: Tensor, prompt_emb: Tensor) -> Tensor:
    """(B, T) zero-shot event-type probabilities: softmax of the model's scaled image-prompt similarities."""
    scale = module.model.logit_scale.exp().clamp(max=100.0).float()
    return (scale * image_emb @ prompt_emb.T).softmax(-1)


def ground(module: EventAlignModule, image: str | Path, text: str, boxes: Sequence[Sequence[float]] | None = None,
           extractor: Any | None = None, prompt_style: str = "long") -> dict[str, Any]:
    """Event type, arguments and a box per argument (original pixels) for `text` about `image`.

    `boxes`: candidate regions in the image's pixels (default: `grid_proposals`); `extractor`: a
    `data_gen.extract` backend (default: `rules`); `prompt_style`: the type templates (`long` / `short`) of
    the image's zero-shot type scores.
    """
    from data_gen.extract import get_extractor
    from data_gen.salient import select_salient

    x, (w, h) = load_image(image, module.image_spec)
    source = "boxes" if boxes is not None else "grid"
    cand = clip_boxes(boxes, w, h) if boxes is not None else grid_proposals(w, h)
    if not cand:
        raise ValueError(f"{image}: none of the {len(boxes or [])} candidate boxes lies inside the "
                         f"{w}x{h} image")
    side = module.image_spec.size
    model_boxes = scale_boxes(torch.tensor([cand], dtype=torch.float32), (w, h), side)
    img, regions, region_mask = encode_images(module, x[None], model_boxes, torch.ones(1, len(cand), dtype=torch.bool))
    names, prompts = type_prompts(module, prompt_style)
    probs = type_scores(module, img, encode_texts(module, prompts))[0].tolist()
    prior = dict(zip(names, probs))
    ontology = module.ontology
    events = [e for e in (ontology.normalize(ev) for ev in (extractor or get_extractor("rules")).extract([text])[0])
              if e is not None]
    merged, salient = select_salient(events, ontology, image_prior=prior)
    out: dict[str, Any] = {
        "image": str(image), "width": w, "height": h, "text": text,
        "image_type_scores": {n: round(p, 4) for n, p in sorted(prior.items(), key=lambda kv: -kv[1])},
        "regions": {"source": source, "count": len(cand)},
    }
    if salient is None:
        out.update(event_type=max(prior, key=prior.__getitem__), event_source="image", trigger=None, arguments=[],
                   note="no event found in the text: event type from the image's zero-shot scores, no arguments")
        return out
    event = merged[salient]
    out.update(event_type=event.type, event_source="text", trigger=event.trigger.text)
    args = event.arguments
    if not args:
        out.update(arguments=[], note="the text's event has no arguments to ground")
        return out
    emb = encode_texts(module, [f"{a.role}: {a.text}" for a in args])[None]
    arg_mask = torch.ones(1, len(args), dtype=torch.bool, device=regions.device)
    with torch.no_grad():
        plan = module_plan(module, emb, arg_mask, regions, region_mask)
    idx, sim, share = ot_ground(module, emb, arg_mask, regions, region_mask, plan)
    # object boxes: a plural argument spans its instances; overlapping sliding windows are no instances
    picked = grounded_regions(plan, arg_mask, region_mask,
                              module.evaluation.grounding_share if boxes is not None else 1.0).cpu()
    union = union_boxes(picked, torch.tensor([cand], dtype=torch.float64))[0]
    out["arguments"] = [
        {"role": a.role, "text": a.text, "box": [round(float(v), 1) for v in u],
         "regions": p.nonzero()[:, 0].tolist(), "top_region": int(i), "score": round(float(s), 4),
         "share": round(float(m), 4)}
        for a, u, p, i, s, m in zip(args, union, picked[0], idx[0], sim[0], share[0])]
    return out


# --------------------------------------------------------------------------- drawing
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def draw_grounding(image: Image.Image, items: Sequence[dict[str, Any]], title: str | None = None,
                   min_side: int = 384) -> Image.Image:
    """The image with one box per item (`{"role", "box", "text"?}`, original pixels), outlined and labelled
    `Role: text` in a colour per role; upscaled so the short side is at least `min_side` (labels stay
    readable on 128 px images), with an optional title strip on top."""
    scale = max(1.0, min_side / max(1, min(image.size)))
    big = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                      Image.Resampling.BICUBIC)
    font_size = max(12, round(min(big.size) / 28))
    font = _font(font_size)
    title_h = font_size + 10 if title else 0
    canvas = Image.new("RGB", (big.width, big.height + title_h), (255, 255, 255))
    canvas.paste(big, (0, title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
    colours: dict[str, tuple[int, int, int]] = {}
    width = max(2, round(scale))
    labels = []
    for item in items:  # boxes first, then labels, so no outline crosses a label
        colour = colours.setdefault(item["role"], PALETTE[len(colours) % len(PALETTE)])
        x1, y1, x2, y2 = (v * scale for v in item["box"])
        draw.rectangle((x1, y1 + title_h, x2, y2 + title_h), outline=colour, width=width)
        labels.append((item["role"] + (f": {item['text']}" if item.get("text") else ""), x1, y1 + title_h, colour))
    placed: list[tuple[float, float, float, float]] = []
    for label, x1, y1, colour in labels:
        label = label if len(label) <= 32 else label[:31] + "…"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), label, font=font)
        tw, th = tx2 - tx1 + 6, ty2 - ty1 + 6
        lx = min(max(0.0, x1), canvas.width - tw)
        ly = y1 - th if y1 - th >= title_h else y1  # above the box, else just inside it
        while any(lx < r[2] and r[0] < lx + tw and ly < r[3] and r[1] < ly + th for r in placed):
            ly += th  # stack labels that would overlap an earlier one
        placed.append((lx, ly, lx + tw, ly + th))
        draw.rectangle((lx, ly, lx + tw, ly + th), fill=colour)
        draw.text((lx + 3 - tx1, ly + 3 - ty1), label, fill=(255, 255, 255), font=font)
    return canvas


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="align ground", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="an `align fit` checkpoint")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--text", required=True, help="a sentence about the image (a caption)")
    p.add_argument("--boxes", help="candidate boxes: JSON list of [x1, y1, x2, y2] in image pixels, or a detector "
                                   "file {image_id: [[x1, y1, x2, y2, label?, score?], ...]} (id = file stem); "
                                   "default: multi-scale grid proposals")
    p.add_argument("--prompt-style", choices=("long", "short"), default="long",
                   help="type templates for the image's zero-shot type scores (default: long)")
    p.add_argument("--out-json", help="write the result here (default: print it)")
    p.add_argument("--out-png", help="write the image with labelled boxes here")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        module = load_module(args.ckpt, args.device)
        boxes = read_boxes(args.boxes, Path(args.image).stem) if args.boxes else None
        result = ground(module, args.image, args.text, boxes, prompt_style=args.prompt_style)
        if args.out_png:
            with Image.open(args.image) as im:
                title = f"{result['event_type']} ({result['event_source']})"
                png = draw_grounding(im, result["arguments"], title=title)
            with atomic_open(args.out_png, "wb") as f:
                png.save(f, "PNG")
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"align ground: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out_json:
        atomic_write_text(args.out_json, text + "\n")
    else:
        print(text)
    return 0
