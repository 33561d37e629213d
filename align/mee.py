"""Zero-shot multimedia event extraction on images (the CLIP-Event M2E2 image evaluation): predict and score.

    align predict-mee --ckpt C --images DIR|'shards/test-*.tar' [--boxes grid|record|DET.json] --out PRED.json
    align eval-mee --gold GOLD.json --pred PRED.json --mode strict|legacy [--json]

Prediction, per image, with no training on the task (CLIP-Event, Li et al. CVPR 2022, Sec. 4.3):
- event type: argmax of the image embedding against one prompt per type (the types' templates with role
  placeholders, `align.inference.type_prompts`; `long` by default: full sentences like the captions and long
  descriptions the model trained on); every image gets a type (there is no "no event" class);
- arguments: each role of that type except Place (M2E2 annotates no region for it) is a text
  `"Role: <entity type>"` averaged over the role's placeholder and its lower-case entity types from the
  ontology (prompt ensembling), the format the OT head trained on (`"Role: text"`). The OT plan between these
  role texts and the candidate regions (the checkpoint's OT solver) gives each role the region carrying most of
  its mass: one box per role, in the image's pixels. Candidate regions: `grid` (multi-scale windows,
  `align.ground.grid_proposals`), `record` (the `regions` of each shard record: EventWorld's object boxes, i.e.
  a perfect object detector, or what `data-gen build --regions` attached) or a detector JSON
  `{image_id: [[x1, y1, x2, y2, label?, score?], ...]}`.
Images: a folder (jpg/jpeg/png/webp/bmp/gif/tif/tiff; image id = file stem) or WebDataset shards (a pattern
ending in `.tar`; image id = sample key, the member name before its first dot, as in `m2e2_gold_{split}.json`).
Output: the M2E2 image-event layout read by `data_gen.eventworld.m2e2.read_m2e2`, `{image_id: {"event_type":
"Conflict:Attack", "role": {role: [[x1, y1, x2, y2], ...]}, "scores": {"event_type": p, "role": {role: [cos]}}}}`.

Scoring (both modes: Place is ignored and identical boxes within one role count once, because the M2E2 image
annotation has no Place and our EventWorld gold repeats a box once per argument filling a symmetric role):
- event mentions: one per image in each file; correct when the image is in both with the same type.
- `strict`: an argument is correct only on an image whose event type is right, when it is matched one-to-one
  (maximum bipartite matching, per role) to a gold box of the same role with IoU >= 0.5.
- `legacy`: WASE's scorer (Li et al. ACL 2020; `JointTester.calculate_report` with `add_object` and
  `util_img.calc_correctness_box(count_inside=True)` in github.com/limanling/m2e2): a predicted box counts
  when it has IoU >= 0.5 with ANY gold box of the same role name, or lies at least 90% inside one; several
  predicted boxes may hit one gold box, and the event type is not checked. Recall can therefore exceed 1.
P = correct / predicted, R = correct / gold, F1 their harmonic mean (0 when both are 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from align.atomic import atomic_write_text
from align.ground import clip_boxes, grid_proposals, ot_ground, type_scores
from align.inference import (
    CheckpointError,
    encode_images,
    encode_texts,
    load_image,
    load_module,
    scale_boxes,
    type_prompts,
)
from align.module import EventAlignModule
from align.schema import IMAGE_EXT, RECORD_EXT, Sample, SchemaError
from align.shardlist import expand_shards
from data_gen.eventworld.m2e2 import ROLE_RENAMES, SKIPPED_ROLES, m2e2_type, read_m2e2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MODES = ("strict", "legacy")
IOU = 0.5
INSIDE = 0.9  # WASE's count_inside: share of a predicted box's area inside a gold box


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class MeeImage:
    """One image to label: its id, where it came from (for errors), its encoded bytes or path, and for shard
    samples the JSON record (read only for `--boxes record`)."""

    id: str
    name: str
    data: bytes | Path
    record: bytes | None = None


def list_images(images: str | Path) -> Iterator[MeeImage]:
    """The images of a folder (sorted by name) or of WebDataset shards (a pattern ending in `.tar`). The
    folder or shard list is checked now; shards are read lazily, one at a time."""
    text = str(images)
    if text.endswith((".tar", ".tar}")):
        urls = expand_shards(text, "--images")
        return (item for url in urls for item in _shard_images(url))
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images nor a .tar shard pattern")
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in seen:
                raise ValueError(f"{path}: image id {path.stem!r} also used by {seen[path.stem]}")
            seen[path.stem] = path
    if not seen:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return iter([MeeImage(stem, str(path), path) for stem, path in seen.items()])


def _shard_images(url: str) -> Iterator[MeeImage]:
    """`{key}.jpg` members of one shard with the regions of their `{key}.json` record."""
    members: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(url) as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if m.isfile() and ext in (IMAGE_EXT, RECORD_EXT):
                    members.setdefault(m.name[: len(m.name) - len(base)] + key, {})[ext] = tar.extractfile(m).read()
    except (OSError, tarfile.TarError) as e:
        raise ValueError(f"{url}: cannot read shard: {e}") from e
    for key, parts in members.items():
        if IMAGE_EXT not in parts:
            raise ValueError(f"{url}:{key}: sample has no .{IMAGE_EXT} image")
        yield MeeImage(key.rsplit("/", 1)[-1], f"{url}:{key}.{IMAGE_EXT}", parts[IMAGE_EXT], parts.get(RECORD_EXT))


# --------------------------------------------------------------------------- prediction
def role_prompts(module: EventAlignModule) -> dict[str, dict[str, list[str]]]:
    """Per type, per role (Place left out) the role texts averaged into the role's embedding."""
    out = {}
    for name in module.ontology.type_names:
        roles = {}
        for role in module.ontology[name].roles.values():
            if role.name not in SKIPPED_ROLES:
                kinds = [role.placeholder] + [e for e in role.entity_types if e.islower()]
                roles[role.name] = [f"{role.name}: {k}" for k in dict.fromkeys(kinds)]
        out[name] = roles
    return out


def _role_embeddings(module: EventAlignModule, types: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """(T, N, D) normalised role embeddings (prompt means), (T, N) mask and the role names per type."""
    prompts = role_prompts(module)
    names = [list(prompts[t]) for t in types]
    n = max((len(r) for r in names), default=0)
    flat = [p for t in types for ps in prompts[t].values() for p in ps]
    emb = encode_texts(module, flat)
    out = emb.new_zeros(len(types), max(n, 1), emb.shape[1])
    mask = torch.zeros(len(types), max(n, 1), dtype=torch.bool)
    i = 0
    for ti, t in enumerate(types):
        for ri, ps in enumerate(prompts[t].values()):
            out[ti, ri] = torch.nn.functional.normalize(emb[i:i + len(ps)].mean(0), dim=0)
            mask[ti, ri] = True
            i += len(ps)
    return out, mask.to(out.device), names


def _candidates(item: MeeImage, size: tuple[int, int], boxes: str | dict[str, list[Any]]) -> list[list[float]]:
    w, h = size
    if boxes == "grid":
        return grid_proposals(w, h)
    if boxes == "record":
        if item.record is None:
            raise ValueError(f"{item.name}: --boxes record needs shard samples with a .{RECORD_EXT} record")
        try:
            return clip_boxes([r.box for r in Sample.from_json(item.record).regions], w, h)
        except SchemaError as e:
            raise ValueError(f"{item.name}: its .{RECORD_EXT} record: {e}") from e
    if item.id not in boxes:
        raise ValueError(f"no candidate boxes for image {item.id!r} ({item.name}) in the boxes file")
    return clip_boxes([b for b, _, _ in boxes[item.id]], w, h)


@torch.no_grad()
def predict_mee(module: EventAlignModule, images: str | Path | Iterable[MeeImage],
                boxes: str | dict[str, list[Any]] = "grid", *, batch_size: int = 32, skip_bad: bool = False,
                skipped: list[str] | None = None, prompt_style: str = "long",
                progress: bool = False) -> dict[str, dict[str, Any]]:
    """Zero-shot M2E2 predictions `{image_id: {"event_type", "role", "scores"}}` (see the module docstring).

    `boxes`: "grid", "record" or detector boxes `{image_id: [(box, label, score), ...]}` as
    `data_gen.build.load_detections` returns. An image that fails to decode raises ValueError naming it, or
    with `skip_bad` is left out and its name appended to `skipped`. `prompt_style`: the type templates.
    """
    items = list_images(images) if isinstance(images, (str, Path)) else iter(images)
    types, prompts = type_prompts(module, prompt_style)
    type_emb = encode_texts(module, prompts)
    role_emb, role_mask, role_names = _role_embeddings(module, types)
    side, device = module.image_spec.size, type_emb.device
    pred: dict[str, dict[str, Any]] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("predict-mee", total=len(images) if isinstance(images, Sized) else None)
        batch: list[tuple[MeeImage, torch.Tensor, tuple[int, int], list[list[float]]]] = []

        def flush() -> None:
            n_box = max(1, max(len(c) for *_, c in batch))
            model_boxes = torch.zeros(len(batch), n_box, 4)
            box_mask = torch.zeros(len(batch), n_box, dtype=torch.bool)
            for i, (_, _, size, cand) in enumerate(batch):
                if cand:
                    model_boxes[i, :len(cand)] = scale_boxes(torch.tensor(cand), size, side)
                    box_mask[i, :len(cand)] = True
            model_boxes[~box_mask] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # placeholders, masked out below
            img, regions, _ = encode_images(module, torch.stack([x for _, x, _, _ in batch]), model_boxes, box_mask)
            probs = type_scores(module, img, type_emb)
            best = probs.argmax(1)
            idx, sim, _ = ot_ground(module, role_emb[best], role_mask[best], regions, box_mask.to(device))
            for i, (item, _, _, cand) in enumerate(batch):
                t = int(best[i])
                roles: dict[str, list[list[float]]] = {}
                scores: dict[str, list[float]] = {}
                for r, role in enumerate(role_names[t]):
                    if int(idx[i, r]) >= 0:
                        name = ROLE_RENAMES.get((types[t], role), role)
                        roles[name] = [[round(v, 1) for v in cand[int(idx[i, r])]]]
                        scores[name] = [round(float(sim[i, r]), 4)]
                if item.id in pred:
                    raise ValueError(f"{item.name}: image id {item.id!r} appears twice")
                pred[item.id] = {"event_type": m2e2_type(types[t]), "role": roles,
                                 "scores": {"event_type": round(float(probs[i, t]), 4), "role": scores}}
            bar.advance(task, len(batch))
            batch.clear()

        for item in items:
            try:
                x, size = load_image(item.data, module.image_spec)
            except (ValueError, FileNotFoundError) as e:
                if not skip_bad:
                    if isinstance(item.data, Path):
                        raise
                    raise ValueError(f"{item.name}: {str(e).removeprefix('<bytes>: ')}") from e
                if skipped is not None:
                    skipped.append(item.name)
                bar.advance(task)
                continue
            batch.append((item, x, size, _candidates(item, size, boxes)))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return pred


# --------------------------------------------------------------------------- scoring
def max_matching(ok: np.ndarray) -> int:
    """Size of a maximum matching in the bipartite graph `ok` (rows x cols, bool): augmenting paths (Kuhn),
    exact, so no scipy is needed; the tests check it against scipy's Hungarian solver."""
    match_col = [-1] * ok.shape[1]

    def augment(r: int, seen: list[bool]) -> bool:
        for c in np.flatnonzero(ok[r]):
            if not seen[c]:
                seen[c] = True
                if match_col[c] < 0 or augment(match_col[c], seen):
                    match_col[c] = r
                    return True
        return False

    return sum(augment(r, [False] * ok.shape[1]) for r in range(ok.shape[0]))


def _iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU (P, G) of boxes a (P, 4) and b (G, 4), and the share of each a box's area inside each b box."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    inside = np.divide(inter, area_a[:, None], out=np.zeros_like(inter), where=area_a[:, None] > 0)
    return iou, inside


def _roles(entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """Role -> (K, 4) distinct boxes, Place left out."""
    out = {}
    for role, boxes in entry.get("role", {}).items():
        if role not in SKIPPED_ROLES and boxes:
            out[role] = np.array(list(dict.fromkeys(tuple(b) for b in boxes)), dtype=np.float64)
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float | int]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "correct": tp,
            "predicted": n_pred, "gold": n_gold}


def evaluate_mee(gold: dict[str, dict[str, Any]], pred: dict[str, dict[str, Any]], mode: str = "strict",
                 iou: float = IOU) -> dict[str, Any]:
    """Event-mention and argument-role P/R/F1 of `pred` against `gold` (both as `read_m2e2` returns them)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ev_tp = arg_tp = n_pred_args = n_gold_args = 0
    for image_id in set(gold) | set(pred):
        g, p = gold.get(image_id), pred.get(image_id)
        g_roles = _roles(g) if g else {}
        p_roles = _roles(p) if p else {}
        n_gold_args += sum(len(b) for b in g_roles.values())
        n_pred_args += sum(len(b) for b in p_roles.values())
        if g is None or p is None:
            continue
        same_type = g["event_type"] == p["event_type"]
        ev_tp += same_type
        if mode == "strict" and not same_type:
            continue
        for role in g_roles.keys() & p_roles.keys():
            overlap, inside = _iou(p_roles[role], g_roles[role])
            if mode == "strict":
                arg_tp += max_matching(overlap >= iou)
            else:
                arg_tp += int(((overlap >= iou) | (inside >= INSIDE)).any(1).sum())
    return {"mode": mode, "iou": iou,
            "images": {"gold": len(gold), "predicted": len(pred), "both": len(gold.keys() & pred.keys())},
            "event": _prf(ev_tp, len(pred), len(gold)), "argument": _prf(arg_tp, n_pred_args, n_gold_args)}


def format_table(result: dict[str, Any]) -> str:
    """A small markdown table of the scores."""
    lines = [f"eval-mee ({result['mode']}, IoU >= {result['iou']}): {result['images']['both']} of "
             f"{result['images']['gold']} gold images predicted, {result['images']['predicted']} predicted in all",
             "", "| | P | R | F1 | correct | predicted | gold |", "|---|---|---|---|---|---|---|"]
    for name in ("event", "argument"):
        s = result[name]
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['correct']} | "
                     f"{s['predicted']} | {s['gold']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _fail(prog: str, e: Exception) -> int:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2


def predict_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="align predict-mee", description="Zero-shot M2E2 image event extraction.")
    p.add_argument("--ckpt", required=True, help="an `align fit` checkpoint")
    p.add_argument("--images", required=True, help="a folder of images (id = file stem) or a WebDataset shard "
                                                    "pattern ending in .tar (id = sample key)")
    p.add_argument("--boxes", default="grid", help="candidate regions: grid (multi-scale windows, default), "
                                                   "record (the shard records' regions) or a detector JSON "
                                                   "{image_id: [[x1, y1, x2, y2, label?, score?], ...]}")
    p.add_argument("--out", required=True, help="predictions, M2E2 image-event JSON")
    p.add_argument("--prompt-style", choices=("long", "short"), default="long",
                   help="event-type prompts: the types' long templates ('Someone attacked someone', default) or "
                        "short ones ('Someone attacking someone')")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-bad", action="store_true", help="leave out images that fail to decode (and count "
                                                           "them) instead of stopping")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    skipped: list[str] = []
    try:
        boxes: str | dict[str, list[Any]] = args.boxes
        if args.boxes not in ("grid", "record"):
            from data_gen.build import RegionsError, load_detections

            try:
                boxes = load_detections(args.boxes, fresh=True)
            except RegionsError as e:
                raise ValueError(str(e)) from e
        items = list_images(args.images)
        module = load_module(args.ckpt, args.device)
        pred = predict_mee(module, items, boxes, batch_size=args.batch_size, skip_bad=args.skip_bad,
                           skipped=skipped, prompt_style=args.prompt_style, progress=not args.quiet)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        return _fail("align predict-mee", e)
    atomic_write_text(args.out, json.dumps(pred, indent=1, ensure_ascii=False) + "\n")
    for name in skipped:
        print(f"skipped (cannot decode): {name}", file=sys.stderr)
    print(f"predict-mee: {len(pred)} images -> {args.out}" + (f", {len(skipped)} skipped" if skipped else ""),
          file=sys.stderr)
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="align eval-mee", description="Score M2E2 image-event predictions.")
    p.add_argument("--gold", required=True, help="gold M2E2 image-event JSON (e.g. m2e2_gold_test.json)")
    p.add_argument("--pred", required=True, help="predicted M2E2 image-event JSON")
    p.add_argument("--mode", choices=MODES, default="strict",
                   help="strict: one-to-one IoU matching and the right event type; legacy: WASE's scorer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        result = evaluate_mee(read_m2e2(args.gold), read_m2e2(args.pred), args.mode)
    except ValueError as e:
        return _fail("align eval-mee", e)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0
