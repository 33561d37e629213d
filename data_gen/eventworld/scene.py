"""Scene description: who fills which role, where everything stands, and role swaps.

A `Scene` is resolution independent (relative coordinates) and drawn by `render.render_scene`. Layouts put
the roles into poses (the attacker aims, the arrested person is cuffed, the giver holds out money); the
fillers (entity type, look, name) live in `Slot`s. Swapping two roles exchanges the slots' fillers and keeps
the poses, so "police arrest a protester" becomes a picture of a protester arresting a police officer.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

from align.ontology import Ontology
from data_gen.eventworld.captions import (
    BUILDING_PLACES,
    COUNTRIES,
    DAYS,
    NAMES,
    PLACE_PHRASES,
    TEMPLATES,
    TITLES,
    Filler,
    building_place,
)
from data_gen.eventworld.draw import HELD_TYPES, PERSON_TYPES, STANDALONE_TYPES, Look
from data_gen.eventworld.places import BG_VARIANTS, PLACES, horizon

EVENT_TYPES = tuple(TEMPLATES)


@dataclass
class Slot:
    """One argument filler: its role, caption facts and per-instance looks (one per drawn instance)."""

    role: str
    filler: Filler
    looks: list[Look] = field(default_factory=lambda: [Look()])


@dataclass
class Actor:
    """One drawn thing in relative coordinates; `slot` links it to its argument (None for distractors)."""

    kind: str
    x: float
    y: float
    size: float
    facing: int = 1
    slot: int | None = None
    inst: int = 0
    pose: str = "stand"
    part: str = "full"
    reach: float = 0.0
    held: str | None = None
    held_slot: int | None = None
    lying: bool = False
    look: Look = field(default_factory=Look)
    style: str = ""
    fire: bool = False
    shoots_at: tuple[float, float] | None = None
    pin: str | None = None
    moving: bool = False


@dataclass
class Scene:
    event_type: str
    seed: int
    index: int
    place: str
    bg_variant: int
    country: int
    day: str
    template: int
    slots: list[Slot]
    actors: list[Actor]
    mirrored: bool = False
    distractors: int = 0
    swapped: tuple[str, str] | None = None

    def slot_index(self, role: str, nth: int = 0) -> int:
        hits = [i for i, s in enumerate(self.slots) if s.role == role]
        if len(hits) <= nth:
            raise ValueError(f"scene {self.event_type} (seed {self.seed}, index {self.index}) has "
                             f"{len(hits)} filler(s) of role {role!r}; roles present: "
                             f"{sorted({s.role for s in self.slots})}")
        return hits[nth]

    def swap_roles(self, role_a: str, role_b: str) -> Scene:
        """A copy with the fillers of two roles exchanged (same role twice: its first two fillers)."""
        ia = self.slot_index(role_a)
        ib = self.slot_index(role_b, 1 if role_a == role_b else 0)
        a, b = self.slots[ia].filler, self.slots[ib].filler
        if _category(a.entity_type) != _category(b.entity_type):
            raise ValueError(f"cannot swap {role_a} ({a.entity_type}) with {role_b} ({b.entity_type}) in "
                             f"{self.event_type}: a {_category(a.entity_type)} cannot take the pose of a "
                             f"{_category(b.entity_type)}")
        out = copy.deepcopy(self)
        sa, sb = out.slots[ia], out.slots[ib]
        sa.filler, sb.filler = sb.filler, sa.filler
        sa.filler.count, sb.filler.count = a.count, b.count  # the number of drawn instances stays with the role
        sa.looks, sb.looks = sb.looks, sa.looks
        out.swapped = (role_a, role_b)
        return out


def _category(entity_type: str) -> str:
    if entity_type in PERSON_TYPES:
        return "person"
    if entity_type in HELD_TYPES:
        return "held object"
    return entity_type if entity_type in STANDALONE_TYPES else "place"


# --------------------------------------------------------------------------- building blocks
class _Builder:
    """Per-scene random choices: fillers drawn from the ontology's entity types for each role."""

    def __init__(self, rng: random.Random, ontology: Ontology, event_type: str, country: int) -> None:
        self.rng, self.etype, self.country = rng, ontology[event_type], country
        self.slots: list[Slot] = []
        self.actors: list[Actor] = []

    def types(self, role: str, allowed: tuple[str, ...], exclude: str | None = None) -> str:
        listed = self.etype.roles[role].entity_types if role in self.etype.roles else ()
        pool = [t for t in allowed if t in listed and t != exclude] or [t for t in allowed if t != exclude]
        return self.rng.choice(pool)

    def person(self, role: str, etype: str, count: int = 1, country: int | None = None) -> int:
        rng = self.rng
        country = self.country if country is None else country
        looks = [Look(rng.randrange(6), rng.randrange(5), rng.random() < 0.4, rng.randrange(60))
                 for _ in range(count)]
        f = Filler(etype, count, rng.randrange(6), female=looks[0].female)
        nat_p = {"police": 0.7, "soldier": 0.7, "official": 0.6, "protester": 0.3}.get(etype, 0.0)
        if rng.random() < nat_p:
            f.nationality = COUNTRIES[country][1]
        named_p = {"official": 0.8, "journalist": 0.4, "civilian": 0.3}.get(etype, 0.0)
        if count == 1 and rng.random() < named_p:
            males, females, surnames = NAMES[country]
            f.name = f"{rng.choice(females if f.female else males)} {rng.choice(surnames)}"
            f.title = rng.choice(TITLES)
        self.slots.append(Slot(role, f, looks))
        return len(self.slots) - 1

    def thing(self, role: str, etype: str, style: str, count: int = 1) -> int:
        looks = [Look(variant=self.rng.randrange(60)) for _ in range(count)]
        self.slots.append(Slot(role, Filler(etype, count, self.rng.randrange(6), style), looks))
        return len(self.slots) - 1

    def place(self, role: str, name: str, style: str) -> int:
        self.slots.append(Slot(role, Filler("place", 1, 0, style, name=name),
                               [Look(variant=self.rng.randrange(60))]))
        return len(self.slots) - 1

    def add(self, kind: str, x: float, y: float, size: float, **kw: object) -> Actor:
        actor = Actor(kind, x, y, size, **kw)  # type: ignore[arg-type]
        self.actors.append(actor)
        return actor


def _reach(x_from: float, x_to: float, size: float) -> float:
    """How far (in the reaching person's units) an arm must extend to touch x_to."""
    return max(0.2, min(0.5, abs(x_to - x_from) / size))


# --------------------------------------------------------------------------- layouts (attacker etc. on the left)
def _attack(b: _Builder, g: float, h: float, hz: float) -> None:
    rng = b.rng
    n = 1 if rng.random() < 0.7 else 2
    attacker_type = b.types("Attacker", ("soldier", "police", "civilian", "protester"))
    kind = rng.choice(("person", "person", "person", "vehicle", "building"))
    target_pool = {"person": ("civilian", "soldier", "protester", "journalist", "official"),
                   "vehicle": ("vehicle",), "building": ("building",)}[kind]
    target_type = b.types("Target", target_pool, exclude=attacker_type)
    sa = b.person("Attacker", attacker_type, n)
    weapon = "pistol" if rng.random() < 0.3 else "rifle"
    sw = b.thing("Instrument", "weapon", weapon, n)
    xt = 0.76 + rng.uniform(-0.03, 0.03)
    if target_type == "vehicle":
        st = b.thing("Target", "vehicle", rng.choice(("car", "bus")))
        target = (xt - 0.04, g - 0.12)
    elif target_type == "building":
        st = b.thing("Target", "building", rng.choice(("house", "office", "clinic")))
        target = (xt, hz - 0.05)
    else:
        st = b.person("Target", target_type)
        target = (xt, g - 0.35 * h)
    xa = 0.2 + rng.uniform(-0.03, 0.03)
    pose = "pistol" if weapon == "pistol" else "aim"
    for i in reversed(range(n)):
        b.add(attacker_type, xa - 0.11 * i, g - 0.04 * i, h * (1 - 0.08 * i), slot=sa, inst=i, pose=pose,
              held="weapon", held_slot=sw, shoots_at=target)
    if target_type == "vehicle":
        b.add("vehicle", xt, g - 0.02, 0.46, facing=rng.choice((1, -1)), slot=st, fire=True)
    elif target_type == "building":
        b.actors.insert(0, Actor("building", xt, hz + 0.12, 0.52, slot=st, fire=True))
    else:
        b.add(target_type, xt, g, h, facing=-1, slot=st, pose="hands_up")


def _demonstrate(b: _Builder, g: float, h: float, hz: float) -> None:
    rng = b.rng
    n_p, n_c = rng.choice((2, 3)), rng.choice((2, 3))
    se = b.person("Entity", b.types("Entity", ("protester", "civilian")), n_p)
    poses = ["sign"] + [rng.choice(("sign", "sign", "fist")) for _ in range(n_p - 1)]
    si = b.thing("Instrument", "sign", "sign", poses.count("sign"))
    sp = b.person("Police", b.types("Police", ("police", "soldier")), n_c)
    hs = h * 0.86
    for i, pose in enumerate(poses):
        x = 0.1 + 0.14 * i + rng.uniform(-0.015, 0.015)
        held = "sign" if pose == "sign" else None
        b.add(b.slots[se].filler.entity_type, x, g - 0.03 * (i % 2), hs, slot=se, inst=i, pose=pose, held=held,
              held_slot=si if held else None)
    for i in range(n_c):
        b.add(b.slots[sp].filler.entity_type, 0.9 - 0.13 * i, g - 0.02 * (i % 2), hs, facing=-1, slot=sp, inst=i,
              pose="shield")


def _meet(b: _Builder, g: float, h: float, hz: float) -> None:
    rng = b.rng
    pool = ("official", "official", "official", "civilian", "journalist", "police", "soldier")
    t1 = b.types("Participant", pool)
    foreign = rng.randrange(len(COUNTRIES))
    s1 = b.person("Participant", t1)
    s2 = b.person("Participant", b.types("Participant", pool, exclude=t1),
                  country=foreign if foreign != b.country else (foreign + 1) % len(COUNTRIES))
    d = 0.16 + rng.uniform(0.0, 0.03)
    for s, x, f in ((s1, 0.5 - d, 1), (s2, 0.5 + d, -1)):
        b.add(b.slots[s].filler.entity_type, x, g, h, facing=f, slot=s, pose="shake", reach=_reach(x, 0.5, h))


def _phone(b: _Builder, g: float, h: float, hz: float) -> None:
    rng = b.rng
    s = b.person("Entity", b.types("Entity", ("official", "civilian", "journalist", "police", "soldier")))
    sp = b.thing("Instrument", "phone", "phone")
    b.add(b.slots[s].filler.entity_type, 0.5 + rng.uniform(-0.15, 0.15), g, h * 1.05, facing=rng.choice((1, -1)),
          slot=s, pose="phone", held="phone", held_slot=sp)


def _arrest(b: _Builder, g: float, h: float, hz: float, with_vehicle: bool) -> None:
    rng = b.rng
    n = 1 if rng.random() < 0.7 else 2
    agent_type = b.types("Agent", ("police", "soldier"))
    sa = b.person("Agent", agent_type, n)
    sp = b.person("Person", b.types("Person", ("civilian", "protester", "official", "journalist")))
    if with_vehicle:
        sv = b.thing("Instrument", "vehicle", rng.choice(("van", "car")))
        b.add("vehicle", 0.78 if n == 1 else 0.22, hz + 0.14, 0.42, facing=rng.choice((1, -1)), slot=sv)
    xp = 0.56 + rng.uniform(-0.03, 0.03)
    xa = xp - 0.22
    b.add(agent_type, xa, g, h, slot=sa, inst=0, pose="grip", reach=_reach(xa, xp - 0.1 * h, h))
    b.add(b.slots[sp].filler.entity_type, xp, g, h * 0.97, slot=sp, pose="cuffed")
    if n == 2:
        xb = xp + 0.22
        b.add(agent_type, xb, g + 0.01, h, facing=-1, slot=sa, inst=1, pose="grip",
              reach=_reach(xb, xp + 0.1 * h, h))


def _die(b: _Builder, g: float, h: float, hz: float, with_agent: bool) -> None:
    rng = b.rng
    victim_type = b.types("Victim", ("civilian", "soldier", "protester", "journalist", "official", "police"))
    sv = b.person("Victim", victim_type)
    xv = 0.6 if with_agent else 0.5
    xv += rng.uniform(-0.04, 0.04)
    head = rng.choice((1, -1))
    if with_agent:
        sa = b.person("Agent", b.types("Agent", ("soldier", "police", "civilian"), exclude=victim_type))
        weapon = "pistol" if rng.random() < 0.3 else "rifle"
        sw = b.thing("Instrument", "weapon", weapon)
        b.add(b.slots[sa].filler.entity_type, 0.17 + rng.uniform(-0.02, 0.02), g - 0.05, h, slot=sa,
              pose="pistol" if weapon == "pistol" else "aim", held="weapon", held_slot=sw)
    b.add(victim_type, xv - head * h / 2, g - 0.13 * h, h, facing=head, slot=sv, lying=True)


def _transport(b: _Builder, g: float, h: float, hz: float, origin: str, destination: str) -> None:
    rng = b.rng
    # Two different buildings, every style equally likely at either end, named in the place phrases: only the
    # picture (which one has the blue origin pin and the tail of the arrow) tells origin from destination.
    styles = rng.sample(tuple(BUILDING_PLACES), 2)
    so = b.place("Origin", building_place(styles[0], origin, rng.randrange(6)), styles[0])
    sd = b.place("Destination", building_place(styles[1], destination, rng.randrange(6)), styles[1])
    b.add("building", 0.1, hz + 0.1, 0.3, slot=so, pin="origin")
    b.add("building", 0.9, hz + 0.1, 0.3, slot=sd, pin="destination")
    agent_type = b.types("Agent", ("soldier", "police", "official", "civilian"))
    style = "military" if agent_type == "soldier" else "truck"
    sveh = b.thing("Vehicle", "vehicle", style)
    length = 0.58
    xv = 0.5 + rng.uniform(-0.03, 0.03)
    b.add("vehicle", xv, g, length, slot=sveh, moving=True)
    art_type = b.types("Artifact", ("civilian", "soldier", "official", "protester", "journalist", "money"),
                       exclude=agent_type)
    if art_type == "money":
        sart = b.thing("Artifact", "money", "cash", rng.choice((1, 2)))
        for i in range(b.slots[sart].filler.count):
            b.add("money", xv + (-0.33 + 0.18 * i) * length, g - 0.3 * length, 0.2 * length, slot=sart, inst=i)
    else:
        n = rng.choice((1, 2, 3))
        sart = b.person("Artifact", art_type, n)
        ph = 0.5 * length
        for i in range(n):
            b.add(art_type, xv + (-0.38 + 0.17 * i) * length, g - 0.3 * length + 0.47 * ph, ph, slot=sart, inst=i,
                  part="upper")
    sag = b.person("Agent", agent_type)
    dh = 0.56 * length
    b.add(agent_type, xv + 0.31 * length, g - 0.37 * length + 0.885 * dh, dh, slot=sag, part="head")


def _transfer(b: _Builder, g: float, h: float, hz: float) -> None:
    rng = b.rng
    giver = b.types("Giver", ("official", "civilian", "journalist", "soldier", "police"))
    sg = b.person("Giver", giver)
    sr = b.person("Recipient", b.types("Recipient", ("official", "civilian", "journalist", "soldier", "police",
                                                     "protester"), exclude=giver))
    sm = b.thing("Money", "money", "cash")
    d = 0.19 + rng.uniform(0.0, 0.03)
    b.add(giver, 0.5 - d, g, h, slot=sg, pose="give", held="money", held_slot=sm)
    b.add(b.slots[sr].filler.entity_type, 0.5 + d, g, h, facing=-1, slot=sr, pose="receive")


def _distractors(b: _Builder, n: int, hz: float) -> int:
    """Bystanders and unrelated objects behind the event, kept clear of the main figures."""
    rng = b.rng
    taken = [a.x for a in b.actors]
    placed: list[Actor] = []
    for _ in range(n):
        for _try in range(10):
            x = rng.uniform(0.06, 0.94)
            if all(abs(x - t) > 0.12 for t in taken):
                break
        else:
            continue
        taken.append(x)
        r = rng.random()
        y = hz + rng.uniform(0.07, 0.12)
        look = Look(rng.randrange(6), rng.randrange(5), rng.random() < 0.4, rng.randrange(60))
        if r < 0.6:
            kind = rng.choice(PERSON_TYPES)
            pose = "camera" if kind == "journalist" and rng.random() < 0.6 else "stand"
            placed.append(Actor(kind, x, y, rng.uniform(0.24, 0.3), rng.choice((1, -1)), pose=pose, look=look))
        elif r < 0.8:
            placed.append(Actor("vehicle", x, y, 0.3, rng.choice((1, -1)), look=look, style="car"))
        elif r < 0.9:
            placed.append(Actor("sign", x, y, 0.22, look=look, style="post"))
        else:
            placed.append(Actor("building", x, hz + 0.03, 0.24, look=look, style=rng.choice(("house", "office"))))
    placed.sort(key=lambda a: a.y)
    b.actors[:0] = placed
    return len(placed)


def _place_choice(rng: random.Random, country: int, event_type: str) -> tuple[str, str]:
    places = [p for p in PLACES if p != "desert" or COUNTRIES[country][3]]
    if event_type == "Contact.Meet":
        places = [p for p in places if p != "desert"] + ["parliament"]
    place = rng.choice(places)
    capital, coastal, other = COUNTRIES[country][2]
    city = {"parliament": capital, "port": coastal, "desert": other}.get(place) or rng.choice((capital, coastal, other))
    return place, city


def build_scene(index: int, seed: int, event_type: str, ontology: Ontology) -> Scene:
    """The scene for (seed, index): every random choice comes from a generator seeded by both."""
    rng = random.Random(f"eventworld/{seed}/{index}")
    country = rng.randrange(len(COUNTRIES))
    place, city = _place_choice(rng, country, event_type)
    variant = rng.randrange(BG_VARIANTS)
    hz = horizon(variant)
    template = rng.randrange(len(TEMPLATES[event_type]))
    text = TEMPLATES[event_type][template][1]
    b = _Builder(rng, ontology, event_type, country)
    g = rng.uniform(0.9, 0.95)
    h = rng.uniform(0.46, 0.54)
    if event_type == "Conflict.Attack":
        _attack(b, g, h, hz)
    elif event_type == "Conflict.Demonstrate":
        _demonstrate(b, g, h, hz)
    elif event_type == "Contact.Meet":
        _meet(b, g, h, hz)
    elif event_type == "Contact.Phone-Write":
        _phone(b, g, h, hz)
    elif event_type == "Justice.Arrest-Jail":
        _arrest(b, g, h, hz, "{Instrument}" in text)
    elif event_type == "Life.Die":
        _die(b, g, h, hz, "{Agent}" in text)
    elif event_type == "Movement.Transport":
        cities = list(COUNTRIES[country][2])
        rng.shuffle(cities)
        _transport(b, g, h, hz, cities[0], cities[1])
    else:
        _transfer(b, g, h, hz)
    if event_type != "Movement.Transport":
        b.place("Place", PLACE_PHRASES[place][1].format(city=city), place)
    n = _distractors(b, rng.choice((0, 1, 2, 3)), hz)
    mirrored = rng.random() < 0.5
    if mirrored:
        for a in b.actors:
            a.x, a.facing = 1.0 - a.x, -a.facing
            if a.shoots_at:
                a.shoots_at = (1.0 - a.shoots_at[0], a.shoots_at[1])
    return Scene(event_type, seed, index, place, variant, country, rng.choice(DAYS), template, b.slots, b.actors,
                 mirrored, n)
