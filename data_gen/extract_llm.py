"""Caption event extraction by an LLM: structured output restricted to the ontology, few-shot, spans located.

The model returns event types, trigger texts and argument texts; character spans are found by locating
those texts in the caption. Texts that cannot be found are dropped (the model paraphrased or invented
them) and counted in `LLMExtractor.stats`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.llm import ChatRequest, LLMClient, LLMConfig

PROMPTS = Path(__file__).with_name("prompts")


@cache
def load_prompt(name: str) -> dict[str, Any]:
    """A versioned prompt file from `data_gen/prompts/` (`version`, `system`, `examples`)."""
    path = PROMPTS / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(k in data for k in ("version", "system", "examples")):
        raise ValueError(f"{path}: a prompt file needs 'version', 'system' and 'examples'")
    return data


def event_json(event: Event) -> dict[str, Any]:
    """The span-free view of an event shown to (and expected from) the model."""
    return {"type": event.type, "trigger": event.trigger.text,
            "arguments": [{"role": a.role, "text": a.text} for a in event.arguments]}


def events_schema(ontology: Ontology) -> dict[str, Any]:
    """JSON schema of the answer: one event shape per type, so each type only admits its own roles."""
    shapes = []
    for t in ontology.types.values():
        argument = {"type": "object", "additionalProperties": False, "required": ["role", "text"],
                    "properties": {"role": {"type": "string", "enum": list(t.role_names)}, "text": {"type": "string"}}}
        shapes.append({"type": "object", "additionalProperties": False, "required": ["type", "trigger", "arguments"],
                       "properties": {"type": {"type": "string", "enum": [t.name]}, "trigger": {"type": "string"},
                                      "arguments": {"type": "array", "items": argument}}})
    return {"type": "object", "additionalProperties": False, "required": ["events"],
            "properties": {"events": {"type": "array", "items": {"anyOf": shapes}}}}


def _ontology_lines(ontology: Ontology) -> str:
    return "\n".join(f"- {t.name} ({t.plain_name}): roles {', '.join(t.role_names)}" for t in ontology.types.values())


def locate(text: str, phrase: str, near: int | None = None) -> tuple[int, int] | None:
    """Char span of `phrase` in `text` as whole words, ignoring case and spacing; the match nearest `near` wins."""
    words = re.findall(r"\S+", phrase.strip().strip(".,;:!?\"'"))
    if not words:
        return None
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    spans = [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    if not spans:
        return None
    return spans[0] if near is None else min(spans, key=lambda s: abs(s[0] - near))


class LLMExtractor:
    """Extractor backend "llm" (see data_gen.extract): one structured request per caption, cached."""

    name = "llm"

    def __init__(self, config: LLMConfig | None = None, *, client: LLMClient | None = None,
                 ontology: Ontology | None = None, prompt: str = "extract_v1", **options: Any) -> None:
        self.client = client or LLMClient(config or LLMConfig(**options))
        self.ontology = ontology or Ontology.default()
        self.prompt = load_prompt(prompt)
        self.schema = events_schema(self.ontology)
        self.stats: Counter[str] = Counter()
        self._shots = self._few_shot()

    def _few_shot(self) -> list[dict[str, str]]:
        """Example turns, keeping only the types and roles this ontology has (so custom ontologies work)."""
        system = self.prompt["system"].format(ontology=_ontology_lines(self.ontology))
        turns = [{"role": "system", "content": system}]
        for ex in self.prompt["examples"]:
            events = []
            for e in ex["events"]:
                if e["type"] in self.ontology:
                    roles = self.ontology[e["type"]].roles
                    events.append({**e, "arguments": [a for a in e["arguments"] if a["role"] in roles]})
            turns.append({"role": "user", "content": f"Caption: {ex['caption']}"})
            turns.append({"role": "assistant", "content": json.dumps({"events": events}, ensure_ascii=False)})
        return turns

    def request(self, text: str) -> ChatRequest:
        messages = [*self._shots, {"role": "user", "content": f"Caption: {text}"}]
        return ChatRequest(messages, self.schema, self.prompt["version"], name="events")

    def extract(self, texts: Sequence[str]) -> list[list[Event]]:
        answers = self.client.chat_json([self.request(t) for t in texts])
        out = []
        for text, answer in zip(texts, answers):
            self.stats["texts"] += 1
            if answer is None:
                self.stats["failed_texts"] += 1
                out.append([])
            else:
                out.append(self.to_events(text, answer["events"]))
        return out

    def to_events(self, text: str, raw_events: list[dict[str, Any]]) -> list[Event]:
        """Turn answered events into Events with spans; drop what cannot be located or typed, counting it."""
        events: list[Event] = []
        seen = set()
        for raw in raw_events:
            if raw["type"] not in self.ontology:
                self.stats["dropped_events_unknown_type"] += 1
                continue
            span = locate(text, raw["trigger"])
            if span is None:
                self.stats["dropped_events_trigger_not_found"] += 1
                continue
            roles = self.ontology[raw["type"]].roles
            args, arg_seen = [], set()
            for a in raw["arguments"]:
                where = locate(text, a["text"], near=span[0])
                if a["role"] not in roles:
                    self.stats["dropped_arguments_bad_role"] += 1
                elif where is None:
                    self.stats["dropped_arguments_not_found"] += 1
                elif (a["role"], where) not in arg_seen:
                    arg_seen.add((a["role"], where))
                    args.append(Argument(a["role"], text[where[0]:where[1]], char_start=where[0], char_end=where[1]))
            if (raw["type"], span) in seen:
                self.stats["dropped_events_duplicate"] += 1
                continue
            seen.add((raw["type"], span))
            events.append(Event(raw["type"], Trigger(text[span[0]:span[1]], span[0], span[1]), args))
            self.stats["events"] += 1
            self.stats["arguments"] += len(args)
        return events
