"""Pick the salient event of a caption: the one the image most likely shows.

A caption often mentions several events (a meeting, an earlier attack, a planned trip), but the image shows
one. Following CLIP-Event, events of the same type are merged first (their arguments pooled), then each
type is scored by (a) how common the type is in the corpus (frequent types are the visual, newsworthy
ones: attacks, protests, meetings), (b) the share of its roles that are filled (a well-specified event is
more likely the described one), and (c) an optional image-text prior per type, e.g. a zero-shot image
classifier's probability that the image shows "a photo of {type name}".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from align.ontology import Ontology
from align.schema import Argument, Event
from data_gen.caption_edit import norm


@dataclass(frozen=True)
class SalienceWeights:
    """Weights of the three evidence terms; each term lies in [0, 1]."""

    frequency: float = 1.0
    roles: float = 1.0
    image_prior: float = 2.0  # image evidence, when given, outweighs text-only cues


def count_types(events_per_caption: Iterable[Iterable[Event]]) -> Counter[str]:
    """Corpus type counts for `select_salient`: each type counted once per caption it appears in."""
    counts: Counter[str] = Counter()
    for events in events_per_caption:
        counts.update({e.type for e in events})
    return counts


def merge_same_type(events: list[Event]) -> list[Event]:
    """One event per type, in order of first mention. The trigger is that of the event with most arguments
    (the first on ties); arguments are pooled, dropping repeats of the same (role, text)."""
    groups: dict[str, list[Event]] = {}
    for e in events:
        groups.setdefault(e.type, []).append(e)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        primary = max(group, key=lambda e: len(e.arguments))  # max keeps the first of equals
        seen: set[tuple[str, str]] = set()
        args: list[Argument] = []
        for e in [primary] + [e for e in group if e is not primary]:
            for a in e.arguments:
                if (a.role, norm(a.text)) not in seen:
                    seen.add((a.role, norm(a.text)))
                    args.append(a)
        merged.append(Event(primary.type, primary.trigger, args))
    return merged


def salience(event: Event, ontology: Ontology, type_counts: Mapping[str, int] | None = None,
             image_prior: Mapping[str, float] | None = None, weights: SalienceWeights = SalienceWeights()) -> float:
    """Score of one (merged) event; higher is more salient."""
    score = 0.0
    top = max(type_counts.values(), default=0) if type_counts else 0
    if top > 0:
        score += weights.frequency * math.log1p(type_counts.get(event.type, 0)) / math.log1p(top)
    roles = ontology[event.type].role_names
    filled = {a.role for a in event.arguments if a.role in roles}
    score += weights.roles * len(filled) / len(roles)
    if image_prior:
        score += weights.image_prior * float(image_prior.get(event.type, 0.0))
    return score


def select_salient(events: list[Event], ontology: Ontology, type_counts: Mapping[str, int] | None = None,
                   image_prior: Mapping[str, float] | None = None,
                   weights: SalienceWeights = SalienceWeights()) -> tuple[list[Event], int | None]:
    """Merge same-type events and return (merged events, index of the salient one); the index is None
    when there are no events. Events must already use ontology types (see `Ontology.normalize`).
    Ties go to the earliest mentioned type."""
    merged = merge_same_type(events)
    if not merged:
        return merged, None
    scores = [salience(e, ontology, type_counts, image_prior, weights) for e in merged]
    return merged, max(range(len(merged)), key=lambda i: (scores[i], -i))
