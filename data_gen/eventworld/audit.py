"""Which role-swap hard negatives an EventWorld picture can verify.

A role swap exchanges two argument phrases. A viewer can tell the negative from the positive only when the two
phrases name things that are drawn differently: different entity types (uniforms, head gear, what each role's
pose shows), a different number of figures, or, for two places, different building styles. Phrases that differ
only in text the picture never shows (a city name, a personal name) make a negative no model can verify: it
caps role_swap accuracy however good the model is. The audit runs over finished shards:

    python -m data_gen.eventworld.audit 'shards/eventworld/test-*.tar' [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import Counter
from collections.abc import Iterable

from align.schema import Event, Negative, Sample
from data_gen.eventworld.captions import building_style, is_plural
from data_gen.shards import iter_records

VERDICTS = ("entity type", "number", "building style", "unverifiable", "not a pair")


def swap_verdict(event: Event, negative: Negative) -> str:
    """What the picture shows that tells this role-swap negative from the positive ('unverifiable': nothing)."""
    by_text = {a.text: a for a in event.arguments}
    args = [by_text.get(text) for text in negative.changed.get("roles", {})]
    if len(args) != 2 or args[0] is None or args[1] is None:
        return "not a pair"  # one argument moved to another role, or text that is no argument of the event
    a, b = args
    if a.entity_type != b.entity_type:
        return "entity type"
    if a.entity_type == "place":
        sa, sb = building_style(a.text), building_style(b.text)
        return "building style" if sa is not None and sb is not None and sa != sb else "unverifiable"
    return "number" if is_plural(a.text) != is_plural(b.text) else "unverifiable"


def audit(samples: Iterable[Sample]) -> dict[str, Counter[str]]:
    """Role-swap verdicts per event type over the samples' salient events."""
    out: dict[str, Counter[str]] = {}
    for s in samples:
        event = s.salient_event
        if event is None:
            continue
        for n in s.negatives:
            if n.kind == "role_swap":
                out.setdefault(event.type, Counter())[swap_verdict(event, n)] += 1
    return dict(sorted(out.items()))


def table(counts: dict[str, Counter[str]]) -> str:
    head = ["event type", *VERDICTS, "total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total: Counter[str] = Counter()
    for etype, c in [*counts.items(), ("all", total)]:
        if etype != "all":
            total.update(c)
        lines.append("| " + " | ".join([etype, *(str(c[v]) for v in VERDICTS), str(sum(c.values()))]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_gen.eventworld.audit", description=__doc__.splitlines()[0])
    p.add_argument("shards", help="shard glob, e.g. 'shards/eventworld/test-*.tar'")
    p.add_argument("--json", action="store_true", help="also print the counts as JSON")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(args.shards))
    if not paths:
        p.error(f"no shards match {args.shards!r}")
    counts = audit(iter_records(paths))
    if args.json:
        print(json.dumps({t: dict(c) for t, c in counts.items()}, indent=1))
    print(table(counts), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
