"""Event ontology: types, roles, templates, confusable types, and fine-type aliases.

The default is the 8 M2E2 types with ACE roles (`align/resources/ontology.yaml`). Users load their own
with `Ontology.load("my.yaml")` (YAML or JSON, same layout). Errors name the file and the entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from align.schema import Argument, Event, SchemaError

DEFAULT_ONTOLOGY = Path(__file__).with_name("resources") / "ontology.yaml"
M2E2_TYPES = (
    "Conflict.Attack", "Conflict.Demonstrate", "Contact.Meet", "Contact.Phone-Write",
    "Justice.Arrest-Jail", "Life.Die", "Movement.Transport", "Transaction.Transfer-Money",
)

_SLOT = re.compile(r"\{([A-Za-z][\w-]*)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


class OntologyError(ValueError):
    """An ontology file is unreadable or inconsistent; the message names the file and entry."""


@dataclass(frozen=True)
class Role:
    name: str
    entity_types: tuple[str, ...] = ()
    placeholder: str = "someone"


@dataclass(frozen=True)
class EventType:
    """One event type and everything the generators need to talk about it."""

    name: str
    plain_name: str
    trigger: str
    roles: dict[str, Role]
    long_template: str
    short_template: str
    confusable: tuple[str, ...] = ()
    symmetric: tuple[tuple[str, ...], ...] = ()

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(self.roles)

    def render(self, fillers: dict[str, str | list[str]], style: str = "long") -> str:
        """Fill the long or short template; optional `[...]` parts vanish when their role is empty."""
        template = self.long_template if style == "long" else self.short_template
        values = {r: _join([lower_article(x) for x in ([v] if isinstance(v, str) else v)])
                  for r, v in fillers.items() if v}

        def optional(m: re.Match[str]) -> str:
            slots = _SLOT.findall(m.group(1))
            return m.group(1) if slots and all(s in values for s in slots) else ""

        text = _OPTIONAL.sub(optional, template)
        text = _SLOT.sub(lambda m: values.get(m.group(1)) or self.roles[m.group(1)].placeholder, text)
        text = re.sub(r"\s+", " ", text).strip()
        return text[:1].upper() + text[1:]

    def is_symmetric(self, role_a: str, role_b: str) -> bool:
        """True when swapping fillers of these two roles (or within one role) keeps the meaning."""
        return any(role_a in g and role_b in g for g in self.symmetric)


_ARTICLE = re.compile(r"^(A|An|The)(?= [a-z])|^(A|An)(?= )")


def lower_article(text: str) -> str:
    """A filler taken from the start of a caption ("A soldier") reads "a soldier" inside a sentence; "The"
    stays before a capitalised word, which may be a name ("The Hague")."""
    return _ARTICLE.sub(lambda m: m.group(0).lower(), text)


def _join(value: str | list[str]) -> str:
    if isinstance(value, str):
        return value
    items = [v for v in value if v]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Alias:
    type: str
    roles: dict[str, str] = field(default_factory=dict)


@dataclass
class Ontology:
    """A set of event types plus aliases from finer type names onto them."""

    types: dict[str, EventType]
    aliases: dict[str, Alias] = field(default_factory=dict)
    source: str = "<memory>"
    entity_kinds: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls) -> Ontology:
        return _default()

    @classmethod
    def load(cls, path: str | Path) -> Ontology:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise OntologyError(f"{path}: cannot read ontology file: {e}") from e
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise OntologyError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<memory>") -> Ontology:
        if not isinstance(data, dict) or not isinstance(data.get("types"), dict) or not data["types"]:
            raise OntologyError(f"{source}: expected a mapping with a non-empty 'types' mapping")
        types = {name: _parse_type(name, spec, source) for name, spec in data["types"].items()}
        aliases = {}
        for fine, spec in (data.get("aliases") or {}).items():
            if not isinstance(spec, dict) or spec.get("type") not in types:
                raise OntologyError(f"{source}: alias '{fine}' must map to one of the types, got {spec!r}")
            roles = spec.get("roles") or {}
            target = types[spec["type"]]
            for old, new in roles.items():
                if new not in target.roles:
                    raise OntologyError(f"{source}: alias '{fine}' renames role '{old}' to '{new}', "
                                        f"which {target.name} does not have")
            aliases[fine] = Alias(spec["type"], dict(roles))
        for t in types.values():
            for c in t.confusable:
                if c not in types:
                    raise OntologyError(f"{source}: type '{t.name}' lists unknown confusable type '{c}'")
        kinds = data.get("entity_kinds") or {}
        if not isinstance(kinds, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kinds.items()):
            raise OntologyError(f"{source}: 'entity_kinds' must map entity types to coarse kinds (strings)")
        return cls(types, aliases, source, dict(kinds))

    # ------------------------------------------------------------------ queries
    def __getitem__(self, name: str) -> EventType:
        try:
            return self.types[name]
        except KeyError:
            raise KeyError(f"unknown event type {name!r}; known: {sorted(self.types)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.types

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(self.types)

    def fits(self, event_type: str, role: str, entity_type: str | None) -> bool:
        """Whether an entity of `entity_type` can fill `role`: listed for the role itself or through its coarse
        kind (`entity_kinds`: a police officer is a PER), or unknown (no type, or a role that lists none)."""
        allowed = self[event_type].roles[role].entity_types
        if not entity_type or not allowed:
            return True
        return entity_type in allowed or self.entity_kinds.get(entity_type) in allowed

    def check_event(self, event: Event, key: str | None = None, path: str = "event") -> None:
        """Raise SchemaError when the event's type or a role is not in this ontology."""
        if event.type not in self.types:
            raise SchemaError(key, f"{path}.type", f"unknown event type {event.type!r} (ontology {self.source})")
        roles = self.types[event.type].roles
        for j, a in enumerate(event.arguments):
            if a.role not in roles:
                raise SchemaError(key, f"{path}.arguments[{j}].role",
                                  f"role {a.role!r} is not a role of {event.type}: {list(roles)}")

    def normalize(self, event: Event) -> Event | None:
        """Map a possibly finer-typed event onto this ontology; None when the type has no mapping."""
        if event.type in self.aliases:
            alias = self.aliases[event.type]
        elif event.type in self.types:
            alias = Alias(event.type)
        else:
            return None
        roles = self.types[alias.type].roles
        args = []
        for a in event.arguments:
            role = alias.roles.get(a.role, a.role)
            if role in roles:
                args.append(Argument(role, a.text, a.entity_type, a.char_start, a.char_end, a.box))
        return Event(alias.type, event.trigger, args)


def _parse_type(name: str, spec: Any, source: str) -> EventType:
    where = f"{source}: type '{name}'"
    if not isinstance(spec, dict):
        raise OntologyError(f"{where}: expected a mapping")
    missing = [k for k in ("roles", "long_template", "short_template") if k not in spec]
    if missing:
        raise OntologyError(f"{where}: missing {missing}")
    raw_roles = spec["roles"]
    if isinstance(raw_roles, list):
        raw_roles = {r: {} for r in raw_roles}
    if not isinstance(raw_roles, dict) or not raw_roles:
        raise OntologyError(f"{where}: 'roles' must be a non-empty list or mapping")
    roles = {}
    for r, rs in raw_roles.items():
        rs = rs or {}
        if not isinstance(rs, dict):
            raise OntologyError(f"{where}: role '{r}' must be a mapping")
        roles[r] = Role(r, tuple(rs.get("entity_types", ())), rs.get("placeholder", "someone"))
    for key in ("long_template", "short_template"):
        for slot in _SLOT.findall(spec[key]):
            if slot not in roles:
                raise OntologyError(f"{where}: {key} uses unknown role '{{{slot}}}'")
    symmetric = tuple(tuple(g) for g in spec.get("symmetric", ()))
    for group in symmetric:
        for r in group:
            if r not in roles:
                raise OntologyError(f"{where}: symmetric group names unknown role '{r}'")
    return EventType(
        name=name, plain_name=spec.get("name", name.split(".")[-1].lower()),
        trigger=spec.get("trigger", name.split(".")[-1].lower()), roles=roles,
        long_template=spec["long_template"], short_template=spec["short_template"],
        confusable=tuple(spec.get("confusable", ())), symmetric=symmetric,
    )


@lru_cache(maxsize=1)
def _default() -> Ontology:
    return Ontology.load(DEFAULT_ONTOLOGY)
