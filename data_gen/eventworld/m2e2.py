"""Gold export in the M2E2 image-event JSON layout (Li et al., ACL 2020), and a reader for it.

The M2E2 release (`m2e2_annotations/image_only_event.json`, `image_multimedia_event.json`) maps an image id
(file name without extension) to `{"event_type": ..., "role": {role: [[name, x1, y1, x2, y2], ...]}}` with
integer pixel boxes, one entry per annotated object (several per role when several people fill it).
What we write, and why:

- event types in the release's ACE spelling, `Conflict:Attack` (a colon); the reader also accepts our
  ontology's `Conflict.Attack`;
- one entry per visible instance `[entity_type, x1, y1, x2, y2]` (the name slot carries our entity type);
  the reader also accepts plain `[x1, y1, x2, y2]`;
- role names as in our ontology, except that Contact:Meet participants are written as `Entity`, as in the
  release (ACE names that role Entity); the reader maps them back;
- Place is left out: the release annotates no image region for it (our gold marks the whole image).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from align.atomic import atomic_write_text
from align.ontology import Ontology
from align.schema import Sample

# (ontology type, our role) -> role name in the M2E2 file
ROLE_RENAMES = {("Contact.Meet", "Participant"): "Entity"}
SKIPPED_ROLES = ("Place",)


def m2e2_type(event_type: str) -> str:
    """`Conflict.Attack` -> `Conflict:Attack` (the release's spelling)."""
    return event_type.replace(".", ":", 1)


def _int_box(box: Iterable[float]) -> list[int]:
    x1, y1, x2, y2 = box
    return [math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)]


def sample_gold(sample: Sample) -> dict[str, Any] | None:
    """The M2E2 entry of one sample's salient event, or None when it has no event."""
    event = sample.salient_event
    if event is None:
        return None
    per_instance = sample.provenance.get("role_boxes", {}) if isinstance(sample.provenance, dict) else {}
    roles: dict[str, list[list[Any]]] = {}
    for arg in event.arguments:
        if arg.role in SKIPPED_ROLES or arg.box is None:
            continue
        name = ROLE_RENAMES.get((event.type, arg.role), arg.role)
        boxes = per_instance.get(arg.role) or [arg.box]
        entries = roles.setdefault(name, [])
        for box in boxes:
            entry = [arg.entity_type or "", *_int_box(box)]
            if entry[1:] not in [e[1:] for e in entries]:  # role-wide boxes come with every filler of the role
                entries.append(entry)
    return {"event_type": m2e2_type(event.type), "role": roles}


def write_m2e2_gold(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write `{image_id: {"event_type", "role"}}` for the samples (image id = sample key); atomic."""
    gold: dict[str, Any] = {}
    for s in samples:
        entry = sample_gold(s)
        if entry is None:
            continue
        if s.key in gold:
            raise ValueError(f"{path}: duplicate image id {s.key!r}")
        gold[s.key] = entry
    path = Path(path)
    atomic_write_text(path, json.dumps(gold, indent=1, ensure_ascii=False))
    return path


def read_m2e2(path: str | Path, ontology: Ontology | None = None) -> dict[str, dict[str, Any]]:
    """Read an M2E2 image-event file into `{image_id: {"event_type", "role": {role: [[x1, y1, x2, y2]]}}}`.

    Types and roles come back in the ontology's names (via its aliases, e.g. `Justice:ArrestJail`).
    """
    ontology = ontology or Ontology.default()
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read M2E2 JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping image ids to events, got {type(data).__name__}")
    back = {(t, m2e2_name): ours for (t, ours), m2e2_name in ROLE_RENAMES.items()}
    out: dict[str, dict[str, Any]] = {}
    for image_id, entry in data.items():
        where = f"{path}: image {image_id!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("event_type"), str):
            raise ValueError(f"{where}: expected {{'event_type': str, 'role': {{...}}}}, got {entry!r}")
        raw_type = entry["event_type"].replace(":", ".", 1)
        alias = ontology.aliases.get(raw_type)
        event_type = alias.type if alias else raw_type
        if event_type not in ontology:
            raise ValueError(f"{where}: unknown event type {entry['event_type']!r}")
        roles: dict[str, list[list[float]]] = {}
        raw_roles = entry.get("role", {})
        if not isinstance(raw_roles, dict):
            raise ValueError(f"{where}: 'role' must be an object, got {type(raw_roles).__name__}")
        for role, items in raw_roles.items():
            name = back.get((event_type, role), alias.roles.get(role, role) if alias else role)
            if not isinstance(items, list):
                raise ValueError(f"{where}: role {role!r} must hold a list of boxes")
            for item in items:
                coords = item[1:] if isinstance(item, list) and len(item) == 5 else item
                if (not isinstance(coords, list) or len(coords) != 4
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coords)):
                    raise ValueError(f"{where}: role {role!r}: expected [x1, y1, x2, y2] or "
                                     f"[name, x1, y1, x2, y2], got {item!r}")
                roles.setdefault(name, []).append([float(v) for v in coords])
        out[image_id] = {"event_type": event_type, "role": roles}
    return out
