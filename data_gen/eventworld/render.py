"""Render a `Scene` to an `align.schema.Sample`: JPEG bytes, caption, gold event with boxes, regions.

Drawing happens at `SUPERSAMPLE` times the output size and is box-filtered down, which anti-aliases the
figures cheaply; every box is measured on the drawn primitives and scaled back, so gold boxes and pixels
agree at any output size.
"""

from __future__ import annotations

import io
import random

from PIL import ImageDraw

from align.ontology import Ontology
from align.schema import Argument, Event, Region, Sample, Trigger
from data_gen.eventworld.captions import COUNTRIES, TEMPLATES, compose
from data_gen.eventworld.draw import (
    PERSON_TYPES,
    Pen,
    draw_building,
    draw_fire,
    draw_held,
    draw_money_stack,
    draw_person,
    draw_pin,
    draw_signpost,
    draw_vehicle,
    star,
)
from data_gen.eventworld.places import background
from data_gen.eventworld.scene import EVENT_TYPES, Actor, Scene, build_scene

# The world's version: bump it whenever a (seed, index) renders differently (picture, caption, gold, negatives).
# Shard manifests record it, a partial set of another version is not resumed, `align.demo.ensure_eventworld`
# renders anew over a stale set and benchmarks/quality.py keys its results by it. 2: Transport origin and
# destination are named by their drawn building ("from a depot in Kharkiv to a clinic in Odesa").
# 3: caption-edit negatives keep subject and verb agreeing ("Protesters shoot at a resident") and use noun triggers.
WORLD_VERSION = 3
SUPERSAMPLE = 2
MIN_SIZE = 32

Box = tuple[float, float, float, float]


def event_type_for(index: int, seed: int, types: tuple[str, ...]) -> str:
    """Balanced type draw: each block of len(types) consecutive indices holds every type once, shuffled."""
    block = random.Random(f"eventworld-types/{seed}/{index // len(types)}").sample(types, len(types))
    return block[index % len(types)]


def _resolve(scene: Scene, a: Actor) -> tuple[str, object, str]:
    """Entity type, look and style of an actor: from its slot (so role swaps apply) or its own fields."""
    if a.slot is None:
        return a.kind, a.look, a.style
    slot = scene.slots[a.slot]
    kind = a.kind if slot.filler.entity_type == "place" else slot.filler.entity_type  # a place shown as a building
    return kind, slot.looks[a.inst % len(slot.looks)], slot.filler.style


def _draw_actor(d: ImageDraw.ImageDraw, scene: Scene, a: Actor, px: int
                ) -> tuple[Box, Box | None, tuple[float, float] | None]:
    kind, look, style = _resolve(scene, a)
    x, y, size = a.x * px, a.y * px, a.size * px
    held_box = muzzle = None
    if kind in PERSON_TYPES:
        if a.lying:
            pen = Pen.lying(d, x, y, size, a.facing)
            pen.sub().ellipse(-0.12, -0.6, 0.05, 0.34, (120, 16, 16))
        else:
            pen = Pen.standing(d, x, y, size, a.facing)
        draw_person(pen, kind, look, a.pose, reach=a.reach, part=a.part, lying=a.lying)  # type: ignore[arg-type]
        if a.held:
            hp = pen.sub()
            held_style = scene.slots[a.held_slot].filler.style if a.held_slot is not None else ""
            tip = draw_held(hp, a.held, a.pose, 1 if held_style == "pistol" else 0, a.inst)
            held_box = hp.box
            if tip is not None:
                muzzle = (hp.ox + tip[0] * hp.ax + tip[1] * hp.bx, hp.oy + tip[0] * hp.ay + tip[1] * hp.by)
        return pen.box, held_box, muzzle
    pen = Pen.standing(d, x, y, size, a.facing)
    variant = look.variant  # type: ignore[attr-defined]
    if kind == "vehicle":
        if a.moving:
            trail = pen.sub()
            for v, length in ((-0.2, 0.3), (-0.32, 0.22), (-0.44, 0.26)):
                trail.line(((-0.56, v), (-0.56 - length, v)), 0.025, (250, 250, 250))
        draw_vehicle(pen, style, variant)
        if a.fire:
            draw_fire(pen.sub(), -0.3, 0.3, -0.45, 0.3)
    elif kind == "building":
        draw_building(pen, style, variant)
        if a.fire:
            draw_fire(pen.sub(), -0.36, 0.36, -0.62, 0.3)
        if a.pin:
            draw_pin(pen, 0.0, -1.06, (40, 110, 210) if a.pin == "origin" else (214, 36, 36))
    elif kind == "money":
        draw_money_stack(pen)
    elif kind == "sign":
        draw_signpost(pen, variant)
    else:
        raise ValueError(f"scene {scene.event_type} (seed {scene.seed}, index {scene.index}): "
                         f"cannot draw entity type {kind!r}")
    return pen.box, held_box, muzzle


def _overlays(d: ImageDraw.ImageDraw, scene: Scene, muzzles: list[tuple[Actor, tuple[float, float]]],
              px: int) -> None:
    """Muzzle flashes and tracers (who shoots at whom) and the travel arrow (origin -> destination)."""
    flat = Pen(d, 0.0, 0.0, float(px), 0.0, 0.0, float(px))
    for a, (mx, my) in muzzles:
        u, v = mx / px, my / px
        if a.shoots_at:
            tx, ty = a.shoots_at
            for k in range(4):
                t0, t1 = 0.12 + 0.18 * k, 0.2 + 0.18 * k
                flat.line(((u + (tx - u) * t0, v + (ty - v) * t0), (u + (tx - u) * t1, v + (ty - v) * t1)),
                          0.008, (255, 214, 40))
            flat.poly(star(u, v, 0.04, 0.016), (255, 200, 40))
            flat.circle(u, v, 0.01, (255, 255, 220))
    for a in scene.actors:
        if a.kind == "vehicle" and a.moving:
            f, y = a.facing, 0.2
            x0, x1 = 0.5 - 0.2 * f, 0.5 + 0.2 * f
            head = x1 - 0.07 * f
            flat.poly(((x0, y - 0.02), (head, y - 0.02), (head, y - 0.05), (x1, y), (head, y + 0.05),
                       (head, y + 0.02), (x0, y + 0.02)), (255, 236, 80), (40, 40, 40), 0.004)


def _clip(box: Box, px: int) -> Box:
    s = SUPERSAMPLE
    x0, y0, x1, y1 = (max(0.0, min(float(px), v)) / s for v in box)
    return (round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1))


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def render_scene(scene: Scene, image_size: int = 128, ontology: Ontology | None = None, *, split: str = "train",
                 quality: int = 90, key: str | None = None) -> Sample:
    """Draw the scene and assemble the annotated Sample."""
    if image_size < MIN_SIZE:
        raise ValueError(f"image_size must be >= {MIN_SIZE} pixels, got {image_size}")
    ontology = ontology or Ontology.default()
    px = image_size * SUPERSAMPLE
    img = background(scene.place, scene.bg_variant, px, COUNTRIES[scene.country][4])
    d = ImageDraw.Draw(img)
    drawn: list[tuple[Actor, Box, Box | None]] = []
    muzzles = []
    for a in scene.actors:
        box, held_box, muzzle = _draw_actor(d, scene, a, px)
        drawn.append((a, _clip(box, px), _clip(held_box, px) if held_box else None))
        if muzzle:
            muzzles.append((a, muzzle))
    _overlays(d, scene, muzzles, px)
    img = img.reduce(SUPERSAMPLE)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)

    full = (0.0, 0.0, float(image_size), float(image_size))
    instance_boxes: dict[int, list[Box]] = {}
    regions = []
    for a, box, held_box in drawn:
        kind = _resolve(scene, a)[0]
        regions.append(Region(box, label=kind, source="annotation"))
        if a.slot is not None:
            instance_boxes.setdefault(a.slot, []).append(box)
        if held_box is not None:
            regions.append(Region(held_box, label=a.held or "", source="annotation"))
            if a.held_slot is not None:
                instance_boxes.setdefault(a.held_slot, []).append(held_box)
    regions.append(Region(full, label="place", source="annotation"))

    subject, template = TEMPLATES[scene.event_type][scene.template]
    fillers: dict[str, list] = {}
    slot_of: dict[tuple[str, int], int] = {}
    for i, s in enumerate(scene.slots):
        slot_of[(s.role, len(fillers.setdefault(s.role, [])))] = i
        fillers[s.role].append(s.filler)
    caption, (trig, t0, t1), spans = compose(template, subject, fillers, scene.place, scene.day)
    roles = ontology[scene.event_type].roles
    arguments = []
    role_boxes: dict[str, list[list[float]]] = {}
    for role, start, end, text, nth in spans:
        if role not in roles:
            continue
        i = slot_of[(role, nth)]
        boxes = [full] if role == "Place" else instance_boxes.get(i, [])
        box = _union(boxes) if boxes else None
        arguments.append(Argument(role, text, scene.slots[i].filler.entity_type, start, end, box))
        role_boxes.setdefault(role, []).extend(list(b) for b in boxes)
    etype = ontology[scene.event_type]
    provenance = {
        "source": "eventworld", "world_version": WORLD_VERSION, "seed": scene.seed, "index": scene.index,
        "split": split, "image_size": image_size, "place": scene.place, "country": COUNTRIES[scene.country][0],
        "mirrored": scene.mirrored, "distractors": scene.distractors, "role_boxes": role_boxes,
        "symmetric_roles": [list(g) for g in etype.symmetric],
    }
    if scene.swapped:
        provenance["swapped_roles"] = list(scene.swapped)
        provenance["swap_is_symmetric"] = etype.is_symmetric(*scene.swapped)
    suffix = f"-swap-{scene.swapped[0]}-{scene.swapped[1]}" if scene.swapped else ""
    return Sample(
        key=key or f"eventworld-{scene.seed}-{scene.index:08d}{suffix}", caption=caption,
        width=image_size, height=image_size,
        events=[Event(scene.event_type, Trigger(trig, t0, t1), arguments)], salient=0,
        regions=regions, provenance=provenance, image=buf.getvalue(),
    )


def render_sample(index: int, seed: int, image_size: int = 128, ontology: Ontology | None = None,
                  event_type: str | None = None, *, swap_roles: tuple[str, str] | None = None,
                  split: str = "train", quality: int = 90, key: str | None = None) -> Sample:
    """Render sample `index` of the world `seed`; depends on nothing else, so workers can split indices.

    `event_type` forces a type (otherwise a balanced draw over the ontology's types that EventWorld can
    draw); `swap_roles` renders the same scene with the fillers of two roles exchanged.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    ontology = ontology or Ontology.default()
    drawable = tuple(t for t in ontology.type_names if t in EVENT_TYPES)
    if not drawable:
        raise ValueError(f"ontology {ontology.source} has none of the event types EventWorld draws: {EVENT_TYPES}")
    if event_type is None:
        event_type = event_type_for(index, seed, drawable)
    elif event_type not in drawable:
        raise ValueError(f"EventWorld cannot draw event type {event_type!r}; it draws {list(drawable)}")
    scene = build_scene(index, seed, event_type, ontology)
    if swap_roles is not None:
        scene = scene.swap_roles(*swap_roles)
    return render_scene(scene, image_size, ontology, split=split, quality=quality, key=key)
