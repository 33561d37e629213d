"""`data-gen eventworld`: render EventWorld samples with descriptions and hard negatives into shards."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from align.ontology import Ontology
from align.schema import Sample
from data_gen.describe import describe
from data_gen.eventworld import WORLD_VERSION, render_sample, visible_alternatives
from data_gen.eventworld.m2e2 import write_m2e2_gold
from data_gen.eventworld.preview import preview_grid
from data_gen.negatives import negatives_for_modes
from data_gen.shards import MANIFEST, ShardError, ShardPlan, ShardSet, iter_records, parse_splits

DEFAULT_NEGATIVES = "type_swap=2,role_swap=2,arg_replace=2"


def parse_counts(spec: str) -> dict[str, int]:
    """'type_swap=2,role_swap=1' -> {'type_swap': 2, 'role_swap': 1}."""
    counts = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise ValueError(f"bad count {item!r}; expected kind=N, e.g. type_swap=2")
        counts[name.strip()] = int(value)
    return counts


def stored_world_version(folder: str | Path) -> int | None:
    """The EventWorld version of the shard set in `folder` (1: made before versions were recorded); None when
    the folder holds no EventWorld manifest. Raises ShardError when the manifest cannot be read."""
    manifest = Path(folder) / MANIFEST
    if not manifest.exists():
        return None
    try:
        config = json.loads(manifest.read_text(encoding="utf-8")).get("config") or {}
        if config.get("generator") != "eventworld":
            return None
        return int(config.get("world_version", 1))
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise ShardError(f"{manifest}: unreadable manifest ({e}); move the folder away or repair it") from e


@dataclass
class EventWorldSamples:
    """Makes the complete training record of one EventWorld index (picklable, for worker processes)."""

    seed: int
    image_size: int
    negatives: dict[str, int]
    splits: dict[str, range] = field(default_factory=dict)

    def __call__(self, index: int) -> Sample:
        ontology = Ontology.default()
        sample = render_sample(index, self.seed, self.image_size, ontology=ontology)
        sample.provenance["split"] = next((n for n, r in self.splits.items() if index in r), None)
        rng = random.Random(self.seed * 1_000_003 + index)
        sample.positives = describe(sample.caption, sample.events, sample.salient, ontology, rng,
                                    kinds=("caption", "short", "long"))
        event = sample.salient_event
        if event is not None:
            sample.negatives = negatives_for_modes(
                sample.caption, event, ontology, rng, [d.text for d in sample.positives], ("caption_edit", "template"),
                self.negatives, lambda a: visible_alternatives(a, event.type))
        return sample


def run(args: argparse.Namespace) -> int:
    if args.preview:
        return _preview(args)
    if args.out is None:
        print("data-gen eventworld: --out DIR is required (or --preview PNG)", file=sys.stderr)
        return 2
    try:
        splits = parse_splits(args.splits, args.num_samples)
        negatives = parse_counts(args.negatives)
    except ValueError as e:
        print(f"data-gen eventworld: {e}", file=sys.stderr)
        return 2
    make = EventWorldSamples(args.seed, args.image_size, negatives, splits)
    config = {"generator": "eventworld", "world_version": WORLD_VERSION, "num_samples": args.num_samples,
              "seed": args.seed, "image_size": args.image_size, "splits": args.splits, "negatives": negatives,
              "samples_per_shard": args.samples_per_shard}
    plans = [ShardPlan(name, r, args.samples_per_shard) for name, r in splits.items() if len(r)]
    start = time.perf_counter()
    try:
        old = stored_world_version(args.out)
        if old is not None and old != WORLD_VERSION:  # same seed, other pictures and captions: never mix them
            raise ShardError(f"{args.out} holds EventWorld version {old} shards; this is version {WORLD_VERSION}, "
                             "which renders other pictures and captions for the same seed. Use another --out "
                             "folder, or move this one away to render the set anew.")
        shard_set = ShardSet(args.out, config)
        shard_set.write(plans, make, workers=args.workers, progress=not args.quiet)
    except ShardError as e:
        print(f"data-gen eventworld: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    for name in splits:
        gold = out / f"m2e2_gold_{name}.json"
        if splits[name] and not gold.exists():
            write_m2e2_gold(iter_records(sorted(out.glob(f"{name}-*.tar"))), gold)
    manifest = json.loads((out / MANIFEST).read_text())
    if not args.quiet:
        print(f"{manifest['num_samples']} samples in {len(manifest['shards'])} shards at {out} "
              f"({json.dumps(manifest['splits'])}); this run took {elapsed:.1f} s")
    return 0


def _preview(args: argparse.Namespace) -> int:
    ontology = Ontology.default()
    samples = [render_sample(args.seed + i, args.seed, args.image_size, ontology=ontology, event_type=t)
               for i, t in enumerate(ontology.type_names)]
    preview_grid(samples, args.preview, cols=4)
    print(f"wrote {args.preview} ({len(samples)} samples, one per event type)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eventworld", help="render EventWorld event images into WebDataset shards",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder for {split}-{000000}.tar shards")
    p.add_argument("--num-samples", type=int, default=2000, help="samples over all splits")
    p.add_argument("--seed", type=int, default=0, help="world seed; same seed -> same bytes")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels")
    p.add_argument("--splits", default="train=0.8,val=0.1,test=0.1", help="split fractions")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--negatives", default=DEFAULT_NEGATIVES,
                   help="hard negatives per kind and per mode (caption edit and template)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--preview", type=Path, help="write a PNG grid (one sample per event type) instead of shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)
