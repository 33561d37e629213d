"""Backgrounds: one recognisable palette and skyline per place kind (street, desert, parliament, market, port).

A background depends only on (place, variant, size, flag) and is cached, so a sample pays for a copy instead
of redrawing the skyline; the cache never changes what a given seed and index render.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw

from data_gen.eventworld.draw import Color

PLACES = ("street", "desert", "parliament", "market", "port")
BG_VARIANTS = 6


def horizon(variant: int) -> float:
    """Relative y of the horizon: figures stand below it, the skyline rises above it."""
    return 0.56 + 0.012 * (variant % 3)


def _sky(d: ImageDraw.ImageDraw, size: int, top: Color, bottom: Color, hz: float) -> None:
    bands = 8
    for i in range(bands):
        t = i / (bands - 1)
        c = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        d.rectangle((0, round(size * hz * i / bands), size, round(size * hz * (i + 1) / bands) + 1), fill=c)


def _street(d: ImageDraw.ImageDraw, s: int, hz: float, rng: random.Random) -> None:
    _sky(d, s, (150, 192, 232), (212, 228, 242), hz)
    palette = ((150, 150, 158), (186, 170, 150), (164, 122, 102), (202, 196, 180), (122, 132, 148))
    x = -rng.uniform(0.0, 0.06)
    while x < 1.0:
        w = rng.uniform(0.1, 0.18)
        top = hz - rng.uniform(0.14, 0.42)
        d.rectangle((x * s, top * s, (x + w) * s, hz * s), fill=rng.choice(palette), outline=(90, 90, 96))
        for wx in range(int(w / 0.045)):
            for wy in range(int((hz - top - 0.04) / 0.06)):
                px, py = x + 0.015 + wx * 0.045, top + 0.025 + wy * 0.06
                d.rectangle((px * s, py * s, (px + 0.022) * s, (py + 0.03) * s), fill=(220, 230, 240))
        x += w + rng.uniform(0.0, 0.02)
    d.rectangle((0, hz * s, s, (hz + 0.07) * s), fill=(192, 190, 182))
    d.rectangle((0, (hz + 0.07) * s, s, s), fill=(96, 98, 102))
    d.line((0, (hz + 0.07) * s, s, (hz + 0.07) * s), fill=(230, 230, 230), width=max(1, s // 128))
    for i in range(6):
        x0 = (i / 6 + rng.uniform(0, 0.03)) * s
        d.rectangle((x0, (hz + 0.16) * s, x0 + 0.07 * s, (hz + 0.172) * s), fill=(236, 236, 220))


def _desert(d: ImageDraw.ImageDraw, s: int, hz: float, rng: random.Random) -> None:
    _sky(d, s, (236, 206, 160), (250, 236, 206), hz)
    cx = rng.uniform(0.15, 0.85)
    d.ellipse(((cx - 0.06) * s, 0.08 * s, (cx + 0.06) * s, 0.2 * s), fill=(255, 246, 214))
    for _ in range(2):
        x0 = rng.uniform(-0.1, 0.6)
        w = rng.uniform(0.25, 0.45)
        h = rng.uniform(0.06, 0.12)
        d.polygon(((x0 * s, hz * s), ((x0 + 0.06) * s, (hz - h) * s), ((x0 + w - 0.06) * s, (hz - h) * s),
                   ((x0 + w) * s, hz * s)), fill=(196, 138, 96))
    d.rectangle((0, hz * s, s, s), fill=(228, 198, 138))
    for _ in range(3):
        y = rng.uniform(hz + 0.05, 0.95)
        x0 = rng.uniform(-0.3, 0.7)
        d.chord((x0 * s, (y - 0.05) * s, (x0 + 0.6) * s, (y + 0.05) * s), 180, 360, fill=(210, 174, 112))
    for _ in range(4):
        x, y = rng.uniform(0, 1), rng.uniform(hz + 0.04, 1)
        d.ellipse(((x - 0.012) * s, (y - 0.007) * s, (x + 0.012) * s, (y + 0.007) * s), fill=(150, 120, 84))


def _parliament(d: ImageDraw.ImageDraw, s: int, hz: float, rng: random.Random, flag: tuple[Color, ...]) -> None:
    _sky(d, s, (150, 194, 236), (214, 230, 244), hz)
    cx = 0.5 + rng.uniform(-0.08, 0.08)
    stone, shade = (236, 228, 206), (196, 186, 160)
    x0, x1, top = cx - 0.42, cx + 0.42, hz - 0.2
    d.rectangle((cx * s - 0.07 * s, (top - 0.14) * s, cx * s + 0.07 * s, top * s), fill=stone, outline=shade)
    d.pieslice(((cx - 0.1) * s, (top - 0.26) * s, (cx + 0.1) * s, (top - 0.06) * s), 180, 360,
               fill=(126, 172, 152), outline=(90, 130, 110))
    pole_top = top - 0.34
    d.line((cx * s, (top - 0.16) * s, cx * s, pole_top * s), fill=(60, 60, 60), width=max(1, s // 160))
    for i, c in enumerate(flag):
        d.rectangle((cx * s, (pole_top + 0.022 * i) * s, (cx + 0.1) * s, (pole_top + 0.022 * (i + 1)) * s), fill=c)
    d.rectangle((x0 * s, top * s, x1 * s, hz * s), fill=stone, outline=shade)
    d.polygon(((x0 * s, top * s), (cx * s, (top - 0.07) * s), (x1 * s, top * s)), fill=stone, outline=shade)
    for i in range(9):
        px = x0 + 0.04 + i * (x1 - x0 - 0.08) / 8
        d.rectangle(((px - 0.012) * s, (top + 0.025) * s, (px + 0.012) * s, (hz - 0.01) * s), fill=(250, 246, 236))
        if i < 8:
            gx = px + (x1 - x0 - 0.08) / 16
            d.rectangle(((gx - 0.01) * s, (top + 0.04) * s, (gx + 0.01) * s, (hz - 0.01) * s), fill=shade)
    for i in range(4):
        y = hz + 0.02 * i
        d.rectangle((0, y * s, s, (y + 0.02) * s), fill=(214 - 8 * i, 210 - 8 * i, 200 - 8 * i))
    d.rectangle((0, (hz + 0.08) * s, s, s), fill=(208, 202, 190))
    for i in range(1, 6):
        y = hz + 0.08 + i * 0.07
        d.line((0, y * s, s, y * s), fill=(188, 182, 170), width=max(1, s // 200))


def _market(d: ImageDraw.ImageDraw, s: int, hz: float, rng: random.Random) -> None:
    _sky(d, s, (164, 204, 236), (220, 232, 240), hz)
    d.rectangle((0, (hz - 0.2) * s, s, hz * s), fill=(206, 176, 136))
    awnings = ((200, 40, 40), (40, 130, 70), (40, 90, 170), (230, 150, 30))
    n = rng.choice((3, 4))
    width = 1.0 / n
    for i in range(n):
        x0 = i * width + 0.01
        x1 = x0 + width - 0.02
        color = awnings[(i + rng.randrange(4)) % 4]
        d.rectangle((x0 * s, (hz - 0.26) * s, (x0 + 0.01) * s, hz * s), fill=(110, 80, 50))
        d.rectangle(((x1 - 0.01) * s, (hz - 0.26) * s, x1 * s, hz * s), fill=(110, 80, 50))
        stripes = 6
        for k in range(stripes):
            sx = x0 + (x1 - x0) * k / stripes
            c = color if k % 2 == 0 else (246, 244, 236)
            d.polygon(((sx * s, (hz - 0.34) * s), ((sx + (x1 - x0) / stripes) * s, (hz - 0.34) * s),
                       ((sx + (x1 - x0) / stripes) * s, (hz - 0.25) * s), (sx * s, (hz - 0.25) * s)), fill=c)
        d.rectangle((x0 * s, (hz - 0.1) * s, x1 * s, hz * s), fill=(150, 104, 62))
        for k in range(7):
            fx = x0 + 0.02 + k * (x1 - x0 - 0.04) / 6
            fc = ((220, 50, 40), (240, 150, 30), (240, 210, 50), (110, 170, 60))[(k + i) % 4]
            d.ellipse(((fx - 0.018) * s, (hz - 0.13) * s, (fx + 0.018) * s, (hz - 0.094) * s), fill=fc)
    d.rectangle((0, hz * s, s, s), fill=(204, 184, 146))
    for _ in range(6):
        x, y = rng.uniform(0, 1), rng.uniform(hz + 0.03, 1)
        d.ellipse(((x - 0.03) * s, (y - 0.008) * s, (x + 0.03) * s, (y + 0.008) * s), fill=(188, 168, 130))


def _port(d: ImageDraw.ImageDraw, s: int, hz: float, rng: random.Random) -> None:
    _sky(d, s, (160, 198, 232), (214, 228, 240), hz - 0.08)
    d.rectangle((0, (hz - 0.08) * s, s, hz * s), fill=(58, 108, 160))
    sx = rng.uniform(0.0, 0.5)
    d.polygon(((sx * s, (hz - 0.09) * s), ((sx + 0.4) * s, (hz - 0.09) * s), ((sx + 0.37) * s, (hz - 0.04) * s),
               ((sx + 0.03) * s, (hz - 0.04) * s)), fill=(150, 40, 36))
    d.rectangle(((sx + 0.28) * s, (hz - 0.16) * s, (sx + 0.36) * s, (hz - 0.09) * s), fill=(240, 240, 240))
    for cx in (rng.uniform(0.05, 0.3), rng.uniform(0.6, 0.9)):
        w = max(1, s // 64)
        for leg in (-0.04, 0.04):
            d.line(((cx + leg) * s, hz * s, (cx + leg) * s, (hz - 0.36) * s), fill=(214, 92, 40), width=w)
        d.line(((cx - 0.12) * s, (hz - 0.36) * s, (cx + 0.16) * s, (hz - 0.36) * s), fill=(214, 92, 40), width=w)
        d.line(((cx - 0.04) * s, (hz - 0.2) * s, (cx + 0.04) * s, (hz - 0.2) * s), fill=(214, 92, 40), width=w)
    colors = ((200, 60, 50), (40, 110, 170), (230, 170, 40), (60, 140, 80), (150, 150, 160))
    d.rectangle((0, hz * s, s, s), fill=(172, 172, 168))
    x = rng.uniform(-0.05, 0.05)
    while x < 1.0:
        for level in range(rng.choice((1, 2, 2, 3))):
            y1 = hz + 0.02 - 0.055 * level
            d.rectangle((x * s, (y1 - 0.055) * s, (x + 0.15) * s, y1 * s), fill=rng.choice(colors),
                        outline=(70, 70, 74))
        x += rng.uniform(0.16, 0.3)
    d.rectangle((0, (hz + 0.03) * s, s, (hz + 0.04) * s), fill=(236, 200, 40))


@lru_cache(maxsize=256)
def _cached(place: str, variant: int, size: int, flag: tuple[Color, ...]) -> Image.Image:
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    rng = random.Random(f"eventworld-bg/{place}/{variant}")
    hz = horizon(variant)
    if place == "parliament":
        _parliament(d, size, hz, rng, flag)
    else:
        {"street": _street, "desert": _desert, "market": _market, "port": _port}[place](d, size, hz, rng)
    return img


def background(place: str, variant: int, size: int, flag: tuple[Color, ...] = ()) -> Image.Image:
    """A fresh copy of the background of `place` (one of PLACES) at `size` x `size` pixels."""
    if place not in PLACES:
        raise ValueError(f"unknown place kind {place!r}; known: {PLACES}")
    return _cached(place, variant % BG_VARIANTS, size, flag if place == "parliament" else ()).copy()
