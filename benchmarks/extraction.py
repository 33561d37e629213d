"""Caption event extraction: P/R/F1 of triggers, event mentions and arguments, and captions/s on one core.

    python benchmarks/extraction.py --gold GOLD.jsonl --pred PRED.jsonl [--json]
    python benchmarks/extraction.py --gold GOLD.jsonl --backend rules [--input IN.jsonl] [--limit N] [--json]

Gold lines: {"id", "caption" or "text", "events": [...]} (e.g. /work/shared/data/voa_captions_ie.dev.jsonl);
pred lines: the `data-gen extract` output {"id", "events"}. Gold and predicted events are mapped onto the
ontology with `Ontology.normalize` (its `aliases`); events of other types are dropped from both.

Scoring (per caption, one-to-one greedy matching, micro-averaged):
- trigger identification: the trigger's character span equals a gold trigger's span;
- event mention: span and type equal;
- argument identification: (event type, argument text) matches a gold argument of an event of that type in
  the caption (the usual ACE criterion: type + argument, not the exact trigger);
- argument role: (event type, role, argument text) matches.
Argument texts: gold texts are a system's canonical entity names ("Park Geun-hye" for the mention
"President Park Geun - hye"), so two texts match when their normalised word sequences (lower case,
alphanumeric words, leading articles dropped) are equal or their head words (last word) are equal.

Speed: the backend's `extract` over all input captions on one thread (OMP/BLAS threads 1, torch not imported),
next to two peers: the backend's own spaCy pipes run over whole captions (`pipeline_only`: what parsing costs
without the trigger-word window) and the same spaCy package with all its pipes (`spacy_all_pipes`: plain
`spacy.load(...)` + `nlp.pipe`). `captions_per_s` divides by the
process's CPU time (robust on a shared machine); `wall_captions_per_s` by wall time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.ontology import Ontology  # noqa: E402
from align.schema import Event  # noqa: E402
from data_gen.jsonl import JSONLineError, read_json_lines  # noqa: E402

_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = frozenset({"the", "a", "an"})


def words(text: str) -> tuple[str, ...]:
    """Lower-case alphanumeric words without leading articles: "the Park Geun-hye" -> (park, geun, hye)."""
    ws = _WORD.findall(text.lower())
    while ws and ws[0] in _ARTICLES:
        ws = ws[1:]
    return tuple(ws)


def text_match(a: str, b: str) -> bool:
    """Fair argument text match: equal normalised words, or the same head (last) word."""
    wa, wb = words(a), words(b)
    return bool(wa) and bool(wb) and (wa == wb or wa[-1] == wb[-1])


class PRF:
    """Counts of one measure; `add` takes per-caption (pred, gold, correct)."""

    def __init__(self) -> None:
        self.pred = self.gold = self.correct = 0

    def add(self, pred: int, gold: int, correct: int) -> None:
        self.pred, self.gold, self.correct = self.pred + pred, self.gold + gold, self.correct + correct

    def as_dict(self) -> dict[str, float | int]:
        p = self.correct / self.pred if self.pred else 0.0
        r = self.correct / self.gold if self.gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"p": round(p, 4), "r": round(r, 4), "f1": round(f, 4),
                "pred": self.pred, "gold": self.gold, "correct": self.correct}


def _match(pred: Sequence[Any], gold: Sequence[Any], same: Callable[[Any, Any], bool]) -> int:
    """Greedy one-to-one matches between two lists."""
    free = list(gold)
    n = 0
    for p in pred:
        for i, g in enumerate(free):
            if same(p, g):
                del free[i]
                n += 1
                break
    return n


MEASURES = ("trigger", "event", "argument_id", "argument_role")


def score(gold: dict[str, list[Event]], pred: dict[str, list[Event]]) -> dict[str, Any]:
    """Micro P/R/F1 of the four measures plus per-type event and argument-role scores, over gold's ids."""
    total = {m: PRF() for m in MEASURES}
    per_type: dict[str, dict[str, PRF]] = defaultdict(lambda: {"event": PRF(), "argument_role": PRF()})
    for key, gold_events in gold.items():
        pred_events = pred.get(key, [])
        gspan = [(e.trigger.char_start, e.trigger.char_end) for e in gold_events]
        pspan = [(e.trigger.char_start, e.trigger.char_end) for e in pred_events]
        total["trigger"].add(len(pspan), len(gspan), _match(pspan, gspan, lambda a, b: a == b))
        for t in {e.type for e in gold_events} | {e.type for e in pred_events}:
            ge = [s for s, e in zip(gspan, gold_events) if e.type == t]
            pe = [s for s, e in zip(pspan, pred_events) if e.type == t]
            n = _match(pe, ge, lambda a, b: a == b)
            total["event"].add(len(pe), len(ge), n)
            per_type[t]["event"].add(len(pe), len(ge), n)
            ga = [(a.role, a.text) for e in gold_events if e.type == t for a in e.arguments]
            pa = [(a.role, a.text) for e in pred_events if e.type == t for a in e.arguments]
            total["argument_id"].add(len(pa), len(ga), _match(pa, ga, lambda a, b: text_match(a[1], b[1])))
            n = _match(pa, ga, lambda a, b: a[0] == b[0] and text_match(a[1], b[1]))
            total["argument_role"].add(len(pa), len(ga), n)
            per_type[t]["argument_role"].add(len(pa), len(ga), n)
    return {**{m: total[m].as_dict() for m in MEASURES},
            "per_type": {t: {k: v.as_dict() for k, v in d.items()} for t, d in sorted(per_type.items())},
            "captions": len(gold)}


def _row(row: dict[str, Any]) -> tuple[str, list[Event], str | None]:
    """(id, events, caption text or None) of one line; ids must already be strings, as `data-gen extract` writes."""
    key, raw = row.get("id"), row.get("events") or []
    if not isinstance(key, str):
        raise ValueError("expected an object with a string 'id'")
    if not isinstance(raw, list):
        raise ValueError(f"'events' must be a list, got {type(raw).__name__}")
    events = [Event.from_dict(e, key, f"events[{i}]") for i, e in enumerate(raw)]
    text = row.get("text", row.get("caption"))
    return key, events, text if isinstance(text, str) else None


def load_events(path: Path, ontology: Ontology) -> tuple[dict[str, list[Event]], dict[str, str]]:
    """id -> normalised events, and id -> caption text when the file has one; a bad line exits with file:line."""
    events, texts = {}, {}
    try:
        for key, evs, text in read_json_lines(path, _row):
            events[key] = [m for m in (ontology.normalize(e) for e in evs) if m is not None]
            if text is not None:
                texts[key] = text
    except JSONLineError as e:
        raise SystemExit(str(e)) from e
    return events, texts


def run_backend(backend: str, texts: dict[str, str], options: dict[str, Any]) -> tuple[dict[str, list[Event]],
                                                                                         dict[str, float]]:
    """Run a backend over the texts; returns predictions and timings (captions/s, backend and peer)."""
    from data_gen.extract import get_extractor

    extractor = get_extractor(backend, **options)
    ids, batch = list(texts), [texts[k] for k in texts]
    extractor.extract(batch[:64])  # warm-up: loads the pipeline
    w0, c0 = time.perf_counter(), time.process_time()
    out = extractor.extract(batch)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    timing = {"captions_per_s": round(len(batch) / cpu, 1), "wall_captions_per_s": round(len(batch) / wall, 1),
              "captions": len(batch)}
    nlp = getattr(extractor, "nlp", None)
    if nlp is not None:
        import spacy

        size = getattr(extractor, "batch_size", 256)
        peers = {"pipeline_only_captions_per_s": nlp,  # the same pipes over whole captions, no rules
                 "spacy_all_pipes_captions_per_s": spacy.load(nlp.meta["lang"] + "_" + nlp.meta["name"])}
        for key, pipeline in peers.items():
            c0 = time.process_time()
            for _ in pipeline.pipe(batch, batch_size=size):
                pass
            timing[key] = round(len(batch) / (time.process_time() - c0), 1)
    return dict(zip(ids, out)), timing


def _table(result: dict[str, Any]) -> str:
    rows = [f"{'measure':28s} {'P':>7s} {'R':>7s} {'F1':>7s} {'pred':>6s} {'gold':>6s}"]
    for m in MEASURES:
        d = result[m]
        rows.append(f"{m:28s} {d['p']:7.3f} {d['r']:7.3f} {d['f1']:7.3f} {d['pred']:6d} {d['gold']:6d}")
    for t, d in result["per_type"].items():
        for m in ("event", "argument_role"):
            x = d[m]
            rows.append(f"  {t[:18] + ' ' + m[:8]:26s} {x['p']:7.3f} {x['r']:7.3f} {x['f1']:7.3f} "
                        f"{x['pred']:6d} {x['gold']:6d}")
    if "speed" in result:
        rows.append("speed: " + ", ".join(f"{k}={v}" for k, v in result["speed"].items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, required=True)
    parser.add_argument("--pred", type=Path, help="predictions (data-gen extract output)")
    parser.add_argument("--backend", help="run this extractor backend instead of reading --pred")
    parser.add_argument("--input", type=Path, help="captions for --backend (default: the gold file)")
    parser.add_argument("--pipeline", default=None, help="spaCy pipeline of the rules backend")
    parser.add_argument("--no-ner", action="store_true", help="rules backend without the NER pipe (faster)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N gold captions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (args.pred is None) == (args.backend is None):
        parser.error("give exactly one of --pred and --backend")
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]  # keep spaCy/thinc torch-free
    ontology = Ontology.default()
    gold, gold_texts = load_events(args.gold, ontology)
    if args.limit is not None:
        gold = dict(list(gold.items())[:args.limit])
    result: dict[str, Any] = {"gold": str(args.gold)}
    if args.pred is not None:
        pred, _ = load_events(args.pred, ontology)
        result["pred"] = str(args.pred)
    else:
        texts = load_events(args.input, ontology)[1] if args.input else gold_texts
        texts = {k: texts[k] for k in gold if k in texts}
        if len(texts) < len(gold):
            raise SystemExit(f"{args.input or args.gold}: {len(gold) - len(texts)} gold captions have no text")
        options: dict[str, Any] = {}
        if args.pipeline:
            options["pipeline"] = args.pipeline
        if args.no_ner:
            options["ner"] = False
        pred, result["speed"] = run_backend(args.backend, texts, options)
        result["backend"] = args.backend
        pred = {k: [m for m in (ontology.normalize(e) for e in v) if m is not None] for k, v in pred.items()}
    result.update(score(gold, pred))
    result["gold_type_counts"] = dict(Counter(e.type for evs in gold.values() for e in evs))
    print(json.dumps(result) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
