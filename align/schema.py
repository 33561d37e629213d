"""The one definition of a shard record.

`data_gen` writes these records and `align` reads them; no other module spells out field names.
A WebDataset sample is `{key}.jpg` (the image) plus `{key}.json` (everything below as JSON).
Validation errors name the sample key and the dotted path of the bad field, so a user can find the
offending record in a 100k-sample shard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

SCHEMA_VERSION = 1

# WebDataset member extensions: a sample is `{key}.{IMAGE_EXT}` + `{key}.{RECORD_EXT}`.
IMAGE_EXT = "jpg"
RECORD_EXT = "json"

RegionSource = Literal["detector", "grid", "annotation"]
DescriptionKind = Literal["caption", "short", "long", "caption_edit", "llm"]
NegativeKind = Literal["type_swap", "role_swap", "arg_replace", "llm"]

REGION_SOURCES: tuple[str, ...] = get_args(RegionSource)
DESCRIPTION_KINDS: tuple[str, ...] = get_args(DescriptionKind)
NEGATIVE_KINDS: tuple[str, ...] = get_args(NegativeKind)

Box = tuple[float, float, float, float]


class SchemaError(ValueError):
    """A record does not match the schema; the message names the sample key and the field."""

    def __init__(self, key: str | None, path: str, problem: str) -> None:
        self.key, self.path, self.problem = key, path, problem
        super().__init__(f"sample {key!r}: field '{path}': {problem}")


# --------------------------------------------------------------------------- field readers
class _Reader:
    """Reads typed fields out of a JSON dict, raising SchemaError with the full path on mismatch."""

    def __init__(self, key: str | None, data: Any, path: str) -> None:
        self.key, self.path = key, path
        if not isinstance(data, dict):
            raise SchemaError(key, path or "<record>", f"expected an object, got {type(data).__name__}")
        self.data = data

    def _p(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, types: type | tuple[type, ...], default: Any = ..., *, nullable: bool = False) -> Any:
        if name not in self.data:
            if default is ...:
                raise SchemaError(self.key, self._p(name), "missing")
            return default
        value = self.data[name]
        if value is None and nullable:
            return None
        # bool is an int subclass: never accept it where a number is wanted.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            want = "/".join(t.__name__ for t in _as_tuple(types))
            raise SchemaError(self.key, self._p(name), f"expected {want}, got {type(value).__name__}")
        return value

    def text(self, name: str, default: Any = ..., *, nullable: bool = False) -> Any:
        return self.get(name, str, default, nullable=nullable)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name)
        if value not in choices:
            raise SchemaError(self.key, self._p(name), f"{value!r} is not one of {list(choices)}")
        return value

    def box(self, name: str, *, nullable: bool = False) -> Box | None:
        value = self.get(name, list, None if nullable else ..., nullable=nullable)
        if value is None:
            return None
        return _check_box(self.key, self._p(name), value)

    def items(self, name: str) -> list[tuple[str, Any]]:
        """(path, item) pairs of a list field, empty when absent."""
        values = self.get(name, list, [])
        return [(f"{self._p(name)}[{i}]", v) for i, v in enumerate(values)]


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _check_box(key: str | None, path: str, value: Any) -> Box:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise SchemaError(key, path, f"expected [x1, y1, x2, y2] numbers, got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise SchemaError(key, path, f"box has non-finite coordinates {value!r}")
    if x2 < x1 or y2 < y1:
        raise SchemaError(key, path, f"box {value!r} has x2 < x1 or y2 < y1")
    return (x1, y1, x2, y2)


def _span(r: _Reader) -> tuple[int | None, int | None]:
    start = r.get("char_start", int, None, nullable=True)
    end = r.get("char_end", int, None, nullable=True)
    if (start is None) != (end is None):
        raise SchemaError(r.key, r._p("char_end" if end is None else "char_start"), "span needs both ends")
    if start is not None and (start < 0 or end < start):
        raise SchemaError(r.key, r._p("char_start"), f"invalid span [{start}, {end})")
    return start, end


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------- record types
@dataclass
class Argument:
    """One argument of an event: its role, the phrase that fills it and, when known, where it is."""

    role: str
    text: str
    entity_type: str | None = None
    char_start: int | None = None
    char_end: int | None = None
    box: Box | None = None

    def to_dict(self) -> dict[str, Any]:
        d = _drop_none(
            {"role": self.role, "text": self.text, "entity_type": self.entity_type,
             "char_start": self.char_start, "char_end": self.char_end}
        )
        if self.box is not None:
            d["box"] = list(self.box)
        return d

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "argument") -> Argument:
        r = _Reader(key, data, path)
        start, end = _span(r)
        return cls(
            role=r.text("role"), text=r.text("text"), entity_type=r.text("entity_type", None, nullable=True),
            char_start=start, char_end=end, box=r.box("box", nullable=True),
        )


@dataclass
class Trigger:
    """The word(s) that evoke an event in the caption."""

    text: str
    char_start: int | None = None
    char_end: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"text": self.text, "char_start": self.char_start, "char_end": self.char_end})

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "trigger") -> Trigger:
        r = _Reader(key, data, path)
        start, end = _span(r)
        return cls(text=r.text("text"), char_start=start, char_end=end)


@dataclass
class Event:
    """An event mention: ontology type, trigger and role-labelled arguments."""

    type: str
    trigger: Trigger
    arguments: list[Argument] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "trigger": self.trigger.to_dict(),
                "arguments": [a.to_dict() for a in self.arguments]}

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "event") -> Event:
        r = _Reader(key, data, path)
        return cls(
            type=r.text("type"),
            trigger=Trigger.from_dict(r.get("trigger", dict), key, r._p("trigger")),
            arguments=[Argument.from_dict(a, key, p) for p, a in r.items("arguments")],
        )

    def argument(self, role: str) -> Argument | None:
        """First argument filling `role`, if any."""
        return next((a for a in self.arguments if a.role == role), None)


@dataclass
class Region:
    """A candidate image region: box in pixels (x1, y1, x2, y2) and where it came from."""

    box: Box
    label: str = ""
    score: float = 1.0
    source: RegionSource = "grid"

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "label": self.label, "score": self.score, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "region") -> Region:
        r = _Reader(key, data, path)
        return cls(box=r.box("box"), label=r.text("label", ""), score=float(r.get("score", (int, float), 1.0)),
                   source=r.choice("source", REGION_SOURCES) if "source" in r.data else "grid")


@dataclass
class Description:
    """A positive text for the image."""

    kind: DescriptionKind
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text}

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "description") -> Description:
        r = _Reader(key, data, path)
        return cls(kind=r.choice("kind", DESCRIPTION_KINDS), text=r.text("text"))  # type: ignore[arg-type]


@dataclass
class Negative:
    """A hard negative text; `changed` says what was altered, e.g. {"type": ["Conflict.Attack", "Life.Die"]}."""

    kind: NegativeKind
    text: str
    changed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "changed": self.changed}

    @classmethod
    def from_dict(cls, data: Any, key: str | None = None, path: str = "negative") -> Negative:
        r = _Reader(key, data, path)
        return cls(kind=r.choice("kind", NEGATIVE_KINDS), text=r.text("text"),  # type: ignore[arg-type]
                   changed=r.get("changed", dict, {}))


@dataclass
class Sample:
    """One training record. `image` holds encoded JPEG bytes and is stored beside the JSON, not in it."""

    key: str
    caption: str
    width: int
    height: int
    events: list[Event] = field(default_factory=list)
    salient: int | None = None
    positives: list[Description] = field(default_factory=list)
    negatives: list[Negative] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = field(default=None, repr=False, compare=False)
    schema_version: int = SCHEMA_VERSION

    @property
    def salient_event(self) -> Event | None:
        return None if self.salient is None else self.events[self.salient]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the image bytes."""
        return {
            "schema_version": self.schema_version, "key": self.key, "caption": self.caption,
            "width": self.width, "height": self.height,
            "events": [e.to_dict() for e in self.events], "salient": self.salient,
            "positives": [d.to_dict() for d in self.positives],
            "negatives": [n.to_dict() for n in self.negatives],
            "regions": [g.to_dict() for g in self.regions], "provenance": self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any, image: bytes | None = None) -> Sample:
        """The record as a Sample; SchemaError naming the key and field when it does not match the schema."""
        sample = _read_fast(data, image)
        return sample if sample is not None else cls._read_checked(data, image)

    @classmethod
    def _read_checked(cls, data: Any, image: bytes | None) -> Sample:
        """Field by field through `_Reader`, so the first problem is reported with its path."""
        key = data.get("key") if isinstance(data, dict) else None
        key = key if isinstance(key, str) else None
        r = _Reader(key, data, "")
        version = r.get("schema_version", int)
        if version > SCHEMA_VERSION:
            raise SchemaError(key, "schema_version",
                              f"record has version {version}, this library reads <= {SCHEMA_VERSION}; upgrade")
        r.text("key")
        sample = cls(
            key=key or "", caption=r.text("caption"),
            width=r.get("width", int), height=r.get("height", int),
            events=[Event.from_dict(e, key, p) for p, e in r.items("events")],
            salient=r.get("salient", int, None, nullable=True),
            positives=[Description.from_dict(d, key, p) for p, d in r.items("positives")],
            negatives=[Negative.from_dict(n, key, p) for p, n in r.items("negatives")],
            regions=[Region.from_dict(g, key, p) for p, g in r.items("regions")],
            provenance=r.get("provenance", dict, {}), image=image, schema_version=version,
        )
        sample.validate()
        return sample

    @classmethod
    def from_json(cls, text: str | bytes, image: bytes | None = None) -> Sample:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SchemaError(None, "<record>", f"not valid JSON: {e}") from e
        return cls.from_dict(data, image)

    def validate(self, ontology: Any | None = None) -> None:
        """Check cross-field consistency; with an `Ontology`, also event types and roles."""
        k = self.key
        if not k:
            raise SchemaError(k, "key", "empty key")
        if self.width <= 0 or self.height <= 0:
            raise SchemaError(k, "width", f"image size must be positive, got {self.width}x{self.height}")
        if self.salient is not None and not 0 <= self.salient < len(self.events):
            raise SchemaError(k, "salient", f"index {self.salient} out of range for {len(self.events)} events")
        for i, e in enumerate(self.events):
            for j, a in enumerate(e.arguments):
                if a.box is not None:
                    self._check_inside(f"events[{i}].arguments[{j}].box", a.box)
            if ontology is not None:
                ontology.check_event(e, key=k, path=f"events[{i}]")
        for i, g in enumerate(self.regions):
            self._check_inside(f"regions[{i}].box", g.box)

    def _check_inside(self, path: str, box: Box) -> None:
        x1, y1, x2, y2 = box
        if x1 < 0 or y1 < 0 or x2 > self.width or y2 > self.height:
            raise SchemaError(self.key, path, f"box {list(box)} is outside the {self.width}x{self.height} image")


# --------------------------------------------------------------------------- the fast path of Sample.from_dict
class _Unsure(Exception):
    """`_read_fast` cannot vouch for a record: `Sample._read_checked` reads it and names what is wrong."""


_NUMBER = (int, float)


def _fast_box(v: Any, width: int, height: int) -> Box:
    """`_check_box` plus the inside-the-image check of `Sample.validate`, without building error paths."""
    if type(v) is not list or len(v) != 4:
        raise _Unsure
    x1, y1, x2, y2 = v
    if type(x1) not in _NUMBER or type(y1) not in _NUMBER or type(x2) not in _NUMBER or type(y2) not in _NUMBER:
        raise _Unsure
    box = (float(x1), float(y1), float(x2), float(y2))
    x1, y1, x2, y2 = box  # every comparison is False for NaN, so NaN fails them all; inf fails the last two
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        raise _Unsure
    return box


def _fast_span(d: dict) -> tuple[int | None, int | None]:
    start, end = d.get("char_start"), d.get("char_end")
    if start is None and end is None:
        return None, None
    if type(start) is not int or type(end) is not int or start < 0 or end < start:
        raise _Unsure
    return start, end


def _text(v: Any) -> str:
    if type(v) is not str:
        raise _Unsure
    return v


def _list(d: dict, name: str) -> list:
    v = d.get(name, [])
    if type(v) is not list:
        raise _Unsure
    return v


def _fast_argument(d: Any, width: int, height: int) -> Argument:
    if type(d) is not dict:
        raise _Unsure
    start, end = _fast_span(d)
    entity_type, box = d.get("entity_type"), d.get("box")
    if entity_type is not None and type(entity_type) is not str:
        raise _Unsure
    return Argument(_text(d["role"]), _text(d["text"]), entity_type, start, end,
                    None if box is None else _fast_box(box, width, height))


def _fast_event(d: Any, width: int, height: int) -> Event:
    if type(d) is not dict or type(d["trigger"]) is not dict:
        raise _Unsure
    t = d["trigger"]
    return Event(_text(d["type"]), Trigger(_text(t["text"]), *_fast_span(t)),
                 [_fast_argument(a, width, height) for a in _list(d, "arguments")])


def _fast_region(d: Any, width: int, height: int) -> Region:
    if type(d) is not dict:
        raise _Unsure
    score, source = d.get("score", 1.0), d.get("source", "grid")
    if type(score) not in _NUMBER or source not in REGION_SOURCES or type(source) is not str:
        raise _Unsure
    return Region(_fast_box(d["box"], width, height), _text(d.get("label", "")), float(score), source)


def _fast_description(d: Any) -> Description:
    if type(d) is not dict or type(d["kind"]) is not str or d["kind"] not in DESCRIPTION_KINDS:
        raise _Unsure
    return Description(d["kind"], _text(d["text"]))


def _fast_negative(d: Any) -> Negative:
    if type(d) is not dict or type(d["kind"]) is not str or d["kind"] not in NEGATIVE_KINDS:
        raise _Unsure
    changed = d.get("changed", {})
    if type(changed) is not dict:
        raise _Unsure
    return Negative(d["kind"], _text(d["text"]), changed)


def _read_fast(data: Any, image: bytes | None) -> Sample | None:
    """`Sample.from_dict` for a record that passes every check of `_read_checked` and `Sample.validate`, in one
    pass with plain type tests (a third of the time); None when anything is off (or of an unusual type, such as
    a str subclass), so the checked reader decides and its error names the field. The loader reads every record
    through here; tests/test_loader_speed.py compares both readers over mutated records."""
    try:
        if type(data) is not dict:
            return None
        version, key, width, height = data["schema_version"], data["key"], data["width"], data["height"]
        if (type(version) is not int or version > SCHEMA_VERSION or type(key) is not str or not key
                or type(width) is not int or type(height) is not int or width <= 0 or height <= 0):
            return None
        events = [_fast_event(e, width, height) for e in _list(data, "events")]
        salient, provenance = data.get("salient"), data.get("provenance", {})
        if (salient is not None and (type(salient) is not int or not 0 <= salient < len(events))
                or type(provenance) is not dict):
            return None
        return Sample(
            key, _text(data["caption"]), width, height, events, salient,
            [_fast_description(d) for d in _list(data, "positives")],
            [_fast_negative(n) for n in _list(data, "negatives")],
            [_fast_region(g, width, height) for g in _list(data, "regions")], provenance, image, version)
    except Exception:  # noqa: BLE001  _Unsure, a missing field, or anything unforeseen: the checked reader decides
        return None
