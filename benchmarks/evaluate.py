"""Evaluation of a trained checkpoint on a test split, beside a plain-CLIP checkpoint and blind baselines.

    python benchmarks/evaluate.py --ckpt runs/demo/checkpoints/last.ckpt \
        --baseline-ckpt runs/eventworld-clip-baseline/checkpoints/last.ckpt \
        --shards 'shards/eventworld/test-*.tar' --out benchmarks/results/eval --run runs/demo [--limit N] [--json]
        [--grounding-decoder assignment|uniform] [--grounding-share S]

The test split is read exactly as `align test` reads it (`EventDataModule` with each checkpoint's own data
settings: same primary descriptions, hard negatives, regions and argument lists). Columns: `model` (--ckpt),
`plain_clip` (--baseline-ckpt) and `blind`, a baseline that never sees the image (`benchmarks/eval_blind.py`):

- retrieval: hit@1/5/10 image->text and text->image and MRR over the N test pairs (torchmetrics RetrievalHitRate /
  RetrievalMRR; the paper's R@K is this hit rate). Blind: texts ranked by the language model below, images in a
  fixed order; a ranking that ignores one side scores exactly chance, k/N and H_N/N, which is checked.
- hard negatives, per kind: sim(image, primary positive) > sim(image, negative). Blind: the same comparison by a
  word-bigram language model (interpolated with an add-one unigram, lower case, mean log-probability per word)
  fit on the training split's positive descriptions: what a text-only prior tells from the corruption alone.
- grounding: each argument ("Role: text") goes to the region carrying most of its mass in the OT plan with
  `--grounding-decoder` marginals (`align.ot.grounding_plan`: "assignment", the default, an entropic one-to-one
  assignment of arguments to regions; "uniform", every region transported), with the checkpoint's OT eps and
  iterations, and its box is the union of the regions carrying >= `--grounding-share` of its top region's mass
  (`align.grounding.ground_union`; default: the checkpoint's `grounding_share`; 1 = the top region only); correct
  when IoU with its gold box >= the checkpoint's `grounding_iou` (0.5). Blind: the region whose
  box (centre and size as fractions of the image) is nearest to that role's mean gold box in the training split
  (box geometry only; the largest region for a role never seen).
- zero-shot event type: the type prompt (`align.inference.type_prompts`) most similar to the image; accuracy and
  confusion matrix. Blind: the most frequent training type.
- MEE, M2E2 image event extraction scored strict and legacy by `align.mee` against `m2e2_gold_{split}.json`.
  Blind: the majority type with each of its roles at the role's mean training box.

Writes OUT/eval.json, OUT/eval.md and PNGs (retrieval_grid, grounding, confusion, curves with --run). Each model's
outputs are cached in OUT/.cache, so a re-run (say, after adding --baseline-ckpt) computes only what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR
from torchvision.ops import box_iou
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import __version__  # noqa: E402
from align.atomic import atomic_open, atomic_write_text  # noqa: E402
from align.data import EventDataModule, expand_shards  # noqa: E402
from align.grounding import ground_union  # noqa: E402
from align.inference import CheckpointError, encode_texts, load_module, read_checkpoint, type_prompts  # noqa: E402
from align.losses import hard_negative_correct  # noqa: E402
from align.mee import MODES, evaluate_mee, list_images, predict_mee  # noqa: E402
from align.module import EventAlignModule  # noqa: E402
from align.ot import MARGINALS, Marginals, grounding_plan  # noqa: E402
from align.schema import NEGATIVE_KINDS, RECORD_EXT, Sample  # noqa: E402
from benchmarks import eval_plots  # noqa: E402
from benchmarks.eval_blind import TrainStats, blind_mee, blind_raw, grounding_chance  # noqa: E402
from data_gen.eventworld.m2e2 import read_m2e2  # noqa: E402
from data_gen.shards import iter_records  # noqa: E402

MODELS = ("model", "plain_clip", "blind")
CACHE_VERSION = 2


# --------------------------------------------------------------------------- metrics
def retrieval_metrics(scores: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """hit@k and MRR both ways for a (N images, N texts) score matrix whose pair i is (image i, text i)."""
    n = scores.shape[0]
    target = torch.eye(n, dtype=torch.bool).flatten()
    idx = torch.arange(n)[:, None].expand(n, n).flatten()
    out: dict[str, float] = {}
    for name, s in (("i2t", scores), ("t2i", scores.T)):
        preds = s.double().flatten()
        for k in ks:
            out[f"{name}_hit@{k}"] = float(RetrievalHitRate(top_k=k)(preds, target, indexes=idx))
        out[f"{name}_mrr"] = float(RetrievalMRR()(preds, target, indexes=idx))
    return out


def chance_retrieval(n: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected hit@k = min(k, N)/N and MRR = H_N/N of a ranking that ignores the query."""
    mrr = sum(1.0 / r for r in range(1, n + 1)) / n
    return {f"{d}_{m}": v for d in ("i2t", "t2i")
            for m, v in [*((f"hit@{k}", min(k, n) / n) for k in ks), ("mrr", mrr)]}


def hardneg_metrics(correct: Tensor, kinds: Tensor) -> dict[str, Any]:
    """Accuracy per negative kind and over all kinds from (N, K) bools and kind indices (-1 = padding)."""
    acc, count = {}, {}
    for i, kind in enumerate(NEGATIVE_KINDS):
        sel = kinds == i
        if sel.any():
            acc[kind], count[kind] = float(correct[sel].float().mean()), int(sel.sum())
    valid = kinds >= 0
    if valid.any():
        acc["all"], count["all"] = float(correct[valid].float().mean()), int(valid.sum())
    return {"acc": acc, "count": count}


def grounding_metrics(pred: Tensor, gold: Tensor, valid: Tensor, roles: list[list[str]], iou: float) -> dict[str, Any]:
    """Share of gold-boxed arguments whose predicted box has IoU >= `iou`, overall and per role."""
    hits = torch.zeros(valid.shape, dtype=torch.bool)
    if valid.any():
        hits[valid] = box_iou(pred[valid], gold[valid]).diagonal() >= iou
    by_role: dict[str, list[bool]] = defaultdict(list)
    for i, j in valid.nonzero().tolist():
        by_role[roles[i][j]].append(bool(hits[i, j]))
    n = int(valid.sum())
    return {"acc": float(hits.sum()) / n if n else None, "count": n,
            "by_role": {r: sum(v) / len(v) for r, v in sorted(by_role.items())},
            "count_by_role": {r: len(v) for r, v in sorted(by_role.items())}}


def event_type_metrics(pred: Tensor, gold: Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, recall per type and the confusion matrix (rows: gold type, columns: predicted) over typed samples."""
    keep = gold >= 0
    cm = multiclass_confusion_matrix(pred[keep], gold[keep], num_classes=len(names))
    rows = cm.sum(1)
    return {"acc": float(cm.diag().sum() / cm.sum()) if cm.sum() else None, "count": int(cm.sum()),
            "per_type": {n: float(cm[i, i] / rows[i]) for i, n in enumerate(names) if rows[i]},
            "types": list(names), "confusion": cm.tolist()}


# --------------------------------------------------------------------------- MEE
def predict_test_mee(module: EventAlignModule, shards: str, keys: Sequence[str], boxes: str) -> dict[str, Any]:
    """`align predict-mee` on the evaluated test samples (candidate regions: `boxes`, "record" or "grid")."""
    wanted = set(keys)
    items = (item for item in list_images(shards) if item.id in wanted)
    return predict_mee(module, items, boxes, batch_size=64)


def score_all_mee(preds: dict[str, dict[str, Any]], gold_path: Path, keys: Sequence[str],
                  out: Path) -> dict[str, dict[str, Any]]:
    """Strict and legacy scores per model; predictions are written to OUT/mee_{name}.json and read back with
    `read_m2e2`, exactly as `align eval-mee --gold G --pred OUT/mee_{name}.json` scores them."""
    wanted = set(keys)
    gold = {k: v for k, v in read_m2e2(gold_path).items() if k in wanted}
    scores = {}
    for name, pred in preds.items():
        path = out / f"mee_{name}.json"
        atomic_write_text(path, json.dumps(pred, indent=1) + "\n")
        scores[name] = {mode: evaluate_mee(gold, read_m2e2(path), mode) for mode in MODES}
    return scores


# --------------------------------------------------------------------------- one pass over the test split
class _Recorder:
    """Stands in for the test stream's `SampleEncoder` to keep, per key, the texts and image size it encoded;
    `observe`, when given, sees each encoded example with its parsed record too (one parse serves both)."""

    def __init__(self, encoder: Any, observe: Callable[[dict[str, Any], Sample], None] | None = None) -> None:
        self.encoder, self.records, self.observe = encoder, {}, observe

    def __getattr__(self, name: str) -> Any:  # the loader reads the encoder's settings (image size, ...)
        if name == "encoder":  # not set yet (a copy under construction): no endless recursion
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def __call__(self, raw: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        ex = self.encoder(raw, *args, **kwargs)
        sample = Sample.from_json(raw[RECORD_EXT])
        self.records[ex["key"]] = {"pos": ex["pos"][0] or "", "neg": [t for t, _ in ex["neg"]], "args": ex["args"],
                                   "size": [sample.width, sample.height]}
        if self.observe is not None:
            self.observe(ex, sample)
        return ex


def data_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The `EventDataModule` arguments a checkpoint was trained with (Lightning's private keys dropped)."""
    hp = ckpt.get("datamodule_hyper_parameters") or (ckpt.get("eventalign") or {}).get("config", {}).get("data") or {}
    return {k: v for k, v in hp.items() if not k.startswith("_")}


def split_loader(module: EventAlignModule, settings: dict[str, Any], shards: str,
                 observe: Callable[[dict[str, Any], Sample], None] | None = None) -> tuple[Any, _Recorder]:
    hp = {**settings, "train": None, "val": None, "test": shards, "num_workers": 0}
    hp.setdefault("image_size", module.model.image_size)
    if hp["image_size"] != module.model.image_size:
        raise ValueError(f"data image_size {hp['image_size']} != model input {module.model.image_size}")
    dm = EventDataModule(**hp)
    dm.tokenizer = module.model.tokenizer
    loader = dm.test_dataloader()
    recorder = _Recorder(loader.dataset.encoder, observe)
    loader.dataset.encoder = recorder  # num_workers=0: encoding runs in this process, so records stay here
    return loader, recorder


@torch.no_grad()
def collect(module: EventAlignModule, settings: dict[str, Any], shards: str, limit: int | None, desc: str,
            decoder: Marginals = "assignment", share: float | None = None) -> dict[str, Any]:
    """Embeddings, hard-negative verdicts, grounded boxes, type predictions and thumbnails of every test sample
    (`share`: `ground_union`'s, default the checkpoint's `grounding_share`)."""
    loader, recorder = split_loader(module, settings, shards)
    device = next(module.parameters()).device
    names, prompts = type_prompts(module)
    type_emb = encode_texts(module, prompts)
    parts: dict[str, list[Any]] = defaultdict(list)
    seen = 0
    for batch in tqdm(loader, desc=desc, unit="batch", total=_safe_len(loader), leave=False):
        if limit is not None and seen >= limit:
            break
        take = len(batch["keys"]) if limit is None else min(len(batch["keys"]), limit - seen)
        batch = {k: (v[:take].to(device) if isinstance(v, Tensor) else v[:take]) for k, v in batch.items()}
        seen += take
        out = module._forward(batch)  # the encoding `align test` runs: image, regions, positives, negatives, args
        c = module.ot_config
        plan = grounding_plan(out["args"], out["regions"], batch["arg_mask"], out["region_mask"], marginals=decoder,
                              eps=c.eps, n_iters=c.n_iters, reg_m=c.reg_m, method=c.method)
        _, pred_boxes = ground_union(plan, batch["boxes"], batch["arg_mask"], out["region_mask"],
                                     module.evaluation.grounding_share if share is None else share)
        image = out["image"].float()
        for k, v in {"image": image, "text": out["pos"][:, 0].float(),
                     "neg_correct": hard_negative_correct(out["image"], out["pos"], batch["pos_mask"], out["neg"],
                                                          batch["neg_mask"]),
                     "neg_kinds": batch["neg_kinds"].masked_fill(~batch["neg_mask"], -1), "arg_pred": pred_boxes,
                     "arg_gold": batch["arg_boxes"], "arg_valid": batch["arg_mask"] & batch["arg_box_mask"],
                     "boxes": batch["boxes"], "box_mask": batch["box_mask"], "event_type": batch["event_type"],
                     "type_pred": (image @ type_emb.T).argmax(1), "images": _to_uint8(batch["images"], module)}.items():
            parts[k].append(v.cpu())
        parts["keys"] += batch["keys"]
    if not parts["keys"]:
        raise ValueError(f"{shards}: no readable test sample")
    raw: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items() if k != "keys"}
    recs = [recorder.records[k] for k in parts["keys"]]
    raw.update(keys=parts["keys"], pos_text=[r["pos"] for r in recs], neg_text=[r["neg"] for r in recs],
               arg_text=[r["args"] for r in recs], arg_roles=[[a.split(": ", 1)[0] for a in r["args"]] for r in recs],
               sizes=[r["size"] for r in recs], side=module.model.image_size, type_names=list(names),
               type_prompts=list(prompts))
    raw["scores"] = raw["image"] @ raw["text"].T
    return raw


def _safe_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # shards without a manifest
        return None


def _to_uint8(images: Tensor, module: EventAlignModule) -> Tensor:
    """Model-input images back to uint8 pixels for the plots."""
    spec = module.image_spec
    mean, std = (torch.tensor(v, device=images.device)[:, None, None] for v in (spec.mean, spec.std))
    return (images * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def cached_collect(name: str, ckpt: Path, settings: dict[str, Any], shards: str, limit: int | None,
                   mee: str | None, cache: Path, device: str,
                   decoder: Marginals = "assignment",
                   share: float | None = None) -> tuple[dict[str, Any], EventAlignModule]:
    """`collect`, or its saved result when library version, checkpoint, shards, limit, MEE boxes and grounding
    decoder are unchanged (delete OUT/.cache after changing the evaluation code without a version bump)."""
    st = ckpt.stat()
    fingerprint = hashlib.sha1(json.dumps([CACHE_VERSION, __version__, str(ckpt.resolve()), st.st_size, st.st_mtime_ns,
                                           expand_shards(shards, "test"), limit, mee, decoder,
                                           share]).encode()).hexdigest()
    module = load_module(ckpt, device)
    path = cache / f"{name}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a cache is disposable: any unreadable one is recomputed
            print(f"{name}: ignoring unreadable cache {path} ({type(e).__name__})", file=sys.stderr)
            saved = {}
        if saved.get("fingerprint") == fingerprint:
            print(f"{name}: reusing {path}", file=sys.stderr)
            return saved["raw"], module
    raw = collect(module, settings, shards, limit, desc=name, decoder=decoder, share=share)
    if mee is not None:
        raw["mee"] = predict_test_mee(module, shards, raw["keys"], mee)
    with atomic_open(path, "wb") as f:
        torch.save({"fingerprint": fingerprint, "raw": raw}, f)
    return raw, module


def metrics(raw: dict[str, Any], ks: Sequence[int], iou: float) -> dict[str, Any]:
    return {"retrieval": retrieval_metrics(raw["scores"], ks),
            "hardneg": hardneg_metrics(raw["neg_correct"], raw["neg_kinds"]),
            "grounding": grounding_metrics(raw["arg_pred"], raw["arg_gold"], raw["arg_valid"], raw["arg_roles"], iou),
            "event_type": event_type_metrics(raw["type_pred"], raw["event_type"], raw["type_names"])}


# --------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _table(title: str, rows: list[tuple[str, list[Any]]], cols: Sequence[str]) -> str:
    labels = [eval_plots.LABELS[c] for c in cols]
    head = ["", *labels, "model / plain CLIP"] if "plain_clip" in cols else ["", *labels]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, vals in rows:
        cells = [label, *(_fmt(v) for v in vals)]
        if "plain_clip" in cols:
            m, c = vals[0], vals[cols.index("plain_clip")]
            cells.append(f"{m / c:.2f}x" if m is not None and c else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    res, cols = report["models"], [m for m in MODELS if m in report["models"]]
    meta = report["meta"]

    def get(path: str) -> list[Any]:
        out = []
        for m in cols:
            v: Any = res[m]
            for p in path.split("/"):
                v = v.get(p) if isinstance(v, dict) else None
            out.append(v)
        return out

    retrieval = [(k, get(f"retrieval/{k}")) for k in res["model"]["retrieval"]]
    count = res["model"]["hardneg"]["count"]
    hardneg = [(f"{k} (n={count[k]})", get(f"hardneg/acc/{k}")) for k in res["model"]["hardneg"]["acc"]]
    g = res["model"]["grounding"]
    grounding = [(f"all (n={g['count']})", get("grounding/acc"))]
    grounding += [(f"{r} (n={n})", get(f"grounding/by_role/{r}")) for r, n in g["count_by_role"].items()]
    et = res["model"]["event_type"]
    chance = res["blind"]["grounding"].get("chance")
    types = [(f"accuracy (n={et['count']})", get("event_type/acc"))]
    types += [(f"{t} recall", get(f"event_type/per_type/{t}")) for t in et["per_type"]]
    parts = [f"## Evaluation on {meta['shards']} ({meta['num_samples']} samples)\n",
             f"model: `{meta['ckpt']}`; plain CLIP: `{meta.get('baseline_ckpt') or 'not given'}`; blind: no image "
             "(see `benchmarks/evaluate.py`).\n",
             _table(f"Retrieval over {meta['num_samples']} pairs (hit@k = the paper's R@K; blind = chance)",
                    retrieval, cols),
             _table("Hard-negative accuracy (blind: bigram language model of training descriptions)", hardneg, cols),
             _table(f"Grounding accuracy, IoU >= {meta['grounding_iou']}, `{meta['grounding_decoder']}` decoder, "
                    f"share {meta.get('grounding_share', 1.0)} "
                    "(blind: mean training box per role)",
                    grounding, cols) + f"\nA region drawn at random from the candidates: {_fmt(chance)}.\n",
             _table("Zero-shot event type (blind: majority training type)", types, cols)]
    if res["model"].get("mee"):
        for mode in MODES:
            m = res["model"]["mee"][mode]
            rows = [(f"{part} {stat} (gold n={m[part]['gold']})", get(f"mee/{mode}/{part}/{stat}"))
                    for part in ("event", "argument") for stat in ("precision", "recall", "f1")]
            parts.append(_table(f"MEE, {mode} scoring ({meta['mee_boxes']} candidate regions; blind: majority type, "
                                "regions nearest the role's mean box)", rows, cols))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint to evaluate")
    p.add_argument("--baseline-ckpt", type=Path, help="plain-CLIP checkpoint for the comparison column")
    p.add_argument("--shards", help="test shard pattern (default: the checkpoint's data.test)")
    p.add_argument("--train-shards", help="training shards for the blind baselines (default: its data.train)")
    p.add_argument("--gold", type=Path, help="M2E2 gold JSON (default: m2e2_gold_{split}.json beside the shards)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/eval"))
    p.add_argument("--run", type=Path, help="run folder whose csv/version_*/metrics.csv gives the training curves")
    p.add_argument("--baseline-run", type=Path, help="the plain-CLIP run's folder, drawn dashed on the curves")
    p.add_argument("--limit", type=int, help="evaluate only the first N test samples (a quick run)")
    p.add_argument("--examples", type=int, default=4, help="queries / images in the retrieval and grounding plots")
    p.add_argument("--mee-boxes", choices=("record", "grid"), default="record",
                   help="MEE candidate regions: the records' object boxes (as grounding) or grid proposals")
    p.add_argument("--grounding-decoder", choices=MARGINALS, default="assignment",
                   help="marginals of the OT plan the arguments' regions are read from (align.ot.grounding_plan)")
    p.add_argument("--grounding-share", type=float,
                   help="an argument's box spans the regions with >= this share of its top region's mass "
                        "(align.grounding.ground_union; default: the checkpoint's grounding_share; 1 = top only)")
    p.add_argument("--no-mee", action="store_true", help="skip MEE (it is also skipped when no gold file exists)")
    p.add_argument("--no-plots", action="store_true", help="write only eval.json and eval.md")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the markdown tables")
    args = p.parse_args(argv)
    try:
        return run(args, p)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """Collect, score, plot and write the report."""
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.grounding_share is not None and not 0.0 < args.grounding_share <= 1.0:
        p.error("--grounding-share must be in (0, 1]")
    settings = data_settings(read_checkpoint(args.ckpt))
    shards = args.shards or settings.get("test")
    train_shards = args.train_shards or settings.get("train")
    if not shards or not train_shards:
        p.error("--shards and --train-shards are needed: the checkpoint does not name its test/train data")
    first = Path(expand_shards(shards, "test")[0])
    gold_path = args.gold or first.with_name(f"m2e2_gold_{first.name.split('-')[0]}.json")
    if args.gold is not None and not args.gold.is_file():
        p.error(f"--gold {args.gold}: file not found")
    use_mee = not args.no_mee and gold_path.is_file()
    mee = args.mee_boxes if use_mee else None
    cache = args.out / ".cache"
    raws, modules = {}, {}
    for name, ckpt in (("model", args.ckpt), ("plain_clip", args.baseline_ckpt)):
        if ckpt is not None:
            own = settings if name == "model" else data_settings(read_checkpoint(ckpt))
            raws[name], modules[name] = cached_collect(name, ckpt, own, shards, args.limit, mee, cache, args.device,
                                                       args.grounding_decoder, args.grounding_share)
    train_urls = expand_shards(train_shards, "train shards")
    samples = tqdm(iter_records(train_urls), desc="training statistics", unit="sample", leave=False)
    stats = TrainStats(samples, settings.get("positive_kinds", ("long", "caption")), modules["model"])
    raws["blind"] = blind_raw(raws["model"], stats, raws["model"]["type_names"])

    ks, iou = modules["model"].evaluation.retrieval_k, modules["model"].evaluation.grounding_iou
    results = {name: metrics(raw, ks, iou) for name, raw in raws.items()}
    n = len(raws["model"]["keys"])
    chance = chance_retrieval(n, ks)
    if any(abs(results["blind"]["retrieval"][k] - v) > 1e-6 for k, v in chance.items()):
        raise AssertionError(f"blind retrieval {results['blind']['retrieval']} differs from chance {chance}")
    results["blind"]["grounding"]["chance"] = grounding_chance(raws["model"], iou)
    if use_mee:
        raws["blind"]["mee"] = blind_mee(raws["model"], stats, modules["model"], args.mee_boxes)
        scores = score_all_mee({k: r["mee"] for k, r in raws.items()}, gold_path, raws["model"]["keys"], args.out)
        for name, score in scores.items():
            results[name]["mee"] = score

    args.out.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else eval_plots.make_all(raws, results, args.out, args.examples, iou, args.run,
                                                          args.baseline_run)
    blind = {"retrieval": "texts ranked by the bigram LM, images in a fixed order (= chance)",
             "hardneg": "word-bigram LM of the training positives, mean log-prob per word",
             "grounding": "region nearest the role's mean training box (centre, size)",
             "event_type": "majority training type", "mee": "majority type, roles at the candidates nearest their "
                                                            "mean training boxes"}
    meta = {"ckpt": str(args.ckpt), "baseline_ckpt": str(args.baseline_ckpt) if args.baseline_ckpt else None,
            "shards": shards, "train_shards": train_shards, "num_samples": n, "limit": args.limit,
            "gold": str(gold_path) if use_mee else None, "mee_boxes": mee, "grounding_iou": iou,
            "grounding_decoder": args.grounding_decoder,
            "grounding_share": args.grounding_share or modules["model"].evaluation.grounding_share,
            "retrieval_k": list(ks), "chance_retrieval": chance, "majority_type": stats.majority, "plots": plots,
            "blind": blind}
    report = {"meta": meta, "models": results}
    atomic_write_text(args.out / "eval.json", json.dumps(report, indent=1) + "\n")
    table = report_markdown(report)
    atomic_write_text(args.out / "eval.md", table)
    print(json.dumps(report, indent=1) if args.json else table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
