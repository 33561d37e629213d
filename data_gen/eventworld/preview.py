"""Preview grid: sample images with their wrapped captions underneath, written as one PNG (for the README)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from align.atomic import atomic_open
from align.schema import Sample


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def preview_grid(samples: Sequence[Sample], path: str | Path, cols: int = 4, *, boxes: bool = False,
                 font_size: int = 13) -> Path:
    """Write a PNG grid of the samples' images, each with its event type and wrapped caption below.

    With `boxes`, argument boxes are outlined and labelled with their role (useful to check the gold).
    """
    if not samples:
        raise ValueError("preview_grid needs at least one sample")
    images = []
    for s in samples:
        if s.image is None:
            raise ValueError(f"sample {s.key!r} has no image bytes")
        images.append(Image.open(io.BytesIO(s.image)).convert("RGB"))
    cell = max(im.width for im in images)
    font = _font(font_size)
    chars = max(12, int(cell / (font_size * 0.55)))
    texts = []
    for s in samples:
        head = s.events[0].type if s.events else ""
        texts.append([head] + textwrap.wrap(s.caption, chars))
    line_h = font_size + 3
    text_h = line_h * max(len(t) for t in texts) + 6
    pad = 8
    cols = max(1, min(cols, len(samples)))
    rows = (len(samples) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (s, im, lines) in enumerate(zip(samples, images, texts)):
        x = pad + (i % cols) * (cell + pad)
        y = pad + (i // cols) * (cell + text_h + pad)
        if boxes and s.events:
            im = im.copy()
            d = ImageDraw.Draw(im)
            for a in s.events[0].arguments:
                if a.box is not None and a.role != "Place":
                    d.rectangle(a.box, outline=(255, 0, 255))
                    d.text((a.box[0] + 2, a.box[1] + 1), a.role, fill=(255, 0, 255), font=_font(10))
        grid.paste(im, (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + cell + 4 + j * line_h), line, fill=(0, 0, 0) if j else (30, 60, 160), font=font)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        grid.save(f, "PNG")
    return path
