"""UTF-8 JSON-lines input, read one way by every `data-gen` reader so that bad lines are reported alike.

A line is read as bytes and decoded strictly: bytes that are not UTF-8 are an error, never replaced, and so is a
byte-order mark (json refuses it; the message says so plainly). Lines that are empty or only ASCII white space
are skipped but still counted, so `file:line` in an error is the line an editor shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

T = TypeVar("T")

_BOM = b"\xef\xbb\xbf"


class JSONLineError(ValueError):
    """A bad line; the message starts with `file:line:`."""


def count_records(path: Path) -> int:
    """The lines `read_json_lines` looks at (not blank): a progress bar's total."""
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())


def record_id(row: dict[str, Any]) -> str:
    """The record's 'id' as a string; it must be a non-empty string or an integer (a bool is neither)."""
    key = row.get("id")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or key == "":
        raise ValueError("missing or empty 'id'")
    return str(key)


def _problem(raw: bytes, e: ValueError) -> str:
    """What is wrong with a line, in words (json's own message points at a line and a BOM fix that mislead here)."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 (byte {e.start + 1} of the line)"
    if isinstance(e, json.JSONDecodeError):
        if raw.startswith(_BOM):
            return "starts with a UTF-8 byte-order mark; save the file as UTF-8 without one"
        return f"not valid JSON: {e.msg} at column {e.colno}"
    return str(e)


@overload
def read_json_lines(path: Path, parse: Callable[[dict[str, Any]], T], *, skip_bad: Literal[False] = False,
                    error: type[ValueError] = JSONLineError, hint: str = "") -> Iterator[T]: ...


@overload
def read_json_lines(path: Path, parse: Callable[[dict[str, Any]], T], *, skip_bad: bool,
                    error: type[ValueError] = JSONLineError, hint: str = "") -> Iterator[T | None]: ...


def read_json_lines(path: Path, parse: Callable[[dict[str, Any]], T], *, skip_bad: bool = False,
                    error: type[ValueError] = JSONLineError, hint: str = "") -> Iterator[T | None]:
    """`parse(row)` per JSON-object line, lazily.

    A bad line (not UTF-8, not JSON, not an object, or `parse` raising ValueError) raises
    `error("file:line: problem" + hint)`; with `skip_bad` it yields None instead, so the caller can count it.
    """
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8").rstrip("\r\n"))  # json then counts columns in this line
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                item = parse(row)
            except ValueError as e:  # UnicodeDecodeError, JSONDecodeError and SchemaError are ValueErrors
                if skip_bad:
                    yield None
                    continue
                raise error(f"{path}:{n}: {_problem(raw, e)}{hint}") from e
            yield item
