"""`data-gen build`: image-caption data (folder, JSONL/CSV, img2dataset WebDataset, VOA) into training shards.

Per input item (see `data_gen.sources`): the caption is checked (missing, empty, not UTF-8, over 10,000
characters), the image decoded with PIL under a size guard (`--max-pixels`) and kept as is when it is an
upright RGB/greyscale JPEG, else re-encoded as JPEG; then events are extracted, the salient event picked,
positives described, hard negatives made and candidate regions attached (an n x n grid, or an external
detector's boxes). Items failing a check are skipped and counted per reason in manifest.json.

Work is split by shard. Shard j holds input items [j*N, (j+1)*N) (N = --samples-per-shard) and is built by
one worker process, which extracts the events of that whole block in one batch (spaCy's `nlp.pipe` is
several times faster on batches than caption by caption) and takes the block's corpus statistics - event
type counts for salience and the `EntityPool` of replacement arguments - from the events of that block
only. A shard is thus a function of its block and the config: a re-run rebuilds exactly the missing shards,
byte for byte, and a job array produces the same shards as one job.

Job arrays: `--shard-index I --num-shards K` makes job I build global shards I, I+K, I+2K, ... into
OUT/job-{I:03d}-of-{K:03d}/ with its own manifest. Shard names are global ({split}-{j:06d}.tar), so the
shards of different jobs never collide and can be moved into one folder. Every job lists the whole input
(cheap: files are referenced, not read) to find its blocks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from align.ontology import Ontology
from align.schema import Event, Region, Sample, SchemaError
from data_gen.describe import describe, parse_counts
from data_gen.extract import BACKENDS, Extractor, get_extractor
from data_gen.negatives import DEFAULT_COUNTS, MODES, EntityPool, negatives_for_modes
from data_gen.salient import count_types, select_salient
from data_gen.shards import MANIFEST, ShardError, ShardPlan, ShardSet, sha256_file
from data_gen.sources import SOURCES, Skip, SourceError, SourceItem, list_items

MAX_CAPTION_CHARS = 10_000
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit (about 0.25 GB of RGB)
DEFAULT_GRID = 3
JPEG_QUALITY = 95
_ORIENTATION = 0x0112  # EXIF tag
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class RegionsError(ValueError):
    """A bad --regions value or detector file; the message names the file and the entry."""


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class SourceSpec:
    """What to list; hashable, so each process lists an input once (`load_items`)."""

    kind: str
    path: str
    images: str | None = None

    def list(self) -> list[SourceItem]:
        return list_items(self.kind, Path(self.path), Path(self.images) if self.images else None)


_LISTINGS: dict[SourceSpec, list[SourceItem]] = {}


def load_items(spec: SourceSpec, fresh: bool = False) -> list[SourceItem]:
    """The items of an input, listed once per process (forked workers inherit the parent's listing)."""
    if fresh or spec not in _LISTINGS:
        _LISTINGS[spec] = spec.list()
    return _LISTINGS[spec]


def sample_key(item_id: str) -> str:
    """A WebDataset-safe key (no dots or slashes: readers split member names at the first dot); ids that
    had to change get a hash of the original so two ids never share a key."""
    key = _KEY_SAFE.sub("_", item_id)
    if key == item_id and 0 < len(key) <= 120:
        return key
    return f"{key[:100]}_{hashlib.sha1(item_id.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def prepare_image(data: bytes, max_pixels: int) -> tuple[bytes, int, int, str]:
    """(JPEG bytes, width, height, original format); Skip when unreadable or larger than `max_pixels`."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()  # full decode: catches truncated files that open() alone accepts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Skip("image_too_large", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise Skip("unreadable_image", str(e)) from e
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    fmt = im.format or "unknown"
    if fmt == "JPEG" and im.mode in ("RGB", "L") and im.getexif().get(_ORIENTATION, 1) == 1:
        return data, im.width, im.height, fmt
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), im.width, im.height, fmt


# --------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class RegionSpec:
    """`grid` / `grid:N` (an N x N grid, source "grid"), `json:PATH` (detector boxes) or `none`."""

    kind: str = "grid"
    grid: int = DEFAULT_GRID
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> RegionSpec:
        name, _, arg = text.partition(":")
        if name == "grid" and (not arg or arg.isdigit() and int(arg) > 0):
            return cls("grid", int(arg or DEFAULT_GRID))
        if name == "json" and arg:
            return cls("detector", path=arg)
        if text == "none":
            return cls("none")
        raise RegionsError(f"--regions {text!r}: expected grid, grid:N, json:PATH or none")

    def regions(self, item_id: str, width: int, height: int) -> list[Region]:
        if self.kind == "grid":
            n, w, h = self.grid, width, height
            return [Region((w * c / n, h * r / n, w * (c + 1) / n, h * (r + 1) / n), source="grid")
                    for r in range(n) for c in range(n)]
        if self.kind == "detector":
            assert self.path is not None
            out = []
            for (x1, y1, x2, y2), label, score in load_detections(self.path).get(item_id, []):
                x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
                y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
                if x2 > x1 and y2 > y1:  # boxes clipped to the image; ones wholly outside are dropped
                    out.append(Region((x1, y1, x2, y2), label, score, "detector"))
            return out
        return []


Detection = tuple[tuple[float, float, float, float], str, float]
_DETECTIONS: dict[str, dict[str, list[Detection]]] = {}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _detection(b: Any) -> Detection | None:
    """One [x1, y1, x2, y2, label?, score?] entry; None when malformed."""
    if not isinstance(b, list) or not 4 <= len(b) <= 6 or not all(_number(v) and math.isfinite(v) for v in b[:4]):
        return None
    rest = list(b[4:])
    label = rest.pop(0) if rest and isinstance(rest[0], str) else ""
    if len(rest) > 1 or (rest and not _number(rest[0])) or b[2] < b[0] or b[3] < b[1]:
        return None
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3])), label, float(rest[0]) if rest else 1.0


def load_detections(path: str, fresh: bool = False) -> dict[str, list[Detection]]:
    """{id: [[x1, y1, x2, y2, label?, score?], ...]} in image pixels, checked and cached per process."""
    if path in _DETECTIONS and not fresh:
        return _DETECTIONS[path]
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RegionsError(f"{path}: cannot read detector boxes: {e}") from e
    if not isinstance(data, dict):
        raise RegionsError(f"{path}: expected a JSON object {{id: [[x1, y1, x2, y2, label?, score?], ...]}}")
    out: dict[str, list[Detection]] = {}
    for key, boxes in data.items():
        if not isinstance(boxes, list):
            raise RegionsError(f"{path}: {key!r}: expected a list of boxes")
        rows = []
        for j, b in enumerate(boxes):
            row = _detection(b)
            if row is None:
                raise RegionsError(f"{path}: {key!r}[{j}]: expected [x1, y1, x2, y2, label?, score?] (finite "
                                   f"numbers, x1 <= x2, y1 <= y2), got {b!r}")
            rows.append(row)
        out[str(key)] = rows
    _DETECTIONS[path] = out
    return out


# --------------------------------------------------------------------------- samples
_EXTRACTORS: dict[str, Extractor] = {}


def _extractor(name: str, options: dict[str, Any]) -> Extractor:
    """One extractor per process and configuration (spaCy pipelines are slow to load)."""
    key = repr((name, sorted(options.items())))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = get_extractor(name, **options)
    return _EXTRACTORS[key]


@dataclass
class BuildSamples:
    """The sample (or skip reason) of one input index; picklable for worker processes. The first call for
    an index builds its whole block (= its shard) at once: batched extraction and block statistics."""

    source: SourceSpec
    per_shard: int
    extractor: str = "rules"
    extractor_options: dict[str, Any] = field(default_factory=dict)
    regions: RegionSpec = field(default_factory=RegionSpec)
    negatives: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    modes: tuple[str, ...] = ("template",)
    seed: int = 0
    split: str = "train"
    max_pixels: int = DEFAULT_MAX_PIXELS
    _ready: dict[int, Sample | tuple[None, str]] = field(default_factory=dict, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ready": {}}  # a block in progress is not shipped to workers

    @property
    def record_events(self) -> bool:
        """`--extractor import` without --import-path: events come with the input records."""
        return self.extractor == "import" and "path" not in self.extractor_options

    def __call__(self, index: int) -> Sample | tuple[None, str]:
        if index not in self._ready:
            self._ready = self.build_block(index // self.per_shard)
        return self._ready.pop(index)

    def build_block(self, block: int) -> dict[int, Sample | tuple[None, str]]:
        items = load_items(self.source)
        indices = range(block * self.per_shard, min((block + 1) * self.per_shard, len(items)))
        ontology = Ontology.default()
        out: dict[int, Sample | tuple[None, str]] = {}
        ok: list[tuple[int, SourceItem, str, tuple[bytes, int, int, str]]] = []
        for i in indices:
            item = items[i]
            try:
                if item.problem is not None:
                    raise Skip(item.problem)
                caption = item.load_caption(MAX_CAPTION_CHARS)
                ok.append((i, item, caption, prepare_image(item.load_image(), self.max_pixels)))
            except Skip as e:
                out[i] = (None, e.reason)
        found = self._events([it for _, it, _, _ in ok], [c for _, _, c, _ in ok], ontology)
        kept = [(row, evs) for row, evs in zip(ok, found) if not isinstance(evs, Skip)]
        for (i, *_), evs in zip(ok, found):
            if isinstance(evs, Skip):
                out[i] = (None, evs.reason)
        type_counts = count_types(evs for _, evs in kept)
        pool = EntityPool.from_events(e for _, evs in kept for e in evs)
        for (i, item, caption, image), evs in kept:
            out[i] = self._sample(item, caption, image, evs, ontology, type_counts, pool)
        return out

    def _events(self, items: Sequence[SourceItem], captions: list[str],
                ontology: Ontology) -> list[list[Event] | Skip]:
        """Ontology-typed events per caption, in one batch; Skip("bad_events") for unreadable record events,
        Skip("llm_failed") where the LLM gave no valid answer (retries used up, or not JSON of the schema): an
        empty event list would claim the caption has no event."""
        if self.record_events:
            raw: list[list[Event] | Skip] = [_record_events(item) for item in items]
        else:
            extractor = _extractor(self.extractor, self.extractor_options)
            if self.extractor == "llm":
                answers = extractor.client.chat_json([extractor.request(c) for c in captions])  # type: ignore[attr-defined]
                raw = [Skip("llm_failed", it.id) if a is None else extractor.to_events(c, a["events"])  # type: ignore[attr-defined]
                       for it, c, a in zip(items, captions, answers)]
            elif getattr(extractor, "uses_ids", False):
                raw = list(extractor.extract(captions, ids=[it.id for it in items]))  # type: ignore[call-arg]
            else:
                raw = list(extractor.extract(captions))
        return [evs if isinstance(evs, Skip) else [n for n in map(ontology.normalize, evs) if n is not None]
                for evs in raw]

    def _sample(self, item: SourceItem, caption: str, image: tuple[bytes, int, int, str], events: list[Event],
                ontology: Ontology, type_counts: Mapping[str, int], pool: EntityPool) -> Sample:
        jpeg, width, height, fmt = image
        rng = random.Random(f"{self.seed}:{item.id}")  # per item: independent of order, blocks and jobs
        merged, salient = select_salient(events, ontology, type_counts)
        positives = describe(caption, merged, salient, ontology, rng)
        negatives = [] if salient is None else negatives_for_modes(
            caption, merged[salient], ontology, rng, [p.text for p in positives], self.modes, self.negatives, pool)
        provenance = {"source": self.source.kind, "id": item.id, "split": self.split, "extractor": self.extractor,
                      "image_format": fmt, **{k: v for k, v in item.extra.items() if k != "events"}}
        url = item.load_meta().get("url")
        if isinstance(url, str):
            provenance["url"] = url
        sample = Sample(sample_key(item.id), caption, width, height, merged, salient, positives, negatives,
                        self.regions.regions(item.id, width, height), provenance, image=jpeg)
        sample.validate()
        return sample


def _record_events(item: SourceItem) -> list[Event] | Skip:
    raw = item.extra.get("events", [])
    if not isinstance(raw, list):
        return Skip("bad_events", f"{item.id}: 'events' is not a list")
    try:
        return [Event.from_dict(e, item.id, f"events[{j}]") for j, e in enumerate(raw)]
    except SchemaError as e:
        return Skip("bad_events", str(e))


# --------------------------------------------------------------------------- job plans
@dataclass
class StridedPlan(ShardPlan):
    """The shards of job `job` of `num_jobs`: global shards job, job + num_jobs, ... of one split."""

    job: int = 0
    num_jobs: int = 1

    @property
    def num_shards(self) -> int:
        total = (len(self.indices) + self.per_shard - 1) // self.per_shard
        return len(range(self.job, total, self.num_jobs))

    def global_shard(self, i: int) -> int:
        return self.job + i * self.num_jobs

    def name(self, i: int) -> str:
        return f"{self.split}-{self.global_shard(i):06d}.tar"

    def shard_indices(self, i: int) -> range:
        g = self.global_shard(i)
        return self.indices[g * self.per_shard : (g + 1) * self.per_shard]


def job_dir(out: Path, shard_index: int, num_shards: int) -> Path:
    """Where one job of a job array writes (OUT itself for a single job)."""
    return out if num_shards == 1 else out / f"job-{shard_index:03d}-of-{num_shards:03d}"


# --------------------------------------------------------------------------- CLI
def _fail(message: str, code: int) -> int:
    print(f"data-gen build: {message}", file=sys.stderr)
    return code


def _extractor_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.extractor == "rules":
        return {"pipeline": args.pipeline, "ner": not args.no_ner}
    if args.extractor == "llm":
        from data_gen.llm import config_from_args

        return {"config": config_from_args(args)}
    return {} if args.import_path is None else {"path": str(args.import_path)}


def _options_record(options: dict[str, Any]) -> dict[str, Any]:
    """Extractor options as the manifest records them: for an LLM only what changes the answers (model,
    server), so a resume with other concurrency or retry settings is not refused."""
    if "config" in options:
        return {"model": options["config"].model, "base_url": options["config"].base_url}
    return dict(options)


def run(args: argparse.Namespace) -> int:
    if args.samples_per_shard < 1 or args.workers < 1 or args.num_shards < 1:
        return _fail("--samples-per-shard, --workers and --num-shards must be >= 1", 2)
    if not 0 <= args.shard_index < args.num_shards:
        return _fail(f"--shard-index must be in [0, {args.num_shards}), got {args.shard_index}", 2)
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.split):
        return _fail(f"--split {args.split!r}: use letters, digits and underscores", 2)
    try:
        regions = RegionSpec.parse(args.regions)
        if regions.path is not None:
            load_detections(regions.path, fresh=True)  # fail before any work on a bad file
        options = _extractor_options(args)
    except (RegionsError, ValueError) as e:
        return _fail(str(e), 2)
    if args.extractor == "llm":
        from data_gen.llm import llm_available

        if not llm_available(options["config"]):
            return _fail("--extractor llm needs an API key or --llm-base-url (see the message above)", 2)
    spec = SourceSpec(args.source, str(args.input.resolve()), str(args.images.resolve()) if args.images else None)
    try:
        items = load_items(spec, fresh=True)
    except SourceError as e:
        return _fail(str(e), 1)
    if args.extractor == "import" and args.import_path is None and not any("events" in it.extra for it in items):
        return _fail(f"--extractor import needs --import-path, or input records with an 'events' field "
                     f"({args.input} has none)", 2)
    modes = tuple(MODES) if args.mode == "both" else (args.mode,)
    make = BuildSamples(spec, args.samples_per_shard, args.extractor, options, regions, args.negatives, modes,
                        args.seed, args.split, args.max_pixels)
    if args.extractor != "llm" and not make.record_events:
        try:  # load the spaCy pipeline or the import file now: errors show before any work, forked workers share it
            _extractor(args.extractor, options).extract([])
        except (OSError, ValueError) as e:
            return _fail(f"cannot set up the {args.extractor} extractor: {e}", 1)
    ids = hashlib.sha256("\n".join(it.id for it in items).encode("utf-8", "surrogatepass")).hexdigest()
    config = {"generator": "build", "source": args.source, "items": len(items), "ids_sha256": ids,
              "extractor": args.extractor, "extractor_options": _options_record(options),
              "regions": args.regions, "regions_sha256": regions.path and sha256_file(Path(regions.path)),
              "samples_per_shard": args.samples_per_shard, "seed": args.seed,
              "negatives": args.negatives, "mode": args.mode, "split": args.split, "max_pixels": args.max_pixels,
              "shard_index": args.shard_index, "num_shards": args.num_shards}
    plan = StridedPlan(args.split, range(len(items)), args.samples_per_shard, args.shard_index, args.num_shards)
    out = job_dir(args.out, args.shard_index, args.num_shards)
    start = time.perf_counter()
    try:
        ShardSet(out, config).write([plan], make, workers=args.workers, progress=not args.quiet)
    except (ShardError, SourceError, RegionsError, OSError) as e:
        return _fail(f"{e} (finished shards are kept; re-run to resume)", 1)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    if not args.quiet:
        print(json.dumps({"out": str(out), "samples": manifest["num_samples"], "shards": len(manifest["shards"]),
                          "skipped": manifest["skipped"], "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_gen.extract_rules import DEFAULT_PIPELINE
    from data_gen.llm import add_llm_arguments

    p = subparsers.add_parser("build", help="build training shards from image-caption data",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", choices=SOURCES, required=True, help="input layout (see data_gen/sources.py)")
    p.add_argument("--input", type=Path, required=True, help="folder, JSONL/CSV file, tar/folder/glob, VOA JSONL")
    p.add_argument("--images", type=Path, help="voa: folder of {id}.jpg; jsonl/csv: base of relative image paths")
    p.add_argument("--out", type=Path, required=True, help="output folder for {split}-{000000}.tar shards")
    p.add_argument("--extractor", choices=BACKENDS, default="rules")
    p.add_argument("--import-path", type=Path,
                   help="import: existing IE output; without it, the events of the input records")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="rules: spaCy pipeline")
    p.add_argument("--no-ner", action="store_true", help="rules: skip spaCy's NER (faster, coarser roles)")
    p.add_argument("--regions", default="grid", help="grid, grid:N, json:PATH ({id: [[x1,y1,x2,y2,label?,score?]]}) "
                                                     "or none")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="input items per shard (before skips)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one shard each at a time")
    p.add_argument("--shard-index", type=int, default=0, help="this job's index in a job array")
    p.add_argument("--num-shards", type=int, default=1, help="jobs in the job array (job I builds shards I, I+K, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives", type=parse_counts, default=dict(DEFAULT_COUNTS),
                   help="negatives per kind and mode, e.g. type_swap=1,role_swap=1,arg_replace=1")
    p.add_argument("--mode", choices=[*MODES, "both"], default="template", help="how negatives are written")
    p.add_argument("--split", default="train", help="split name used in shard names and provenance")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_llm_arguments(p)
    p.set_defaults(func=run)
