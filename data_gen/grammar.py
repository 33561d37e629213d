"""English word knowledge for caption edits: verb forms, the grammatical number of a noun phrase, and the word
lists (determiners, prepositions, common caption verbs) that tell a subject from an object.

Kept apart from `caption_edit` (which finds spans and rewrites clauses) so the editing code reads as editing,
and so other caption writers (EventWorld's templates) can choose a verb's number by the same rule
(`phrase_number`) that caption-edit negatives re-inflect it with: a positive and its negative can then never
disagree on "cash is" / "cash are". Pure string rules, no parser or lexicon download: fast and deterministic,
at the price of heuristics for names ending in -s ("Bernie Sanders", "Athens": number unknown).
"""

from __future__ import annotations

import re
from typing import Literal

Number = Literal["sing", "plur"]


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
NOMINATIVE: dict[str, Number] = {"he": "sing", "she": "sing", "it": "sing", "they": "plur", "we": "plur"}
_PRONOUNS: dict[str, Number] = {**NOMINATIVE, "him": "sing", "her": "sing", "them": "plur", "us": "plur"}
SING_DET = _wordset("a an one this that each every another either neither")
PLUR_DET = _wordset("these those many several both few two three four five six seven eight nine ten dozens "
                    "hundreds thousands millions")
_PLURAL_NOUNS = _wordset("people police men women children troops cattle personnel taliban clergy")
_SINGULAR_S = _wordset("news gas series species means politics economics physics")
# endings of capitalised plurals ("Protesters", "Americans", "Authorities"); other capitalised words ending in
# -s may be names or places ("Bernie Sanders", "Athens"), whose number these rules cannot tell
_PLURAL_ENDINGS = ("ers", "ors", "ists", "ians", "ans", "ants", "ents", "ees", "ites", "ies")
_TITLES = _wordset("president minister senator governor mayor secretary chancellor king queen pope prince "
                   "general sen gen dr mr mrs ms")
_POSTMODIFIER = re.compile(r"\s+(?:of|in|at|from|with|for|on|to|by|near|who|which|that|carrying|holding)\s|\s*[,;(]")
BOUNDARY = _wordset("who whom whose which that where when while as after before because but and or if since "
                    "until than")
ADVERBS = _wordset("also still now then again often never always reportedly allegedly jointly later just even")
BE_HAVE = _wordset("is are was were be been being has have had")
CLAUSE_VERBS = _wordset("say says said think thinks believe believes")  # their object may be a clause
# endings of plural nouns, never of verbs: "Samajwadi Party supporters gather" does not agree with the party
NOUN_ENDINGS = ("ers", "ors", "ists", "ians", "ans", "ants", "ents", "ees", "als", "ions", "ments", "ness", "ships",
                "ties", "ics", "ites", "ures", "ages")
NO_VERB_AFTER = _wordset("a an the his her their its our my your this these those at in on of to for from with by")
DETERMINERS = _wordset("a an the his her their its our this that these those each every another no")
NOUN_SUFFIXES = ("tion", "sion", "ment", "ence", "ance")
PREPOSITIONS = _wordset("at in on of to for from with by near during after before outside inside into over under "
                        "against about across through around along amid toward towards")
NOT_OBJECT = PREPOSITIONS | BOUNDARY


# --------------------------------------------------------------------------- verb forms
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


def verb_form(word: str) -> str:
    """The form a verb-like word looks like: "ing", "past" (also a participle), "s" (third person) or "base"."""
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
    word = {"ing": _gerund(lemma), "past": past, "s": _third_person(lemma), "base": lemma}[verb_form(first)]
    if first[:1].isupper():
        word = word.capitalize()
    return f"{word} {rest}" if rest else word


# --------------------------------------------------------------------------- number
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
    if first in SING_DET:
        return "sing"
    if first in PLUR_DET or (first.isdigit() and first != "1" and len(words) > 1 and words[1][:1].islower()):
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


def verb_number(word: str) -> Number | None:
    """Number a finite present-tense verb agrees with; None for forms that agree with both (past, participles)."""
    w = word.lower()
    if w in _AUX_NUMBER:
        return _AUX_NUMBER[w]
    form = verb_form(w)
    return "sing" if form == "s" else "plur" if form == "base" else None


def inflect_number(word: str, number: Number) -> str:
    """A present-tense verb (or "is", "was", "has", "does") put in `number`, keeping its capitalisation."""
    w = word.lower()
    if w in _AUX_NUMBER:
        new = _AUX_PLURAL.get(w, w) if number == "plur" else _AUX_SINGULAR.get(w, w)
    else:
        new = _base_of(w) if number == "plur" else _third_person(w)
    return new.capitalize() if word[:1].isupper() else new


def is_verb(word: str) -> bool:
    """An auxiliary or a finite form of a common caption verb (`_VERBS`)."""
    w = word.lower()
    return w in _AUX_NUMBER or w in _VERBS or (verb_form(w) == "s" and _base_of(w) in _VERBS)


def verb_like(word: str) -> bool:
    """A finite form of a common verb, or its -ing form ("carrying"): a phrase right after it is its object."""
    w = word.lower()
    if is_verb(w):
        return True
    stem = w[:-3] if w.endswith("ing") else ""
    return bool(stem) and (stem in _VERBS or stem + "e" in _VERBS or stem[:-1] in _VERBS)


_DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


def doubled_words(text: str) -> int:
    """How many words repeat the word before them ("in in", "The the"): an edit that adds one leaves a tell."""
    return len(_DOUBLED.findall(text))
