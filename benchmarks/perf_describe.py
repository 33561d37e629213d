"""Throughput of `data-gen describe` per core: records/s for template and caption-edit negatives.

Times the per-record work of the command (parse the JSON line, normalise and merge events, pick the salient
one, four positive kinds, one negative of each rule kind, serialise), single-process, so records/s is per
core. The floor row (JSON parse + serialise only) shows how much of the time is the describe work itself.
Target: >= 2,000 records/s per core in each mode.

    python benchmarks/perf_describe.py [--json] [--input /work/shared/data/voa_captions_ie.dev.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.ontology import Ontology  # noqa: E402
from data_gen.describe import DescribeConfig, parse_record, process_record  # noqa: E402
from data_gen.negatives import EntityPool  # noqa: E402
from data_gen.salient import count_types  # noqa: E402

TARGET = 2000.0
NAMES = ["police", "protesters", "soldiers", "Aleppo", "Kyiv", "a truck", "President Park Geun - hye", "reporters",
         "rebels", "the White House", "Moon Jae - in", "a rifle", "money", "a phone", "civilians", "Kabul"]


def synthetic(n: int, ontology: Ontology, seed: int = 0) -> list[str]:
    """VOA-like lines: 1-3 events per caption, trigger and argument spans, a dateline tail."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        parts, events = [], []
        for _ in range(rng.randint(1, 3)):
            t = ontology[rng.choice(ontology.type_names)]
            roles = rng.sample(t.role_names, rng.randint(0, len(t.role_names)))
            texts = [rng.choice(NAMES) for _ in roles]
            sentence = " ".join(([texts[0]] if texts else ["Someone"]) + [t.trigger] + texts[1:2])
            start = len(" . ".join(parts)) + (3 if parts else 0)
            trig = start + sentence.index(t.trigger)
            events.append({"type": t.name, "trigger": {"text": t.trigger, "char_start": trig,
                                                       "char_end": trig + len(t.trigger)},
                           "arguments": [{"role": r, "text": x} for r, x in zip(roles, texts)]})
            parts.append(sentence + " in the capital , Jan . 1 , 2017")
        lines.append(json.dumps({"id": f"syn_{i}", "caption": " . ".join(parts) + " .", "events": events}))
    return lines


def run(lines: list[str], ontology: Ontology, modes: tuple[str, ...] | None) -> tuple[float, Counter[str]]:
    """Seconds for all lines; modes None times the JSON floor only."""
    parsed = [parse_record(line, f"line {i}", ontology) for i, line in enumerate(lines, 1)]
    type_counts = count_types(events for _, events, _ in parsed)
    pool = EntityPool.from_events(e for _, events, _ in parsed for e in events)
    config = DescribeConfig(modes=modes or ())
    stats: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i, line in enumerate(lines, 1):
        if modes is None:
            json.dumps(json.loads(line))
            continue
        record, events, _ = parse_record(line, f"line {i}", ontology)
        json.dumps(process_record(record, events, ontology, config, type_counts, pool, stats), ensure_ascii=False)
    return time.perf_counter() - t0, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--input", type=Path, default=None, help="JSONL like the shared VOA file (default: synthetic)")
    parser.add_argument("--records", type=int, default=5000, help="synthetic records")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    ontology = Ontology.default()
    if args.input:
        lines = [line for line in args.input.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        lines = synthetic(args.records, ontology)
    rows = {}
    for name, modes in (("json floor", None), ("template", ("template",)), ("caption_edit", ("caption_edit",))):
        best, stats = min((run(lines, ontology, modes) for _ in range(args.repeats)), key=lambda r: r[0])
        made = {k.split(".")[-1]: v for k, v in sorted(stats.items()) if k.startswith("negatives.")}
        rows[name] = {"records": len(lines), "seconds": round(best, 4), "records_per_s": round(len(lines) / best, 1),
                      "negatives": made}
    result = {"input": str(args.input or f"synthetic({args.records})"), "target_records_per_s": TARGET,
              "modes": rows, "meets_target": all(rows[m]["records_per_s"] >= TARGET
                                                 for m in ("template", "caption_edit"))}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"input: {result['input']}  (single process = per core; target >= {TARGET:,.0f} records/s)")
    print(f"{'mode':<14}{'records':>9}{'seconds':>10}{'records/s':>12}  negatives made")
    for name, r in rows.items():
        print(f"{name:<14}{r['records']:>9}{r['seconds']:>10.3f}{r['records_per_s']:>12,.0f}  {r['negatives']}")
    print("meets target" if result["meets_target"] else "BELOW TARGET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
