"""Light, event-preserving edits of a caption: find the event's spans, cut the caption to the event's clause,
and rewrite spans (a trigger in the caption's tense, an argument in the caption's tokenisation).

Shared by `describe` (the `caption_edit` positive) and `negatives` (caption-edit hard negatives), so a
negative differs from its positive by exactly the edited span, and the verb that agrees with it
(`edit_clause`: "A resident shoots at protesters" -> "Protesters shoot at a resident", never "Protesters
shoots"; a grammar slip the positives never make would let a model tell negatives from text alone). Pure
string work (no parser): fast and predictable on silver IE output, at the price of heuristic clause
boundaries (documented in `clause`) and number rules (`grammar.phrase_number`). The word knowledge (verb forms,
a phrase's number, word lists) lives in `grammar`; this module only finds and rewrites spans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from align.ontology import lower_article
from align.schema import Argument, Event
from data_gen.grammar import (
    ADVERBS,
    BE_HAVE,
    BOUNDARY,
    CLAUSE_VERBS,
    DETERMINERS,
    NO_VERB_AFTER,
    NOMINATIVE,
    NOT_OBJECT,
    NOUN_ENDINGS,
    NOUN_SUFFIXES,
    PLUR_DET,
    PREPOSITIONS,
    SING_DET,
    Number,
    inflect_number,
    is_verb,
    phrase_number,
    verb_form,
    verb_like,
    verb_number,
)

Span = tuple[int, int]

# News-caption prefixes that are not part of the event ("FILE - ", "PHOTO: ").
_PREFIX = re.compile(r"\s*(?:FILE|PHOTO|IMAGE|VIDEO)\s*(?:PHOTO\s*)?[-:–—]\s*", re.IGNORECASE)
# A sentence ends at . ! ? followed by space and an upper-case letter or a quote.
_SENT_END = re.compile(r"[.!?]\s+(?=[A-Z\"'“])")
_ABBREV = frozenset(("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mr", "mrs",
                     "ms", "dr", "sen", "rep", "gov", "gen", "lt", "col", "sgt", "st", "u.s", "u.n", "no"))
_DELIM = re.compile(r"\s*[,;:(]\s|\s+[-–—]\s|\s*[.!?]?\s*$")
_TAIL_TOKENS = 3  # a short tail (e.g. "in Seoul") up to the next delimiter is kept after the last span
_TOKENISED = re.compile(r"\s[,.'](?:\s|$)")  # "Korea ' s", "Seoul , South Korea": pre-tokenised text


def norm(text: str) -> str:
    """Case- and whitespace-insensitive form used for every 'is this the same text' check."""
    return "".join(text.lower().split())


@lru_cache(maxsize=256)
def _squeezed(text: str) -> tuple[str, tuple[int, ...]]:
    """`text` lower-cased without whitespace, and each kept character's offset in `text`."""
    idx = tuple(i for i, c in enumerate(text) if not c.isspace())
    low = "".join(text.split()).lower()
    if len(low) != len(idx):  # rare: lower() changed a character's length
        low = "".join(text[i].lower()[:1] for i in idx)
    return low, idx


def find_span(text: str, phrase: str, near: int | None = None) -> Span | None:
    """Span of `phrase` in `text`, ignoring case and whitespace (so "Geun-hye" finds "Geun - hye"), not inside
    a longer word; the occurrence closest to `near` (the first without it)."""
    key = "".join(phrase.split()).lower()
    if not key:
        return None
    low, idx = _squeezed(text)
    best: Span | None = None
    pos = low.find(key)
    while pos != -1:
        start, end = idx[pos], idx[pos + len(key) - 1] + 1
        inside_word = (start > 0 and text[start].isalnum() and text[start - 1].isalnum()) or (
            end < len(text) and text[end - 1].isalnum() and text[end].isalnum())
        if not inside_word:
            if near is None:
                return start, end
            if best is None or abs(start - near) < abs(best[0] - near):
                best = start, end
        pos = low.find(key, pos + 1)
    return best


def trigger_span(caption: str, event: Event) -> Span | None:
    """The trigger's span: its offsets when they hold its text, else a search for the text."""
    t = event.trigger
    if t.char_start is not None and t.char_end is not None and norm(caption[t.char_start:t.char_end]) == norm(t.text):
        return t.char_start, t.char_end
    return find_span(caption, t.text) if t.text.strip() else None


def argument_span(caption: str, arg: Argument, near: int | None) -> Span | None:
    """The argument's span: its offsets when they hold its text, else the mention closest to the trigger."""
    if arg.char_start is not None and arg.char_end is not None and norm(caption[arg.char_start:arg.char_end]) == norm(
            arg.text):
        return arg.char_start, arg.char_end
    return find_span(caption, arg.text, near)


def _sentence_bounds(text: str, pos: int) -> Span:
    start, end = 0, len(text)
    for m in _SENT_END.finditer(text):
        word = text[:m.start()].rsplit(None, 1)[-1].lower() if text[:m.start()].strip() else ""
        if word.rstrip(".") in _ABBREV or len(word) == 1:  # "Sen. John", initials "U . S . Secretary"
            continue
        if m.end() <= pos:
            start = m.end()
        else:
            end = m.start() + 1
            break
    return start, end


@dataclass(frozen=True)
class Clause:
    """The caption cut to the event's clause; spans are offsets into `text` (None: not in the clause)."""

    text: str
    trigger: Span
    arguments: tuple[Span | None, ...]


def clause(caption: str, event: Event) -> Clause | None:
    """Cut the caption to the sentence of the trigger, from its start (minus a "FILE -" prefix) to the last
    located span of the event, plus a tail of at most three tokens when that reaches a comma, semicolon,
    dash or the sentence end ("... at the Blue House in Seoul , South Korea" -> "... in Seoul").
    None when the trigger cannot be found in the caption."""
    trig = trigger_span(caption, event)
    if trig is None:
        return None
    s_start, s_end = _sentence_bounds(caption, trig[0])
    prefix = _PREFIX.match(caption, s_start)
    if prefix and prefix.end() <= trig[0]:
        s_start = prefix.end()
    spans = []
    for a in event.arguments:
        sp = argument_span(caption, a, trig[0])
        spans.append(sp if sp is not None and s_start <= sp[0] and sp[1] <= s_end else None)
    end = max([trig[1]] + [sp[1] for sp in spans if sp is not None])
    delim = _DELIM.search(caption, end, s_end + 1)
    stop = delim.start() if delim else s_end
    if len(caption[end:stop].split()) <= _TAIL_TOKENS:
        end = stop
    while s_start < trig[0] and caption[s_start].isspace():
        s_start += 1
    text = caption[s_start:end].rstrip(" ,;:-")
    return Clause(text, (trig[0] - s_start, trig[1] - s_start),
                  tuple(None if sp is None or sp[1] - s_start > len(text) else (sp[0] - s_start, sp[1] - s_start)
                        for sp in spans))


def replace_spans(text: str, edits: Sequence[tuple[Span, str]]) -> str:
    """Apply non-overlapping (span, new text) edits, then fix "a"/"an" before each edited word and the case of a
    phrase that moves to or from the start of the sentence ("a protester handcuffs a soldier", not "... A soldier")."""
    out, last = [], 0
    for (start, end), new in sorted(edits, key=lambda e: e[0][0]):
        if start < last:
            raise ValueError(f"overlapping edits at {start} in {text!r}")
        if start == 0 and text[:1].isupper():
            new = new[:1].upper() + new[1:]
        elif start > 0:
            new = lower_article(new)
        head = text[last:start]
        art = re.search(r"\b(an?)(\s+)$", head, re.IGNORECASE)
        if art and new:
            a = "an" if new[0].lower() in "aeiou" else "a"
            a = a.capitalize() if art.group(1)[0].isupper() else a
            head = head[:art.start(1)] + a + art.group(2)
        out += [head, new]
        last = end
    out.append(text[last:])
    return "".join(out)


def match_tokenisation(phrase: str, like: str) -> str:
    """Space out punctuation in `phrase` when `like` is pre-tokenised, so an inserted phrase leaves no
    formatting cue that would tell a negative from its positive."""
    if not _TOKENISED.search(like):
        return phrase
    return " ".join(re.findall(r"\w+|[^\w\s]", phrase))


# --------------------------------------------------------------------------- subject-verb agreement
_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")
_SCAN = 10  # words after a clause-initial subject searched for its verb


def _last_tokens(text: str, pos: int, n: int) -> list[tuple[str, int]]:
    """The last `n` tokens before `pos`, lower-cased, with their end offsets (from a short window: speed)."""
    lo = max(0, pos - 16 * n)
    tokens = [(m.group().lower(), m.end()) for m in _TOKEN.finditer(text, lo, pos)]
    return tokens[1 if lo else 0:][-n:]  # the window's first token may be cut


def _starts_clause(text: str, span: Span) -> bool:
    """Whether the phrase at `span` ends the clause's first noun phrase ("The protesters", "Philippine President
    Rodrigo Duterte", "Climate activists"): only a determiner and names or modifiers stand before it."""
    before = [m.group() for m in islice(_TOKEN.finditer(text, 0, span[0]), 7)]
    return len(before) <= 6 and all(
        w.isalpha() and (i == 0 or w.lower() not in DETERMINERS) and w.lower() not in NOT_OBJECT
        and not verb_like(w) for i, w in enumerate(before))


def _subject_slot(cl: Clause, span: Span) -> bool:
    """Whether a phrase inside the clause may be a subject: its noun phrase ("Iraqi [forces]") does not follow the
    trigger, a verb or a preposition (an object: "A truck carrying cash heads", "recaptured by Iraqi forces"),
    nor "and" / "or" (one conjunct: the verb agrees with the whole, "Police and rescue workers remove ...")."""
    before = _last_tokens(cl.text, span[0], 8)
    k = len(before)
    while k and before[k - 1][0].isalpha() and before[k - 1][0] not in NOT_OBJECT and not verb_like(
            before[k - 1][0]) and verb_form(before[k - 1][0]) != "past":
        k -= 1
        if before[k][0] in DETERMINERS:
            break
    if k == 0:
        return True
    word, end = before[k - 1]
    if end == cl.trigger[1] or word in PREPOSITIONS or word in ("and", "or", "nor", "&"):
        return False
    return not (verb_like(word) or verb_form(word) == "past") or word in CLAUSE_VERBS


def _agreeing_verb(cl: Clause, span: Span, old: str, old_number: Number | None) -> tuple[Span, Number] | None:
    """The number-marked verb that agrees with the phrase at `span`, and its number: the trigger, an auxiliary
    or a common verb right after the phrase (adverbs and a short aside such as ", left ," skipped), or the first
    such verb after the clause's first noun phrase ("Protesters armed with rifles attack ..."). None when no
    such verb agrees with it."""
    text, trigger = cl.text, cl.trigger
    initial = _starts_clause(text, span)
    if not initial and not _subject_slot(cl, span):
        return None
    args = [s for s in cl.arguments if s is not None and s != span]
    after_pronoun = old.lower() in NOMINATIVE
    tokens = [(m.group(), m.span()) for m in islice(_TOKEN.finditer(text, span[1]), 2 * _SCAN)]
    prev, i, seen = "", 0, 0
    while i < len(tokens) and seen < _SCAN:
        word, (start, end) = tokens[i]
        lw = word.lower()
        i += 1
        if seen == 0 and lw in (",", "("):  # an aside: "Rafsanjani , center , arrives"
            close = next((j for j in range(i, min(i + 5, len(tokens))) if tokens[j][0] in (",", ")")), None)
            if close is not None and all(t[0][0].isalnum() for t in tokens[i:close]):
                i = close + 1
                continue
        if not (lw[0].isalnum() or lw[0] == "'") or lw in BOUNDARY:
            return None
        if trigger[0] < start < trigger[1] or lw in ADVERBS:
            continue
        seen += 1
        if any(s <= start < e for s, e in args):
            if not initial:
                return None
            prev = lw
            continue
        # right after a singular subject, an -s form is its verb even when not a common one ("Duterte salutes")
        bare = word.isalpha() and word.islower() and seen == 1
        verb = (start == trigger[0] or is_verb(lw) or (after_pronoun and bare)
                or (bare and old_number == "sing" and verb_form(lw) == "s" and not lw.endswith(NOUN_ENDINGS)))
        if verb and prev not in NO_VERB_AFTER:
            number = verb_number(lw)
            if number is None and verb_form(lw) == "ing" and initial:
                prev = lw
                continue  # a participle: "A truck carrying villagers heads ..."
            if number is None or old_number not in (None, number):
                return None  # a past form agrees with any subject; another number: not this phrase's verb
            return (start, end), number
        if not initial:
            return None
        prev = lw
    return None


def _np_determiner(text: str, span: Span) -> str | None:
    """The determiner of the noun phrase that the phrase at `span` ends ("A Congolese [protester]" -> "a"), when
    it stands before the span; None when a verb, preposition or punctuation comes first."""
    for w, _ in reversed(_last_tokens(text, span[0], 4)):
        if w in DETERMINERS or w in PLUR_DET:
            return w
        if not w.isalpha() or w in NOT_OBJECT or verb_like(w) or verb_form(w) in ("past", "ing"):
            return None
    return None


def _fits_determiner(text: str, span: Span, new: str) -> bool:
    """Whether `new` can follow the determiner (if any) before `span`: no second determiner ("the The Hague"), and
    the same number ("a [protester]" cannot become "a [police]")."""
    det = _np_determiner(text, span)
    if det is None:
        return True
    first = new.split()[0].lower() if new.split() else ""
    number = phrase_number(new)
    return not (first in DETERMINERS or first in PLUR_DET or (det in SING_DET and number == "plur")
                or (det in PLUR_DET and number == "sing"))


def edit_clause(cl: Clause, edits: Sequence[tuple[Span, str]]) -> str | None:
    """`replace_spans` on the clause, with the verb that agrees with an edited phrase put in the number of its new
    text ("A resident shoots at protesters" -> "Protesters shoot at a resident"; "Residents are attacked by ..."
    -> "A soldier is attacked by ..."). None when an edited phrase has such a verb but the new text's number is
    unknown (`phrase_number`), two edits need the verb in different forms, or the new text clashes with a
    determiner before the span ("A Congolese police"): the caller tries another edit."""
    text = cl.text
    fixes: dict[Span, str] = {}
    for span, new in edits:
        if not _fits_determiner(text, span, new):
            return None
        old = text[span[0]:span[1]]
        found = _agreeing_verb(cl, span, old, phrase_number(old))
        if found is None:
            continue
        verb, number = found
        new_number = phrase_number(new)
        if new_number is None or any(s < verb[1] and verb[0] < e for (s, e), _ in edits):
            return None
        form = text[verb[0]:verb[1]] if new_number == number else inflect_number(text[verb[0]:verb[1]], new_number)
        if fixes.setdefault(verb, form) != form:
            return None
    return replace_spans(text, [*edits, *((v, f) for v, f in fixes.items() if f != text[v[0]:v[1]])])


# --------------------------------------------------------------------------- how the clause uses its trigger
@dataclass(frozen=True)
class TriggerSlot:
    """How a clause uses its trigger. `noun`: as a noun ("before a meeting", "their talks", "a press
    conference", "the killing of"), not a verb ("A truck carrying villagers"); `participle`: after a form of
    "be" or "have" ("is arrested"); `object`: what directly follows it (the index of the argument whose span
    starts there, -1 for another word as in "calls relatives", None for a preposition, punctuation or nothing)."""

    noun: bool
    participle: bool
    object: int | None


def trigger_slot(cl: Clause) -> TriggerSlot:
    start, end = cl.trigger
    words = cl.text[start:end].lower().split() or [""]
    before = [w for w, _ in _last_tokens(cl.text, start, 4)]
    after = _TOKEN.search(cl.text, end)
    next_word = after.group().lower() if after else ""
    after_determiner = bool(before) and (before[-1] in DETERMINERS or before[-1].endswith("'s")
                                         or before[-2:] == ["'", "s"])  # "their", "Korea ' s"
    ing_noun = (verb_form(words[0]) == "ing" and any(w in DETERMINERS for w in before[-4:])
                and (not next_word or next_word in PREPOSITIONS or not next_word[0].isalnum()))
    noun = words[-1].endswith(NOUN_SUFFIXES) or after_determiner or ing_noun
    obj = None
    if after is not None and next_word[0].isalnum() and next_word not in NOT_OBJECT:
        obj = next((i for i, s in enumerate(cl.arguments) if s is not None and s[0] == after.start()), -1)
    return TriggerSlot(noun, bool(before) and before[-1] in BE_HAVE, obj)
