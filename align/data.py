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
* ``position`` dict (training batches only; `EventDataModule` takes it off before the LightningModule sees the
  batch): ``epoch``, ``worker`` and, for that worker's stream, the ``records`` read and ``batches`` made so far.

Training streams are resampled (shards drawn with replacement; equal batch counts per rank: ``samples_per_epoch``
is split over ranks and then workers, the role `with_epoch` plays in plain webdataset) and shuffled, seeded by
(seed, rank, worker, epoch). Validation and test read every shard once, split over ranks and workers, unshuffled;
their lengths come from ``manifest.json``/``sizes.json`` beside the shards when present. Ranks may then get
different batch counts, so keep collective ops out of validation steps. When whole shards would leave a rank
without data (one val shard, 8 GPUs), every rank reads all shards and keeps every world-size-th record of each,
decoding only those; fewer samples than ranks is refused, as an idle rank would hang the others' epoch-end sync.
Corrupt samples are skipped, logged with shard URL and key, and counted per reason in ``EventDataModule.skipped``
(``tar``, ``missing_member``, ``bad_image``, ``image_too_large``, ``bad_json``, ``schema``, ``error``); a worker's
counts arrive with its next batch.

Resuming (``--ckpt_path``) continues each training stream where the checkpoint left it instead of replaying the
epoch. `EventDataModule.state_dict` keeps, per rank, each worker's position after the last batch that reached a
training step (prefetched batches do not count). On resume a worker rebuilds its seeded stream, reads past the
records it had consumed without decoding them, and its cap counts the batches it made before, so the loader ends
the epoch when Lightning does; DataLoader worker j plays stream (j + s) mod W, s being the one after the last
trained on, so the workers' round robin goes on in order. The batches after the checkpoint are those of an
uninterrupted run, in the same order, for any number of workers (0 and 1 make the same stream) and ranks. Changed
stream settings (ranks, workers, batch size, seed, shards, weights, epoch size, shuffle buffer, resampling) restart
the epoch, with a warning; ``skipped`` counts this process's skips only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import chain, count, islice
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from align.batch import (
    CachedTokenizer,
    SampleEncoder,
    Skip,
    Tokenizer,
    collate,
    make_seed,
    pack_tensors,
    unpack_tensors,
)
from align.ontology import Ontology
from align.schema import DESCRIPTION_KINDS, NEGATIVE_KINDS
from align.shardlist import expand_shards, rank_without_shards, shard_sizes
from align.tarstream import iter_samples

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_CONSECUTIVE_TAR_ERRORS = 100


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
    """Batches from one or more shard sources; `epoch` (and, when resuming, `resume`) are set by the loader in the
    main process before its workers start."""

    def __init__(self, sources: list[list[str]], weights: list[float], encoder: SampleEncoder, tokenizer: Tokenizer,
                 batch_size: int, sizes: dict[str, int], *, train: bool, resampled: bool, shuffle_buffer: int,
                 seed: int, rank: int, world_size: int, num_workers: int, batches_per_rank: int | None,
                 shard_counts: dict[str, int], split_samples: bool) -> None:
        super().__init__()
        self.sources, self.weights, self.encoder, self.tokenizer = sources, weights, encoder, tokenizer
        self.batch_size, self.sizes, self.train, self.resampled = batch_size, sizes, train, resampled
        self.shuffle_buffer, self.seed, self.rank, self.world_size = shuffle_buffer, seed, rank, world_size
        self.num_workers, self.batches_per_rank, self.shard_counts = max(1, num_workers), batches_per_rank, shard_counts
        self.split_samples = split_samples
        self.epoch, self._round, self.pending, self._tar_errors = 0, 0, Counter(), 0
        self.resume: dict[str, Any] | None = None  # a rank position from `EventDataModule.state_dict`

    def _worker_shards(self, urls: list[str], worker: int) -> list[str]:
        mine = urls if self.split_samples else urls[self.rank:: self.world_size]
        return mine[worker:: self.num_workers]

    def _rank_count(self, url: str) -> int:
        """Records of a shard that this rank decodes."""
        n = self.shard_counts[url]
        return len(range(self.rank, n, self.world_size)) if self.split_samples else n

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
            n = sum(self._rank_count(u) for u in shards)
            batches = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
            cap = self._cap(w)
            total += min(batches, cap) if cap is not None else batches
        return total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        resume = self.resume or {}
        # the stream this process plays; a resumed epoch starts at the stream after the last one trained on
        worker = ((info.id if info is not None else 0) + resume.get("next_worker", 0)) % self.num_workers
        self._round = make_seed(self.epoch, 1)  # 1: what worker processes always used, so older runs keep streams
        rng = random.Random(make_seed(self.seed, self.rank, worker, self._round))
        streams = [self._samples(urls, rng, worker) for urls in self.sources]
        samples = _mix(streams, self.weights, rng) if len(streams) > 1 else streams[0]
        if self.train and self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(samples)
        records, made = resume["workers"][worker] if resume else (0, 0)
        batches, cap = self._batches(samples, worker, records, made), self._cap(worker)
        return islice(batches, max(0, cap - made)) if cap is not None else batches

    def _samples(self, urls: list[str], rng: random.Random, worker: int) -> Iterator[dict]:
        if self.resampled:
            return iter_samples((rng.choice(urls) for _ in count()), self._tar_error)
        # each shard goes to exactly one (rank, worker); or, splitting samples, each record to one rank
        mine = self._worker_shards(urls, worker)
        if self.train:
            rng.shuffle(mine)
        if not self.split_samples:
            return iter_samples(mine, self._tar_error)
        return chain.from_iterable(islice(iter_samples([u], self._tar_error), self.rank, None, self.world_size)
                                   for u in mine)

    def _tar_error(self, exn: Exception) -> bool:
        """Shard reader handler: log, count and go on; stop only when shards keep failing with nothing read."""
        self.pending["tar"] += 1
        self._tar_errors += 1
        log.warning("skipping unreadable shard data: %s", exn)
        if self._tar_errors > MAX_CONSECUTIVE_TAR_ERRORS:
            raise RuntimeError(f"{self._tar_errors} shard errors in a row without one readable sample; last: {exn}")
        return True

    def _batches(self, samples: Iterator[dict], worker: int, records: int, made: int) -> Iterator[dict[str, Any]]:
        """Encode and collate, after reading past the `records` a resumed epoch had consumed (undecoded)."""
        if records:
            pending = self.pending.copy()
            for _ in islice(samples, records):
                self._tar_errors = 0
            self.pending = pending  # shard errors met again while reading past were counted before the checkpoint
        buf: list[dict[str, Any]] = []
        images = self.encoder.image_batch(self.batch_size)
        for raw in samples:
            records += 1
            self._tar_errors = 0
            try:
                buf.append(self.encoder(raw, self._round if self.train else None, images[len(buf)]))
            except Skip as s:
                self._skip(s.reason, raw, str(s))
            except Exception as e:  # a record that breaks the encoder must not end a long run
                self._skip("error", raw, f"{type(e).__name__}: {e}")
            if len(buf) == self.batch_size:
                made += 1
                position = {"epoch": self.epoch, "worker": worker, "records": records, "batches": made}
                yield self._collate(buf, images, position)
                buf, images = [], self.encoder.image_batch(self.batch_size)
        if buf and not self.train:
            yield self._collate(buf, images[: len(buf)], None)

    def _skip(self, reason: str, raw: dict, detail: str) -> None:
        self.pending[reason] += 1
        log.warning("skipping sample %r of %s (%s): %s", raw.get("__key__"), raw.get("__url__"), reason, detail)

    def _collate(self, buf: list[dict[str, Any]], images: np.ndarray,
                 position: dict[str, int] | None) -> dict[str, Any]:
        batch = collate(buf, self.tokenizer, self.sizes, images)
        batch["skipped"] = self.take_pending()
        if self.train:  # train streams are the ones a resume continues
            batch["position"] = position
        return pack_tensors(batch) if get_worker_info() is not None else batch

    def take_pending(self) -> dict[str, int]:
        out = dict(self.pending)
        self.pending.clear()
        return out


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The stream's batches are collated already; DataLoader's default (`default_convert`) would walk every
    list and string in them for nothing."""
    return batch


class _Loader(DataLoader):
    """DataLoader that tells its stream the epoch (and a position to resume from) before workers start and gathers
    skip counts from batches."""

    def __init__(self, dataset: ShardStream, num_workers: int, epoch_of: Callable[[int], int],
                 on_skipped: Callable[[dict[str, int]], None],
                 resume_of: Callable[[int], dict[str, Any] | None]) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                         collate_fn=_as_is)
        self._calls, self._epoch_of, self._on_skipped, self._resume_of = 0, epoch_of, on_skipped, resume_of

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        epoch = self._epoch_of(self._calls)
        self._calls += 1
        self.dataset.epoch, self.dataset.resume = epoch, self._resume_of(epoch) if self.dataset.train else None
        try:
            batches = super().__iter__()  # the workers start here, each with a copy of the stream as it is now
        finally:
            self.dataset.resume = None
        for batch in batches:
            batch = unpack_tensors(batch)
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
        self._stream_key: dict[str, Any] | None = None  # what fixes the training streams (see `state_dict`)
        self._position: dict[str, Any] | None = None  # this rank's position: batches trained on in the epoch
        self._resume: dict[str, Any] | None = None  # a loaded checkpoint's state, until its epoch starts

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

    def _advance(self, position: dict[str, int]) -> None:
        """A training batch went to a step: its worker's stream stands at `position`."""
        workers = self._stream_key["num_workers"]
        p = self._position
        if p is None or p["epoch"] != position["epoch"]:
            p = self._position = {"epoch": position["epoch"], "next_worker": 0,
                                  "workers": [[0, 0] for _ in range(workers)]}
        p["workers"][position["worker"]] = [position["records"], position["batches"]]
        p["next_worker"] = (position["worker"] + 1) % workers

    def _resume_of(self, epoch: int) -> dict[str, Any] | None:
        """This rank's position in `epoch` from a loaded checkpoint, handed out once; None when there is none, it
        belongs to another epoch, or the stream settings changed (the epoch then starts from its first batch)."""
        state, self._resume = self._resume, None
        if state is None:
            return None
        saved, now = state["stream"], self._stream_key or {}
        if saved != now:
            changed = sorted(k for k in {**saved, **now} if saved.get(k) != now.get(k))
            log.warning("train data position not restored: %s changed since the checkpoint, so epoch %d starts "
                        "from its first batch", ", ".join(changed), epoch)
            return None
        position = state["positions"][self._rank_world()[0]]
        if position is None or position["epoch"] != epoch:
            return None
        self._position = copy.deepcopy(position)  # workers that yield nothing more keep their place
        return position

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
        split_samples = not resampled and world > 1 and rank_without_shards(sources, counts, world)
        if split_samples and all(u in counts for urls in sources for u in urls) and sum(counts.values()) < world:
            raise ValueError(f"{what}: {sum(counts.values())} samples cannot give each of {world} ranks one; a rank "
                             "without batches would leave the others waiting at the epoch-end sync. Use more "
                             f"{what} samples or fewer devices")
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
            batches_per_rank=per_rank, shard_counts=counts, split_samples=split_samples)
        if train:
            self._stream_key = {
                "world_size": world, "num_workers": stream.num_workers, "batch_size": h.batch_size, "seed": h.seed,
                "resampled": resampled, "batches_per_rank": per_rank, "shuffle_buffer": h.shuffle_buffer,
                "weights": weights, "shards": hashlib.sha256(json.dumps(sources).encode()).hexdigest()}
        return _Loader(stream, h.num_workers, self._epoch_of, self._record_skipped, self._resume_of)

    # ------------------------------------------------------------------ Lightning hooks
    def train_dataloader(self) -> _Loader:
        if not self.hparams.train:
            raise ValueError("EventDataModule: no `train` shards configured")
        return self._loader(self.hparams.train, "train", train=True)

    def val_dataloader(self) -> _Loader | list:
        return self._loader(self.hparams.val, "val", train=False) if self.hparams.val else []

    def test_dataloader(self) -> _Loader | list:
        return self._loader(self.hparams.test, "test", train=False) if self.hparams.test else []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take a training batch's stream position off as it goes to its step (prefetched batches do not count)."""
        position = batch.pop("position", None) if isinstance(batch, dict) else None
        if position is not None:
            self._advance(position)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's training stream position (Lightning stores it in checkpoints; under DDP all ranks call this,
        and the positions are gathered); empty when no training stream was made."""
        if self._stream_key is None:
            return {}
        positions = [self._position]
        if self._stream_key["world_size"] > 1:
            positions = [None] * self._stream_key["world_size"]
            torch.distributed.all_gather_object(positions, self._position)
        return {"stream": self._stream_key, "positions": positions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's positions until the training epoch they belong to starts (see `_resume_of`)."""
        if not state_dict:
            return
        self._resume = state_dict
        # Lightning warns that a mid-epoch resume replays data unless the loader itself is stateful; this one is not
        # stateful but does not replay, so the warning would mislead
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
