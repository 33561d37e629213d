"""Hard negatives: each kind on hand-made events, and the guarantees on random events (hypothesis)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.caption_edit import clause, norm
from data_gen.grammar import inflect_trigger
from data_gen.negatives import EntityPool, make_negatives, role_map

ONT = Ontology.default()


def span_event(caption: str, type_: str, trigger: str, args: list[tuple[str, str]]) -> Event:
    """An event whose trigger and arguments carry their first offsets in `caption`."""
    t = caption.index(trigger)
    arguments = []
    for role, text in args:
        s = caption.index(text)
        arguments.append(Argument(role, text, None, s, s + len(text)))
    return Event(type_, Trigger(trigger, t, t + len(trigger)), arguments)


ATTACK_CAPTION = "FILE - Soldiers attacked the protesters with tear gas in Cairo , Egypt , Jan . 3 , 2017 ."
ATTACK = span_event(ATTACK_CAPTION, "Conflict.Attack", "attacked", [
    ("Attacker", "Soldiers"), ("Target", "protesters"), ("Instrument", "tear gas"), ("Place", "Cairo")])
POOL = EntityPool.from_events([
    Event("Conflict.Attack", Trigger("x"), [Argument("Place", "Aleppo"), Argument("Place", "Cairo"),
                                            Argument("Attacker", "militants"), Argument("Target", "it")]),
])


def negs(event: Event, caption: str = "", mode: str = "template", seed: int = 0, **counts: int):
    return make_negatives(caption, event, ONT, random.Random(seed), [caption], counts or {"type_swap": 1,
                          "role_swap": 1, "arg_replace": 1}, POOL, mode)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- type swap
def test_role_map_moves_roles_by_entity_types() -> None:
    mapping = role_map(ONT["Conflict.Attack"], ONT["Life.Die"])
    assert mapping == {"Attacker": "Agent", "Target": "Victim", "Instrument": "Instrument", "Place": "Place"}
    assert role_map(ONT["Contact.Meet"], ONT["Conflict.Attack"])["Place"] == "Place"


def test_type_swap_template_rerenders_with_new_roles() -> None:
    out = negs(ATTACK, type_swap=3)
    assert [n.kind for n in out] == ["type_swap"] * 3
    assert {n.changed["type"][1] for n in out} == set(ONT["Conflict.Attack"].confusable)
    die = next(n for n in out if n.changed["type"] == ["Conflict.Attack", "Life.Die"])
    assert die.text == "Protesters died, killed by Soldiers with tear gas in Cairo"
    assert die.changed["roles"] == {"Soldiers": ["Attacker", "Agent"], "protesters": ["Target", "Victim"]}


def test_type_swap_caption_edit_replaces_trigger_in_tense() -> None:
    out = negs(ATTACK, ATTACK_CAPTION, mode="caption_edit", type_swap=3)
    texts = {n.changed["type"][1]: n.text for n in out}
    assert texts["Justice.Arrest-Jail"] == "Soldiers arrested the protesters with tear gas in Cairo"
    assert texts["Conflict.Demonstrate"] == "Soldiers protested the protesters with tear gas in Cairo"
    assert all(n.changed["trigger"][0] == "attacked" and n.changed["mode"] == "caption_edit" for n in out)


@pytest.mark.parametrize(("new", "like", "want"), [
    ("attacked", "speaks", "attacks"), ("met", "meeting", "meeting"), ("arrested", "jailed", "arrested"),
    ("gave money", "protests", "gives money"), ("protested", "Killing", "Protesting"), ("met", "attack", "meet"),
    ("carried", "moves", "carries"),
])
def test_inflect_trigger(new: str, like: str, want: str) -> None:
    assert inflect_trigger(new, like) == want


def test_article_follows_the_new_trigger() -> None:
    caption = "Crowds gather after an attack in Kabul ."
    event = span_event(caption, "Conflict.Attack", "attack", [("Place", "Kabul")])
    texts = {n.changed["type"][1]: n.text for n in negs(event, caption, mode="caption_edit", type_swap=3)}
    assert texts["Life.Die"] == "Crowds gather after a death in Kabul"  # a noun trigger gets the type's noun
    assert texts["Justice.Arrest-Jail"] == "Crowds gather after an arrest in Kabul"


# --------------------------------------------------------------------------- role swap
def test_role_swap_template_prefers_alike_roles() -> None:
    (n,) = negs(ATTACK, role_swap=1)
    assert n.text == "Protesters attacked Soldiers with tear gas in Cairo"
    assert n.changed["roles"] == {"Soldiers": ["Attacker", "Target"], "protesters": ["Target", "Attacker"]}


def test_role_swap_only_between_fillers_that_fit_both_roles() -> None:
    """A swap the text alone gives away ("a bus attacked the troops", "the desert arrested ...") is not made."""
    event = Event("Conflict.Attack", Trigger("attacked"), [
        Argument("Attacker", "A soldier", "soldier"), Argument("Target", "a bus", "vehicle"),
        Argument("Instrument", "rifles", "weapon"), Argument("Place", "the desert", "place")])
    assert negs(event, role_swap=3) == []
    arrest = Event("Justice.Arrest-Jail", Trigger("arrested"), [
        Argument("Agent", "A policeman", "police"), Argument("Person", "an official", "official"),
        Argument("Place", "the desert", "place")])
    (n,) = negs(arrest, role_swap=3)  # both are people (PER), so only they swap
    assert n.text == "An official arrested a policeman in the desert"
    assert n.changed["roles"] == {"A policeman": ["Agent", "Person"], "an official": ["Person", "Agent"]}


def test_role_swap_caption_edit_swaps_spans() -> None:
    (n,) = negs(ATTACK, ATTACK_CAPTION, mode="caption_edit", role_swap=1)
    assert n.text == "Protesters attacked the Soldiers with tear gas in Cairo"
    caption = "A soldier handcuffs a protester at a market ."
    event = span_event(caption, "Justice.Arrest-Jail", "handcuffs", [("Agent", "A soldier"), ("Person", "a protester")])
    (n,) = negs(event, caption, mode="caption_edit", role_swap=1)
    assert n.text.startswith("A protester handcuffs a soldier at a market")  # no "... handcuffs A soldier" cue


def test_single_argument_moves_to_another_role_in_template_mode_only() -> None:
    caption = "Police arrested a man ."
    event = span_event(caption, "Justice.Arrest-Jail", "arrested", [("Person", "man")])
    (n,) = negs(event, role_swap=1)
    assert n.text == "Man arrested someone" and n.changed["roles"] == {"man": ["Person", "Agent"]}
    assert negs(event, caption, mode="caption_edit", role_swap=1) == []


def test_symmetric_roles_never_swap() -> None:
    caption = "Trump meets Abe in Tokyo ."
    event = span_event(caption, "Contact.Meet", "meets", [("Participant", "Trump"), ("Participant", "Abe")])
    for mode in ("template", "caption_edit"):
        assert negs(event, caption, mode=mode, role_swap=3) == []
    event.arguments.append(span_event(caption, "Contact.Meet", "meets", [("Place", "Tokyo")]).arguments[0])
    out = negs(event, caption, mode="caption_edit", role_swap=3)
    assert {n.text for n in out} == {"Tokyo meets Abe in Trump", "Trump meets Tokyo in Abe"}
    assert all("Place" in pair for n in out for pair in n.changed["roles"].values())


# --------------------------------------------------------------------------- argument replacement
def test_arg_replace_uses_pool_and_skips_texts_in_caption() -> None:
    outs = [negs(ATTACK, ATTACK_CAPTION, mode="caption_edit", seed=s, arg_replace=2) for s in range(5)]
    for out in outs:
        for n in out:
            a = n.changed["argument"]
            assert (a["role"], a["to"]) in {("Place", "Aleppo"), ("Attacker", "militants")}  # "Cairo" is in it
            assert a["from"] == {"Place": "Cairo", "Attacker": "Soldiers"}[a["role"]]
    assert any(n.text == "Soldiers attacked the protesters with tear gas in Aleppo" for out in outs for n in out)


def test_arg_replace_needs_a_pool() -> None:
    assert make_negatives("", ATTACK, ONT, random.Random(0), [], {"arg_replace": 2}) == []


def test_pool_keys_by_entity_type_and_drops_pronouns() -> None:
    pool = EntityPool.from_events([Event("Life.Die", Trigger("x"), [
        Argument("Victim", "a farmer", "PER"), Argument("Victim", "it"), Argument("Victim", "They"),
        Argument("Victim", "rebels")])])
    assert list(pool(Argument("Agent", "x", "PER"))) == ["a farmer"]
    assert list(pool(Argument("Victim", "x"))) == ["rebels"]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown negative kinds"):
        negs(ATTACK, swap=1)
    with pytest.raises(ValueError, match="non-negative"):
        negs(ATTACK, type_swap=-1)


def test_caption_edit_without_trigger_in_caption_makes_nothing() -> None:
    event = Event("Conflict.Attack", Trigger("bombed"), [Argument("Attacker", "Soldiers")])
    assert negs(event, "Soldiers stand guard .", mode="caption_edit", type_swap=2) == []


# --------------------------------------------------------------------------- no grammar tells
def voa_event(caption: str, type_: str, trigger: str, args: list[tuple[str, str]]) -> Event:
    """A VOA-style silver event: trigger offsets, arguments by text only, fine type mapped by the ontology."""
    t = caption.index(trigger)
    event = ONT.normalize(Event(type_, Trigger(trigger, t, t + len(trigger)), [Argument(r, x) for r, x in args]))
    assert event is not None
    return event


def edit_negs(caption: str, event: Event, **counts: int) -> list:
    return negs(event, caption, mode="caption_edit", **counts)


def test_role_swap_reinflects_the_verb_for_the_new_subject() -> None:
    caption = "A resident shoots at protesters in Kyiv on Monday ."
    event = span_event(caption, "Conflict.Attack", "shoots", [("Attacker", "A resident"), ("Target", "protesters")])
    assert [n.text for n in edit_negs(caption, event, role_swap=1)] == ["Protesters shoot at a resident"]
    caption = "Residents are attacked by a soldier on Monday ."
    event = span_event(caption, "Conflict.Attack", "attacked", [("Target", "Residents"), ("Attacker", "a soldier")])
    assert [n.text for n in edit_negs(caption, event, role_swap=1)] == ["A soldier is attacked by Residents on Monday"]


def test_voa_captions_stay_grammatical() -> None:
    # VOA_EN_NW_2017_02_28_3743443_1: passive, an aside between subject and auxiliary
    caption = ("Uganda ' s main opposition leader Kizza Besigye , center , is arrested by police and thrown into the "
               "back of a blacked - out police van .")
    event = voa_event(caption, "Justice.ArrestJail", "arrested", [("Person", "Kizza Besigye"), ("Agent", "police")])
    (n,) = edit_negs(caption, event, role_swap=1)
    assert n.text == "Uganda ' s main opposition leader police , center , are arrested by Kizza Besigye"
    # VOA_EN_NW_2017_01_23_3687719_0: both plural, so "are" stays; a passive type swap takes a participle
    caption = ("FILE - Members of Turkey ' s armed forces are escorted by police at the court house in Mugla , a "
               "Mediterrenean city of Turkey .")
    event = voa_event(caption, "Movement.TransportPerson", "escorted", [("Person", "Members"), ("Agent", "police")])
    (n,) = edit_negs(caption, event, role_swap=1)
    assert n.text == "Police of Turkey ' s armed forces are escorted by Members"
    texts = {x.changed["type"][1]: x.text for x in edit_negs(caption, event, type_swap=3)}
    assert texts["Transaction.Transfer-Money"] == "Members of Turkey ' s armed forces are given money by police"
    # VOA_EN_NW_2017_01_12_3674165_0: "a bus members was killed" is never made; the place swap is grammatical
    caption = ("FILE - A policeman secures a crime scene after a bus driver was killed by suspected gang members "
               "during a suspension of public transport services in San Salvador , July 27 , 2015 .")
    event = voa_event(caption, "Life.Die", "killed", [("Victim", "driver"), ("Agent", "members"),
                                                      ("Place", "San Salvador")])
    assert [x.changed["roles"] for x in edit_negs(caption, event, role_swap=3)] == [
        {"members": ["Agent", "Place"], "San Salvador": ["Place", "Agent"]}]


def test_type_swap_keeps_a_noun_trigger_a_noun() -> None:
    caption = "Two officials shake hands before a meeting at the port of Odesa on Monday ."
    event = span_event(caption, "Contact.Meet", "meeting", [("Participant", "Two officials")])
    texts = {n.changed["type"][1]: n.text for n in edit_negs(caption, event, type_swap=3)}
    assert texts == {"Contact.Phone-Write": "Two officials shake hands before a phone call",
                     "Conflict.Demonstrate": "Two officials shake hands before a protest",
                     "Transaction.Transfer-Money": "Two officials shake hands before a money transfer"}


def test_type_swap_to_a_trigger_with_an_object_word() -> None:
    caption = "A local resident drives money from a house in Aswan ."
    event = span_event(caption, "Movement.Transport", "drives", [("Agent", "A local resident"), ("Artifact", "money")])
    event.arguments[1].entity_type = "money"
    texts = {n.changed["type"][1]: n.text for n in edit_negs(caption, event, type_swap=3)}
    assert texts["Transaction.Transfer-Money"] == "A local resident gives money"  # not "gives money money"
    caption = "A shopkeeper meets Senator Jose Hernandez at the port of Cartagena ."
    event = span_event(caption, "Contact.Meet", "meets", [("Participant", "A shopkeeper"),
                                                           ("Participant", "Senator Jose Hernandez")])
    out = edit_negs(caption, event, type_swap=3)
    assert len(out) == 3 and "Transaction.Transfer-Money" not in {n.changed["type"][1] for n in out}  # "gives money X"


def test_pronouns_never_role_swap() -> None:
    caption = "They attacked police in Kabul ."
    event = span_event(caption, "Conflict.Attack", "attacked", [("Attacker", "They"), ("Target", "police")])
    for mode in ("template", "caption_edit"):
        assert negs(event, caption, mode=mode, role_swap=2) == []  # never "Police attacked they"


def test_eventworld_caption_edit_negatives_agree() -> None:
    """Independent check on EventWorld: the template's verb ({T:sing|plur}, {V:sing|plur}) must take the number of
    the subject the negative ends up with, by EventWorld's own `is_plural` (mass nouns singular)."""
    from data_gen.eventworld.captions import TEMPLATES, is_plural
    from data_gen.eventworld.cli import EventWorldSamples
    from data_gen.eventworld.scene import build_scene

    def plural(text: str) -> bool:
        head = text.lower().split(" of ")[0]
        return is_plural(head) and head.split()[-1] not in ("cash", "money")

    def wrong(text: str, pairs: list[tuple[str, str]], want_plural: bool) -> bool:
        def has(w: str) -> bool:
            return re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) is not None
        return any(has(pl if not want_plural else sg) and not has(sg if not want_plural else pl) for sg, pl in pairs)

    make = EventWorldSamples(seed=0, image_size=32, negatives={"role_swap": 2, "arg_replace": 2})
    checked = number_changes = 0
    for index in range(64):
        sample = make(index)
        event = sample.events[0]
        subject, template = TEMPLATES[event.type][build_scene(index, 0, event.type, ONT).template]
        pairs = [(sg, pl) for sg, pl in re.findall(r"\{[TV]:([^}|]+)\|([^}]+)\}", template) if sg != pl]
        old = next((a.text for a in event.arguments if a.role == subject), None)
        if old is None or not pairs or wrong(sample.caption, pairs, plural(old)):
            continue
        for n in sample.negatives:
            if n.changed["mode"] != "caption_edit":
                continue
            new = old
            if n.kind == "role_swap":
                new = next((t for t, (_, to) in n.changed["roles"].items() if to == subject), old)
            elif n.changed["argument"]["role"] == subject:
                new = n.changed["argument"]["to"]
            assert not wrong(n.text, pairs, plural(new)), (sample.caption, n.text)
            checked += 1
            number_changes += plural(new) != plural(old)
    assert checked > 50 and number_changes >= 5  # the check saw subjects change number


# --------------------------------------------------------------------------- guarantees on random events
WORDS = ["police", "the crowd", "Aleppo", "a truck", "rebels", "Police", "Kim Jong - un", "money", "a phone"]


@st.composite
def captioned_events(draw: st.DrawFn) -> tuple[str, Event]:
    etype = ONT[draw(st.sampled_from(ONT.type_names))]
    roles = draw(st.lists(st.sampled_from(etype.role_names), max_size=5))
    texts = [draw(st.sampled_from(WORDS)) for _ in roles]
    trigger = draw(st.sampled_from(["attacked", "meets", "protest", "killing", "gave"]))
    # caption: "T0 trigger near T1 near T2 ... ." with every span recorded
    pieces = ([("arg", texts[0])] if texts else []) + [("trigger", trigger)]
    pieces += [p for t in texts[1:] for p in (("", "near"), ("arg", t))] + [("", ".")]
    caption, arg_spans, trigger_span = "", [], (0, 0)
    for what, text in pieces:
        span = (len(caption), len(caption) + len(text))
        caption += text + " "
        if what == "arg":
            arg_spans.append(span)
        elif what == "trigger":
            trigger_span = span
    args = [Argument(r, t, None, *sp) for r, t, sp in zip(roles, texts, arg_spans)]
    return caption.strip(), Event(etype.name, Trigger(trigger, *trigger_span), args)


GUARANTEE_POOL = EntityPool.from_events(
    [Event(t, Trigger("x"), [Argument(r, w) for w in WORDS + ["Paris", "soldiers"]])
     for t in ONT.type_names for r in ONT[t].role_names]
)


@settings(max_examples=150, deadline=None)
@given(captioned_events(), st.sampled_from(["template", "caption_edit"]), st.integers(0, 2**32 - 1),
       st.fixed_dictionaries({k: st.integers(0, 3) for k in ("type_swap", "role_swap", "arg_replace")}))
def test_guarantees(sample: tuple[str, Event], mode: str, seed: int, counts: dict[str, int]) -> None:
    caption, event = sample
    t = ONT[event.type]
    positives = [caption, t.render({a.role: a.text for a in event.arguments}, "long")]
    cl = clause(caption, event)
    if cl is not None:
        positives.append(cl.text)

    def run() -> list:
        return make_negatives(caption, event, ONT, random.Random(seed), positives, counts, GUARANTEE_POOL,
                              mode)  # type: ignore[arg-type]

    out = run()
    assert [n.to_dict() for n in out] == [n.to_dict() for n in run()]  # deterministic for a seed
    keys = [norm(n.text) for n in out]
    assert len(set(keys)) == len(keys)  # no duplicates
    assert not set(keys) & {norm(p) for p in positives}  # never a positive
    arg_texts = {a.text for a in event.arguments}
    for kind, want in counts.items():
        assert sum(n.kind == kind for n in out) <= want
    for n in out:
        assert n.changed["mode"] == mode
        if n.kind == "type_swap":
            old, new = n.changed["type"]
            assert old == event.type and new in ONT and new != old
        elif n.kind == "role_swap":
            moves = n.changed["roles"]
            assert moves and set(moves) <= arg_texts
            assert all(a != b and not t.is_symmetric(a, b) for a, b in moves.values())
        else:
            change = n.changed["argument"]
            assert change["from"] in arg_texts and norm(change["to"]) not in {norm(x) for x in arg_texts}
            assert norm(change["to"]) not in norm(caption)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), st.integers(0, 1000))
def test_meet_participants_never_role_swap(names: list[str], seed: int) -> None:
    event = Event("Contact.Meet", Trigger("met"), [Argument("Participant", w) for w in names])
    caption = " and ".join(names) + " met ."
    for mode in ("template", "caption_edit"):
        out = make_negatives(caption, event, ONT, random.Random(seed), [caption], {"role_swap": 3}, None,
                             mode)  # type: ignore[arg-type]
        if len(names) > 1 or mode == "caption_edit":
            assert out == []
        else:  # a single participant may only move to Place
            assert [n.changed["roles"] for n in out] == [{names[0]: ["Participant", "Place"]}]
