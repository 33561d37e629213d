"""Where argument grounding goes wrong: accuracy broken down, its ceiling, and the kind of each error.

    python benchmarks/grounding_errors.py --ckpt runs/demo/checkpoints/last.ckpt \
        [--shards 'shards/eventworld/test-*.tar'] [--decoder assignment] [--share S] [--limit N] [--json]
        [--out E.json]

The test split is read and encoded exactly as `align test` / `benchmarks/evaluate.py` read it (the checkpoint's
own data settings: the same candidate regions, at most `max_regions` per image, and arguments), and every
argument with a gold box is grounded as `align test` grounds it: the plan of `--decoder` marginals
(`align.ot.grounding_plan`), then the union of the regions carrying >= `--share` of the argument's top region's mass
(`align.grounding.ground_union`; 1 = the top region only). Both default to the checkpoint's evaluation settings.
An argument is correct when its box's IoU with the gold box is >= the checkpoint's `grounding_iou` (0.5).

Breakdowns: by role, by the argument's entity type, by gold box size (area as a share of the image), by number of
instances (EventWorld records list each argument's instance boxes in `provenance.role_boxes`; a plural argument's
gold box is the union of its instances), and by whether the argument spans the whole image (Place).

Ceiling: the share of arguments for which some single candidate region has IoU >= 0.5 with the gold box; no
decoder that picks one candidate can beat it (a union of candidates can). Union: the share grounded in more than
one region. Each error is one of:

- ``unreachable``: no single candidate reaches IoU 0.5 (a group no box covers) and the union missed it too;
- ``whole_image``: the image-wide box (>= 95% of the image) was chosen for an object, or an object for an
  image-wide argument (Place);
- ``right_object``: the chosen and the gold box overlap (intersection >= `--overlap` of the smaller box), so the
  model found the object but the box is off (one instance of a plural argument, a holder for what it holds);
- ``other_argument``: the chosen box is another argument's gold box (IoU >= 0.5; a role confusion);
- ``wrong_object``: anything else (a bystander, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.atomic import atomic_write_text  # noqa: E402
from align.grounding import ground_union  # noqa: E402
from align.inference import CheckpointError, load_module, read_checkpoint  # noqa: E402
from align.module import EventAlignModule  # noqa: E402
from align.ot import MARGINALS, Marginals, grounding_plan  # noqa: E402
from align.schema import Sample  # noqa: E402
from benchmarks.evaluate import data_settings, split_loader  # noqa: E402

SIZE_BINS = ((0.05, "< 5%"), (0.15, "5-15%"), (0.4, "15-40%"), (0.95, "40-95%"), (float("inf"), ">= 95%"))
ERRORS = ("unreachable", "whole_image", "right_object", "other_argument", "wrong_object")
WHOLE = 0.95  # a box covering this share of the image is image-wide


def size_bin(area_share: float) -> str:
    """The label of the bin a gold box's area (as a share of the image) falls in."""
    return next(label for top, label in SIZE_BINS if area_share < top)


def overlap_min(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over the smaller box's area, pairwise for (N, 4) x (M, 4) boxes: 1 when one holds the other."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    return inter / torch.minimum(area_a[:, None], area_b[None, :]).clamp_min(1e-9)


class _ArgInfo:
    """Keeps, per key, each encoded argument's role, text, entity type and number of instances (None where the
    record does not say); `split_loader` calls it with every example the test stream encodes."""

    def __init__(self, module: EventAlignModule) -> None:
        self.ontology, self.info = module.ontology, {}

    def __call__(self, ex: dict[str, Any], sample: Sample) -> None:
        event = sample.salient_event
        event = self.ontology.normalize(event) if event is not None else None
        args = event.arguments[: len(ex["args"])] if event is not None else []
        role_boxes = (sample.provenance or {}).get("role_boxes") or {}
        per_role: dict[str, int] = defaultdict(int)
        for a in args:
            per_role[a.role] += 1
        self.info[ex["key"]] = [
            (a.role, a.text, a.entity_type or "unknown",
             len(role_boxes[a.role]) if per_role[a.role] == 1 and a.role in role_boxes else None)
            for a in args]


def classify(pred: Tensor, gold: Tensor, boxes: Tensor, other_gold: Tensor, side: float, iou: float,
             overlap: float) -> tuple[str, float, float]:
    """("correct" or an error kind, IoU of the predicted box, best IoU of one candidate) for one argument.

    pred / gold (4,) boxes; boxes (M, 4): the sample's real candidates; other_gold (K, 4): its other arguments'
    gold boxes; side: the image side in the boxes' pixels."""
    got = float(box_iou(pred[None], gold[None])[0, 0])
    best = float(box_iou(gold[None], boxes)[0].max()) if len(boxes) else 0.0
    if got >= iou:
        return "correct", got, best
    if best < iou:
        return "unreachable", got, best
    wide = [float((b[2:] - b[:2]).clamp_min(0).prod()) >= WHOLE * side**2 for b in (pred, gold)]
    if wide[0] != wide[1]:
        return "whole_image", got, best
    if float(overlap_min(pred[None], gold[None])[0, 0]) >= overlap:
        return "right_object", got, best
    if len(other_gold) and float(box_iou(pred[None], other_gold).max()) >= iou:
        return "other_argument", got, best
    return "wrong_object", got, best


@torch.no_grad()
def collect(module: EventAlignModule, settings: dict[str, Any], shards: str, decoder: Marginals, share: float,
            limit: int | None, overlap: float) -> list[dict[str, Any]]:
    """One row per gold-boxed argument of the split: its attributes, the chosen box and the verdict."""
    info = _ArgInfo(module)
    loader, _ = split_loader(module, settings, shards, observe=info)
    device, c, iou = next(module.parameters()).device, module.ot_config, module.evaluation.grounding_iou
    rows: list[dict[str, Any]] = []
    seen = 0
    for batch in tqdm(loader, desc="grounding", unit="batch", leave=False):
        if limit is not None and seen >= limit:
            break
        take = len(batch["keys"]) if limit is None else min(len(batch["keys"]), limit - seen)
        batch = {k: (v[:take].to(device) if isinstance(v, Tensor) else v[:take]) for k, v in batch.items()}
        seen += take
        out = module._forward(batch)
        plan = grounding_plan(out["args"], out["regions"], batch["arg_mask"], out["region_mask"], marginals=decoder,
                              eps=c.eps, n_iters=c.n_iters, reg_m=c.reg_m, method=c.method)
        picked, pred = ground_union(plan, batch["boxes"], batch["arg_mask"], out["region_mask"], share)
        top = plan.masked_fill(~out["region_mask"][:, None], -torch.inf).argmax(2)
        rows += _rows(batch, pred.cpu().float(), picked.sum(2).cpu(), top.cpu(), info, iou, overlap,
                      module.model.image_size)
    return rows


def _rows(batch: dict[str, Any], pred: Tensor, n_picked: Tensor, top: Tensor, info: _ArgInfo, iou: float,
          overlap: float, side: int) -> list[dict[str, Any]]:
    out = []
    valid = (batch["arg_mask"] & batch["arg_box_mask"]).cpu()
    for i, key in enumerate(batch["keys"]):
        boxes = batch["boxes"][i][batch["box_mask"][i]].cpu().float()
        gold_all = batch["arg_boxes"][i].cpu().float()
        have = valid[i].nonzero()[:, 0].tolist()
        for j in have:
            gold = gold_all[j]
            verdict, got, best = classify(pred[i, j], gold, boxes, gold_all[[k for k in have if k != j]], side, iou,
                                          overlap)
            role, text, etype, instances = info.info[key][j]
            area = float((gold[2:] - gold[:2]).clamp_min(0).prod()) / side**2
            out.append({"key": key, "role": role, "text": text, "entity_type": etype,
                        "instances": "?" if instances is None else instances if instances < 3 else "3+",
                        "size": size_bin(area), "whole_image": area >= WHOLE, "verdict": verdict,
                        "iou": round(got, 4), "best_iou": round(best, 4), "reachable": best >= iou,
                        "regions_picked": int(n_picked[i, j]),
                        "top_label": batch["box_labels"][i][int(top[i, j])]})
    return out


def breakdown(rows: Sequence[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    """Per value of `field`: count, accuracy, ceiling and the share of each error kind."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r[field])].append(r)
    return {k: summary(v) for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Count, accuracy, ceiling (one candidate reaches the IoU threshold), the share of arguments grounded in several
    regions, and each error kind's share of all rows."""
    n = len(rows)
    out: dict[str, Any] = {"count": n, "acc": sum(r["verdict"] == "correct" for r in rows) / n if n else None,
                           "ceiling": sum(r["reachable"] for r in rows) / n if n else None,
                           "union": sum(r["regions_picked"] > 1 for r in rows) / n if n else None}
    for e in ERRORS:
        out[e] = sum(r["verdict"] == e for r in rows) / n if n else None
    return out


def report(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: overall summary, breakdowns, and the labels of the top regions wrong picks came from."""
    wrong = [r for r in rows if r["verdict"] in ("wrong_object", "other_argument")]
    picked: dict[str, int] = defaultdict(int)
    for r in wrong:
        picked[r["top_label"] or "?"] += 1
    return {"meta": meta, "all": summary(rows),
            "by": {f: breakdown(rows, f) for f in ("role", "entity_type", "size", "instances", "whole_image")},
            "wrong_picks_by_label": dict(sorted(picked.items(), key=lambda kv: -kv[1]))}


def table(rep: dict[str, Any]) -> str:
    """Markdown: one table per breakdown, columns count, acc, ceiling and each error kind's share."""
    cols = ["count", "acc", "ceiling", "union", *ERRORS]
    lines = [f"grounding errors: {rep['meta']['ckpt']} on {rep['meta']['shards']}, decoder "
             f"`{rep['meta']['decoder']}`, share {rep['meta']['share']}, IoU >= {rep['meta']['iou']}", ""]

    def row(label: str, s: dict[str, Any]) -> str:
        cells = [str(s["count"])] + [f"{s[c]:.3f}" for c in cols[1:]]
        return "| " + " | ".join([label, *cells]) + " |"

    for name, groups in [("all", {"all": rep["all"]}), *rep["by"].items()]:
        lines += [f"| {name} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [row(k, s) for k, s in groups.items()] + [""]
    picks = ", ".join(f"{k} {v}" for k, v in rep["wrong_picks_by_label"].items())
    lines.append(f"top regions of wrong-object / other-argument errors, by label: {picks or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint to analyse")
    p.add_argument("--shards", help="test shard pattern (default: the checkpoint's data.test)")
    p.add_argument("--decoder", choices=MARGINALS, help="grounding decoder (default: the checkpoint's)")
    p.add_argument("--share", type=float, help="ground_union's share (default: the checkpoint's grounding_share)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="intersection over the smaller box above which a miss counts as the right object")
    p.add_argument("--limit", type=int, help="only the first N test samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="also write the JSON report (with one row per argument) here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the tables")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.share is not None and not 0.0 < args.share <= 1.0:
        p.error("--share must be in (0, 1]")
    try:
        settings = data_settings(read_checkpoint(args.ckpt))
        shards = args.shards or settings.get("test")
        if not shards:
            p.error("--shards is needed: the checkpoint does not name its test data")
        module = load_module(args.ckpt, args.device)
        decoder = args.decoder or module.evaluation.grounding_decoder
        share = args.share or module.evaluation.grounding_share
        rows = collect(module, settings, shards, decoder, share, args.limit, args.overlap)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"grounding_errors: error: {e}", file=sys.stderr)
        return 2
    meta = {"ckpt": str(args.ckpt), "shards": shards, "decoder": decoder, "share": share,
            "iou": module.evaluation.grounding_iou, "overlap": args.overlap, "limit": args.limit}
    rep = report(rows, meta)
    if args.out:
        atomic_write_text(args.out, json.dumps({**rep, "rows": rows}, indent=1) + "\n")
    print(json.dumps(rep, indent=1) if args.json else table(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
