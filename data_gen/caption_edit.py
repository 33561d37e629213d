"""Light, event-preserving edits of a caption: find the event's spans, cut the caption to the event's clause,
and rewrite spans (a trigger in the same tense, an argument in the caption's tokenisation).

Shared by `describe` (the `caption_edit` positive) and `negatives` (caption-edit hard negatives), so a
negative differs from its positive by exactly the edited span, and the verb that agrees with it
(`edit_clause`: "A resident shoots at protesters" -> "Protesters shoot at a resident", never "Protesters
shoots"; a grammar slip the positives never make would let a model tell negatives from text alone). Pure
string work (no parser): fast and predictable on silver IE output, at the price of heuristic clause
boundaries (documented in `clause`) and number rules (`phrase_number`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Literal

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


def _pairs(text: str) -> dict[str, str]:
    return dict(p.split(":") for p in text.split())


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Irregular past tenses of trigger verbs and their lemmas (ontology triggers are past tense: "met", "gave money").
_IRREGULAR = _pairs("""
    met:meet gave:give paid:pay sent:send held:hold fled:flee shot:shoot fought:fight took:take brought:bring
    left:leave went:go came:come died:die spoke:speak wrote:write told:tell sold:sell bought:buy struck:strike
    hit:hit beat:beat led:lead drove:drive rode:ride ran:run threw:throw stood:stand sat:sit made:make
    said:say saw:see found:find kept:keep began:begin broke:break fell:fall flew:fly got:get knew:know
    rose:rise spent:spend stole:steal swore:swear wore:wear wept:weep drew:draw built:build caught:catch
    felt:feel heard:hear hung:hang lost:lose won:win withdrew:withdraw became:become chose:choose tore:tear
""")
# Past participles that differ from the past tense (the trigger after "is", "was", "has": "is given money by").
_PARTICIPLES = _pairs("""
    gave:given took:taken went:gone came:come spoke:spoken wrote:written beat:beaten drove:driven rode:ridden
    ran:run threw:thrown saw:seen began:begun broke:broken fell:fallen flew:flown knew:known rose:risen
    stole:stolen swore:sworn wore:worn drew:drawn withdrew:withdrawn became:become chose:chosen tore:torn
""")


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


_DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


def doubled_words(text: str) -> int:
    """How many words repeat the word before them ("in in", "The the"): an edit that adds one leaves a tell."""
    return len(_DOUBLED.findall(text))


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
    if lemma == "have":
        return "has"
    if lemma.endswith(("s", "x", "z", "ch", "sh", "o")):
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


def inflect_trigger(new_trigger: str, like: str, participle: bool = False) -> str:
    """Put an ontology trigger (past tense, e.g. "gave money") in the form of the caption's trigger word
    `like` ("speaks" -> "gives money", "meeting" -> "giving money"), keeping its capitalisation. `participle`:
    `like` is a past participle ("is arrested by"), so "gave" becomes "given", not "is gave money by"."""
    head, _, rest = new_trigger.partition(" ")
    first = like.split()[0] if like.split() else like
    lemma = _lemma(head)
    past = _PARTICIPLES.get(head.lower(), head.lower()) if participle else head.lower()
    word = {"ing": _gerund(lemma), "past": past, "s": _third_person(lemma), "base": lemma}[_form(first)]
    if first[:1].isupper():
        word = word.capitalize()
    return f"{word} {rest}" if rest else word


# --------------------------------------------------------------------------- subject-verb agreement
Number = Literal["sing", "plur"]

_AUX_PLURAL = {"is": "are", "was": "were", "has": "have", "does": "do"}
_AUX_SINGULAR = {p: s for s, p in _AUX_PLURAL.items()}
_AUX_NUMBER: dict[str, Number] = {**{w: "sing" for w in _AUX_PLURAL}, **{w: "plur" for w in _AUX_SINGULAR}}
# Lemmas of verbs that often follow a caption's subject: the 200 most frequent present-tense verbs right after
# a subject in the VOA captions (spaCy tags), and EventWorld's. A word after an edited phrase is taken for its
# verb only when it is one of these, an auxiliary, the trigger, follows a subject pronoun, or is an -s form right
# after a singular subject: "Samajwadi Party supporters" keeps "supporters" when the party is replaced.
_VERBS = _wordset("""
    accompany address advance announce answer appear applaud approach argue arrest arrive ask assemble attack
    attend await begin believe billow block board break breathe build burn buy call campaign carry cast
    celebrate chair chant check claim clash climb collect come commemorate confer confront continue cordon
    create cross dance deliver demand demonstrate depart describe detain die dig discuss display divide drive
    employ end enter escort evacuate examine exit expect face fear fill find fire flee fly gather get give go
    greet guard guide hand handcuff hang head help hold host inspect investigate join keep kill know laugh lay
    lead leave lie line listen live load look loom make march mark meet mourn move need observe open operate
    organize paint participate pass patrol pause pay perform place plan play pose pray prepare protest provide
    pull pump push raise rally reach react read receive refuse remain remove report represent respond rest
    return review ride rise run rush salute say search secure see seek sell set shake shoot shout show sign sing
    sit smile speak stage stand start stay step stream strike stroll suggest support swear take talk tear
    testify throw transport travel treat try turn use visit vote wait walk want warn wash watch wave wear weep
    welcome work yell
""")
_NOMINATIVE: dict[str, Number] = {"he": "sing", "she": "sing", "it": "sing", "they": "plur", "we": "plur"}
_PRONOUNS: dict[str, Number] = {**_NOMINATIVE, "him": "sing", "her": "sing", "them": "plur", "us": "plur"}
_SING_DET = _wordset("a an one this that each every another either neither")
_PLUR_DET = _wordset("these those many several both few two three four five six seven eight nine ten dozens "
                     "hundreds thousands millions")
_PLURAL_NOUNS = _wordset("people police men women children troops cattle personnel taliban clergy")
_SINGULAR_S = _wordset("news gas series species means politics economics physics")
# endings of capitalised plurals ("Protesters", "Americans", "Authorities"); other capitalised words ending in
# -s may be names or places ("Bernie Sanders", "Athens"), whose number these rules cannot tell
_PLURAL_ENDINGS = ("ers", "ors", "ists", "ians", "ans", "ants", "ents", "ees", "ites", "ies")
_TITLES = _wordset("president minister senator governor mayor secretary chancellor king queen pope prince "
                   "general sen gen dr mr mrs ms")
_POSTMODIFIER = re.compile(r"\s+(?:of|in|at|from|with|for|on|to|by|near|who|which|that|carrying|holding)\s|\s*[,;(]")
_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")
_BOUNDARY = _wordset("who whom whose which that where when while as after before because but and or if since "
                     "until than")
_ADVERBS = _wordset("also still now then again often never always reportedly allegedly jointly later just even")
_BE_HAVE = _wordset("is are was were be been being has have had")
_CLAUSE_VERBS = _wordset("say says said think thinks believe believes")  # their object may be a clause
# endings of plural nouns, never of verbs: "Samajwadi Party supporters gather" does not agree with the party
_NOUN_ENDINGS = ("ers", "ors", "ists", "ians", "ans", "ants", "ents", "ees", "als", "ions", "ments", "ness", "ships",
                 "ties", "ics", "ites", "ures", "ages")
_NO_VERB_AFTER = _wordset("a an the his her their its our my your this these those at in on of to for from with by")
_SCAN = 10  # words after a clause-initial subject searched for its verb
_DETERMINERS = _wordset("a an the his her their its our this that these those each every another no")
_NOUN_SUFFIXES = ("tion", "sion", "ment", "ence", "ance")
_PREPOSITIONS = _wordset("at in on of to for from with by near during after before outside inside into over under "
                         "against about across through around along amid toward towards")
_NOT_OBJECT = _PREPOSITIONS | _BOUNDARY


def phrase_number(text: str) -> Number | None:
    """Grammatical number of a noun phrase ("a soldier", "Kenyan police", "Protesters", "a wad of cash") from its
    determiner, a coordination ("police and soldiers") and its head word; None when these rules cannot tell
    ("Bernie Sanders", "Athens", "Bosnia and Herzegovina")."""
    words = text.split()
    if not words:
        return None
    first = words[0].lower()
    if len(words) == 1 and first in _PRONOUNS:
        return _PRONOUNS[first]
    if first in _SING_DET:
        return "sing"
    if first in _PLUR_DET or (first.isdigit() and first != "1" and len(words) > 1 and words[1][:1].islower()):
        return "plur"  # "19 relatives", not "10 Downing Street"
    head_part = _POSTMODIFIER.split(text, 1)[0].split() or words
    if head_part[0].lower() == "the" and len(head_part) > 1:
        head_part = head_part[1:]
    low = [w.lower() for w in head_part]
    if "and" in low or "&" in low:
        proper = all(w[:1].isupper() or w in ("and", "&") for w in head_part)
        return None if proper else "plur"
    head, h = head_part[-1], low[-1]
    if h in _PLURAL_NOUNS:
        return "plur"
    if h in _SINGULAR_S or not h.endswith("s") or h.endswith(("ss", "us", "is", "'s")):
        return "sing"
    if not head[:1].isupper():
        return "plur"
    if len(head_part) == 1:
        return "plur" if h.endswith(_PLURAL_ENDINGS) else None
    # "photojournalist Juliana Santos", "Foreign Minister Maria Santos": one person
    return "sing" if any(w.lower() in _TITLES or (w.isalpha() and w.islower()) for w in head_part[:-1]) else None


def _base_of(s_form: str) -> str:
    """Base form of a third-person singular verb ("rallies" -> "rally", "pushes" -> "push", "faces" -> "face")."""
    if s_form.endswith("ies") and len(s_form) > 4:
        return s_form[:-3] + "y"
    if s_form.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        return s_form[:-2]
    return "have" if s_form == "has" else s_form[:-1]


def _verb_number(word: str) -> Number | None:
    """Number a finite present-tense verb agrees with; None for forms that agree with both (past, participles)."""
    w = word.lower()
    if w in _AUX_NUMBER:
        return _AUX_NUMBER[w]
    form = _form(w)
    return "sing" if form == "s" else "plur" if form == "base" else None


def _inflect_number(word: str, number: Number) -> str:
    w = word.lower()
    if w in _AUX_NUMBER:
        new = _AUX_PLURAL.get(w, w) if number == "plur" else _AUX_SINGULAR.get(w, w)
    else:
        new = _base_of(w) if number == "plur" else _third_person(w)
    return new.capitalize() if word[:1].isupper() else new


def _is_verb(word: str) -> bool:
    w = word.lower()
    return w in _AUX_NUMBER or w in _VERBS or (_form(w) == "s" and _base_of(w) in _VERBS)


def _verb_like(word: str) -> bool:
    """A finite form of a common verb, or its -ing form ("carrying"): a phrase right after it is its object."""
    w = word.lower()
    if _is_verb(w):
        return True
    stem = w[:-3] if w.endswith("ing") else ""
    return bool(stem) and (stem in _VERBS or stem + "e" in _VERBS or stem[:-1] in _VERBS)


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
        w.isalpha() and (i == 0 or w.lower() not in _DETERMINERS) and w.lower() not in _NOT_OBJECT
        and not _verb_like(w) for i, w in enumerate(before))


def _subject_slot(cl: Clause, span: Span) -> bool:
    """Whether a phrase inside the clause may be a subject: its noun phrase ("Iraqi [forces]") does not follow the
    trigger, a verb or a preposition (an object: "A truck carrying cash heads", "recaptured by Iraqi forces"),
    nor "and" / "or" (one conjunct: the verb agrees with the whole, "Police and rescue workers remove ...")."""
    before = _last_tokens(cl.text, span[0], 8)
    k = len(before)
    while k and before[k - 1][0].isalpha() and before[k - 1][0] not in _NOT_OBJECT and not _verb_like(
            before[k - 1][0]) and _form(before[k - 1][0]) != "past":
        k -= 1
        if before[k][0] in _DETERMINERS:
            break
    if k == 0:
        return True
    word, end = before[k - 1]
    if end == cl.trigger[1] or word in _PREPOSITIONS or word in ("and", "or", "nor", "&"):
        return False
    return not (_verb_like(word) or _form(word) == "past") or word in _CLAUSE_VERBS


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
    after_pronoun = old.lower() in _NOMINATIVE
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
        if not (lw[0].isalnum() or lw[0] == "'") or lw in _BOUNDARY:
            return None
        if trigger[0] < start < trigger[1] or lw in _ADVERBS:
            continue
        seen += 1
        if any(s <= start < e for s, e in args):
            if not initial:
                return None
            prev = lw
            continue
        # right after a singular subject, an -s form is its verb even when not a common one ("Duterte salutes")
        bare = word.isalpha() and word.islower() and seen == 1
        verb = (start == trigger[0] or _is_verb(lw) or (after_pronoun and bare)
                or (bare and old_number == "sing" and _form(lw) == "s" and not lw.endswith(_NOUN_ENDINGS)))
        if verb and prev not in _NO_VERB_AFTER:
            number = _verb_number(lw)
            if number is None and _form(lw) == "ing" and initial:
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
        if w in _DETERMINERS or w in _PLUR_DET:
            return w
        if not w.isalpha() or w in _NOT_OBJECT or _verb_like(w) or _form(w) in ("past", "ing"):
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
    return not (first in _DETERMINERS or first in _PLUR_DET or (det in _SING_DET and number == "plur")
                or (det in _PLUR_DET and number == "sing"))


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
        form = text[verb[0]:verb[1]] if new_number == number else _inflect_number(text[verb[0]:verb[1]], new_number)
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
    after_determiner = bool(before) and (before[-1] in _DETERMINERS or before[-1].endswith("'s")
                                         or before[-2:] == ["'", "s"])  # "their", "Korea ' s"
    ing_noun = (_form(words[0]) == "ing" and any(w in _DETERMINERS for w in before[-4:])
                and (not next_word or next_word in _PREPOSITIONS or not next_word[0].isalnum()))
    noun = words[-1].endswith(_NOUN_SUFFIXES) or after_determiner or ing_noun
    obj = None
    if after is not None and next_word[0].isalnum() and next_word not in _NOT_OBJECT:
        obj = next((i for i, s in enumerate(cl.arguments) if s is not None and s[0] == after.start()), -1)
    return TriggerSlot(noun, bool(before) and before[-1] in _BE_HAVE, obj)
