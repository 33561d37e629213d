"""Blind baselines for `benchmarks/evaluate.py`: what a scorer that never sees the image gets on each metric.

Each one learns only from the training split's records (descriptions, event types, gold box geometry):

- retrieval: texts ranked by a language model, images in a fixed order. A ranking that ignores one side scores
  exactly chance (hit@k = k/N, MRR = H_N/N), which `evaluate.py` checks against the closed form.
- hard negatives: a word-bigram language model (interpolated with an add-one unigram, lower case as the CLIP
  tokenizer, mean log-probability per word) of the training positives; the likelier text is taken as the true one.
  High accuracy here means the corruption is visible from the text alone (an implausible role or filler).
- grounding: for an argument "Role: text", the candidate region whose box (centre, width, height as fractions of
  the image) is nearest to the mean gold box of that role in the training split; an unseen role takes the
  largest region. Box geometry only: no pixels, no region labels.
- event type: the most frequent training type.
- MEE: that type for every image, each of its boxed roles at the role's mean training box.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from align.ground import grid_proposals
from align.module import EventAlignModule
from align.schema import Sample
from data_gen.eventworld.m2e2 import ROLE_RENAMES, SKIPPED_ROLES, m2e2_type

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case words: the CLIP tokenizer lower-cases too, so case carries no signal the model could see."""
    return _WORD.findall(text.lower())


class BigramLM:
    """Word-bigram language model interpolated with an add-one unigram (weight `lam` on the bigram)."""

    def __init__(self, texts: Iterable[str], lam: float = 0.9) -> None:
        self.uni: Counter[str] = Counter()
        self.ctx: Counter[str] = Counter()
        self.bi: Counter[tuple[str, str]] = Counter()
        for t in texts:
            w = ["<s>", *words(t), "</s>"]
            self.uni.update(w[1:])
            self.ctx.update(w[:-1])
            self.bi.update(zip(w[:-1], w[1:]))
        self.total, self.vocab, self.lam = sum(self.uni.values()), len(self.uni) + 1, lam

    def score(self, text: str) -> float:
        """Mean log-probability per word (with the end token), so longer texts are not penalised."""
        w = ["<s>", *words(text), "</s>"]
        lp = 0.0
        for a, b in zip(w[:-1], w[1:]):
            uni = (self.uni[b] + 1) / (self.total + self.vocab)
            bi = self.bi[(a, b)] / self.ctx[a] if self.ctx[a] else 0.0
            lp += math.log(self.lam * bi + (1 - self.lam) * uni)
        return lp / (len(w) - 1)


def box_features(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """(..., 4) xyxy pixels -> (..., 4) centre x, centre y, width, height as fractions of the image."""
    b = np.asarray(boxes, dtype=np.float64) / np.array([width, height, width, height])
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0],
                     b[..., 3] - b[..., 1]], axis=-1)


class TrainStats:
    """What the blind baselines learn from the training split: descriptions, box geometry per role, type counts."""

    def __init__(self, samples: Iterable[Sample], positive_kinds: Sequence[str], module: EventAlignModule) -> None:
        texts: list[str] = []
        role_feats: dict[str, list[np.ndarray]] = defaultdict(list)
        self.type_counts: Counter[str] = Counter()
        for s in samples:
            kinds = {d.kind: d.text for d in s.positives if d.text}
            texts += [kinds.get(k) or (s.caption if k == "caption" else "") for k in positive_kinds]
            event = s.salient_event
            event = module.ontology.normalize(event) if event is not None else None
            if event is None:
                continue
            self.type_counts[event.type] += 1
            for a in event.arguments:
                if a.box is not None:
                    role_feats[a.role].append(box_features(a.box, s.width, s.height))
        if not self.type_counts:
            raise ValueError("training shards hold no sample with an event: the blind baselines need some")
        self.lm = BigramLM(t for t in texts if t)
        self.role_mean = {r: np.mean(v, axis=0) for r, v in role_feats.items()}
        self.majority = self.type_counts.most_common(1)[0][0]

    def choose_region(self, role: str, boxes: np.ndarray, width: float, height: float) -> int:
        """Index of the region nearest to the role's mean box (the largest one for an unseen role); -1 if none."""
        if not len(boxes):
            return -1
        f = box_features(boxes, width, height)
        if role not in self.role_mean:
            return int(np.argmax(f[:, 2] * f[:, 3]))
        return int(np.argmin(((f - self.role_mean[role]) ** 2).sum(1)))


def blind_raw(raw: dict[str, Any], stats: TrainStats, names: Sequence[str]) -> dict[str, Any]:
    """The blind baseline's outputs in the layout of `collect`'s (texts and boxes of the test samples only)."""
    lm = [stats.lm.score(t) for t in raw["pos_text"]]
    n = len(lm)
    text_rank = torch.empty(n, dtype=torch.float64)
    text_rank[torch.tensor(sorted(range(n), key=lambda j: (lm[j], j)))] = torch.arange(n, dtype=torch.float64)
    # score(i, j) = N * rank(text j) + i: image i's text ranking ignores the image, text j's image ranking the text
    scores = n * text_rank[None, :] + torch.arange(n, dtype=torch.float64)[:, None]
    kinds = raw["neg_kinds"]
    correct = torch.zeros(kinds.shape, dtype=torch.bool)
    for i, negs in enumerate(raw["neg_text"]):
        for j, t in enumerate(negs):
            correct[i, j] = lm[i] > stats.lm.score(t)
    side = float(raw["side"])
    pred = torch.zeros_like(raw["arg_gold"])
    for i, j in raw["arg_valid"].nonzero().tolist():
        boxes = raw["boxes"][i][raw["box_mask"][i]].numpy()
        r = stats.choose_region(raw["arg_roles"][i][j], boxes, side, side)
        if r >= 0:
            pred[i, j] = torch.from_numpy(boxes[r])
    majority = torch.full_like(raw["event_type"], names.index(stats.majority))
    return {**raw, "scores": scores, "neg_correct": correct, "arg_pred": pred, "type_pred": majority}


def grounding_chance(raw: dict[str, Any], iou: float) -> float | None:
    """Expected grounding accuracy of a region drawn uniformly from each sample's candidates."""
    shares = []
    for i, j in raw["arg_valid"].nonzero().tolist():
        boxes = raw["boxes"][i][raw["box_mask"][i]]
        shares.append(float((box_iou(boxes, raw["arg_gold"][i, j][None]) >= iou).float().mean()) if len(boxes) else 0.0)
    return sum(shares) / len(shares) if shares else None


def blind_mee(raw: dict[str, Any], stats: TrainStats, module: EventAlignModule, boxes: str) -> dict[str, Any]:
    """M2E2 predictions of the blind baseline: the majority type for every image, each of its roles (but Place)
    at the candidate region nearest the role's mean box. Candidates as the model's: the record regions the test
    loader kept ("record") or `grid_proposals` ("grid"), in the image's pixels."""
    etype = stats.majority
    roles = [r for r in module.ontology[etype].role_names if r not in SKIPPED_ROLES]
    side = float(raw["side"])
    pred = {}
    for i, (key, (w, h)) in enumerate(zip(raw["keys"], raw["sizes"])):
        if boxes == "grid":
            cand = np.array(grid_proposals(w, h), dtype=np.float64).reshape(-1, 4)
        else:
            cand = raw["boxes"][i][raw["box_mask"][i]].double().numpy() * np.array([w, h, w, h]) / side
        chosen = {ROLE_RENAMES.get((etype, r), r): stats.choose_region(r, cand, w, h) for r in roles}
        pred[key] = {"event_type": m2e2_type(etype),
                     "role": {r: [[round(float(v), 1) for v in cand[c]]] for r, c in chosen.items() if c >= 0}}
    return pred
