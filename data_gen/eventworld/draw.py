"""Vector figures for EventWorld: people, held objects, vehicles and buildings drawn with PIL.

Every figure is defined in its own unit coordinates (a person is 1 unit tall with the feet at the origin and
faces +x; a vehicle is 1 unit long; a building is 1 unit high) and mapped onto the canvas by an affine `Pen`.
Mirroring, scaling and lying down are therefore the same code, and each figure's pixel box is measured from
what was actually drawn instead of being estimated separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw

Color = tuple[int, int, int]
Point = tuple[float, float]

PERSON_TYPES = ("police", "soldier", "protester", "official", "civilian", "journalist")
HELD_TYPES = ("weapon", "money", "phone", "sign")
STANDALONE_TYPES = ("vehicle", "building")

SKIN: tuple[Color, ...] = ((255, 222, 188), (236, 194, 152), (200, 148, 104), (162, 108, 72), (112, 74, 50),
                           (84, 55, 38))
HAIR: tuple[Color, ...] = ((28, 24, 20), (62, 42, 26), (112, 76, 42), (170, 140, 96), (120, 120, 120))
SHIRTS = {
    "protester": ((214, 44, 40), (236, 118, 22), (212, 50, 124)),
    "civilian": ((132, 186, 226), (216, 196, 146), (152, 202, 132), (226, 162, 182), (244, 242, 232)),
}
CIVILIAN_TROUSERS: tuple[Color, ...] = ((70, 90, 132), (122, 96, 70), (172, 152, 112))
SCARVES: tuple[Color, ...] = ((122, 60, 142), (40, 122, 122), (200, 122, 40))
TIES: tuple[Color, ...] = ((182, 30, 40), (40, 72, 162), (142, 30, 122))
DARK: Color = (22, 22, 26)
STEEL: Color = (205, 210, 218)


@dataclass(frozen=True)
class Look:
    """Per-instance appearance that is not fixed by the entity type (skin, hair, clothing variant)."""

    skin: int = 0
    hair: int = 0
    female: bool = False
    variant: int = 0


class Pen:
    """Maps unit coordinates (u, v) to canvas pixels and records the box of everything drawn through it."""

    def __init__(self, draw: ImageDraw.ImageDraw, ox: float, oy: float, ax: float, ay: float, bx: float,
                 by: float) -> None:
        self.draw, self.ox, self.oy, self.ax, self.ay, self.bx, self.by = draw, ox, oy, ax, ay, bx, by
        self.scale = math.hypot(ax, ay)
        self.x0 = self.y0 = math.inf
        self.x1 = self.y1 = -math.inf

    @classmethod
    def standing(cls, draw: ImageDraw.ImageDraw, x: float, y: float, size: float, facing: int) -> Pen:
        return cls(draw, x, y, facing * size, 0.0, 0.0, size)

    @classmethod
    def lying(cls, draw: ImageDraw.ImageDraw, x: float, y: float, size: float, head_dir: int) -> Pen:
        """Body axis horizontal, head towards `head_dir`, front facing up."""
        return cls(draw, x, y, 0.0, -size, -head_dir * size, 0.0)

    def sub(self) -> Pen:
        """A pen with the same transform but its own box (for an object held by a figure)."""
        return Pen(self.draw, self.ox, self.oy, self.ax, self.ay, self.bx, self.by)

    def _map(self, pts: list[Point] | tuple[Point, ...], pad: float = 0.0) -> list[Point]:
        out = [(self.ox + u * self.ax + v * self.bx, self.oy + u * self.ay + v * self.by) for u, v in pts]
        xs = [p[0] for p in out]
        ys = [p[1] for p in out]
        self.x0, self.x1 = min(self.x0, min(xs) - pad), max(self.x1, max(xs) + pad)
        self.y0, self.y1 = min(self.y0, min(ys) - pad), max(self.y1, max(ys) + pad)
        return out

    def poly(self, pts: list[Point] | tuple[Point, ...], fill: Color, outline: Color | None = None,
             width: float = 0.0) -> None:
        w = max(1, round(width * self.scale)) if outline else 0
        self.draw.polygon(self._map(pts, w / 2), fill=fill, outline=outline, width=w)

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: Color, outline: Color | None = None,
             width: float = 0.0) -> None:
        self.poly(((u0, v0), (u1, v0), (u1, v1), (u0, v1)), fill, outline, width)

    def line(self, pts: list[Point] | tuple[Point, ...], width: float, fill: Color, caps: bool = True) -> None:
        w = max(1.0, width * self.scale)
        mapped = self._map(pts, w / 2)
        self.draw.line(mapped, fill=fill, width=round(w), joint="curve")
        if caps and w > 2:
            r = w / 2 - 0.5
            for x, y in (mapped[0], mapped[-1]):
                self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def circle(self, u: float, v: float, r: float, fill: Color | None, outline: Color | None = None,
               width: float = 0.0) -> None:
        (x, y), = self._map(((u, v),), r * self.scale)
        rp = r * self.scale
        w = max(1, round(width * self.scale)) if outline else 0
        self.draw.ellipse((x - rp, y - rp, x + rp, y + rp), fill=fill, outline=outline, width=w)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: Color) -> None:
        """Axis-aligned ellipse; valid because every pen here is axis-aligned (standing or lying)."""
        (x, y), = self._map(((u, v),))
        ex = abs(self.ax) * ru + abs(self.bx) * rv
        ey = abs(self.ay) * ru + abs(self.by) * rv
        self.x0, self.x1 = min(self.x0, x - ex), max(self.x1, x + ex)
        self.y0, self.y1 = min(self.y0, y - ey), max(self.y1, y + ey)
        self.draw.ellipse((x - ex, y - ey, x + ex, y + ey), fill=fill)

    def arc(self, cu: float, cv: float, r: float, a0: float, a1: float, width: float, fill: Color) -> None:
        """Arc as a polyline (so it mirrors and rotates with the pen); angles in degrees, 0 = +u."""
        n = 6
        pts = [(cu + r * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
                cv + r * math.sin(math.radians(a0 + (a1 - a0) * i / n))) for i in range(n + 1)]
        self.line(pts, width, fill, caps=False)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


def _dome(cu: float, cv: float, r: float, n: int = 8) -> list[Point]:
    return [(cu + r * math.cos(math.pi + math.pi * i / n), cv + r * math.sin(math.pi + math.pi * i / n))
            for i in range(n + 1)]


def star(cu: float, cv: float, r_out: float, r_in: float, n: int = 7) -> list[Point]:
    pts = []
    for i in range(2 * n):
        a = math.pi * i / n
        r = r_out if i % 2 == 0 else r_in
        pts.append((cu + r * math.cos(a), cv + r * math.sin(a)))
    return pts


# --------------------------------------------------------------------------- people
# Poses: (front elbow, front hand), (back elbow, back hand), back arm drawn over the torso, stride.
_STAND = ((0.13, -0.62), (0.14, -0.48))
_BACK_STAND = ((-0.13, -0.62), (-0.14, -0.48))
POSES: dict[str, tuple[tuple[Point, Point], tuple[Point, Point], bool, float]] = {
    "stand": (_STAND, _BACK_STAND, False, 0.0),
    "aim": (((0.2, -0.7), (0.32, -0.71)), ((0.02, -0.64), (0.14, -0.68)), True, 0.05),
    "pistol": (((0.26, -0.76), (0.42, -0.76)), _BACK_STAND, False, 0.05),
    "hands_up": (((0.23, -0.87), (0.2, -1.04)), ((-0.23, -0.87), (-0.2, -1.04)), False, 0.0),
    "cuffed": (((0.16, -0.62), (0.05, -0.52)), ((-0.12, -0.62), (0.0, -0.52)), True, 0.06),
    "grip": (((0.22, -0.73), (0.34, -0.73)), _BACK_STAND, False, 0.06),
    "give": (((0.22, -0.66), (0.38, -0.66)), _BACK_STAND, False, 0.0),
    "receive": (((0.17, -0.6), (0.28, -0.56)), _BACK_STAND, False, 0.0),
    "shake": (((0.2, -0.64), (0.34, -0.6)), _BACK_STAND, False, 0.0),
    "phone": (((0.21, -0.6), (0.09, -0.86)), _BACK_STAND, False, 0.0),
    "sign": (((0.18, -0.88), (0.1, -1.02)), ((-0.04, -0.86), (0.06, -0.98)), True, 0.0),
    "fist": (((0.21, -0.9), (0.17, -1.08)), _BACK_STAND, False, 0.0),
    "shield": (((0.17, -0.65), (0.22, -0.62)), ((-0.19, -0.75), (-0.16, -0.93)), False, 0.05),
    "camera": (((0.17, -0.72), (0.1, -0.88)), ((0.0, -0.68), (0.06, -0.86)), True, 0.0),
}


def _clothes(kind: str, look: Look) -> tuple[Color, Color, Color]:
    """(shirt, sleeves, trousers) of an entity type."""
    if kind == "police":
        return (32, 58, 138), (32, 58, 138), (24, 32, 72)
    if kind == "soldier":
        return (92, 106, 58), (92, 106, 58), (84, 96, 52)
    if kind == "official":
        return (46, 46, 54), (46, 46, 54), (46, 46, 54)
    if kind == "journalist":
        return (90, 140, 196), (200, 202, 208), (150, 130, 96)
    if kind == "protester":
        shirt = SHIRTS["protester"][look.variant % 3]
        return shirt, shirt, (52, 82, 132)
    shirt = SHIRTS["civilian"][look.variant % 5]
    return shirt, shirt, CIVILIAN_TROUSERS[look.variant % 3]


def _arm(pen: Pen, shoulder: Point, elbow: Point, hand: Point, sleeve: Color, skin: Color, fist: bool) -> None:
    pen.line((shoulder, elbow, hand), 0.068, sleeve)
    pen.circle(hand[0], hand[1], 0.042 if fist else 0.036, skin)


def _head(pen: Pen, kind: str, look: Look, hx: float, hy: float, skin: Color, lying: bool) -> None:
    hair = HAIR[look.hair % len(HAIR)]
    long_hair = look.female and kind in ("civilian", "journalist", "official", "protester")
    scarf = long_hair and kind == "civilian" and look.variant % 2 == 1
    if scarf:
        color = SCARVES[look.variant % 3]
        pen.poly(((hx - 0.1, hy), (hx + 0.07, hy), (hx + 0.09, hy + 0.14), (hx - 0.12, hy + 0.14)), color)
        pen.circle(hx - 0.005, hy - 0.005, 0.1, color)
        pen.circle(hx + 0.012, hy + 0.008, 0.07, skin)
    else:
        if kind not in ("soldier", "police"):
            if long_hair:
                pen.poly(((hx - 0.095, hy - 0.02), (hx + 0.05, hy - 0.02), (hx + 0.04, hy + 0.13),
                          (hx - 0.11, hy + 0.13)), hair)
            pen.circle(hx - 0.012, hy - 0.014, 0.088, hair)
        pen.circle(hx + 0.006, hy + 0.004, 0.08, skin)
    if not lying:
        pen.circle(hx + 0.05, hy - 0.004, 0.013, DARK)  # eye: shows which way the figure faces
    if kind == "police":
        pen.poly(((hx - 0.092, hy - 0.03), (hx + 0.092, hy - 0.03), (hx + 0.085, hy - 0.11),
                  (hx - 0.095, hy - 0.12)), (24, 32, 72))
        pen.rect(hx - 0.092, hy - 0.048, hx + 0.092, hy - 0.028, DARK)
        pen.poly(((hx + 0.03, hy - 0.04), (hx + 0.14, hy - 0.03), (hx + 0.11, hy - 0.012),
                  (hx + 0.03, hy - 0.022)), DARK)
        pen.circle(hx + 0.01, hy - 0.078, 0.02, (236, 190, 40))
    elif kind == "soldier":
        pen.poly(_dome(hx, hy - 0.012, 0.112), (78, 92, 48))
        pen.rect(hx - 0.125, hy - 0.022, hx + 0.125, hy - 0.002, (62, 72, 38))
    elif kind == "protester":
        band = (245, 245, 245) if look.variant % 3 != 2 else (30, 30, 30)
        pen.rect(hx - 0.088, hy - 0.052, hx + 0.09, hy - 0.026, band)
        pen.line(((hx - 0.085, hy - 0.04), (hx - 0.14, hy + 0.0)), 0.02, band)


def draw_person(pen: Pen, kind: str, look: Look, pose: str, *, reach: float = 0.0, part: str = "full",
                lying: bool = False) -> None:
    """Draw one person; `part` is "full", "upper" (passenger in a truck bed) or "head" (driver)."""
    skin = SKIN[look.skin % len(SKIN)]
    shirt, sleeve, trousers = _clothes(kind, look)
    (fe, fh), (be, bh), back_over, stride = POSES.get(pose, POSES["stand"])
    if pose in ("grip", "shake"):
        fh = (reach, fh[1])
        fe = ((0.1 + reach) / 2 + 0.03, fe[1] - 0.02)
    hx, hy = (0.025, -0.872) if pose == "cuffed" else (0.0, -0.885)
    if part == "head":
        pen.rect(-0.13, -0.8, 0.13, -0.7, shirt)
        _head(pen, kind, look, hx, hy, skin, lying)
        return
    if not back_over:
        _arm(pen, (-0.1, -0.77), be, bh, sleeve, skin, pose == "shield")
        if pose == "shield":  # baton raised in the back hand
            pen.line(((bh[0], bh[1] + 0.03), (bh[0] + 0.05, bh[1] - 0.2)), 0.03, DARK)
    if part == "full":
        shoes = DARK if kind != "soldier" else (40, 32, 24)
        for sx, fx in ((-0.05, -0.06 - stride), (0.05, 0.07 + stride)):
            pen.line(((sx, -0.47), (fx, -0.05)), 0.088, trousers)
            pen.rect(fx - 0.04, -0.05, fx + 0.06, -0.0, shoes)
    pen.poly(((-0.12, -0.8), (0.12, -0.8), (0.105, -0.45), (-0.105, -0.45)), shirt)
    pen.rect(-0.028, -0.84, 0.028, -0.79, skin)
    _torso_details(pen, kind, look, pose)
    if back_over:
        _arm(pen, (-0.1, -0.77), be, bh, sleeve, skin, False)
    _head(pen, kind, look, hx, hy, skin, lying)
    _arm(pen, (0.1, -0.77), fe, fh, sleeve, skin, pose in ("fist", "shield"))
    if pose == "shield":  # riot shield carried in front
        pen.rect(0.17, -0.86, 0.33, -0.3, (150, 172, 196), (40, 48, 60), 0.016)
        pen.rect(0.17, -0.68, 0.33, -0.63, (250, 250, 250))
    if pose == "cuffed":
        for cx in (0.0, 0.05):
            pen.circle(cx, -0.52, 0.036, None, STEEL, 0.018)
        pen.line(((0.0, -0.52), (0.05, -0.52)), 0.012, STEEL, caps=False)


def _torso_details(pen: Pen, kind: str, look: Look, pose: str) -> None:
    if kind == "police":
        pen.circle(0.06, -0.72, 0.022, (236, 190, 40))
        pen.rect(-0.107, -0.5, 0.107, -0.46, DARK)
        pen.rect(-0.12, -0.8, -0.06, -0.77, (200, 200, 210))
    elif kind == "soldier":
        for u, v in ((-0.05, -0.7), (0.05, -0.58), (-0.03, -0.52), (0.07, -0.74)):
            pen.ellipse(u, v, 0.03, 0.022, (62, 72, 38))
        pen.rect(-0.107, -0.5, 0.107, -0.465, (150, 135, 92))
    elif kind == "official":
        pen.poly(((-0.045, -0.8), (0.045, -0.8), (0.0, -0.66)), (246, 246, 246))
        pen.poly(((-0.013, -0.79), (0.013, -0.79), (0.022, -0.6), (0.0, -0.57), (-0.022, -0.6)),
                 TIES[look.variant % 3])
    elif kind == "journalist":
        pen.rect(-0.105, -0.71, 0.105, -0.65, (250, 250, 250))
        pen.line(((-0.04, -0.685), (0.05, -0.685)), 0.018, DARK, caps=False)
        if pose != "camera":
            pen.rect(0.0, -0.62, 0.1, -0.54, DARK)
            pen.circle(0.05, -0.58, 0.025, (150, 156, 170))


def draw_held(pen: Pen, kind: str, pose: str, variant: int, palette: int = 0) -> Point | None:
    """Draw the object a posed person holds; returns the muzzle point for weapons (for flash/tracer)."""
    if kind == "weapon":
        if pose == "pistol" or variant % 2 == 1:
            pen.rect(0.4, -0.79, 0.56, -0.745, (40, 40, 44))
            pen.rect(0.41, -0.76, 0.45, -0.7, (40, 40, 44))
            return (0.56, -0.768)
        pen.line(((0.3, -0.725), (0.64, -0.735)), 0.026, (30, 30, 34), caps=False)
        pen.rect(0.02, -0.745, 0.38, -0.69, (48, 48, 52))
        pen.poly(((-0.08, -0.735), (0.04, -0.74), (0.04, -0.69), (-0.08, -0.66)), (104, 72, 42))
        pen.rect(0.2, -0.69, 0.25, -0.62, (40, 40, 44))
        return (0.64, -0.735)
    if kind == "money":
        for i in range(3):
            u0, v0 = 0.37 + 0.03 * i, -0.71 - 0.022 * i
            pen.rect(u0, v0, u0 + 0.2, v0 + 0.1, (88, 166, 88), (36, 104, 48), 0.01)
            pen.ellipse(u0 + 0.1, v0 + 0.05, 0.035, 0.028, (150, 206, 140))
    elif kind == "phone":
        pen.rect(0.065, -0.95, 0.118, -0.83, DARK)
        pen.rect(0.075, -0.935, 0.108, -0.86, (120, 170, 220))
        for r in (0.07, 0.11):
            pen.arc(0.12, -0.9, r, -60, 20, 0.014, (250, 250, 250))
    elif kind == "sign":
        board = ((250, 250, 245), (250, 226, 80), (255, 190, 200))[palette % 3]
        ink = ((200, 30, 30), (20, 20, 20), (30, 60, 160))[palette % 3]
        pen.line(((0.08, -0.9), (0.12, -1.24)), 0.025, (120, 84, 46))
        pen.rect(-0.1, -1.5, 0.36, -1.22, board, (60, 60, 60), 0.012)
        for i, length in enumerate((0.34, 0.26, 0.3)[: 2 + variant % 2]):
            v = -1.44 + 0.075 * i
            pen.line(((-0.06, v), (-0.06 + length, v)), 0.035, ink, caps=False)
    return None


# --------------------------------------------------------------------------- vehicles and buildings
VEHICLE_STYLES = ("truck", "military", "van", "car", "bus")
_VEHICLE_COLORS: tuple[Color, ...] = ((40, 96, 170), (196, 50, 44), (236, 236, 232), (70, 130, 80), (230, 170, 40))


def draw_vehicle(pen: Pen, style: str, variant: int) -> None:
    """A side-view vehicle, 1 unit long, base centre at the origin, front towards +u."""
    color = (92, 106, 58) if style == "military" else _VEHICLE_COLORS[variant % len(_VEHICLE_COLORS)]
    glass = (170, 210, 235)
    if style in ("truck", "military"):
        pen.rect(-0.48, -0.2, 0.47, -0.1, (60, 60, 64))
        pen.rect(-0.48, -0.3, 0.15, -0.14, color, DARK, 0.01)
        pen.poly(((0.17, -0.1), (0.17, -0.48), (0.36, -0.48), (0.48, -0.28), (0.48, -0.1)), color, DARK, 0.01)
        pen.poly(((0.23, -0.44), (0.35, -0.44), (0.43, -0.3), (0.23, -0.3)), glass)
    elif style == "van":
        pen.poly(((-0.48, -0.1), (-0.48, -0.52), (0.26, -0.52), (0.47, -0.3), (0.48, -0.1)), (240, 240, 238),
                 DARK, 0.01)
        pen.rect(-0.48, -0.27, 0.48, -0.2, (30, 70, 170))
        pen.poly(((0.27, -0.48), (0.42, -0.31), (0.27, -0.31)), glass)
        pen.rect(-0.06, -0.56, 0.03, -0.52, (220, 30, 30))
        pen.rect(0.03, -0.56, 0.12, -0.52, (30, 80, 230))
        for u in (-0.4, -0.2):
            pen.rect(u, -0.46, u + 0.14, -0.33, glass)
    elif style == "car":
        pen.poly(((-0.3, -0.28), (-0.18, -0.46), (0.16, -0.46), (0.3, -0.28)), color, DARK, 0.01)
        pen.rect(-0.49, -0.3, 0.49, -0.1, color, DARK, 0.01)
        pen.poly(((-0.24, -0.3), (-0.15, -0.42), (-0.02, -0.42), (-0.02, -0.3)), glass)
        pen.poly(((0.02, -0.3), (0.02, -0.42), (0.14, -0.42), (0.24, -0.3)), glass)
    else:
        pen.rect(-0.5, -0.6, 0.5, -0.1, color, DARK, 0.01)
        for i in range(5):
            u = -0.44 + 0.16 * i
            pen.rect(u, -0.52, u + 0.12, -0.38, glass)
        pen.rect(0.38, -0.52, 0.47, -0.14, glass)
    pen.circle(0.47, -0.2, 0.022, (250, 230, 120))
    for u in (-0.3, 0.32):
        pen.circle(u, -0.085, 0.085, DARK)
        pen.circle(u, -0.085, 0.035, (150, 150, 156))


BUILDING_STYLES = ("house", "office", "clinic", "depot")
_WALLS: tuple[Color, ...] = ((214, 190, 150), (180, 186, 196), (236, 232, 220), (196, 150, 120))


def draw_building(pen: Pen, style: str, variant: int) -> None:
    """A front-view building, 1 unit high, base centre at the origin."""
    wall = _WALLS[variant % len(_WALLS)]
    window = (90, 110, 140)
    if style == "house":
        pen.rect(-0.4, -0.6, 0.4, 0.0, wall, DARK, 0.012)
        pen.poly(((-0.5, -0.6), (0.0, -0.98), (0.5, -0.6)), (170, 70, 50), DARK, 0.012)
        pen.rect(-0.08, -0.3, 0.08, 0.0, (110, 70, 40))
        for u in (-0.3, 0.16):
            pen.rect(u, -0.48, u + 0.14, -0.34, window)
    elif style == "office":
        pen.rect(-0.32, -1.0, 0.32, 0.0, wall, DARK, 0.012)
        for i in range(3):
            for j in range(6):
                u, v = -0.25 + 0.18 * i, -0.93 + 0.15 * j
                pen.rect(u, v, u + 0.13, v + 0.09, window)
    elif style == "clinic":
        pen.rect(-0.48, -0.66, 0.48, 0.0, (244, 244, 240), DARK, 0.012)
        pen.rect(-0.06, -0.6, 0.06, -0.36, (210, 30, 30))
        pen.rect(-0.18, -0.54, 0.18, -0.42, (210, 30, 30))
        pen.rect(-0.1, -0.24, 0.1, 0.0, window)
    else:
        pen.poly(((-0.5, 0.0), (-0.5, -0.5), (0.0, -0.66), (0.5, -0.5), (0.5, 0.0)), wall, DARK, 0.012)
        pen.rect(-0.24, -0.36, 0.24, 0.0, (120, 124, 130))
        for v in (-0.3, -0.22, -0.14, -0.06):
            pen.line(((-0.24, v), (0.24, v)), 0.012, (90, 94, 100), caps=False)


def draw_fire(pen: Pen, u0: float, u1: float, v: float, height: float) -> None:
    """Flames along [u0, u1] at height v, with smoke above: marks an attacked building or vehicle."""
    n = 4
    w = (u1 - u0) / n
    for i in range(n):
        a = u0 + i * w
        top = v - height * (0.7 + 0.3 * ((i * 7) % 3) / 2)
        pen.poly(((a, v), (a + w / 2, top), (a + w, v)), (240, 110, 30))
        pen.poly(((a + w * 0.25, v), (a + w / 2, v - (v - top) * 0.55), (a + w * 0.75, v)), (255, 220, 70))
    for i, (du, dv, r) in enumerate(((0.0, 0.1, 0.1), (0.1, 0.22, 0.12), (-0.06, 0.3, 0.09))):
        pen.circle((u0 + u1) / 2 + du, top - dv - i * 0.02, r, (110, 110, 112))


def draw_pin(pen: Pen, u: float, v: float, color: Color) -> None:
    """A map pin whose tip is at (u, v): marks a place (origin or destination)."""
    pen.poly(((u - 0.08, v - 0.16), (u, v), (u + 0.08, v - 0.16)), color)
    pen.circle(u, v - 0.2, 0.1, color, DARK, 0.01)
    pen.circle(u, v - 0.2, 0.04, (250, 250, 250))


def draw_money_stack(pen: Pen) -> None:
    """Bundles of banknotes, 1 unit wide, base centre at the origin (cash carried as cargo)."""
    for i, (u, v) in enumerate(((-0.5, -0.3), (0.0, -0.3), (-0.25, -0.6))):
        pen.rect(u, v, u + 0.5, v + 0.3, (88, 166, 88), (36, 104, 48), 0.03)
        pen.rect(u + 0.2, v, u + 0.3, v + 0.3, (236, 226, 170) if i != 2 else (220, 210, 150))


def draw_signpost(pen: Pen, variant: int) -> None:
    """A street sign on a pole, 1 unit high."""
    pen.line(((0.0, 0.0), (0.0, -0.75)), 0.05, (120, 124, 130))
    board = ((30, 120, 70), (30, 80, 170), (200, 60, 40))[variant % 3]
    pen.rect(-0.3, -1.0, 0.3, -0.7, board, (240, 240, 240), 0.03)
    pen.line(((-0.2, -0.85), (0.2, -0.85)), 0.05, (240, 240, 240), caps=False)
