"""Image-caption inputs of `data-gen build`: folders, JSONL/CSV tables, img2dataset WebDataset shards, VOA.

Every source lists its items in a stable order (sorted paths, file line order, tar member order), so the
index of an item never changes between runs and shards can be addressed by index (see `data_gen.shards`).
Listing is cheap: images, sidecar captions and tar members are referenced, not read; `SourceItem.load_image`
and `SourceItem.load_caption` read them when a shard is built. Per-item problems (a bad JSONL line, a
missing image, a caption that is not UTF-8) raise `Skip` with a short reason that the manifest counts;
problems with the input as a whole (no such folder, a compressed or truncated tar) raise `SourceError`.

Layouts:
- `folder`: images (jpg/jpeg/png/webp, recursive, hidden files ignored) with the caption in a sidecar
  `.txt` of the same stem, or in `captions.jsonl` / `captions.csv` at the folder root (columns `file` or
  `image`: path relative to the folder; `caption` or `text`); the table wins over a sidecar. id: the
  relative path without its suffix.
- `jsonl` / `csv`: one record per line/row with `image` (relative to `--images` when given, else to the
  file's folder; or absolute), `caption` or `text`, optional `id` (default: the image path without suffix)
  and optional `events` (JSONL only; for `--extractor import`).
- `wds`: WebDataset tars as img2dataset writes them (`KEY.jpg` + `KEY.txt` + `KEY.json`); a tar file, a
  folder of `*.tar` or a glob pattern. Read with `tarfile` (members by offset), never unpickled.
- `voa`: the VOA caption JSONL (`id`, `caption`, `events`, `image_url`), images at `IMAGES/{id}.jpg`.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("folder", "jsonl", "csv", "wds", "voa")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_TABLES = ("captions.jsonl", "captions.csv")
IMAGE_KEYS = ("image", "file")
CAPTION_KEYS = ("caption", "text")
PROVENANCE_KEYS = ("url", "image_url")  # record fields copied into the sample's provenance


class SourceError(ValueError):
    """The input cannot be listed at all; the message names the file and what is wrong."""


class Skip(Exception):
    """One item cannot become a sample; `reason` is the key counted in the manifest's `skipped`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class TarMember:
    """A file inside an uncompressed tar, read by seeking to its data (no tarfile object kept open)."""

    tar: Path
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.tar}: member {self.name} is truncated")
        return data


# Where a caption comes from: the text itself, raw bytes (checked later), a sidecar file or a tar member.
CaptionRef = str | bytes | Path | TarMember


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One input: its id, image and caption references, small extra fields and a listing-time problem."""

    id: str
    image: Path | TarMember | None
    caption: CaptionRef | None
    extra: dict[str, Any] = field(default_factory=dict)
    meta: TarMember | None = None  # img2dataset's per-sample JSON, read only when the sample is built
    problem: str | None = None  # a skip reason found while listing (bad record, duplicate id)

    def load_image(self) -> bytes:
        """The encoded image bytes; Skip("missing_image") when absent or unreadable from disk."""
        if self.image is None:
            raise Skip("missing_image", f"{self.id}: no image")
        try:
            return self.image.read() if isinstance(self.image, TarMember) else self.image.read_bytes()
        except OSError as e:
            raise Skip("missing_image", f"{self.id}: {e}") from e

    def load_caption(self, max_chars: int) -> str:
        """The caption text with trailing whitespace removed (leading kept: event spans index into it)."""
        ref = self.caption
        if ref is None:
            raise Skip("missing_caption", self.id)
        try:
            raw = ref.read() if isinstance(ref, TarMember) else ref.read_bytes() if isinstance(ref, Path) else ref
        except OSError as e:
            raise Skip("missing_caption", f"{self.id}: {e}") from e
        try:
            if isinstance(raw, bytes):
                text = raw.decode("utf-8")
            else:  # a table read with surrogateescape holds lone surrogates where its bytes were not UTF-8
                raw.encode("utf-8")
                text = raw
        except UnicodeError as e:
            raise Skip("caption_not_utf8", self.id) from e
        text = text.removeprefix("\ufeff").rstrip()
        if not text.strip():
            raise Skip("empty_caption", self.id)
        if len(text) > max_chars:
            raise Skip("caption_too_long", f"{self.id}: {len(text)} > {max_chars} characters")
        return text

    def load_meta(self) -> dict[str, Any]:
        """The sample's JSON metadata (wds), {} when absent or not a JSON object."""
        if self.meta is None:
            return {}
        try:
            data = json.loads(self.meta.read())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- tables
def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row) of a JSONL or CSV file; row None when the line is not a JSON object. Text is
    decoded with surrogateescape so one non-UTF-8 caption spoils only its own row."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                try:
                    for row in reader:
                        yield reader.line_num, row
                except csv.Error as e:
                    raise SourceError(f"{path}:{reader.line_num}: bad CSV: {e}") from e
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                yield n, row if isinstance(row, dict) else None
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def iter_table(path: Path, images: Path | None = None) -> Iterator[SourceItem]:
    """Items of a JSONL or CSV record file (see the module docstring)."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    base = images if images is not None else path.parent
    for n, row in _rows(path):
        image = _first(row, IMAGE_KEYS) if row is not None else None
        if row is None or not isinstance(image, str):
            yield SourceItem(f"{path.name}:{n}", None, None, problem="bad_record")
            continue
        key = row.get("id")
        item_id = str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) and key != "" else \
            image.rsplit(".", 1)[0]
        yield SourceItem(item_id, _resolve(base, image), _caption_of(row), _extra(row))


def _caption_of(row: dict[str, Any]) -> str | None:
    caption = _first(row, CAPTION_KEYS)
    return caption if isinstance(caption, str) else None


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    extra = {k: row[k] for k in PROVENANCE_KEYS if isinstance(row.get(k), str)}
    if "events" in row:
        extra["events"] = row["events"]
    return extra


def iter_voa(path: Path, images: Path | None) -> Iterator[SourceItem]:
    """VOA captions with events; the image of record `id` is `images/{id}.jpg` (or .jpeg/.png/.webp)."""
    if images is None or not images.is_dir():
        raise SourceError(f"--source voa needs --images DIR holding {{id}}.jpg files; got {images}")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    for n, row in _rows(path):
        key = row.get("id") if row is not None else None
        if not isinstance(key, str) or not key:
            yield SourceItem(f"{path.name}:{n}", None, None, problem="bad_record")
            continue
        candidates = [images / f"{key}{s}" for s in IMAGE_SUFFIXES]
        image = next((c for c in candidates if c.is_file()), candidates[0])
        yield SourceItem(key, image, _caption_of(row), _extra(row))


# --------------------------------------------------------------------------- folders
def _caption_table(root: Path) -> dict[str, str | None]:
    """Relative image path -> caption from the folder's captions.jsonl / captions.csv (both may exist)."""
    table: dict[str, str | None] = {}
    for name in CAPTION_TABLES:
        path = root / name
        if not path.is_file():
            continue
        for n, row in _rows(path):
            image = _first(row, IMAGE_KEYS) if row is not None else None
            if not isinstance(image, str):
                raise SourceError(f"{path}:{n}: expected a record with 'file' (or 'image') and 'caption' (or 'text')")
            table[Path(image).as_posix()] = _caption_of(row)
    return table


def iter_folder(root: Path) -> Iterator[SourceItem]:
    """Images under `root` in sorted relative-path order, captions from the table or sidecar .txt files."""
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    table = _caption_table(root)
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts) \
                and p.is_file():
            found.append((rel.as_posix(), p))
    for rel, p in sorted(found):
        sidecar = p.with_suffix(".txt")
        caption = table[rel] if rel in table else sidecar if sidecar.is_file() else None
        yield SourceItem(rel.rsplit(".", 1)[0], p, caption, {"file": rel})


# --------------------------------------------------------------------------- WebDataset
def tar_paths(spec: Path) -> list[Path]:
    """The tars of a wds input: one file, every *.tar of a folder, or a glob pattern; sorted."""
    if spec.is_dir():
        paths = sorted(spec.glob("*.tar"))
    elif spec.is_file():
        paths = [spec]
    else:
        paths = sorted(Path(p) for p in glob.glob(str(spec)))
    if not paths:
        raise SourceError(f"{spec}: no .tar shards found")
    return paths


def iter_wds(spec: Path) -> Iterator[SourceItem]:
    """Samples of WebDataset tars in member order; a sample's key is the member path up to the first dot of
    its file name, as webdataset reads it."""
    for path in tar_paths(spec):
        groups: dict[str, dict[str, TarMember]] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:  # uncompressed only: data offsets must be seekable
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, _, base = m.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or base.startswith("."):
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    groups.setdefault(key, {})[ext.lower()] = TarMember(path, m.name, m.offset_data, m.size)
                end = tar.offset
            with open(path, "rb") as f:
                f.seek(end)
                complete = f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)
        except (tarfile.TarError, OSError, EOFError) as e:
            if "unexpected end of data" in str(e):
                raise SourceError(f"{path}: truncated tar (the file ends inside a member); re-download it or "
                                  "remove it from the input") from e
            raise SourceError(f"{path}: not a readable uncompressed tar ({e})") from e
        if not complete:  # cut at a member boundary: tarfile stops quietly, the end-of-archive blocks are missing
            raise SourceError(f"{path}: truncated tar (no end-of-archive marker after byte {end}); re-download it "
                              "or remove it from the input")
        for key, members in groups.items():
            image = next((members[s[1:]] for s in IMAGE_SUFFIXES if s[1:] in members), None)
            yield SourceItem(key, image, members.get("txt"), {"tar": path.name}, members.get("json"))


# --------------------------------------------------------------------------- all sources
def iter_source(kind: str, path: Path, images: Path | None = None) -> Iterator[SourceItem]:
    """Items of one input in their stable order."""
    if kind == "folder":
        return iter_folder(path)
    if kind in ("jsonl", "csv"):
        return iter_table(path, images)
    if kind == "wds":
        return iter_wds(path)
    if kind == "voa":
        return iter_voa(path, images)
    raise SourceError(f"unknown source {kind!r}; choose one of {list(SOURCES)}")


def _utf8(value: Any) -> bool:
    """False when text read with surrogateescape (file names, table cells) held bytes that are not UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_items(kind: str, path: Path, images: Path | None = None) -> list[SourceItem]:
    """All items of an input; a repeated id keeps its first item, later ones are marked `duplicate_id`; an id
    or an extra field (url, events, file name) that is not UTF-8 marks the item `not_utf8` (the caption has its
    own check, `caption_not_utf8`, when it is read)."""
    seen: set[str] = set()
    items = []
    for item in iter_source(kind, path, images):
        if item.problem is None and not _utf8([item.id, item.extra]):
            item = dataclasses.replace(item, problem="not_utf8")
        elif item.problem is None and item.id in seen:
            item = dataclasses.replace(item, problem="duplicate_id")
        seen.add(item.id)
        items.append(item)
    return items
