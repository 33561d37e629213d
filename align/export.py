"""`align export`: embeddings of a trained checkpoint for every sample of some shards, for indexing and analysis.

One input shard -> one part: DIR/part-NNNNN.{image,region,text}.npy (float16 or float32, L2-normalised rows) and
a .jsonl beside each (line i describes row i: `key`, plus `width`/`height`/`caption` for images; `index`, `box`,
`label`, `score`, `source` for regions, with the box in ORIGINAL image pixels (x1, y1, x2, y2) as in the record;
`kind`, `text`, `negative` for texts). Texts are the record's positives (each kind; the caption as kind "caption"
when no positive has that kind, as in training) and, with `--negatives`, its hard negatives. DIR/prompts.{npy,jsonl}
holds, once per export, one prompt per ontology event type (the zero-shot typing prompts) and one "Role: placeholder"
per type and role. DIR/export.json records the checkpoint (path, size, sha256), model, dim, dtype, inputs and the
parts done, so a re-run skips finished parts and refuses a different checkpoint or settings.

Images are preprocessed exactly as in training (`align.inference.load_image`; region boxes scaled by the record's
width/height, as `align.batch` does). Bad samples are treated as the DataModule treats them: skipped, logged with
shard and key, and counted per reason (`missing_member`, `bad_json`, `schema`, `bad_image`, `image_too_large`,
`tar`) in the part's entry of export.json. Records without regions are fine (no region rows); regions with an
empty box are left out and counted (`empty_region`). Every file is written atomically and a part counts as done
only once its files are all written, so an interrupted export resumes without duplicates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align import __version__
from align.atomic import TMP_PREFIX, atomic_open, atomic_write_text
from align.schema import IMAGE_EXT, RECORD_EXT, Sample, SchemaError
from align.shardlist import expand_shards
from align.tarstream import iter_samples

log = logging.getLogger(__name__)

FORMAT = 1
PART_KINDS = ("image", "region", "text")
KINDS = (*PART_KINDS, "prompt")
DTYPES = {"fp16": np.float16, "fp32": np.float32}
MANIFEST = "export.json"
BOX_FRAME = "original image pixels (x1, y1, x2, y2)"


class ExportError(ValueError):
    """An export folder is unusable, inconsistent or belongs to another checkpoint; the message names the file."""


@dataclass
class Table:
    """One kind of embeddings: (N, D) vectors and N row descriptions (each with `key`)."""

    vectors: np.ndarray
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list[str]:
        return [r["key"] for r in self.rows]


@dataclass
class Export:
    """An export folder read back: its manifest and the tables of the kinds asked for."""

    path: Path
    manifest: dict[str, Any]
    tables: dict[str, Table]

    def __getitem__(self, kind: str) -> Table:
        return self.tables[kind]

    @property
    def complete(self) -> bool:
        return len(self.manifest["parts"]) == len(self.manifest["inputs"])


def checkpoint_id(path: str | Path) -> dict[str, Any]:
    """Path, size and sha256 of a checkpoint file: what makes two exports comparable."""
    path = Path(path)
    if not path.is_file():
        from align.inference import CheckpointError

        raise CheckpointError(f"{path}: checkpoint not found")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- reading back
def _read_part(folder: Path, stem: str, dim: int) -> Table:
    npy, jsonl = folder / f"{stem}.npy", folder / f"{stem}.jsonl"
    try:
        vectors = np.load(npy, allow_pickle=False)
        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder}: cannot read {stem}: {e}") from e
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(rows):
        raise ExportError(f"{npy}: shape {vectors.shape} does not match {len(rows)} rows of dim {dim} in {jsonl.name}")
    return Table(vectors, rows)


def load(path: str | Path, kinds: Sequence[str] = KINDS) -> Export:
    """Read an export folder: for each kind, the finished parts' vectors concatenated in input order."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{folder}: not an export folder (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    dim = manifest["dim"]
    tables = {}
    for kind in kinds:
        if kind not in KINDS:
            raise ExportError(f"unknown kind {kind!r}; kinds are {list(KINDS)}")
        stems = ["prompts"] if kind == "prompt" else [f"{p}.{kind}" for p in sorted(manifest["parts"])]
        parts = [_read_part(folder, s, dim) for s in stems]
        vectors = np.concatenate([t.vectors for t in parts]) if parts else np.zeros((0, dim), DTYPES[manifest["dtype"]])
        tables[kind] = Table(vectors, [r for t in parts for r in t.rows])
    exp = Export(folder, manifest, tables)
    if not exp.complete:
        log.warning("%s: export is incomplete (%d of %d parts); re-run `align export` to finish it", folder,
                    len(manifest["parts"]), len(manifest["inputs"]))
    return exp


# --------------------------------------------------------------------------- one shard in a worker
_WORKER: dict[str, Any] = {}


def _init_worker(ckpt: str, devices: Any, threads: int) -> None:
    """Load the model once per process; with a device queue, each process takes one GPU."""
    from align.inference import load_module

    torch.set_num_threads(threads)
    device = devices.get() if devices is not None else "cpu"
    _WORKER["module"] = load_module(ckpt, device=device)


def _skip(counts: Counter, reason: str, url: str, key: str | None, detail: str) -> None:
    counts[reason] += 1
    log.warning("skipping sample %r of %s (%s): %s", key, url, reason, detail)


def _samples(url: str, counts: Counter) -> list[tuple[Sample, bytes]]:
    """Parsed records with their image bytes; bad ones skipped and counted as the DataModule does."""

    def tar_error(exn: Exception) -> bool:
        _skip(counts, "tar", url, None, str(exn))
        return True

    out = []
    for raw in iter_samples([url], tar_error):
        key = raw.get("__key__")
        if IMAGE_EXT not in raw or RECORD_EXT not in raw:
            _skip(counts, "missing_member", url, key, f"needs .{IMAGE_EXT} and .{RECORD_EXT}")
            continue
        try:
            out.append((Sample.from_json(raw[RECORD_EXT]), raw[IMAGE_EXT]))
        except SchemaError as e:
            _skip(counts, "bad_json" if e.problem.startswith("not valid JSON") else "schema", url, key, str(e))
    return out


def _texts(sample: Sample, negatives: bool) -> list[dict[str, Any]]:
    rows = [{"key": sample.key, "kind": d.kind, "text": d.text, "negative": False} for d in sample.positives if d.text]
    if sample.caption and not any(d.kind == "caption" for d in sample.positives):
        rows.append({"key": sample.key, "kind": "caption", "text": sample.caption, "negative": False})
    if negatives:
        rows += [{"key": sample.key, "kind": n.kind, "text": n.text, "negative": True} for n in sample.negatives
                 if n.text]
    return rows


def export_shard(url: str, out: str, part: str, dtype: str, batch_size: int, negatives: bool) -> dict[str, Any]:
    """Embed one shard into DIR/PART.*; returns the part's manifest entry."""
    from align.batch import ImageError
    from align.inference import encode_images, encode_texts, load_image

    module = _WORKER["module"]
    spec, side = module.image_spec, module.image_spec.size
    counts: Counter[str] = Counter()
    images: list[torch.Tensor] = []
    image_rows: list[dict[str, Any]] = []
    region_rows: list[dict[str, Any]] = []
    for sample, data in _samples(url, counts):
        try:
            x, _ = load_image(data, spec)
        except ImageError as e:
            _skip(counts, e.reason, url, sample.key, str(e))
            continue
        images.append(x)
        image_rows.append({"key": sample.key, "width": sample.width, "height": sample.height,
                           "caption": sample.caption, "_regions": []})
        for j, g in enumerate(sample.regions):
            if g.box[2] <= g.box[0] or g.box[3] <= g.box[1]:
                counts["empty_region"] += 1
                continue
            row = {"key": sample.key, "index": j, "box": list(g.box), "label": g.label, "score": g.score,
                   "source": g.source}
            image_rows[-1]["_regions"].append(row)
        image_rows[-1]["_texts"] = _texts(sample, negatives)
    dim = module.model.embed_dim
    glob_out, region_out = [], []
    for i in range(0, len(images), batch_size):
        chunk = image_rows[i:i + batch_size]
        r = max(1, max(len(c["_regions"]) for c in chunk))
        boxes, mask = torch.zeros(len(chunk), r, 4), torch.zeros(len(chunk), r, dtype=torch.bool)
        for b, c in enumerate(chunk):
            sx, sy = side / c["width"], side / c["height"]  # the record's size, as align.batch scales boxes
            for j, row in enumerate(c["_regions"]):
                x1, y1, x2, y2 = row["box"]
                boxes[b, j] = torch.tensor([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
                mask[b, j] = True
        g, regions, m = encode_images(module, torch.stack(images[i:i + batch_size]), boxes, mask)
        glob_out.append(g.cpu())
        region_out.append(regions[m].cpu())
    text_rows = [t for c in image_rows for t in c.pop("_texts")]
    region_rows = [g for c in image_rows for g in c.pop("_regions")]
    vectors = {
        "image": torch.cat(glob_out) if glob_out else torch.zeros(0, dim),
        "region": torch.cat(region_out) if region_out else torch.zeros(0, dim),
        "text": encode_texts(module, [t["text"] for t in text_rows]).cpu(),
    }
    rows = {"image": image_rows, "region": region_rows, "text": text_rows}
    folder = Path(out)
    for kind in PART_KINDS:
        write_table(folder, f"{part}.{kind}", vectors[kind].numpy().astype(DTYPES[dtype]), rows[kind])
    return {"shard": url, "images": len(image_rows), "regions": len(region_rows), "texts": len(text_rows),
            "skipped": dict(counts)}


def write_table(folder: Path, stem: str, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
    with atomic_open(folder / f"{stem}.npy", "wb") as f:
        np.save(f, vectors, allow_pickle=False)
    atomic_write_text(folder / f"{stem}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _export_shard_job(args: tuple) -> tuple[str, dict[str, Any]]:
    url, out, part, dtype, batch_size, negatives = args
    return part, export_shard(url, out, part, dtype, batch_size, negatives)


# --------------------------------------------------------------------------- the whole export
def prompt_table(module: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Event-type prompts (as used for zero-shot typing) and "Role: placeholder" prompts per type and role."""
    from align.inference import encode_texts, type_prompts

    rows = [{"key": f"type:{n}", "kind": "event_type", "type": n, "text": t} for n, t in zip(*type_prompts(module))]
    for name in module.ontology.type_names:
        for role in module.ontology[name].roles.values():
            rows.append({"key": f"role:{name}:{role.name}", "kind": "role", "type": name, "role": role.name,
                         "text": f"{role.name}: {role.placeholder}"})
    return encode_texts(module, [r["text"] for r in rows]).cpu().numpy(), rows


def _open_manifest(folder: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest when it matches `wanted` (same checkpoint and settings), else a fresh one."""
    path = folder / MANIFEST
    if not path.is_file():
        if folder.is_dir() and any(not p.name.startswith(TMP_PREFIX) for p in folder.iterdir()):
            raise ExportError(f"{folder}: not empty and not an export folder (no {MANIFEST}); use a new --out")
        return {**wanted, "parts": {}}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    old_ck, new_ck = manifest.get("checkpoint", {}), wanted["checkpoint"]
    if old_ck.get("sha256") != new_ck["sha256"]:
        raise ExportError(f"{path}: this folder holds an export of checkpoint {old_ck.get('path')} "
                          f"(sha256 {str(old_ck.get('sha256'))[:12]}), not {new_ck['path']} "
                          f"(sha256 {new_ck['sha256'][:12]}); use a new --out")
    for field in ("format", "dtype", "negatives", "inputs", "dim"):
        if manifest.get(field) != wanted[field]:
            raise ExportError(f"{path}: {field} was {manifest.get(field)!r}, now {wanted[field]!r}; "
                              "finish the export with the same settings or use a new --out")
    return manifest


def run_export(ckpt: str | Path, data: Sequence[str], out: str | Path, *, dtype: str = "fp32", batch_size: int = 64,
               negatives: bool = False, workers: int = 1, devices: Sequence[int] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Export every input shard not yet done; returns the manifest."""
    from tqdm import tqdm

    from align.inference import load_module

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {list(DTYPES)}")
    urls = [u for pattern in data for u in expand_shards(pattern, "--data")]
    ident = checkpoint_id(ckpt)
    module = load_module(ckpt)
    folder = Path(out)
    wanted = {"format": FORMAT, "version": __version__, "checkpoint": ident,
              "model_name": module.hparams.get("model_name"), "dim": module.model.embed_dim,
              "image_size": module.image_spec.size, "dtype": dtype, "negatives": negatives,
              "region_boxes": BOX_FRAME, "inputs": urls}
    manifest = _open_manifest(folder, wanted)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{TMP_PREFIX}*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    if "prompts" not in manifest:
        vectors, rows = prompt_table(module)
        write_table(folder, "prompts", vectors.astype(DTYPES[dtype]), rows)
        manifest["prompts"] = {"event_types": sum(r["kind"] == "event_type" for r in rows),
                               "roles": sum(r["kind"] == "role" for r in rows)}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    jobs = [(u, str(folder), f"part-{i:05d}", dtype, batch_size, negatives) for i, u in enumerate(urls)
            if f"part-{i:05d}" not in manifest["parts"]]
    bar = tqdm(total=len(urls), initial=len(urls) - len(jobs), unit="shard", desc="export", disable=not progress)

    def done(part: str, entry: dict[str, Any]) -> None:
        manifest["parts"][part] = entry
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        bar.update(1)

    n_proc = len(devices) if devices else workers
    if n_proc <= 1 or len(jobs) <= 1:
        if devices:
            module = module.to(f"cuda:{devices[0]}")
        _WORKER["module"] = module
        for job in jobs:
            done(*_export_shard_job(job))
    else:
        ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also keeps workers free of the parent's state
        queue = None
        if devices:
            queue = ctx.Manager().Queue()
            for d in devices:
                queue.put(f"cuda:{d}")
        threads = max(1, (os.cpu_count() or 1) // n_proc)
        with ProcessPoolExecutor(n_proc, mp_context=ctx, initializer=_init_worker,
                                 initargs=(str(ckpt), queue, threads)) as pool:
            for part, entry in pool.map(_export_shard_job, jobs):
                done(part, entry)
    bar.close()
    return manifest


def _devices(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    if not torch.cuda.is_available():
        raise ExportError("--devices needs CUDA, and no CUDA device is available")
    ids = list(range(torch.cuda.device_count())) if spec == "auto" else [int(d) for d in spec.split(",")]
    bad = [d for d in ids if not 0 <= d < torch.cuda.device_count()]
    if bad:
        raise ExportError(f"--devices {spec}: no CUDA device {bad} (have {torch.cuda.device_count()})")
    return ids


def main(argv: list[str]) -> int:
    from align.inference import CheckpointError

    p = argparse.ArgumentParser(prog="align export", description="Embed images, regions, texts and prompts of shards")
    p.add_argument("--ckpt", required=True, help="an `align fit` checkpoint")
    p.add_argument("--data", required=True, action="append", help="shard pattern (brace or glob; repeatable)")
    p.add_argument("--out", required=True, help="output folder (re-run to resume)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--negatives", action="store_true", help="also embed the records' hard negatives")
    p.add_argument("--workers", type=int, default=1, help="processes over input shards (CPU)")
    p.add_argument("--devices", help="CUDA devices, one process each: 'auto' or e.g. '0,1'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        manifest = run_export(args.ckpt, args.data, args.out, dtype=args.dtype, batch_size=args.batch_size,
                              negatives=args.negatives, workers=args.workers, devices=_devices(args.devices),
                              progress=not args.quiet)
    except (CheckpointError, ExportError, FileNotFoundError, ValueError) as e:
        print(f"align export: error: {e}", file=sys.stderr)
        return 2
    parts = manifest["parts"].values()
    totals = {k: sum(p[k] for p in parts) for k in ("images", "regions", "texts")}
    skipped = sum((Counter(p["skipped"]) for p in parts), Counter())
    no_regions = " (no regions in these shards)" if totals["regions"] == 0 else ""
    print(f"[export] {len(manifest['parts'])}/{len(manifest['inputs'])} shards: {totals['images']} images, "
          f"{totals['regions']} regions{no_regions}, {totals['texts']} texts, "
          f"{sum(manifest['prompts'].values())} prompts; skipped {dict(skipped) or 'none'} -> {args.out}",
          file=sys.stderr)
    return 0
