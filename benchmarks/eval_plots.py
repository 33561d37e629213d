"""Figures for `benchmarks/evaluate.py`: retrieval grid, grounding overlays, confusion matrices, training curves.

Examples are picked by rule, not by result: the first test sample (in key order) of each event type, so the
figures show hits and misses as they come. Matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from align.atomic import atomic_open  # noqa: E402
from align.ground import draw_grounding  # noqa: E402

LABELS = {"model": "model", "plain_clip": "plain CLIP", "blind": "blind"}
TOP = 5


def _save(fig: Figure, path: Path) -> str:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _thumb(raw: dict[str, Any], i: int) -> Image.Image:
    return Image.fromarray(raw["images"][i].permute(1, 2, 0).numpy())


def pick_examples(raw: dict[str, Any], n: int, min_args: int = 0) -> list[str]:
    """Keys of the first sample (in key order) of each event type with at least `min_args` boxed arguments."""
    chosen, types = [], set()
    for i in sorted(range(len(raw["keys"])), key=raw["keys"].__getitem__):
        t = int(raw["event_type"][i])
        if t not in types and int(raw["arg_valid"][i].sum()) >= min_args:
            chosen.append(raw["keys"][i])
            types.add(t)
        if len(chosen) == n:
            break
    return chosen


def retrieval_grid(raw: dict[str, Any], queries: Sequence[str], path: Path, title: str) -> str:
    """One row per text query: the query and its top-5 images (text->image); the true image outlined green."""
    k = min(TOP, len(raw["keys"]))
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.0 * (k + 1) + 1.2, 2.1 * len(queries)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6] + [1] * k})
    for row, key in zip(axes, queries):
        j = raw["keys"].index(key)
        ranking = raw["scores"][:, j].argsort(descending=True).tolist()
        rank = ranking.index(j) + 1
        row[0].axis("off")
        row[0].text(0, 0.5, "\n".join(textwrap.wrap(raw["pos_text"][j], 28)) + f"\n\ntrue image: rank {rank}",
                    va="center", ha="left", fontsize=8.5, transform=row[0].transAxes)
        for col, i in enumerate(ranking[:k], start=1):
            ax = row[col]
            ax.imshow(_thumb(raw, i))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = i == j
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if hit else "#bbbbbb")
                spine.set_linewidth(5 if hit else 1)
            ax.set_title(f"#{col}" + (" (true)" if hit else ""), fontsize=8, color="#1a9850" if hit else "black")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _grounding_items(raw: dict[str, Any], i: int, iou: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """draw_grounding items for sample i: gold boxes (with argument text), predicted boxes (marked ok / miss)."""
    args = raw["arg_valid"][i].nonzero().flatten().tolist()
    hits = (box_iou(raw["arg_pred"][i][args], raw["arg_gold"][i][args]).diagonal() >= iou).tolist() if args else []
    gold = [{"role": raw["arg_roles"][i][a], "box": raw["arg_gold"][i][a].tolist(),
             "text": raw["arg_text"][i][a].split(": ", 1)[-1]} for a in args]
    pred = [{"role": raw["arg_roles"][i][a], "box": raw["arg_pred"][i][a].tolist(), "text": "ok" if h else "miss"}
            for a, h in zip(args, hits)]
    return gold, pred, sum(hits)


def grounding_overlays(raws: dict[str, dict[str, Any]], keys: Sequence[str], iou: float, path: Path) -> str:
    """One row per test sample: its gold argument boxes, then each model's grounded boxes, coloured by role."""
    fig, axes = plt.subplots(len(keys), len(raws) + 1, figsize=(3.2 * (len(raws) + 1), 3.4 * len(keys)),
                             squeeze=False)
    for row, key in zip(axes, keys):
        for col, (name, raw) in enumerate(raws.items()):
            i = raw["keys"].index(key)
            gold, pred, hits = _grounding_items(raw, i, iou)
            image = _thumb(raw, i)
            if col == 0:
                t = int(raw["event_type"][i])
                gold_type = raw["type_names"][t] if t >= 0 else "no typed event"
                row[0].imshow(draw_grounding(image, gold, title=f"gold: {gold_type}"))
            row[col + 1].imshow(draw_grounding(image, pred, title=f"{LABELS[name]}: {hits}/{len(pred)} IoU>={iou}"))
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrices(results: dict[str, dict[str, Any]], path: Path) -> str:
    """Row-normalised zero-shot event-type confusion matrices, one panel per model, counts in the cells."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 5.0), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        cm = np.asarray(r["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        names = [t.split(".", 1)[-1] for t in r["types"]]
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        for (y, x), v in np.ndenumerate(cm):
            if v:
                ax.text(x, y, int(v), ha="center", va="center", fontsize=7, color="white" if norm[y, x] > 0.5 else "k")
        acc = r["acc"]
        ax.set_title(f"{LABELS.get(name, name)}: accuracy {acc:.3f}" if acc is not None else LABELS.get(name, name))
    return _save(fig, path)


def read_metrics_csv(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value)]} from the newest `csv/version_*/metrics.csv` of a Lightning run folder."""
    versions = sorted(run.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not versions:
        raise FileNotFoundError(f"{run}: no csv/version_*/metrics.csv (was the run logged with CSVLogger?)")
    series: dict[str, list[tuple[int, float]]] = {}
    with open(versions[-1], newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for k, v in row.items():
                if k not in ("step", "epoch") and v not in (None, ""):
                    series.setdefault(k, []).append((int(float(step)), float(v)))
    return series


def training_curves(runs: dict[str, Path], path: Path) -> str:
    """Train/val loss and validation hard-negative accuracy per kind against step; the baseline run dashed."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for n, (name, run) in enumerate(runs.items()):
        style = "-" if n == 0 else "--"
        s = read_metrics_csv(run)
        for key, marker in (("train/loss", None), ("val/loss", "o")):
            if key in s:
                x, y = zip(*s[key])
                loss_ax.plot(x, y, style, marker=marker, label=f"{LABELS.get(name, name)} {key}")
        for key in sorted(k for k in s if k.startswith("val/hardneg_acc/")):
            x, y = zip(*s[key])
            acc_ax.plot(x, y, style, marker="o", label=f"{LABELS.get(name, name)} {key.rsplit('/', 1)[-1]}")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="validation hard-negative accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        if ax.has_data():
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def make_all(raws: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]], out: Path, examples: int,
             iou: float, run: Path | None, baseline_run: Path | None) -> list[str]:
    """Every figure; retrieval grids and confusion matrices for the models that see images. Returns the paths."""
    seen = {k: v for k, v in raws.items() if k != "blind"}
    queries = pick_examples(raws["model"], examples)
    written = [retrieval_grid(raw, queries, out / f"retrieval_grid{'' if name == 'model' else '_' + name}.png",
                              f"{LABELS[name]}: text -> image, top {TOP} of {len(raw['keys'])} test images")
               for name, raw in seen.items()]
    grounded = pick_examples(raws["model"], examples, min_args=2) or pick_examples(raws["model"], examples, 1)
    if grounded:
        written.append(grounding_overlays(raws, grounded, iou, out / "grounding.png"))
    written.append(confusion_matrices({k: results[k]["event_type"] for k in seen}, out / "confusion.png"))
    runs = {k: v for k, v in (("model", run), ("plain_clip", baseline_run)) if v is not None}
    if runs:
        written.append(training_curves(runs, out / "curves.png"))
    return written
