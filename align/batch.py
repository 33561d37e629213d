"""One shard record -> one example -> a batch: image decoding, text selection and tokenisation.

The batch layout is the contract documented in `align.data`; `EventDataModule` is the way in. Everything here
runs in DataLoader workers, so bad input raises `Skip` (with a counter key) instead of failing the run.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from io import BytesIO
from itertools import islice
from typing import Any

import numpy as np
import torch
from PIL import Image

from align.ontology import Ontology
from align.schema import IMAGE_EXT, NEGATIVE_KINDS, RECORD_EXT, Argument, Sample, SchemaError

Tokenizer = Callable[[list[str]], torch.Tensor]


class Skip(Exception):
    """A sample that cannot be used; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --------------------------------------------------------------------------- one sample
def make_seed(*parts: int) -> int:
    """A 32-bit seed mixing all parts (SeedSequence: no hash-randomisation, stable across runs)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _replacements(changed: Any) -> list[tuple[str, str]]:
    """(role, new filler) pairs from an arg_replace negative's `changed` (accepted forms: see `align.data`)."""
    if isinstance(changed, list):
        return [p for c in changed for p in _replacements(c)]
    if not isinstance(changed, dict):
        return []
    for nest in ("arguments", "argument", "args"):
        if nest in changed:
            return _replacements(changed[nest])
    role = changed.get("role")
    new = next((changed[k] for k in ("new", "to", "replacement") if isinstance(changed.get(k), str)), None)
    if isinstance(role, str) and new:
        return [(role, new)]
    return [(r, v[1]) for r, v in changed.items()
            if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _round_robin(groups: list[list[Any]], k: int) -> list[Any]:
    """Take from each group in turn until k items: balanced over groups."""
    out: list[Any] = []
    while len(out) < k and any(groups):
        for g in groups:
            if g and len(out) < k:
                out.append(g.pop())
    return out


class SampleEncoder:
    """Turns one raw tar sample into an example dict (image tensor + texts); raises Skip on bad input."""

    def __init__(self, *, image_size: int, mean: Sequence[float], std: Sequence[float], positive_kinds: Sequence[str],
                 negative_kinds: Sequence[str], num_negatives: int, max_regions: int, max_arguments: int,
                 num_arg_negatives: int, ontology: Ontology, seed: int, max_image_pixels: int,
                 negative_modes: Sequence[str] | None = None) -> None:
        self.size, self.positive_kinds, self.negative_kinds = image_size, tuple(positive_kinds), tuple(negative_kinds)
        # Normalise uint8 pixels in numpy (one thread): torch ops in an oversubscribed main process crawl.
        self.shift = (np.asarray(mean, dtype=np.float32) * 255.0).reshape(3, 1, 1)
        self.scale = (1.0 / (np.asarray(std, dtype=np.float32) * 255.0)).reshape(3, 1, 1)
        self.k, self.r, self.n, self.kn = num_negatives, max_regions, max_arguments, num_arg_negatives
        self.negative_modes = None if negative_modes is None else frozenset(negative_modes)
        self.ontology, self.seed, self.max_pixels = ontology, seed, max_image_pixels

    def __call__(self, raw: dict[str, Any], epoch: int | None) -> dict[str, Any]:
        if IMAGE_EXT not in raw or RECORD_EXT not in raw:
            have = sorted(k for k in raw if not k.startswith("__"))
            raise Skip("missing_member", f"needs .{IMAGE_EXT} and .{RECORD_EXT}, has {have}")
        try:
            sample = Sample.from_json(raw[RECORD_EXT])
        except SchemaError as e:
            raise Skip("bad_json" if e.problem.startswith("not valid JSON") else "schema", str(e)) from e
        image = self._image(raw[IMAGE_EXT])
        # Train draws differ per epoch; eval draws are fixed so every evaluation sees the same negatives.
        parts = (self.seed, zlib.crc32(sample.key.encode())) + (() if epoch is None else (epoch,))
        rng = random.Random(make_seed(*parts))
        sx, sy = self.size / sample.width, self.size / sample.height

        def scale(b: Sequence[float]) -> list[float]:
            return [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]

        regions = sorted(sample.regions, key=lambda g: -g.score)[: self.r]
        boxes = [scale(g.box) for g in regions]
        event = sample.salient_event
        event = self.ontology.normalize(event) if event is not None else None
        args = event.arguments[: self.n] if event is not None else []
        arg_boxes = [scale(a.box) if a.box is not None else None for a in args]
        arg_region = []
        for gold in arg_boxes:
            ious = [_iou(gold, b) for b in boxes] if gold is not None else []
            best = max(range(len(ious)), key=ious.__getitem__) if ious else -1
            arg_region.append(best if best >= 0 and ious[best] >= 0.5 else -1)
        return {
            "key": sample.key, "image": image, "pos": self._positives(sample, rng),
            "neg": self._negatives(sample, rng), "boxes": boxes, "box_labels": [g.label for g in regions],
            "event_type": self.ontology.type_names.index(event.type) if event is not None else -1,
            "args": [f"{a.role}: {a.text}" for a in args], "arg_boxes": arg_boxes, "arg_region": arg_region,
            "neg_args": self._arg_negatives(sample, event.type if event else None, args, rng),
        }

    def _image(self, data: bytes) -> np.ndarray:
        try:
            with Image.open(BytesIO(data)) as im:
                if im.width * im.height > self.max_pixels:
                    raise Skip("image_too_large", f"{im.width}x{im.height} exceeds {self.max_pixels} pixels")
                im.draft("RGB", (self.size, self.size))  # JPEG DCT scaling: decode big images at a fraction
                rgb = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        except Image.DecompressionBombError as e:
            raise Skip("image_too_large", str(e)) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise Skip("bad_image", f"{type(e).__name__}: {e}") from e
        # uint8 HWC viewed as CHW, then float32 in place: several times faster than a float HWC copy + transpose
        x = np.empty((3, self.size, self.size), dtype=np.float32)
        np.subtract(np.asarray(rgb).transpose(2, 0, 1), self.shift, out=x)
        x *= self.scale
        return x

    def _positives(self, sample: Sample, rng: random.Random) -> list[str | None]:
        by_kind: dict[str, list[str]] = defaultdict(list)
        for d in sample.positives:
            if d.text:
                by_kind[d.kind].append(d.text)
        if not by_kind["caption"] and sample.caption:
            by_kind["caption"].append(sample.caption)
        pos = [rng.choice(by_kind[k]) if by_kind[k] else None for k in self.positive_kinds]
        if pos[0] is None:
            pos[0] = next((t for t in pos[1:] if t), None) or sample.caption or None
        return pos

    def _negatives(self, sample: Sample, rng: random.Random) -> list[tuple[str, int]]:
        groups = []
        for kind in self.negative_kinds:
            texts = [(n.text, NEGATIVE_KINDS.index(kind)) for n in sample.negatives if n.kind == kind and n.text
                     and (self.negative_modes is None or n.changed.get("mode") in self.negative_modes)]
            rng.shuffle(texts)
            groups.append(texts)
        rng.shuffle(groups)
        return _round_robin(groups, self.k)

    def _arg_negatives(self, sample: Sample, etype: str | None, args: list[Argument],
                       rng: random.Random) -> list[tuple[list[str], int]]:
        if etype is None or not args or self.kn == 0:
            return []
        texts = [a.text for a in args]
        swaps, replaced = [], []
        for i in range(len(args)):
            for j in range(i + 1, len(args)):
                a, b = args[i], args[j]
                if (a.role != b.role and a.text.casefold() != b.text.casefold()
                        and not self.ontology[etype].is_symmetric(a.role, b.role)):
                    t = list(texts)
                    t[i], t[j] = t[j], t[i]
                    swaps.append(t)
        for neg in sample.negatives:
            if neg.kind != "arg_replace":
                continue
            for role, new in _replacements(neg.changed):
                i = next((i for i, a in enumerate(args) if a.role == role), None)
                if i is not None and new.casefold() != texts[i].casefold():
                    t = list(texts)
                    t[i] = new
                    if t not in replaced:
                        replaced.append(t)
        rng.shuffle(swaps)
        rng.shuffle(replaced)
        groups = [[(t, NEGATIVE_KINDS.index("role_swap")) for t in reversed(swaps)],
                  [(t, NEGATIVE_KINDS.index("arg_replace")) for t in reversed(replaced)]]
        return [([f"{a.role}: {t}" for a, t in zip(args, texts_)], kind)
                for texts_, kind in _round_robin(groups, self.kn)]


# --------------------------------------------------------------------------- batches
class CachedTokenizer:
    """A tokenizer that remembers the rows of texts it has seen (the newest `max_entries`).

    open_clip's tokenizer (ftfy + BPE in Python) is the slowest step of a batch, and texts recur: argument
    phrases across samples, and a sample's descriptions and negatives on every later visit."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int = 50_000) -> None:
        self.tokenizer, self.max_entries = tokenizer, max_entries
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if new:
            self.rows.update(zip(new, self.tokenizer(new)))
        out = torch.stack([self.rows[t] for t in texts])
        for t in list(islice(self.rows, max(0, len(self.rows) - self.max_entries))):
            del self.rows[t]  # oldest first (dicts keep insertion order)
        return out


def collate(examples: list[dict[str, Any]], tokenizer: Tokenizer, sizes: dict[str, int]) -> dict[str, Any]:
    """Stack examples into the batch contract; each distinct text is tokenised once per batch."""
    b, p, k, r, n, kn = (len(examples), sizes["P"], sizes["K"], sizes["R"], sizes["N"], sizes["Kn"])
    texts: dict[str, int] = {}

    def ref(text: str) -> int:
        return texts.setdefault(text, len(texts))

    pos, neg, arg = (torch.full((b, m), -1, dtype=torch.long) for m in (p, k, n))
    neg_arg = torch.full((b, kn, n), -1, dtype=torch.long)
    neg_kinds, neg_arg_kinds = torch.full((b, k), -1), torch.full((b, kn), -1)
    boxes, arg_boxes = torch.zeros(b, r, 4), torch.zeros(b, n, 4)
    box_mask, arg_box_mask = torch.zeros(b, r, dtype=torch.bool), torch.zeros(b, n, dtype=torch.bool)
    arg_region = torch.full((b, n), -1)
    for i, ex in enumerate(examples):
        for j, t in enumerate(ex["pos"]):
            if t:
                pos[i, j] = ref(t)
        for j, (t, kind) in enumerate(ex["neg"]):
            neg[i, j], neg_kinds[i, j] = ref(t), kind
        if ex["boxes"]:
            boxes[i, : len(ex["boxes"])], box_mask[i, : len(ex["boxes"])] = torch.tensor(ex["boxes"]), True
        for j, t in enumerate(ex["args"]):
            arg[i, j], arg_region[i, j] = ref(t), ex["arg_region"][j]
            if ex["arg_boxes"][j] is not None:
                arg_boxes[i, j], arg_box_mask[i, j] = torch.tensor(ex["arg_boxes"][j]), True
        for j, (ts, kind) in enumerate(ex["neg_args"]):
            neg_arg_kinds[i, j] = kind
            for m, t in enumerate(ts):
                neg_arg[i, j, m] = ref(t)
    tokens = tokenizer(list(texts) or [""])
    table = torch.cat([tokens.new_zeros(1, tokens.shape[-1]), tokens])  # row 0: all-zero padding

    def gather(idx: torch.Tensor) -> torch.Tensor:
        return table[idx + 1]

    return {
        "images": torch.from_numpy(np.stack([ex["image"] for ex in examples])),
        "pos_tokens": gather(pos), "pos_mask": pos >= 0,
        "neg_tokens": gather(neg), "neg_mask": neg >= 0, "neg_kinds": neg_kinds,
        "boxes": boxes, "box_mask": box_mask, "box_labels": [ex["box_labels"] for ex in examples],
        "event_type": torch.tensor([ex["event_type"] for ex in examples], dtype=torch.long),
        "arg_tokens": gather(arg), "arg_mask": arg >= 0,
        "arg_boxes": arg_boxes, "arg_box_mask": arg_box_mask, "arg_region": arg_region,
        "neg_arg_tokens": gather(neg_arg), "neg_arg_mask": neg_arg_kinds >= 0, "neg_arg_kinds": neg_arg_kinds,
        "keys": [ex["key"] for ex in examples],
    }
