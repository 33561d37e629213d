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
from typing import Any, TypeVar

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
Item = TypeVar("Item")
Out = TypeVar("Out")


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


def _per_event(items: Sequence[Item], event_of: Callable[[Item], Event | None],
               request: Callable[[Item, Event], ChatRequest],
               judge: Callable[[Item, Event, dict[str, Any]], list[Out]],
               client: LLMClient, counts: Counter[str]) -> list[list[Out]]:
    """`judge(item, event, answer)` per item, after one batched LLM call for the items that have an event.

    Shared by descriptions and negatives so both skip and count alike: an item without an event gets []
    ("skipped_no_event"); a failed call ("llm_failed") is judged as an empty answer, so the judge falls back.
    """
    asked = {i: (item, event) for i, item in enumerate(items) if (event := event_of(item)) is not None}
    answers = dict(zip(asked, client.chat_json([request(item, event) for item, event in asked.values()])))
    out: list[list[Out]] = []
    for i in range(len(items)):
        if i not in asked:
            counts["skipped_no_event"] += 1
            out.append([])
            continue
        answer = answers[i]
        counts["llm_failed"] += answer is None
        out.append(judge(*asked[i], answer or {}))
    return out


def llm_descriptions(items: Sequence[tuple[str, Event | None]], client: LLMClient, ontology: Ontology | None = None,
                     n: int = 2, prompt: str = "describe_v1") -> tuple[list[list[Description]], Counter[str]]:
    """Up to `n` "llm" positives per (caption, salient event); a long template where none is valid."""
    onto = ontology or Ontology.default()
    spec = load_prompt(prompt)
    counts: Counter[str] = Counter()

    def request(item: tuple[str, Event | None], event: Event) -> ChatRequest:
        return ChatRequest(_messages(spec, n, "descriptions", {"caption": item[0], "event": event_json(event)}),
                           DESCRIPTIONS_SCHEMA, spec["version"], name="descriptions")

    def judge(item: tuple[str, Event | None], event: Event, answer: dict[str, Any]) -> list[Description]:
        accepted: list[str] = []
        for text in answer.get("descriptions", []):
            problem = description_problem(text, item[0], event, accepted)
            if problem:
                counts[f"rejected_{problem}"] += 1
            elif len(accepted) < n:
                accepted.append(text.strip())
        counts["llm_accepted"] += len(accepted)
        if accepted:
            return [Description("llm", t) for t in accepted]
        counts["fallback"] += 1
        return [Description("long", onto[event.type].render(fillers(event), "long"))]

    return _per_event(items, lambda item: item[1], request, judge, client, counts), counts


def llm_negatives(items: Sequence[tuple[str, Event | None, Sequence[str]]], client: LLMClient,
                  ontology: Ontology | None = None, n: int = 2,
                  prompt: str = "negatives_v1") -> tuple[list[list[Negative]], Counter[str]]:
    """Up to `n` "llm" negatives per (caption, salient event, positives); template type swaps where none is valid."""
    onto = ontology or Ontology.default()
    spec = load_prompt(prompt)
    counts: Counter[str] = Counter()

    def request(item: tuple[str, Event | None, Sequence[str]], event: Event) -> ChatRequest:
        question = {"caption": item[0], "event": event_json(event), "positives": list(item[2])}
        return ChatRequest(_messages(spec, n, "negatives", question), NEGATIVES_SCHEMA, spec["version"],
                           name="negatives")

    def judge(item: tuple[str, Event | None, Sequence[str]], event: Event, answer: dict[str, Any]) -> list[Negative]:
        caption, _, positives = item
        accepted: list[Negative] = []
        for neg in answer.get("negatives", []):
            problem = negative_problem(neg["text"], caption, positives, [x.text for x in accepted])
            if problem:
                counts[f"rejected_{problem}"] += 1
            elif len(accepted) < n:
                changed = {"change": neg["change"], "detail": neg["detail"]}
                accepted.append(Negative("llm", neg["text"].strip(), changed))
        counts["llm_accepted"] += len(accepted)
        if not accepted:
            counts["fallback"] += 1
            accepted = template_negatives(event, onto, positives, n)
        return accepted

    return _per_event(items, lambda item: item[1], request, judge, client, counts), counts


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
