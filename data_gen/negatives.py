"""Hard negative descriptions of an event: type swap, role swap and argument replacement.

Each negative changes one thing about the salient event, so the only way to tell it from the positive is to
understand that thing (CLIP-Event, Li et al. 2022). Two modes:
- `template`: re-render the ontology's long template with the changed event.
- `caption_edit`: edit the caption's clause of the event (`caption_edit.clause`, the same text as the
  `caption_edit` positive): the trigger word or argument spans are rewritten in place.
Guarantees: a negative never equals (case/whitespace-insensitively) a positive, the unchanged base text or
another negative; output is a function of the inputs and the `random.Random` state; a kind that cannot
apply yields fewer (or no) negatives rather than a fake one; `changed` records the change and the mode.
A negative must be wrong for the picture, not wrong as English (a grammar slip would let a text-only model
spot it): caption edits keep subject and verb agreeing and a determiner's number (`caption_edit.edit_clause`),
give a noun trigger the new type's noun ("before a meeting" -> "before a protest"), never move a pronoun out of its
case and never add a doubled word; a candidate that would break one of these is skipped for the next.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

from align.ontology import EventType, Ontology
from align.schema import Argument, Event, Negative
from data_gen.caption_edit import (
    Clause,
    clause,
    edit_clause,
    match_tokenisation,
    norm,
    replace_spans,
    trigger_slot,
)
from data_gen.grammar import doubled_words, inflect_trigger

Mode = Literal["template", "caption_edit"]
MODES: tuple[str, ...] = ("template", "caption_edit")
RULE_KINDS: tuple[str, ...] = ("type_swap", "role_swap", "arg_replace")
DEFAULT_COUNTS: Mapping[str, int] = {"type_swap": 1, "role_swap": 1, "arg_replace": 1}
EntityPoolFn = Callable[[Argument], Sequence[str]]
Candidate = tuple[str, dict[str, Any]]

_POOL_TRIES = 8  # random draws per argument before arg_replace gives up on it
# Silver IE output tags pronouns and determiners as arguments; they make no meaningful replacement.
_NOT_ENTITIES = frozenset((
    "it", "its", "they", "them", "their", "he", "him", "his", "she", "her", "we", "us", "our", "you", "i", "me", "my",
    "this", "that", "these", "those", "which", "who", "whom", "what", "one", "ones", "some", "someone", "something",
    "there", "here", "all", "both", "each",
))

_CASED_PRONOUNS = frozenset(("i", "me", "he", "him", "she", "her", "we", "us", "they", "them", "who", "whom"))


class EntityPool:
    """Argument texts seen in a corpus, keyed by entity type when known, else by role: the default source of
    replacement entities for `arg_replace`. Call it with an argument to get its candidates."""

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}
        self._seen: dict[str, set[str]] = {}
        self._sorted: dict[str, tuple[str, ...]] = {}  # sorted views: candidates do not depend on input order

    @staticmethod
    def _key(arg: Argument) -> str:
        return f"entity:{arg.entity_type}" if arg.entity_type else f"role:{arg.role}"

    def add(self, event: Event) -> None:
        for a in event.arguments:
            text = " ".join(a.text.split())
            k, n = self._key(a), norm(text)
            if not any(c.isalpha() for c in text) or text.lower() in _NOT_ENTITIES:
                continue
            if n not in self._seen.setdefault(k, set()):
                self._seen[k].add(n)
                self._texts.setdefault(k, []).append(text)
                self._sorted.pop(k, None)

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> EntityPool:
        pool = cls()
        for e in events:
            pool.add(e)
        return pool

    def __call__(self, arg: Argument) -> Sequence[str]:
        k = self._key(arg)
        if k not in self._sorted:
            self._sorted[k] = tuple(sorted(self._texts.get(k, ())))
        return self._sorted[k]


def fillers(arguments: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Template fillers from (role, text) pairs, several texts per role kept in order."""
    out: dict[str, list[str]] = {}
    for role, text in arguments:
        out.setdefault(role, []).append(text)
    return out


def role_similarity(old: EventType, a: str, new: EventType, b: str) -> float:
    """How alike role `a` of `old` and role `b` of `new` are: 2 for the same name, else the Jaccard overlap
    of the entity types that can fill them."""
    if a == b:
        return 2.0
    ea, eb = set(old.roles[a].entity_types), set(new.roles[b].entity_types)
    return len(ea & eb) / len(ea | eb) if ea | eb else 0.0


_ROLE_MAPS: dict[tuple[int, int], tuple[EventType, EventType, dict[str, str]]] = {}


def role_map(old: EventType, new: EventType) -> dict[str, str]:
    """Map `old`'s roles onto `new`'s, most similar pairs first (`role_similarity`), each new role used once;
    roles with nothing similar are left out (their arguments are dropped). Cached per pair of types."""
    hit = _ROLE_MAPS.get((id(old), id(new)))
    if hit is not None and hit[0] is old and hit[1] is new:
        return hit[2]
    pairs = sorted(((role_similarity(old, a, new, b), i, j, a, b)
                    for i, a in enumerate(old.roles) for j, b in enumerate(new.roles)),
                   key=lambda p: (-p[0], p[1], p[2]))
    mapping: dict[str, str] = {}
    for s, _, _, a, b in pairs:
        if s > 0 and a not in mapping and b not in mapping.values():
            mapping[a] = b
    _ROLE_MAPS[(id(old), id(new))] = (old, new, mapping)
    return mapping


def _type_noun(plain_name: str, like: str) -> str | None:
    """A type's noun from its plain name ("a money transfer" -> "money transfer"), plural when the noun `like`
    it replaces is ("talks" -> "phone calls"), capitalised like it; None unless the name is "a/an" + 1-2 words."""
    words = plain_name.split()
    if len(words) not in (2, 3) or words[0].lower() not in ("a", "an"):
        return None
    noun = " ".join(words[1:])
    last = like.split()[-1].lower() if like.split() else ""
    if last.endswith("s") and not last.endswith("ss"):
        noun = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return noun[:1].upper() + noun[1:] if like[:1].isupper() else noun


@lru_cache(maxsize=256)
def _core_roles(long_template: str) -> frozenset[str]:
    """Roles that always appear in a long template (not inside an optional [...] part)."""
    bare = re.sub(r"\[[^\[\]]*\]", "", long_template)
    return frozenset(re.findall(r"\{([A-Za-z][\w-]*)\}", bare))


class _Maker:
    """Candidate generators for one event; each yields (text, changed) lazily, best candidates first."""

    def __init__(self, caption: str, event: Event, ontology: Ontology, rng: random.Random,
                 entity_pool: EntityPoolFn | None, cl: Clause | None) -> None:
        self.caption, self.event, self.ontology, self.rng = caption, event, ontology, rng
        self.type, self.pool, self.clause = ontology[event.type], entity_pool, cl
        self.args = [a for a in event.arguments if a.role in self.type.roles]

    def _fits(self, arg: Argument, role: str) -> bool:
        """`arg` can fill `role` by its entity type; an untyped argument fits roles that share entity types
        with its own role (never a person into a place-only role)."""
        if arg.entity_type:
            return self.ontology.fits(self.type.name, role, arg.entity_type)
        roles = self.type.roles
        if not roles[arg.role].entity_types or not roles[role].entity_types:  # an ontology without entity types
            return True
        return role_similarity(self.type, arg.role, self.type, role) > 0

    def render(self, t: EventType, pairs: Iterable[tuple[str, str]]) -> str:
        return t.render(fillers(pairs), style="long")

    def base(self) -> str:
        if self.clause is not None:
            return self.clause.text
        return self.render(self.type, ((a.role, a.text) for a in self.args))

    def _span(self, arg: Argument) -> tuple[int, int] | None:
        """The argument's span in the clause; None when absent or overlapping the trigger (silver IE output
        has arguments like "sniper fire" around the trigger "fire"; editing them would also edit the trigger)."""
        assert self.clause is not None
        span = self.clause.arguments[self.event.arguments.index(arg)]
        t = self.clause.trigger
        return None if span is None or span[0] < t[1] and t[0] < span[1] else span

    # ------------------------------------------------------------------ type swap
    def type_swap(self) -> Iterator[Candidate]:
        confusable = [c for c in self.type.confusable if c != self.type.name]
        others = [n for n in self.ontology.type_names if n != self.type.name and n not in confusable]
        self.rng.shuffle(confusable)
        self.rng.shuffle(others)
        for name in confusable + others:
            new = self.ontology[name]
            changed: dict[str, Any] = {"type": [self.type.name, name]}
            if self.clause is not None:
                words = self._new_trigger(new)
                if words is None:  # the type's trigger cannot stand where this one does
                    continue
                changed["trigger"] = list(words)
                yield replace_spans(self.clause.text, [(self.clause.trigger, words[1])]), changed
                continue
            mapping = role_map(self.type, new)
            moved = {a.text: [a.role, mapping[a.role]] for a in self.args
                     if a.role in mapping and mapping[a.role] != a.role}
            dropped = [a.text for a in self.args if a.role not in mapping]
            changed.update({"roles": moved} if moved else {})
            changed.update({"dropped": dropped} if dropped else {})
            yield self.render(new, ((mapping[a.role], a.text) for a in self.args if a.role in mapping)), changed

    def _new_trigger(self, new: EventType) -> tuple[str, str] | None:
        """The clause's trigger and its replacement for type `new`: the type's noun where the trigger is a noun
        ("before a meeting" -> "before a money transfer"), else its trigger in the old one's form. A trigger with
        an object word ("gave money") drops it before an object filling the role it names ("drives cash" ->
        "gives cash", not "gives money cash"); before any other object ("meets the mayor") None."""
        assert self.clause is not None
        start, end = self.clause.trigger
        old = self.clause.text[start:end]
        slot = trigger_slot(self.clause)
        if slot.noun:
            noun = _type_noun(new.plain_name, old)
            return None if noun is None else (old, noun)
        verb = inflect_trigger(new.trigger, old, slot.participle)
        head, _, extra = verb.partition(" ")
        if not extra or slot.object is None:
            return old, verb
        arg = self.event.arguments[slot.object] if slot.object >= 0 else None
        named = [r for r, spec in new.roles.items() if spec.placeholder == extra]  # "money": the Money role
        if arg is not None and any(self.ontology.fits(new.name, r, arg.entity_type) if arg.entity_type
                                   else role_map(self.type, new).get(arg.role) == r for r in named):
            return old, head
        return None

    # ------------------------------------------------------------------ role swap
    def role_swap(self) -> Iterator[Candidate]:
        t = self.type
        # a pronoun keeps the case of where it stands ("they" would end up as "... in they"): it never moves
        args = [a for a in self.args if a.text.strip().lower() not in _CASED_PRONOUNS]
        # each filler must be able to fill the other's role: "a bus attacked the troops" or "the desert arrested
        # a policeman" are wrong without looking at the image, which is not what a role swap should test
        pairs = [(a, b) for i, a in enumerate(args) for b in args[i + 1:]
                 if a.role != b.role and not t.is_symmetric(a.role, b.role) and norm(a.text) != norm(b.text)
                 and self._fits(a, b.role) and self._fits(b, a.role)]
        # Roles that take the same kinds of entity first (attacker <-> target, not target <-> place): the
        # result stays plausible, so only the roles tell it apart. The sort is stable, so ties stay shuffled.
        self.rng.shuffle(pairs)
        pairs.sort(key=lambda p: -role_similarity(t, p[0].role, t, p[1].role))
        for a, b in pairs:
            changed = {"roles": {a.text: [a.role, b.role], b.text: [b.role, a.role]}}
            if self.clause is None:
                swapped = [(b.role if x is a else a.role if x is b else x.role, x.text) for x in self.args]
                yield self.render(self.type, swapped), changed
                continue
            sa, sb = self._span(a), self._span(b)
            if sa is None or sb is None or sa[1] > sb[0] and sb[1] > sa[0]:
                continue
            text = self.clause.text
            edited = edit_clause(self.clause, [(sa, text[sb[0]:sb[1]]), (sb, text[sa[0]:sa[1]])])
            if edited is not None:  # None: a verb could not be made to agree with the new subject
                yield edited, changed
        if len(self.args) != 1 or self.clause is not None:
            return
        # A single argument moves to another role of the type, core and alike roles first.
        moves = [(a, r) for a in args for r in t.role_names
                 if r != a.role and not t.is_symmetric(a.role, r) and self._fits(a, r)]
        self.rng.shuffle(moves)
        moves.sort(key=lambda m: (m[1] not in _core_roles(t.long_template), -role_similarity(t, m[0].role, t, m[1])))
        for a, r in moves:
            moved = [(r if x is a else x.role, x.text) for x in self.args]
            yield self.render(self.type, moved), {"roles": {a.text: [a.role, r]}}

    # ------------------------------------------------------------------ argument replacement
    def arg_replace(self) -> Iterator[Candidate]:
        if self.pool is None:
            return
        args = list(self.args)
        self.rng.shuffle(args)
        if self.clause is not None:
            args = [a for a in args if self._span(a) is not None]
        taken = {norm(a.text) for a in self.args}
        caption = norm(self.caption)
        for _ in range(_POOL_TRIES):
            for a in args:
                candidates = self.pool(a)
                if not candidates:
                    continue
                new = candidates[self.rng.randrange(len(candidates))]
                n = norm(new)
                if not n or n in taken or n in caption:
                    continue
                taken.add(n)
                changed = {"argument": {"role": a.role, "from": a.text, "to": new}}
                if self.clause is None:
                    yield self.render(self.type, ((x.role, new if x is a else x.text) for x in self.args)), changed
                else:
                    span = self._span(a)
                    assert span is not None
                    text = edit_clause(self.clause, [(span, match_tokenisation(new, self.clause.text))])
                    if text is not None:
                        yield text, changed


def make_negatives(caption: str, event: Event, ontology: Ontology, rng: random.Random, positives: Sequence[str],
                   counts: Mapping[str, int] = DEFAULT_COUNTS, entity_pool: EntityPoolFn | None = None,
                   mode: Mode = "template") -> list[Negative]:
    """Up to `counts[kind]` negatives of each rule kind for `event` (an ontology-typed event of `caption`).

    `positives`: texts no negative may equal (the sample's positives; callers combining modes add the
    negatives made so far). `entity_pool` gives replacement texts for an argument (see `EntityPool`);
    without it, `arg_replace` makes nothing. In `caption_edit` mode nothing is made when the trigger cannot
    be found in the caption. Fewer than asked means the kind could not apply."""
    unknown = set(counts) - set(RULE_KINDS)
    if unknown:
        raise ValueError(f"unknown negative kinds {sorted(unknown)}; rule kinds are {list(RULE_KINDS)}")
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"negative counts must be non-negative integers, got {dict(counts)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    cl = None
    if mode == "caption_edit":
        cl = clause(caption, event)
        if cl is None:
            return []
    maker = _Maker(caption, event, ontology, rng, entity_pool, cl)
    base = maker.base()
    avoid = {norm(p) for p in positives} | {norm(base)}
    doubled = doubled_words(base)
    out: list[Negative] = []
    for kind, want in counts.items():
        made = 0
        if want == 0:
            continue
        for text, changed in getattr(maker, kind)():
            n = norm(text)
            if not n or n in avoid or doubled_words(text) > doubled:  # "... Moon Jae - in in Seoul"
                continue
            avoid.add(n)
            out.append(Negative(kind, text, {**changed, "mode": mode}))  # type: ignore[arg-type]
            made += 1
            if made == want:
                break
    return out


def negatives_for_modes(caption: str, event: Event, ontology: Ontology, rng: random.Random, positives: Sequence[str],
                        modes: Sequence[str], counts: Mapping[str, int] = DEFAULT_COUNTS,
                        entity_pool: EntityPoolFn | None = None) -> list[Negative]:
    """`make_negatives` once per mode (e.g. template and caption edit), no text repeating a positive or an
    earlier negative. Each negative's `changed["mode"]` says which mode made it."""
    avoid, out = list(positives), []
    for mode in modes:
        made = make_negatives(caption, event, ontology, rng, avoid, counts, entity_pool, mode)  # type: ignore[arg-type]
        avoid += [n.text for n in made]
        out += made
    return out
