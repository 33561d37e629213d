"""Lightning DataModule over WebDataset shards of `align.schema.Sample` records (`{key}.jpg` + `{key}.json`).

Batch contract (a dict; B batch, P = len(positive_kinds), K = num_negatives, R = max_regions,
N = max_arguments, Kn = num_arg_negatives, L = tokenizer context length, H = W = image_size):

* ``images`` float (B, 3, H, W): RGB resized to H x W without keeping the aspect ratio (no crop, no flip, so
  every box maps by a plain scale), normalised with ``mean``/``std``.
* ``pos_tokens`` long (B, P, L), ``pos_mask`` bool (B, P): slot i is a description of kind positive_kinds[i]
  ("caption" falls back to the record's caption). Slot 0 is the primary text: when its kind is missing it takes
  the first present later kind, else the caption, so it is valid for every sample with a non-empty caption.
* ``neg_tokens`` long (B, K, L), ``neg_mask`` bool (B, K), ``neg_kinds`` long (B, K): hard negatives of the
  sample, picked round-robin over kinds (balanced), seeded per sample; kinds index `NEGATIVE_KINDS`, -1 = pad.
* ``boxes`` float (B, R, 4), ``box_mask`` bool (B, R), ``box_labels`` list[list[str]]: the record's regions,
  highest score first, in pixels (x1, y1, x2, y2) of the resized image.
* ``event_type`` long (B,): index into the ontology's ``type_names`` of the salient event (after alias
  normalisation), -1 when there is none or its type is unknown.
* ``arg_tokens`` long (B, N, L), ``arg_mask`` bool (B, N): the salient event's arguments as "Role: text".
* ``arg_boxes`` float (B, N, 4), ``arg_box_mask`` bool (B, N): gold argument boxes (resized pixels), when known.
* ``arg_region`` long (B, N): index into ``boxes`` of the region with the highest IoU (>= 0.5) with the gold
  box, -1 otherwise; for grounding accuracy.
* ``neg_arg_tokens`` long (B, Kn, N, L), ``neg_arg_mask`` bool (B, Kn), ``neg_arg_kinds`` long (B, Kn):
  corrupted argument lists for the OT contrastive term, same slots as ``arg_tokens`` (so ``arg_mask`` is their
  per-argument mask). A role swap exchanges the texts of two arguments with different, non-symmetric roles; an
  argument replacement puts the new filler of one of the sample's ``arg_replace`` negatives (read from its
  ``changed``: {"role": R, "new"|"to": T}, {R: [old, new]}, or either under "arguments") into that role.
  Kinds alternate; a sample with no candidates gets masked slots.
* ``keys`` list[str]: the record keys.

Training streams are resampled (shards drawn with replacement; equal batch counts per rank: ``samples_per_epoch``
is split over ranks and then workers, the role `with_epoch` plays in plain webdataset) and shuffled, seeded by
(seed, rank, worker, epoch). Validation and test read every shard once, split over ranks and workers, unshuffled;
their lengths come from ``manifest.json``/``sizes.json`` beside the shards when present. Ranks may then get
different batch counts, so keep collective ops out of validation steps. Corrupt samples are skipped, logged with
shard URL and key, and counted per reason in ``EventDataModule.skipped`` (``tar``, ``missing_member``, ``bad_image``,
``image_too_large``, ``bad_json``, ``schema``, ``error``); a worker's counts arrive with its next batch.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import count, islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from align.batch import CachedTokenizer, SampleEncoder, Skip, Tokenizer, collate, make_seed
from align.ontology import Ontology
from align.schema import DESCRIPTION_KINDS, NEGATIVE_KINDS

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MANIFEST_NAMES = ("manifest.json", "sizes.json")
MAX_CONSECUTIVE_TAR_ERRORS = 100


# --------------------------------------------------------------------------- shard lists and manifests
def expand_shards(pattern: str, what: str) -> list[str]:
    """Expand a brace pattern (or a local glob such as `dir/train-*.tar`); local files must exist, so a typo
    fails now rather than looping in a worker."""
    urls = []
    for url in wds.shardlists.expand_urls(pattern):
        urls += sorted(glob.glob(url)) if _is_local(url) and glob.has_magic(url) else [url]
    if not urls:
        raise ValueError(f"{what}: pattern {pattern!r} matches no shards")
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(urls)} shards of {pattern!r} not found, "
                                f"e.g. {missing[:3]}")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard from a manifest beside the shards: {"shards": [{"name", "num_samples"}]} or {name: n}."""
    by_dir: dict[str, dict[str, int]] = {}
    sizes = {}
    for url in urls:
        if not _is_local(url):
            continue
        folder = os.path.dirname(url)
        if folder not in by_dir:
            by_dir[folder] = _read_manifest(Path(folder or "."))
        n = by_dir[folder].get(os.path.basename(url))
        if n is not None:
            sizes[url] = n
    return sizes


def _read_manifest(folder: Path) -> dict[str, int]:
    for name in MANIFEST_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("ignoring unreadable shard manifest %s: %s", path, e)
            continue
        entries = data.get("shards") if isinstance(data, dict) else None
        if isinstance(entries, list):
            pairs = [(e.get("name"), e.get("num_samples")) for e in entries if isinstance(e, dict)]
        else:
            pairs = list(data.items()) if isinstance(data, dict) else []
        out = {os.path.basename(k): v for k, v in pairs
               if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        if out:
            return out
        log.warning("shard manifest %s lists no shard sizes", path)
    return {}


def _mix(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    """Weighted random interleaving with a seeded rng (webdataset's RandomMix draws from the global one)."""
    streams, weights = list(streams), list(weights)
    while streams:
        i = rng.choices(range(len(streams)), weights=weights)[0]
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i], weights[i]


class ShardStream(IterableDataset):
    """Batches from one or more shard sources; `epoch` is set by the loader in the main process each epoch."""

    def __init__(self, sources: list[list[str]], weights: list[float], encoder: SampleEncoder, tokenizer: Tokenizer,
                 batch_size: int, sizes: dict[str, int], *, train: bool, resampled: bool, shuffle_buffer: int,
                 seed: int, rank: int, world_size: int, num_workers: int, batches_per_rank: int | None,
                 shard_counts: dict[str, int]) -> None:
        super().__init__()
        self.sources, self.weights, self.encoder, self.tokenizer = sources, weights, encoder, tokenizer
        self.batch_size, self.sizes, self.train, self.resampled = batch_size, sizes, train, resampled
        self.shuffle_buffer, self.seed, self.rank, self.world_size = shuffle_buffer, seed, rank, world_size
        self.num_workers, self.batches_per_rank, self.shard_counts = max(1, num_workers), batches_per_rank, shard_counts
        self.epoch, self._iters, self._round, self.pending, self._tar_errors = 0, 0, 0, Counter(), 0

    def _worker_shards(self, urls: list[str], worker: int) -> list[str]:
        return urls[self.rank:: self.world_size][worker:: self.num_workers]

    def _cap(self, worker: int) -> int | None:
        """Batches this worker may yield: the rank's quota spread over workers, the same on every rank."""
        if self.batches_per_rank is None:
            return None
        q, r = divmod(self.batches_per_rank, self.num_workers)
        return q + (worker < r)

    def __len__(self) -> int:
        if self.resampled:
            return self.batches_per_rank
        total = 0
        for w in range(self.num_workers):
            shards = [u for urls in self.sources for u in self._worker_shards(urls, w)]
            if any(u not in self.shard_counts for u in shards):
                raise TypeError("shard sizes unknown (no manifest.json/sizes.json beside the shards)")
            n = sum(self.shard_counts[u] for u in shards)
            batches = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
            cap = self._cap(w)
            total += min(batches, cap) if cap is not None else batches
        return total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        self._iters += 1  # advances per epoch inside persistent workers, where `epoch` is frozen
        self._round = make_seed(self.epoch, self._iters)
        rng = random.Random(make_seed(self.seed, self.rank, worker, self._round))
        streams = [self._samples(urls, rng) for urls in self.sources]
        samples = _mix(streams, self.weights, rng) if len(streams) > 1 else streams[0]
        if self.train and self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(samples)
        batches = self._batches(samples)
        cap = self._cap(worker)
        return islice(batches, cap) if cap is not None else batches

    def _samples(self, urls: list[str], rng: random.Random) -> Iterator[dict]:
        if self.resampled:
            shards: Iterator[dict] = ({"url": rng.choice(urls)} for _ in count())
        else:
            # split_by_worker after a rank slice: each shard goes to exactly one (rank, worker).
            mine = list(wds.split_by_worker(urls[self.rank:: self.world_size]))
            if self.train:
                rng.shuffle(mine)
            shards = ({"url": u} for u in mine)
        return iter(wds.tarfile_to_samples(handler=self._tar_error)(shards))

    def _tar_error(self, exn: Exception) -> bool:
        """webdataset handler: log, count and go on; stop only when shards keep failing with nothing read."""
        self.pending["tar"] += 1
        self._tar_errors += 1
        log.warning("skipping unreadable shard data: %s", exn)
        if self._tar_errors > MAX_CONSECUTIVE_TAR_ERRORS:
            raise RuntimeError(f"{self._tar_errors} shard errors in a row without one readable sample; last: {exn}")
        return True

    def _batches(self, samples: Iterator[dict]) -> Iterator[dict[str, Any]]:
        buf: list[dict[str, Any]] = []
        for raw in samples:
            self._tar_errors = 0
            try:
                buf.append(self.encoder(raw, self._round if self.train else None))
            except Skip as s:
                self._skip(s.reason, raw, str(s))
            except Exception as e:  # a record that breaks the encoder must not end a long run
                self._skip("error", raw, f"{type(e).__name__}: {e}")
            if len(buf) == self.batch_size:
                yield self._collate(buf)
                buf = []
        if buf and not self.train:
            yield self._collate(buf)

    def _skip(self, reason: str, raw: dict, detail: str) -> None:
        self.pending[reason] += 1
        log.warning("skipping sample %r of %s (%s): %s", raw.get("__key__"), raw.get("__url__"), reason, detail)

    def _collate(self, buf: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(buf, self.tokenizer, self.sizes)
        batch["skipped"] = self.take_pending()
        return batch

    def take_pending(self) -> dict[str, int]:
        out = dict(self.pending)
        self.pending.clear()
        return out


class _Loader(DataLoader):
    """DataLoader that tells its stream the epoch before workers start and gathers skip counts from batches."""

    def __init__(self, dataset: ShardStream, num_workers: int, epoch_of: Callable[[int], int],
                 on_skipped: Callable[[dict[str, int]], None]) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
        self._calls, self._epoch_of, self._on_skipped = 0, epoch_of, on_skipped

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        self.dataset.epoch = self._epoch_of(self._calls)
        self._calls += 1
        for batch in super().__iter__():
            self._on_skipped(batch.pop("skipped", {}))
            yield batch
        self._on_skipped(self.dataset.take_pending())  # leftovers when num_workers == 0


# --------------------------------------------------------------------------- the DataModule
class EventDataModule(L.LightningDataModule):
    """Train/val/test loaders over WebDataset shards of event-annotated image-text records."""

    def __init__(
        self,
        train: list[str] | str | None = None,
        train_weights: list[float] | None = None,
        val: list[str] | str | None = None,
        test: list[str] | str | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        image_size: int = 224,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        resampled: bool = True,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        positive_kinds: tuple[str, ...] = ("long", "caption"),
        negative_kinds: tuple[str, ...] = NEGATIVE_KINDS,
        negative_modes: tuple[str, ...] | None = None,
        num_negatives: int = 4,
        max_regions: int = 16,
        max_arguments: int = 6,
        num_arg_negatives: int = 2,
        tokenizer_name: str | None = None,
        ontology: str | None = None,
        max_image_pixels: int = 89_478_485,
    ) -> None:
        """Configure the data pipeline.

        Args:
            train: Training shard pattern(s), e.g. "shards/train-{000000..000009}.tar"; a list gives several
                sources that are mixed by `train_weights`.
            train_weights: Sampling weight per train source (default: equal).
            val: Validation shard pattern(s); every sample is read once per evaluation.
            test: Test shard pattern(s); every sample is read once.
            batch_size: Samples per batch on each rank.
            num_workers: DataLoader worker processes per rank.
            image_size: Side of the square model input in pixels (set it to the model's).
            mean: Per-channel normalisation mean (CLIP's by default; set it to the model's).
            std: Per-channel normalisation std (CLIP's by default; set it to the model's).
            resampled: Draw training shards with replacement for virtual epochs of `samples_per_epoch`
                (equal batch counts on every rank, needed for DDP); False reads each rank's shards once.
            samples_per_epoch: Training samples per epoch over all ranks (default: the train manifest total).
            shuffle_buffer: Training sample shuffle buffer size (0 or 1 disables).
            seed: Base seed; shard, shuffle and negative draws also depend on rank, worker and epoch.
            positive_kinds: Description kinds used as positives; the first is the primary text.
            negative_kinds: Hard negative kinds to sample from.
            negative_modes: Keep only negatives made in these modes (`changed["mode"]`: "template" or
                "caption_edit"), so they are written in the same style as the primary positive and cannot be
                told apart by style alone; None keeps all.
            num_negatives: Negatives per sample (K), padded with a mask.
            max_regions: Region boxes per sample (R), padded with a mask.
            max_arguments: Salient-event arguments per sample (N), padded with a mask.
            num_arg_negatives: Role-swapped/argument-replaced argument lists per sample (Kn) for the OT loss.
            tokenizer_name: open_clip model whose tokenizer to build when none is assigned to `tokenizer`.
            ontology: Ontology YAML/JSON path for event type indices and symmetric roles (default: M2E2).
            max_image_pixels: Images with more pixels are skipped (decompression bomb guard).
        """
        super().__init__()
        self.save_hyperparameters()
        for mode in negative_modes or ():
            if mode not in ("template", "caption_edit", "llm"):
                raise ValueError(f"negative_modes: {mode!r} is not one of ['template', 'caption_edit', 'llm']")
        for kind in positive_kinds:
            if kind not in DESCRIPTION_KINDS:
                raise ValueError(f"positive_kinds: {kind!r} is not one of {list(DESCRIPTION_KINDS)}")
        for kind in negative_kinds:
            if kind not in NEGATIVE_KINDS:
                raise ValueError(f"negative_kinds: {kind!r} is not one of {list(NEGATIVE_KINDS)}")
        if not positive_kinds:
            raise ValueError("positive_kinds: need at least one kind")
        for name in ("batch_size", "image_size"):
            if getattr(self.hparams, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self.tokenizer: Tokenizer | None = None
        self.skipped: Counter[str] = Counter()
        self._ontology: Ontology | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def ontology(self) -> Ontology:
        if self._ontology is None:
            path = self.hparams.ontology
            self._ontology = Ontology.load(path) if path else Ontology.default()
        return self._ontology

    def _get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            name = self.hparams.tokenizer_name
            if not name:
                raise RuntimeError("EventDataModule has no tokenizer: assign `datamodule.tokenizer = "
                                   "model.tokenizer` or pass `tokenizer_name`")
            import open_clip

            if name not in open_clip.list_models():
                import align.model  # noqa: F401  registers the EventCLIP-* configs with open_clip
            self.tokenizer = open_clip.get_tokenizer(name)
        return self.tokenizer

    def _rank_world(self) -> tuple[int, int]:
        """From the attached Trainer, else RANK/WORLD_SIZE, else torch.distributed, else a single process."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _epoch_of(self, calls: int) -> int:
        return self.trainer.current_epoch if self.trainer is not None else calls

    def _record_skipped(self, counts: dict[str, int]) -> None:
        self.skipped.update(counts)

    def _loader(self, patterns: list[str] | str, what: str, *, train: bool) -> _Loader:
        h = self.hparams
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        sources = [expand_shards(p, what) for p in patterns]
        weights = list(h.train_weights) if train and h.train_weights is not None else [1.0] * len(sources)
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"train_weights {weights} must be {len(sources)} non-negative numbers, not all zero")
        counts = shard_sizes([u for urls in sources for u in urls])
        rank, world = self._rank_world()
        resampled = train and h.resampled
        per_rank = None
        if train and (resampled or h.samples_per_epoch):
            total = h.samples_per_epoch
            if total is None:
                if any(u not in counts for urls in sources for u in urls):
                    raise ValueError(f"{what}: samples_per_epoch is needed for resampled training when the "
                                     "shards have no manifest.json/sizes.json")
                total = sum(counts.values())
            per_rank = max(1, total // (h.batch_size * world))
        encoder = SampleEncoder(
            image_size=h.image_size, mean=h.mean, std=h.std, positive_kinds=h.positive_kinds,
            negative_kinds=h.negative_kinds, num_negatives=h.num_negatives, max_regions=h.max_regions,
            max_arguments=h.max_arguments, num_arg_negatives=h.num_arg_negatives, ontology=self.ontology,
            seed=h.seed, max_image_pixels=h.max_image_pixels, negative_modes=h.negative_modes)
        sizes = {"P": len(h.positive_kinds), "K": h.num_negatives, "R": h.max_regions, "N": h.max_arguments,
                 "Kn": h.num_arg_negatives}
        tokenizer = CachedTokenizer(self._get_tokenizer())  # per worker: texts recur across samples and epochs
        stream = ShardStream(
            sources, weights, encoder, tokenizer, h.batch_size, sizes, train=train, resampled=resampled,
            shuffle_buffer=h.shuffle_buffer, seed=h.seed, rank=rank, world_size=world, num_workers=h.num_workers,
            batches_per_rank=per_rank, shard_counts=counts)
        return _Loader(stream, h.num_workers, self._epoch_of, self._record_skipped)

    # ------------------------------------------------------------------ Lightning hooks
    def train_dataloader(self) -> _Loader:
        if not self.hparams.train:
            raise ValueError("EventDataModule: no `train` shards configured")
        return self._loader(self.hparams.train, "train", train=True)

    def val_dataloader(self) -> _Loader | list:
        return self._loader(self.hparams.val, "val", train=False) if self.hparams.val else []

    def test_dataloader(self) -> _Loader | list:
        return self._loader(self.hparams.test, "test", train=False) if self.hparams.test else []
