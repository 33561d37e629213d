"""Hard negatives: each kind on hand-made events, and the guarantees on random events (hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.caption_edit import clause, inflect_trigger, norm
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
    assert texts["Life.Die"] == "Crowds gather after a kill in Kabul"


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
