"""Caption event extraction: the Extractor protocol, the backend registry and `data-gen extract`.

Backends: "rules" (spaCy + trigger lexicon, offline; data_gen.extract_rules), "llm" (an OpenAI-compatible
model; data_gen.extract_llm) and "import" (existing IE output: this library's JSONL, M2E2 JSON, Cold Start
`.cs`; data_gen.extract_import). Every backend returns `align.schema.Event`s with ontology type names, ACE
role names and character spans into the input text.

    data-gen extract --input IN.jsonl --output OUT.jsonl --backend rules

Input lines carry `id` and `text` (or `caption`); each gives one output line {"id", "events": [...]}, also
when no event is found. The output is written to OUT.partial and renamed at the end; an interrupted run
resumes from the partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from align.schema import Event
from data_gen.jsonl import count_records, read_json_lines, record_id

BACKENDS = ("rules", "llm", "import")


@runtime_checkable
class Extractor(Protocol):
    """Finds events in texts: one (maybe empty) list per input text, spans into that text."""

    name: str

    def extract(self, texts: Sequence[str]) -> list[list[Event]]: ...


def get_extractor(name: str, **options: Any) -> Extractor:
    """The backend called `name`, built with `options` (backends are imported only when asked for)."""
    if name == "rules":
        from data_gen.extract_rules import RulesExtractor

        return RulesExtractor(**options)
    if name == "llm":
        from data_gen.extract_llm import LLMExtractor

        return LLMExtractor(**options)
    if name == "import":
        from data_gen.extract_import import ImportExtractor

        return ImportExtractor(**options)
    raise ValueError(f"unknown extractor backend {name!r}; choose one of {list(BACKENDS)}")


class InputError(ValueError):
    """A bad input line; the message names the file and line number."""


def _caption(row: dict[str, Any]) -> tuple[str, str]:
    key, text = record_id(row), row.get("text", row.get("caption"))
    if not isinstance(text, str):
        raise ValueError("missing 'text' (or 'caption') string")
    return key, text


def read_captions(path: Path, skip_bad: bool = False) -> Iterator[tuple[str, str] | None]:
    """(id, text) per input line; None for a bad line when `skip_bad`, else InputError."""
    return read_json_lines(path, _caption, skip_bad=skip_bad, error=InputError,
                           hint=" (use --skip-bad to skip bad lines)")


def _resume(partial: Path) -> int:
    """Number of complete lines already in a partial output; a torn last line is cut off."""
    if not partial.exists():
        return 0
    data = partial.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        partial.write_bytes(keep)
    return keep.count(b"\n")


def run_extract(extractor: Extractor, input_path: Path, output_path: Path, *, batch_size: int = 256,
                skip_bad: bool = False, progress: bool = True) -> dict[str, int]:
    """Extract events for every input line into output_path (atomic, resumable); returns counts."""
    from rich.progress import Progress

    partial = output_path.with_name(output_path.name + ".partial")
    done = _resume(partial)
    counts = {"lines": 0, "skipped_bad": 0, "resumed": done, "events": 0}
    uses_ids = getattr(extractor, "uses_ids", False)
    total = count_records(input_path)
    with partial.open("a", encoding="utf-8") as out, Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"extract ({extractor.name})", total=total, completed=done)
        batch: list[tuple[str, str]] = []

        def flush() -> None:
            texts = [t for _, t in batch]
            results = extractor.extract(texts, ids=[k for k, _ in batch]) if uses_ids else extractor.extract(texts)
            for (key, _), events in zip(batch, results):
                out.write(json.dumps({"id": key, "events": [e.to_dict() for e in events]}, ensure_ascii=False) + "\n")
                counts["events"] += len(events)
            out.flush()
            bar.advance(task, len(batch))
            batch.clear()

        seen = 0
        for item in read_captions(input_path, skip_bad):
            if item is None:
                counts["skipped_bad"] += 1
                continue
            seen += 1
            if seen <= done:
                continue
            batch.append(item)
            counts["lines"] += 1
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    os.replace(partial, output_path)
    return counts


def _command(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    if args.backend == "rules":
        options = {"pipeline": args.pipeline, "batch_size": args.batch_size, "ner": not args.no_ner}
    elif args.backend == "llm":
        from data_gen.llm import config_from_args, llm_available

        config = config_from_args(args)
        if not llm_available(config):
            return 2
        options = {"config": config}
    else:
        if args.import_path is None:
            print("data-gen extract: --backend import needs --import-path", file=sys.stderr)
            return 2
        options = {"path": args.import_path, "format": args.import_format}
    try:
        extractor = get_extractor(args.backend, **options)
        counts = run_extract(extractor, args.input, args.output, batch_size=args.batch_size,
                             skip_bad=args.skip_bad, progress=not args.quiet)
    except (InputError, OSError, ValueError) as e:
        print(f"data-gen extract: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"output": str(args.output), **counts}))
    return 0


def register(subparsers: Any) -> None:
    """Add `data-gen extract`."""
    from data_gen.extract_import import FORMATS
    from data_gen.extract_rules import DEFAULT_PIPELINE
    from data_gen.llm import add_llm_arguments

    p = subparsers.add_parser("extract", help="find events (type, trigger, arguments) in captions",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, required=True, help="JSONL with 'id' and 'text' (or 'caption')")
    p.add_argument("--output", type=Path, required=True, help="JSONL with 'id' and 'events'")
    p.add_argument("--backend", choices=BACKENDS, default="rules")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="spaCy pipeline name or path (rules backend)")
    p.add_argument("--no-ner", action="store_true", help="rules: skip spaCy's NER pipe (faster, coarser roles)")
    p.add_argument("--batch-size", type=int, default=256, help="captions per batch")
    p.add_argument("--import-path", type=Path, help="import: a file or folder of existing IE output")
    p.add_argument("--import-format", choices=("auto", *FORMATS), default="auto", help="import: its format")
    p.add_argument("--skip-bad", action="store_true", help="skip bad input lines (counted) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_llm_arguments(p)
    p.set_defaults(func=_command)
