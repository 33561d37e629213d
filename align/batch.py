"""One shard record -> one example -> a batch: image decoding, text selection and tokenisation.

The batch layout is the contract documented in `align.data`; `EventDataModule` is the way in. Everything here
runs in DataLoader workers, so bad input raises `Skip` (with a counter key) instead of failing the run.
`ImageDecoder` is also how `align.inference` reads images, so inference sees exactly the training pixels.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from align.ontology import Ontology
from align.schema import IMAGE_EXT, NEGATIVE_KINDS, RECORD_EXT, Argument, Sample, SchemaError

Tokenizer = Callable[[list[str]], torch.Tensor]
KIND_INDEX = {kind: i for i, kind in enumerate(NEGATIVE_KINDS)}


class Skip(Exception):
    """A sample that cannot be used; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the loader's counter key (`image_too_large` or `bad_image`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ImageDecoder:
    """Encoded image (bytes or a path) -> (3, S, S) float32 normalised model input and the original (w, h).

    The one image preprocessing of the library: training batches and `align.inference` both call it. Resized to
    S x S without keeping the aspect ratio (boxes map by a plain scale), bicubic, after JPEG DCT scaling."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], max_pixels: int) -> None:
        self.size, self.max_pixels = size, max_pixels
        # Normalise uint8 pixels in numpy (one thread): torch ops in an oversubscribed main process crawl.
        self.shift = (np.asarray(mean, dtype=np.float32) * 255.0).reshape(3, 1, 1)
        self.scale = (1.0 / (np.asarray(std, dtype=np.float32) * 255.0)).reshape(3, 1, 1)

    def __call__(self, source: bytes | str | Path, out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """Raises ImageError for a too large or undecodable image; FileNotFoundError for a missing path. `out`, a
        (3, S, S) float32 array such as a row of a batch, receives the pixels instead of a new array."""
        side = (self.size, self.size)
        try:
            with Image.open(BytesIO(source) if isinstance(source, bytes) else source) as im:
                if im.width * im.height > self.max_pixels:
                    raise ImageError("image_too_large",
                                     f"image is {im.width}x{im.height}, more than {self.max_pixels} pixels")
                original = im.size
                im.draft("RGB", side)  # JPEG DCT scaling: decode big images at a fraction of the cost
                # convert() to the image's own mode and resize() to its own size return copies: skip them
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                if rgb.size != side:
                    rgb = rgb.resize(side, Image.Resampling.BICUBIC)
                rows = rgb.tobytes("raw", "RGB;L")  # decodes; each row as its R, G and B runs (line-interleaved)
        except (ImageError, FileNotFoundError):
            raise
        except Image.DecompressionBombError as e:
            raise ImageError("image_too_large", str(e)) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError("bad_image", f"cannot decode image ({type(e).__name__}: {e})") from e
        # (S, 3, S) viewed as (3, S, S): float32 in place, reading whole rows (pixel-interleaved RGB would be read
        # with a stride of 3, 1.5x slower)
        x = np.empty((3, self.size, self.size), dtype=np.float32) if out is None else out
        np.subtract(np.frombuffer(rows, dtype=np.uint8).reshape(self.size, 3, self.size).transpose(1, 0, 2),
                    self.shift, out=x)
        x *= self.scale
        return x, original


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
    """IoU of two xyxy boxes; written out without min/max calls (it runs for every argument x region pair)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = (bx2 if bx2 < ax2 else ax2) - (bx1 if bx1 > ax1 else ax1)
    ih = (by2 if by2 < ay2 else ay2) - (by1 if by1 > ay1 else ay1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
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
        self.image_decoder = ImageDecoder(image_size, mean, std, max_image_pixels)
        self.k, self.r, self.n, self.kn = num_negatives, max_regions, max_arguments, num_arg_negatives
        self.negative_modes = None if negative_modes is None else frozenset(negative_modes)
        self.ontology, self.seed = ontology, seed

    def __call__(self, raw: dict[str, Any], epoch: int | None, image_out: np.ndarray | None = None) -> dict[str, Any]:
        """The example; `image_out` (a row of the batch's image array) receives the image (see `ImageDecoder`)."""
        if IMAGE_EXT not in raw or RECORD_EXT not in raw:
            have = sorted(k for k in raw if not k.startswith("__"))
            raise Skip("missing_member", f"needs .{IMAGE_EXT} and .{RECORD_EXT}, has {have}")
        try:
            sample = Sample.from_json(raw[RECORD_EXT])
        except SchemaError as e:
            raise Skip("bad_json" if e.problem.startswith("not valid JSON") else "schema", str(e)) from e
        image = self._image(raw[IMAGE_EXT], image_out)
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

    def image_batch(self, n: int) -> np.ndarray:
        """An array for n images; decoding into its rows (`image_out`) spares a per-sample array and the stacking
        copy (about 30 us a sample of memory traffic at 128 px)."""
        return np.empty((n, 3, self.size, self.size), dtype=np.float32)

    def _image(self, data: bytes, out: np.ndarray | None = None) -> np.ndarray:
        try:
            return self.image_decoder(data, out)[0]
        except ImageError as e:
            raise Skip(e.reason, str(e)) from e

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
        by_kind: dict[str, list[tuple[str, int]]] = {kind: [] for kind in self.negative_kinds}
        modes = self.negative_modes
        for n in sample.negatives:  # one pass; each kind keeps the record's order
            texts = by_kind.get(n.kind)
            if texts is not None and n.text and (modes is None or n.changed.get("mode") in modes):
                texts.append((n.text, KIND_INDEX[n.kind]))
        groups = [list(by_kind[kind]) for kind in self.negative_kinds]
        for texts in groups:
            rng.shuffle(texts)
        rng.shuffle(groups)
        return _round_robin(groups, self.k)

    def _arg_negatives(self, sample: Sample, etype: str | None, args: list[Argument],
                       rng: random.Random) -> list[tuple[list[str], int]]:
        if etype is None or not args or self.kn == 0:
            return []
        texts = [a.text for a in args]
        folded = [t.casefold() for t in texts]
        first: dict[str, int] = {}  # role -> its first argument
        for i, a in enumerate(args):
            first.setdefault(a.role, i)
        symmetric = self.ontology[etype].is_symmetric
        swaps, replaced = [], []
        for i in range(len(args)):
            for j in range(i + 1, len(args)):
                a, b = args[i], args[j]
                if a.role != b.role and folded[i] != folded[j] and not symmetric(a.role, b.role):
                    t = list(texts)
                    t[i], t[j] = t[j], t[i]
                    swaps.append(t)
        for neg in sample.negatives:
            if neg.kind != "arg_replace":
                continue
            for role, new in _replacements(neg.changed):
                i = first.get(role)
                if i is not None and new.casefold() != folded[i]:
                    t = list(texts)
                    t[i] = new
                    if t not in replaced:
                        replaced.append(t)
        rng.shuffle(swaps)
        rng.shuffle(replaced)
        groups = [[(t, KIND_INDEX["role_swap"]) for t in reversed(swaps)],
                  [(t, KIND_INDEX["arg_replace"]) for t in reversed(replaced)]]
        return [([f"{a.role}: {t}" for a, t in zip(args, texts_)], kind)
                for texts_, kind in _round_robin(groups, self.kn)]


# --------------------------------------------------------------------------- tokenisation
# The space-separated chunks each open_clip clean type leaves of a printable ASCII text (whose basic_clean is only
# .strip()); module-level functions, so the tokenizer still pickles into spawned DataLoader workers.
def _lower_chunks(text: str) -> list[str]:
    return text.lower().split()


def _whitespace_chunks(text: str) -> list[str]:
    return text.split()


def _canonical_chunks(text: str) -> list[str]:
    from open_clip.tokenizer import canonicalize_text

    return canonicalize_text(text).split()


class FastSimpleTokenizer:
    """open_clip's `SimpleTokenizer` with the same ids, without the per-text work that changes nothing.

    `SimpleTokenizer` cleans every text with ftfy.fix_text and html.unescape twice (a third of its time), then
    BPE-encodes each word through several Python layers and fills the output row by row with torch ops. For
    printable ASCII without '&' the cleaning is the identity up to surrounding whitespace (ftfy returns ASCII
    text as it is, unescape only acts on '&'), so such texts skip it and are split into words by an ASCII
    spelling of open_clip's word pattern (`re` is twice as fast as `regex` with Unicode classes), one space-separated
    chunk at a time, and chunk -> ids is remembered; any other text gets open_clip's own cleaning and pattern, and
    word -> ids is remembered. The rows are filled in numpy.
    tests/test_loader_speed.py checks the ids against open_clip's over tricky texts."""

    def __init__(self, base: Any, max_words: int = 200_000) -> None:
        from open_clip import tokenizer as oc

        plain = {"lower": _lower_chunks, "whitespace": _whitespace_chunks, "canonicalize": _canonical_chunks}
        self.plain_chunks = next((f for k, f in plain.items() if base.clean_fn is oc.get_clean_fn(k)), None)
        self.plain_words = base.pat
        pattern = base.pat.pattern
        ascii_classes = ((r"[^\s\p{L}\p{N}]+", r"[^\sa-zA-Z0-9]+"), (r"[\p{L}]+", "[a-zA-Z]+"), (r"[\p{N}]", "[0-9]"))
        if all(u in pattern for u, _ in ascii_classes):  # on ASCII, \p{L} is [a-zA-Z] and \p{N} is [0-9]
            for unicode_class, ascii_class in ascii_classes:
                pattern = pattern.replace(unicode_class, ascii_class)
            self.plain_words = re.compile(pattern, re.IGNORECASE | re.ASCII)
        self.base, self.max_words = base, max_words
        self.words: dict[str, list[int]] = {}
        self.chunks: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` without start/end tokens, as `SimpleTokenizer.encode`."""
        if self.plain_chunks is None or not (text.isascii() and text.isprintable() and "&" not in text):
            return self._ids(self.base.pat.findall(self.base.clean_fn(text)))
        # No word of the pattern spans whitespace, so the words of a text are those of its space-separated chunks
        # in turn: a chunk ("agent:", "police") is split and encoded once, then looked up.
        ids: list[int] = []
        chunks = self.chunks
        for chunk in self.plain_chunks(text):
            got = chunks.get(chunk)
            if got is None:
                if len(chunks) >= self.max_words:
                    chunks.clear()
                got = chunks[chunk] = self._ids(self.plain_words.findall(chunk))
            ids += got
        return ids

    def _ids(self, words: list[str]) -> list[int]:
        base, cache = self.base, self.words
        ids: list[int] = []
        for word in words:
            got = cache.get(word)
            if got is None:
                if len(cache) >= self.max_words:
                    cache.clear()
                merged = base.bpe("".join(base.byte_encoder[b] for b in word.encode("utf-8")))
                got = cache[word] = [base.encoder[t] for t in merged.split(" ")]
            ids += got
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.base.context_length
        if not length:
            raise ValueError("a context length is needed (the tokenizer has none)")
        sot, eot = self.base.sot_token_id, self.base.eot_token_id
        # All rows' ids in one list, written through one mask: a numpy write per row costs a microsecond
        flat: list[int] = []
        sizes = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [sot, *self.encode(text), eot]
            if len(ids) > length:  # truncate, keeping the end token, as open_clip does
                ids = ids[:length]
                ids[-1] = eot
            flat += ids
            sizes[i] = len(ids)
        out = np.zeros((len(texts), length), dtype=np.int64)
        out[np.arange(length) < sizes[:, None]] = flat  # row-major: row i's first sizes[i] slots, in order
        return torch.from_numpy(out)


def fast_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """`FastSimpleTokenizer` over open_clip's plain `SimpleTokenizer`; any other tokenizer as it is."""
    from open_clip.tokenizer import SimpleTokenizer

    if type(tokenizer) is SimpleTokenizer and tokenizer.reduction_fn is None:
        return FastSimpleTokenizer(tokenizer)
    return tokenizer


# --------------------------------------------------------------------------- batches
class CachedTokenizer:
    """A tokenizer that remembers the rows of texts it has seen (the newest `max_entries`).

    Tokenising (BPE in Python) is a large share of a batch's cost, and texts recur: argument phrases across
    samples, and a sample's descriptions and negatives on every later visit. open_clip's plain BPE tokenizer is
    replaced by `FastSimpleTokenizer` (same ids) for the texts that are new."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int = 50_000) -> None:
        self.tokenizer, self.max_entries = fast_tokenizer(tokenizer), max_entries
        self.rows: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = self.rows
        new = [t for t in dict.fromkeys(texts) if t not in rows]
        if new:  # numpy rows: stacking hundreds of them costs a fraction of torch.stack's per-tensor overhead
            rows.update(zip(new, self.tokenizer(new).numpy()))
        out = torch.from_numpy(np.stack([rows[t] for t in texts]))
        for t in list(islice(rows, max(0, len(rows) - self.max_entries))):
            del rows[t]  # oldest first (dicts keep insertion order)
        return out


def collate(examples: list[dict[str, Any]], tokenizer: Tokenizer, sizes: dict[str, int],
            images: np.ndarray | None = None) -> dict[str, Any]:
    """Stack examples into the batch contract; each distinct text is tokenised once per batch. Filled in numpy
    (element writes into torch tensors cost microseconds each) and handed to torch without a copy. `images`: the
    examples' images already in one (B, 3, S, S) array (decoded into its rows), else they are stacked here."""
    b, p, k, r, n, kn = (len(examples), sizes["P"], sizes["K"], sizes["R"], sizes["N"], sizes["Kn"])
    texts: dict[str, int] = {}

    def ref(text: str) -> int:
        return texts.setdefault(text, len(texts))

    pos, neg, arg = (np.full((b, m), -1, dtype=np.int64) for m in (p, k, n))
    neg_arg = np.full((b, kn, n), -1, dtype=np.int64)
    neg_kinds, neg_arg_kinds = np.full((b, k), -1, dtype=np.int64), np.full((b, kn), -1, dtype=np.int64)
    boxes, arg_boxes = np.zeros((b, r, 4), dtype=np.float32), np.zeros((b, n, 4), dtype=np.float32)
    box_mask, arg_box_mask = np.zeros((b, r), dtype=bool), np.zeros((b, n), dtype=bool)
    arg_region = np.full((b, n), -1, dtype=np.int64)
    for i, ex in enumerate(examples):
        for j, t in enumerate(ex["pos"]):
            if t:
                pos[i, j] = ref(t)
        for j, (t, kind) in enumerate(ex["neg"]):
            neg[i, j], neg_kinds[i, j] = ref(t), kind
        if ex["boxes"]:
            boxes[i, : len(ex["boxes"])], box_mask[i, : len(ex["boxes"])] = ex["boxes"], True
        for j, t in enumerate(ex["args"]):
            arg[i, j], arg_region[i, j] = ref(t), ex["arg_region"][j]
            if ex["arg_boxes"][j] is not None:
                arg_boxes[i, j], arg_box_mask[i, j] = ex["arg_boxes"][j], True
        for j, (ts, kind) in enumerate(ex["neg_args"]):
            neg_arg_kinds[i, j] = kind
            for m, t in enumerate(ts):
                neg_arg[i, j, m] = ref(t)
    tokens = tokenizer(list(texts) or [""])
    table = torch.cat([tokens.new_zeros(1, tokens.shape[-1]), tokens])  # row 0: all-zero padding
    as_torch = torch.from_numpy  # shares the numpy memory: no copy

    def gather(idx: np.ndarray) -> torch.Tensor:
        return table[as_torch(idx + 1)]

    return {
        "images": as_torch(np.stack([ex["image"] for ex in examples]) if images is None else images),
        "pos_tokens": gather(pos), "pos_mask": as_torch(pos >= 0),
        "neg_tokens": gather(neg), "neg_mask": as_torch(neg >= 0), "neg_kinds": as_torch(neg_kinds),
        "boxes": as_torch(boxes), "box_mask": as_torch(box_mask), "box_labels": [ex["box_labels"] for ex in examples],
        "event_type": torch.tensor([ex["event_type"] for ex in examples], dtype=torch.long),
        "arg_tokens": gather(arg), "arg_mask": as_torch(arg >= 0),
        "arg_boxes": as_torch(arg_boxes), "arg_box_mask": as_torch(arg_box_mask),
        "arg_region": as_torch(arg_region),
        "neg_arg_tokens": gather(neg_arg), "neg_arg_mask": as_torch(neg_arg_kinds >= 0),
        "neg_arg_kinds": as_torch(neg_arg_kinds),
        "keys": [ex["key"] for ex in examples],
    }


PACKED = "packed_tensors"


def pack_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch for the trip out of a DataLoader worker: every tensor but `images` joined into one flat tensor per
    dtype. Each tensor crosses the process boundary through its own shared-memory file (~0.2 ms each), so 16
    small tensors cost more than the 6 MB of images; `unpack_tensors` gives them back as views, in key order."""
    parts: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and name != "images":
            parts.setdefault(value.dtype, []).append((name, value))
    packed = [(torch.cat([t.reshape(-1) for _, t in items]), [(name, tuple(t.shape)) for name, t in items])
              for items in parts.values()]
    out = {name: value for name, value in batch.items() if name == "images" or not isinstance(value, torch.Tensor)}
    out[PACKED] = (list(batch), packed)
    return out


def unpack_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch `pack_tensors` packed (a batch that is not packed as it is)."""
    if PACKED not in batch:
        return batch
    order, packed = batch.pop(PACKED)
    for flat, layout in packed:
        for (name, shape), part in zip(layout, flat.split([math.prod(shape) for _, shape in layout])):
            batch[name] = part.view(shape)
    return {name: batch[name] for name in order}
