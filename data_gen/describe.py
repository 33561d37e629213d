"""Positive descriptions of a caption's salient event, and the `data-gen describe` command.

Positive kinds (rule-based; `llm` descriptions come from `data_gen.llm_describe` through the `extra` hook):
- `caption`: the raw caption.
- `short` / `long`: the ontology's templates filled with the salient event's arguments (`EventType.render`);
  `short` names one filler per role (drawn with the rng when merged events gave several), `long` all.
- `caption_edit`: the caption cut to the clause of the salient event (`caption_edit.clause`: the trigger's
  sentence up to its last located argument, minus "FILE -" prefixes and trailing credits). Caption-edit
  negatives edit this same text, so each differs from this positive in one span only.
Positives that repeat an earlier one (case/whitespace-insensitively) are left out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.atomic import atomic_open
from align.ontology import Ontology
from align.schema import Description, Event, SchemaError
from data_gen.caption_edit import clause, norm
from data_gen.negatives import DEFAULT_COUNTS, MODES, RULE_KINDS, EntityPool, EntityPoolFn, negatives_for_modes
from data_gen.salient import count_types, select_salient

POSITIVE_KINDS: tuple[str, ...] = ("caption", "short", "long", "caption_edit")
# Called with each chunk of finished output records; may append `llm` positives/negatives in place.
ExtraFn = Callable[[Sequence[dict[str, Any]]], None]
CHUNK = 256


def describe(caption: str, events: list[Event], salient: int | None, ontology: Ontology, rng: random.Random,
             kinds: Sequence[str] = POSITIVE_KINDS) -> list[Description]:
    """Positive descriptions of `events[salient]` (ontology-typed); only `caption` when there is no event."""
    unknown = set(kinds) - set(POSITIVE_KINDS)
    if unknown:
        raise ValueError(f"unknown description kinds {sorted(unknown)}; rule kinds are {list(POSITIVE_KINDS)}")
    texts: list[tuple[str, str]] = []
    if "caption" in kinds and caption.strip():
        texts.append(("caption", " ".join(caption.split())))
    if salient is not None:
        event = events[salient]
        t = ontology[event.type]
        by_role: dict[str, list[str]] = {}
        for a in event.arguments:
            if a.role in t.roles:
                by_role.setdefault(a.role, []).append(a.text)
        if "short" in kinds:
            texts.append(("short", t.render({r: rng.choice(v) for r, v in by_role.items()}, style="short")))
        if "long" in kinds:
            texts.append(("long", t.render(by_role, style="long")))
        if "caption_edit" in kinds:
            cl = clause(caption, event)
            if cl is not None:
                texts.append(("caption_edit", cl.text))
    seen: set[str] = set()
    out = []
    for kind, text in texts:
        if norm(text) and norm(text) not in seen:
            seen.add(norm(text))
            out.append(Description(kind, text))  # type: ignore[arg-type]
    return out


# --------------------------------------------------------------------------- records
class InputError(ValueError):
    """A bad input line; the message names the file and line."""


@dataclass
class DescribeConfig:
    """What to generate per record."""

    seed: int = 0
    kinds: tuple[str, ...] = POSITIVE_KINDS
    counts: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    modes: tuple[str, ...] = ("template",)


def parse_record(line: str, where: str, ontology: Ontology) -> tuple[dict[str, Any], list[Event], int]:
    """(raw record, ontology-typed events, number of events dropped as unmapped); InputError names `where`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("id", "caption"):
        if not isinstance(record.get(name), str):
            raise InputError(f"{where}: field '{name}' must be a string, got {record.get(name)!r}")
    raw = record.get("events", [])
    if not isinstance(raw, list):
        raise InputError(f"{where}: field 'events' must be a list")
    prior = record.get("image_prior")
    if prior is not None and (not isinstance(prior, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in prior.values())):
        raise InputError(f"{where}: field 'image_prior' must map event types to numbers")
    try:
        parsed = [Event.from_dict(e, record["id"], f"events[{i}]") for i, e in enumerate(raw)]
    except SchemaError as e:
        raise InputError(f"{where}: {e}") from e
    events = [n for n in (ontology.normalize(e) for e in parsed) if n is not None]
    return record, events, len(parsed) - len(events)


def process_record(record: dict[str, Any], events: list[Event], ontology: Ontology, config: DescribeConfig,
                   type_counts: Mapping[str, int] | None, entity_pool: EntityPoolFn | None,
                   stats: Counter[str]) -> dict[str, Any]:
    """The output record: input fields plus merged `events`, `salient`, `positives`, `negatives`, `flags`."""
    rng = random.Random(f"{config.seed}:{record['id']}")  # per-record: independent of order and chunking
    merged, salient = select_salient(events, ontology, type_counts, record.get("image_prior"))
    caption = record["caption"]
    positives = describe(caption, merged, salient, ontology, rng, config.kinds)
    negatives = [] if salient is None else negatives_for_modes(
        caption, merged[salient], ontology, rng, [p.text for p in positives], config.modes, config.counts, entity_pool)
    if salient is not None:
        got = Counter((n.changed.get("mode"), n.kind) for n in negatives)
        for mode in config.modes:
            for kind, want in config.counts.items():
                stats[f"negatives.{mode}.{kind}"] += got[mode, kind]
                stats[f"skipped.{mode}.{kind}"] += want - got[mode, kind]
    stats["records"] += 1
    stats["no_event"] += salient is None
    stats.update(f"positives.{p.kind}" for p in positives)
    out = dict(record)
    out.update(events=[e.to_dict() for e in merged], salient=salient,
               positives=[p.to_dict() for p in positives], negatives=[n.to_dict() for n in negatives],
               flags=["no_event"] if salient is None else [])
    return out


def _read(path: Path, ontology: Ontology) -> Iterator[tuple[dict[str, Any], list[Event], int]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_record(line, f"{path}:{lineno}", ontology)


def run_describe(input_path: Path, output_path: Path, ontology: Ontology, config: DescribeConfig,
                 extra: ExtraFn | None = None, progress: bool = True) -> Counter[str]:
    """Two streaming passes: corpus type counts and entity pool, then one output line per input line,
    written to a temporary file renamed over `output_path` at the end. Returns the counts."""
    from rich.progress import Progress

    stats: Counter[str] = Counter()
    type_counts: Counter[str] = Counter()
    pool = EntityPool()
    total = 0
    for _, events, dropped in _read(input_path, ontology):
        type_counts.update(count_types([events]))
        for e in events:
            pool.add(e)
        stats["unmapped_events"] += dropped
        total += 1
    with atomic_open(output_path, "w") as out, Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("describe", total=total)
        chunk: list[dict[str, Any]] = []
        for record, events, _ in _read(input_path, ontology):
            chunk.append(process_record(record, events, ontology, config, type_counts, pool, stats))
            if len(chunk) == CHUNK:
                _flush(chunk, out, extra)
                bar.advance(task, CHUNK)
        bar.advance(task, len(chunk))
        _flush(chunk, out, extra)
    return stats


def _flush(chunk: list[dict[str, Any]], out: Any, extra: ExtraFn | None) -> None:
    if extra is not None and chunk:
        extra(chunk)
    out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk)
    chunk.clear()


# --------------------------------------------------------------------------- CLI
def parse_counts(spec: str) -> dict[str, int]:
    """'type_swap=1,role_swap=2' -> counts per negative kind (argparse type)."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, sep, n = part.partition("=")
        if not sep or kind not in RULE_KINDS or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad negatives entry {part!r}: expected KIND=N with KIND in "
                                             f"{list(RULE_KINDS)}")
        counts[kind] = int(n)
    return counts


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("describe", help="salient event, positive descriptions and hard negatives",
                              description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, required=True,
                   help="JSONL with id, caption, events (finer AIDA types are mapped) and optional image_prior "
                        "(event type -> prior for the salient event)")
    p.add_argument("--output", type=Path, required=True, help="output JSONL (written atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives", type=parse_counts, default=dict(DEFAULT_COUNTS),
                   help="negatives per kind and mode, e.g. type_swap=1,role_swap=1,arg_replace=1")
    p.add_argument("--mode", choices=[*MODES, "both"], default="template", help="how negatives are written")
    p.add_argument("--ontology", type=Path, default=None, help="ontology YAML/JSON (default: the M2E2 types)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    ontology = Ontology.load(args.ontology) if args.ontology else Ontology.default()
    modes = tuple(MODES) if args.mode == "both" else (args.mode,)
    config = DescribeConfig(seed=args.seed, counts=args.negatives, modes=modes)
    try:
        stats = run_describe(args.input, args.output, ontology, config, progress=not args.no_progress)
    except (InputError, OSError) as e:
        print(f"data-gen describe: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dict(sorted(stats.items())), indent=1), file=sys.stderr)
    return 0
