"""Light, event-preserving edits of a caption: find the event's spans, cut the caption to the event's clause,
and rewrite spans (a trigger in the same tense, an argument in the caption's tokenisation).

Shared by `describe` (the `caption_edit` positive) and `negatives` (caption-edit hard negatives), so a
negative differs from its positive by exactly the edited span. Pure string work (no parser): fast and
predictable on silver IE output, at the price of heuristic clause boundaries (documented in `clause`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from align.ontology import lower_article
from align.schema import Argument, Event

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

# Irregular past tenses of trigger verbs (ontology triggers are past tense, e.g. "met", "gave money").
_IRREGULAR = {"met": "meet", "gave": "give", "paid": "pay", "sent": "send", "held": "hold", "fled": "flee",
              "shot": "shoot", "fought": "fight", "took": "take", "brought": "bring", "left": "leave",
              "went": "go", "came": "come", "died": "die", "spoke": "speak", "wrote": "write", "told": "tell",
              "sold": "sell", "bought": "buy", "struck": "strike", "hit": "hit", "beat": "beat", "led": "lead"}


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


# --------------------------------------------------------------------------- trigger inflection
def _lemma(past: str) -> str:
    w = past.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w.endswith("ied"):
        return w[:-3] + "y"
    if w.endswith("ed"):
        stem = w[:-2]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            return stem[:-1]
        return stem
    return w


def _third_person(lemma: str) -> str:
    if lemma.endswith(("s", "x", "z", "ch", "sh")):
        return lemma + "es"
    if lemma.endswith("y") and lemma[-2:-1] not in "aeiou":
        return lemma[:-1] + "ies"
    return lemma + "s"


def _gerund(lemma: str) -> str:
    if lemma.endswith("ie"):
        return lemma[:-2] + "ying"
    if lemma.endswith("e") and not lemma.endswith("ee"):
        return lemma[:-1] + "ing"
    return lemma + "ing"


def _form(word: str) -> str:
    w = word.lower()
    if w.endswith("ing") and len(w) > 4:
        return "ing"
    if w in _IRREGULAR or w.endswith("ed"):
        return "past"
    if w.endswith("s") and not w.endswith("ss"):
        return "s"
    return "base"


def inflect_trigger(new_trigger: str, like: str) -> str:
    """Put an ontology trigger (past tense, e.g. "gave money") in the form of the caption's trigger word
    `like` ("speaks" -> "gives money", "meeting" -> "giving money"), keeping its capitalisation."""
    head, _, rest = new_trigger.partition(" ")
    first = like.split()[0] if like.split() else like
    lemma = _lemma(head)
    word = {"ing": _gerund(lemma), "past": head.lower(), "s": _third_person(lemma), "base": lemma}[_form(first)]
    if first[:1].isupper():
        word = word.capitalize()
    return f"{word} {rest}" if rest else word
