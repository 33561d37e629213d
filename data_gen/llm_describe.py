"""LLM-written positive descriptions and hard negatives (kind "llm"), validated, with template fallback.

An LLM writes more varied sentences than templates, but it can drop arguments, invent participants or
write a "negative" that is still true. Every sentence is checked; an item with no valid sentence falls
back to `EventType.render` templates. Both outcomes are counted, so a run reports how often the LLM helped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from align.ontology import EventType, Ontology
from align.schema import Description, Event, Negative
from data_gen.extract_llm import event_json, load_prompt
from data_gen.llm import ChatRequest, LLMClient

DESCRIPTIONS_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["descriptions"],
                       "properties": {"descriptions": {"type": "array", "items": {"type": "string"}}}}
NEGATIVES_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["negatives"],
    "properties": {"negatives": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["text", "change", "detail"],
        "properties": {"text": {"type": "string"}, "change": {"type": "string", "enum": ["type", "roles", "argument"]},
                       "detail": {"type": "string"}}}}},
}
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")
_MAX_CHARS = 300


# ---------------------------------------------------------------------- checks
def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def invented_names(text: str, caption: str) -> list[str]:
    """Capitalised, name-like words of `text` that the caption never uses (sentence-initial words excepted)."""
    known = {w.lower() for w in _WORD.findall(caption)}
    names = []
    for m in _WORD.finditer(text):
        word = m.group()
        before = text[: m.start()].rstrip()
        if word[0].isupper() and word.lower() not in known and before and before[-1] not in ".!?:;\"'(":
            names.append(word)
    return names


def description_problem(text: str, caption: str, event: Event, accepted: Sequence[str]) -> str | None:
    """Why `text` is not a valid positive for `event` (None when it is)."""
    if not text.strip() or len(text) > _MAX_CHARS:
        return "empty_or_too_long"
    low = _norm(text)
    if any(_norm(a.text) not in low for a in event.arguments):
        return "missing_argument"
    if invented_names(text, caption):
        return "invented_name"
    if low in {_norm(caption), *map(_norm, accepted)}:
        return "duplicate"
    return None


def negative_problem(text: str, caption: str, positives: Sequence[str], accepted: Sequence[str]) -> str | None:
    """Why `text` is not a valid hard negative (None when it is)."""
    if not text.strip() or len(text) > _MAX_CHARS:
        return "empty_or_too_long"
    if invented_names(text, caption):
        return "invented_name"
    if _norm(text) in {_norm(caption), *map(_norm, positives)}:
        return "same_as_positive"
    if _norm(text) in set(map(_norm, accepted)):
        return "duplicate"
    return None


# ---------------------------------------------------------------------- templates (fallback)
def fillers(event: Event) -> dict[str, list[str]]:
    """Role -> argument texts, in order."""
    out: dict[str, list[str]] = {}
    for a in event.arguments:
        out.setdefault(a.role, []).append(a.text)
    return out


def _map_roles(fill: dict[str, list[str]], src: EventType, dst: EventType) -> dict[str, list[str]]:
    """Carry fillers to another type: same-named roles first, the rest in role order."""
    mapped = {r: v for r, v in fill.items() if r in dst.roles}
    rest_src = [r for r in src.role_names if r in fill and r not in dst.roles]
    rest_dst = [r for r in dst.role_names if r not in mapped]
    mapped.update({d: fill[s] for s, d in zip(rest_src, rest_dst)})
    return mapped


def template_negatives(event: Event, ontology: Ontology, positives: Sequence[str], n: int) -> list[Negative]:
    """Type-swap negatives from templates: the same fillers under the most confusable types."""
    src, fill = ontology[event.type], fillers(event)
    seen = {_norm(p) for p in positives}
    out: list[Negative] = []
    for other in src.confusable:
        text = ontology[other].render(_map_roles(fill, src, ontology[other]), "long")
        if len(out) < n and _norm(text) not in seen:
            seen.add(_norm(text))
            out.append(Negative("type_swap", text, {"type": [event.type, other]}))
    return out


# ---------------------------------------------------------------------- requests
def _messages(prompt: dict[str, Any], n: int, answer_key: str, question: dict[str, Any]) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": prompt["system"].format(n=n)}]
    for ex in prompt["examples"]:
        shown = {k: v for k, v in ex.items() if k != answer_key}
        turns.append({"role": "user", "content": json.dumps(shown, ensure_ascii=False)})
        turns.append({"role": "assistant", "content": json.dumps({answer_key: ex[answer_key]}, ensure_ascii=False)})
    turns.append({"role": "user", "content": json.dumps(question, ensure_ascii=False)})
    return turns


def llm_descriptions(items: Sequence[tuple[str, Event | None]], client: LLMClient, ontology: Ontology | None = None,
                     n: int = 2, prompt: str = "describe_v1") -> tuple[list[list[Description]], Counter[str]]:
    """Up to `n` "llm" positives per (caption, salient event); a long template where none is valid."""
    ontology = ontology or Ontology.default()
    spec = load_prompt(prompt)
    counts: Counter[str] = Counter()
    todo = {i: (caption, event) for i, (caption, event) in enumerate(items) if event is not None}
    requests = [ChatRequest(_messages(spec, n, "descriptions", {"caption": c, "event": event_json(e)}),
                            DESCRIPTIONS_SCHEMA, spec["version"], name="descriptions") for c, e in todo.values()]
    answers = dict(zip(todo, client.chat_json(requests)))
    out: list[list[Description]] = []
    for i, (caption, event) in enumerate(items):
        if event is None:
            counts["skipped_no_event"] += 1
            out.append([])
            continue
        accepted: list[str] = []
        answer = answers[i]
        counts["llm_failed"] += answer is None
        for text in (answer or {}).get("descriptions", []):
            problem = description_problem(text, caption, event, accepted)
            if problem:
                counts[f"rejected_{problem}"] += 1
            elif len(accepted) < n:
                accepted.append(text.strip())
        counts["llm_accepted"] += len(accepted)
        if accepted:
            out.append([Description("llm", t) for t in accepted])
        else:
            counts["fallback"] += 1
            out.append([Description("long", ontology[event.type].render(fillers(event), "long"))])
    return out, counts


def llm_negatives(items: Sequence[tuple[str, Event | None, Sequence[str]]], client: LLMClient,
                  ontology: Ontology | None = None, n: int = 2,
                  prompt: str = "negatives_v1") -> tuple[list[list[Negative]], Counter[str]]:
    """Up to `n` "llm" negatives per (caption, salient event, positives); template type swaps where none is valid."""
    ontology = ontology or Ontology.default()
    spec = load_prompt(prompt)
    counts: Counter[str] = Counter()
    todo = {i: (caption, event, list(pos)) for i, (caption, event, pos) in enumerate(items) if event is not None}
    requests = [ChatRequest(_messages(spec, n, "negatives", {"caption": c, "event": event_json(e), "positives": p}),
                            NEGATIVES_SCHEMA, spec["version"], name="negatives") for c, e, p in todo.values()]
    answers = dict(zip(todo, client.chat_json(requests)))
    out: list[list[Negative]] = []
    for i, (caption, event, positives) in enumerate(items):
        if event is None:
            counts["skipped_no_event"] += 1
            out.append([])
            continue
        accepted: list[Negative] = []
        answer = answers[i]
        counts["llm_failed"] += answer is None
        for neg in (answer or {}).get("negatives", []):
            problem = negative_problem(neg["text"], caption, positives, [x.text for x in accepted])
            if problem:
                counts[f"rejected_{problem}"] += 1
            elif len(accepted) < n:
                changed = {"change": neg["change"], "detail": neg["detail"]}
                accepted.append(Negative("llm", neg["text"].strip(), changed))
        counts["llm_accepted"] += len(accepted)
        if not accepted:
            counts["fallback"] += 1
            accepted = template_negatives(event, ontology, positives, n)
        out.append(accepted)
    return out, counts


def llm_extra(client: LLMClient, ontology: Ontology | None = None, n_positives: int = 2, n_negatives: int = 2,
              counts: Counter[str] | None = None) -> Callable[[Sequence[dict[str, Any]]], None]:
    """A `data_gen.describe.run_describe` hook adding `llm` positives and negatives to each chunk of records.

    Records are changed in place; fallback texts already in a record are not added twice. Counts go into
    `counts` (prefixed `llm_positives.` / `llm_negatives.`) so the run's report shows how often the LLM helped.
    """
    ontology = ontology or Ontology.default()
    counts = counts if counts is not None else Counter()

    def extra(chunk: Sequence[dict[str, Any]]) -> None:
        events = [None if r.get("salient") is None else Event.from_dict(r["events"][r["salient"]], r.get("id"))
                  for r in chunk]
        if n_positives:
            made, got = llm_descriptions([(r["caption"], e) for r, e in zip(chunk, events)], client, ontology,
                                         n_positives)
            counts.update({f"llm_positives.{k}": v for k, v in got.items()})
            for r, descs in zip(chunk, made):
                have = {d["text"] for d in r["positives"]}
                r["positives"] += [d.to_dict() for d in descs if d.text not in have]
        if n_negatives:
            items = [(r["caption"], e, [d["text"] for d in r["positives"]]) for r, e in zip(chunk, events)]
            made_neg, got = llm_negatives(items, client, ontology, n_negatives)
            counts.update({f"llm_negatives.{k}": v for k, v in got.items()})
            for r, negs in zip(chunk, made_neg):
                have = {n["text"] for n in r["negatives"]}
                r["negatives"] += [n.to_dict() for n in negs if n.text not in have]

    return extra
