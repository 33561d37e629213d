"""Backend "import": read events that an existing IE system already produced.

Formats:
- "jsonl": this library's `data-gen extract` output, one {"id", "events": [Event.to_dict()]} per line (the
  VOA caption file's {"id", "caption", "events"} lines read the same way);
- "m2e2": M2E2 text annotations, a JSON list of sentences {"sentence_id", "words", "golden-event-mentions":
  [{"trigger": {"start", "end", "text"}, "event_type", "arguments": [{"start", "end", "role", "text"}]}]}
  with token offsets (end exclusive) into `words`; the text is the words joined by single spaces, and
  "Conflict:Attack" type names are read as "Conflict.Attack";
- "cs": Cold Start knowledge graphs as the GAIA pipeline writes them: tab-separated lines
  `:Event_1  type  Conflict.Attack`, `:Event_1  mention.actual  "attack"  docid:20-25  1.0` (offsets
  inclusive), `:Event_1  Conflict.Attack_Attacker.actual  :Entity_2  docid:12-20  1.0`.
Types and roles are mapped onto the ontology with `Ontology.normalize`; events without a mapping are dropped.
Events are looked up by document id (`extract(texts, ids=...)`), else by the exact text.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.jsonl import read_json_lines, record_id

FORMATS = ("jsonl", "m2e2", "cs")


class ImportFormatError(ValueError):
    """Existing IE output that cannot be read; the message names the file and the place in it."""


def detect_format(path: Path) -> str:
    """Guess the format from the suffix, else from the first non-blank character."""
    suffix = path.suffix.lower()
    if suffix in (".cs", ".tab", ".ttl_cs"):
        return "cs"
    if suffix == ".jsonl":
        return "jsonl"
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return "m2e2"
    if head.startswith("{"):
        return "jsonl"
    if head.startswith(":"):
        return "cs"
    raise ImportFormatError(f"{path}: cannot tell the format (jsonl, m2e2 or cs); pass format=")


def _import_row(row: dict[str, Any]) -> tuple[str, list[Event], str | None]:
    key, raw = record_id(row), row.get("events") or []
    if not isinstance(raw, list):
        raise ValueError(f"'events' must be a list, got {type(raw).__name__}")
    events = [Event.from_dict(e, key, f"events[{i}]") for i, e in enumerate(raw)]
    text = row.get("text", row.get("caption"))
    return key, events, text if isinstance(text, str) else None


def read_jsonl(path: Path) -> tuple[dict[str, list[Event]], dict[str, str]]:
    """id -> events and id -> text, the text when a line has one; bad lines as in `data_gen.jsonl`."""
    events, texts = {}, {}
    for key, evs, text in read_json_lines(path, _import_row, error=ImportFormatError):
        events[key] = evs
        if text is not None:
            texts[key] = text
    return events, texts


def read_m2e2(path: Path) -> tuple[dict[str, list[Event]], dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImportFormatError(f"{path}: not a readable M2E2 JSON file: {e}") from e
    if not isinstance(data, list):
        raise ImportFormatError(f"{path}: expected a JSON list of sentences")
    events, texts = {}, {}
    for n, sent in enumerate(data):
        where = f"{path}: sentence [{n}]"
        try:
            key, words = str(sent["sentence_id"]), [str(w) for w in sent["words"]]
            starts = [0]
            for w in words:
                starts.append(starts[-1] + len(w) + 1)
            text = " ".join(words)

            def span(item: dict[str, Any], words: list[str] = words, starts: list[int] = starts) -> tuple[int, int]:
                a, b = int(item["start"]), int(item["end"])
                if "text" in item and " ".join(words[a:b]) != item["text"] and " ".join(words[a:b + 1]) == item["text"]:
                    b += 1  # some exports use inclusive token ends
                if not 0 <= a < b <= len(words):
                    raise ValueError(f"token span [{a}, {b}) outside {len(words)} words")
                return starts[a], starts[b] - 1

            evs = []
            for m in sent.get("golden-event-mentions", []):
                t0, t1 = span(m["trigger"])
                args = []
                for a in m.get("arguments", []):
                    a0, a1 = span(a)
                    args.append(Argument(a["role"], text[a0:a1], a.get("entity-type"), a0, a1))
                etype = m["event_type"].replace(":", ".")  # M2E2 writes ACE types as "Conflict:Attack"
                evs.append(Event(etype, Trigger(text[t0:t1], t0, t1), args))
        except (KeyError, TypeError, ValueError) as e:
            raise ImportFormatError(f"{where}: {type(e).__name__}: {e}") from e
        events[key], texts[key] = evs, text
    return events, texts


_CS_SPAN = re.compile(r"^(?P<doc>.+):(?P<start>\d+)-(?P<end>\d+)$")


def read_cs(path: Path) -> tuple[dict[str, list[Event]], dict[str, str]]:
    """Cold Start: one Event per event mention, with the role lines whose provenance is in the same document."""
    types: dict[str, str] = {}
    mentions: dict[str, list[tuple[str, int, int, str]]] = defaultdict(list)  # node -> (doc, start, end, text)
    roles: dict[str, list[tuple[str, str, str, int, int]]] = defaultdict(list)  # event -> (role, entity, doc, s, e)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFormatError(f"{path}: cannot read Cold Start file: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip() or not line.startswith(":"):
            continue  # the first line is the run name
        cols = line.split("\t")
        if len(cols) < 3:
            raise ImportFormatError(f"{path}:{n}: expected tab-separated columns, got {line!r}")
        node, pred = cols[0], cols[1]
        if pred == "type":
            types[node] = cols[2].rsplit("#", 1)[-1].split(":")[-1]
            continue
        if len(cols) < 4:
            continue  # e.g. `link` lines without provenance
        m = _CS_SPAN.match(cols[3])
        if m is None:
            raise ImportFormatError(f"{path}:{n}: bad provenance {cols[3]!r}, expected docid:start-end")
        doc, start, end = m["doc"], int(m["start"]), int(m["end"]) + 1  # Cold Start ends are inclusive
        base = pred.split(".actual")[0].split(".generic")[0].split(".other")[0]
        if base in ("mention", "canonical_mention", "nominal_mention", "pronominal_mention"):
            if base == "canonical_mention" and node.startswith(":Event"):
                continue  # the same span as a `mention` line
            mentions[node].append((doc, start, end, cols[2].strip('"')))
        elif node.startswith(":Event") and "_" in base and cols[2].startswith(":"):
            roles[node].append((base.rsplit("_", 1)[1], cols[2], doc, start, end))
    events: dict[str, list[Event]] = defaultdict(list)
    for node, ms in mentions.items():
        if not node.startswith(":Event") or node not in types:
            continue
        for doc, start, end, text in dict.fromkeys(ms):
            args = []
            for role, entity, rdoc, s, e in roles.get(node, []):
                if rdoc != doc:
                    continue
                ent_text = next((t for d, a, b, t in mentions.get(entity, []) if d == doc and (a, b) == (s, e)), None)
                if ent_text is None:
                    ent_text = next((t for d, _, _, t in mentions.get(entity, []) if d == doc), None)
                if ent_text is not None:
                    args.append(Argument(role, ent_text, types.get(entity), s, e))
            events[doc].append(Event(types[node], Trigger(text, start, end), args))
    for evs in events.values():
        evs.sort(key=lambda ev: ev.trigger.char_start or 0)
    return dict(events), {}


READERS = {"jsonl": read_jsonl, "m2e2": read_m2e2, "cs": read_cs}


class ImportExtractor:
    """Extractor backend "import": events from existing IE output, mapped onto the ontology."""

    name = "import"
    uses_ids = True

    def __init__(self, path: str | Path, format: str = "auto", ontology: Ontology | None = None) -> None:
        self.ontology = ontology or Ontology.default()
        paths = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        if not paths:
            raise ImportFormatError(f"{path}: no files to import")
        self.by_id: dict[str, list[Event]] = {}
        self.by_text: dict[str, list[Event]] = {}
        for p in paths:
            if not p.exists():
                raise ImportFormatError(f"{p}: no such file")
            fmt = detect_format(p) if format == "auto" else format
            if fmt not in READERS:
                raise ImportFormatError(f"unknown import format {fmt!r}; choose one of {list(FORMATS)}")
            events, texts = READERS[fmt](p)
            for key, evs in events.items():
                mapped = [m for m in (self.ontology.normalize(e) for e in evs) if m is not None]
                self.by_id.setdefault(key, []).extend(mapped)
                if key in texts:
                    self.by_text[texts[key]] = self.by_id[key]

    def extract(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> list[list[Event]]:
        """Imported events per text: by id when ids are given, else by exact text; [] when not found."""
        if ids is not None:
            if len(ids) != len(texts):
                raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
            return [list(self.by_id.get(str(k), [])) for k in ids]
        return [list(self.by_text.get(t, [])) for t in texts]
