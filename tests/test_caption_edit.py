"""Caption edits that stay grammatical: the number of a phrase, the verb that agrees with an edited subject,
determiners, doubled words and how a clause uses its trigger. Real captions are VOA literals."""

from __future__ import annotations

import pytest

from align.schema import Argument, Event, Trigger
from data_gen.caption_edit import Clause, clause, edit_clause, trigger_slot
from data_gen.grammar import doubled_words, inflect_trigger, phrase_number


def cut(caption: str, trigger: str, args: list[str], type_: str = "Conflict.Attack") -> Clause:
    """The clause of an event whose trigger and arguments are the first occurrences of these texts."""
    t = caption.index(trigger)
    event = Event(type_, Trigger(trigger, t, t + len(trigger)), [Argument("Target", a) for a in args])
    cl = clause(caption, event)
    assert cl is not None
    return cl


def swap(cl: Clause, i: int = 0, j: int = 1) -> str | None:
    a, b = cl.arguments[i], cl.arguments[j]
    assert a is not None and b is not None
    return edit_clause(cl, [(a, cl.text[b[0]:b[1]]), (b, cl.text[a[0]:a[1]])])


def replace(cl: Clause, new: str, i: int = 0) -> str | None:
    span = cl.arguments[i]
    assert span is not None
    return edit_clause(cl, [(span, new)])


@pytest.mark.parametrize(("phrase", "number"), [
    ("a soldier", "sing"), ("Kenyan police", "plur"), ("Protesters", "plur"), ("riot police", "plur"),
    ("a wad of cash", "sing"), ("bundles of cash", "plur"), ("cash", "sing"), ("police and soldiers", "plur"),
    ("photojournalist Juliana Santos", "sing"), ("Foreign Minister Maria Santos", "sing"), ("the Americans", "plur"),
    ("10 Downing Street", "sing"), ("19 relatives", "plur"), ("they", "plur"), ("him", "sing"), ("The Hague", "sing"),
    ("Bank of England", "sing"), ("the United States", None), ("Bernie Sanders", None), ("Athens", None),
    ("Syrian Democratic Forces", None), ("Bosnia and Herzegovina", None), ("", None),
])
def test_phrase_number(phrase: str, number: str | None) -> None:
    assert phrase_number(phrase) == number


# --------------------------------------------------------------------------- the verb follows its new subject
def test_singular_plural_swap_reinflects_the_trigger() -> None:
    cl = cut("A resident shoots at protesters in Kyiv .", "shoots", ["A resident", "protesters"])
    assert swap(cl) == "Protesters shoot at a resident in Kyiv"
    cl = cut("Soldiers kill a man .", "kill", ["Soldiers", "a man"], "Life.Die")
    assert swap(cl) == "A man kills Soldiers"  # case is no tell: the CLIP tokenizer lower-cases


@pytest.mark.parametrize(("caption", "trigger", "args", "want"), [
    ("Residents are attacked by a soldier .", "attacked", ["Residents", "a soldier"],
     "A soldier is attacked by Residents"),
    ("Victims were killed by a gunman .", "killed", ["Victims", "a gunman"], "A gunman was killed by Victims"),
    ("A policeman has detained protesters .", "detained", ["A policeman", "protesters"],
     "Protesters have detained a policeman"),
    # VOA_EN_NW_2017_01_02: "has" agrees with "Finland", "have" with "citizens"
    ("Finland has become the first country in Europe to pay its unemployed citizens a basic monthly income .", "pay",
     ["Finland", "citizens"], "Citizens have become the first country in Europe to pay its unemployed Finland"),
])
def test_auxiliaries_and_passives(caption: str, trigger: str, args: list[str], want: str) -> None:
    assert swap(cut(caption, trigger, args)) == want


@pytest.mark.parametrize(("caption", "trigger", "args", "want"), [
    ("An activist rallies against the government as riot police look on .", "rallies", ["An activist", "riot police"],
     "Riot police rally against the government as an activist looks on"),  # -ies, and a verb that is no trigger
    ("A soldier pushes protesters .", "pushes", ["A soldier", "protesters"], "Protesters push a soldier"),  # -es
    ("Protesters armed with a rifle attack a resident .", "attack", ["Protesters", "a resident"],
     "A resident armed with a rifle attacks Protesters"),  # the verb after the subject's modifiers
    ("Soldiers attack protesters .", "attack", ["Soldiers", "protesters"], "Protesters attack Soldiers"),  # same number
    ("A soldier attacked protesters .", "attacked", ["A soldier", "protesters"], "Protesters attacked a soldier"),
])
def test_verb_forms(caption: str, trigger: str, args: list[str], want: str) -> None:
    assert swap(cut(caption, trigger, args)) == want


def test_only_the_subjects_verb_changes() -> None:
    # an object ("carrying cash") does not govern the verb after it
    cl = cut("A truck carrying cash heads to Kano .", "carrying", ["A truck", "cash", "Kano"], "Movement.Transport")
    assert replace(cl, "soldiers", 1) == "A truck carrying soldiers heads to Kano"
    # VOA: one conjunct of a coordinated subject; the verb agrees with the whole
    cl = cut("Police , Red Cross and rescue workers remove the remains of victims .", "remove", ["workers", "remains"])
    assert replace(cl, "Daesh") == "Police , Red Cross and rescue Daesh remove the remains of victims"
    # VOA: inside a prepositional phrase, not the subject
    cl = cut("Residents of areas recaptured by Iraqi forces often abandon homes .", "abandon", ["forces", "homes"])
    assert replace(cl, "John Kerry") == "Residents of areas recaptured by Iraqi John Kerry often abandon homes"
    # VOA: a modifier, not the subject ("Samajwadi Party supporters gather")
    cl = cut("Samajwadi Party supporters gather in Lucknow .", "gather", ["Samajwadi Party", "Lucknow"])
    assert replace(cl, "protesters") == "Protesters supporters gather in Lucknow"


def test_asides_and_pronouns() -> None:
    # VOA_EN_NW_2017_02_28_3743443_1
    cl = cut("Uganda ' s main opposition leader Kizza Besigye , center , is arrested by police and thrown into a van .",
             "arrested", ["Kizza Besigye", "police"], "Justice.Arrest-Jail")
    assert swap(cl) == "Uganda ' s main opposition leader police , center , are arrested by Kizza Besigye"
    cl = cut("Leaders speak as they take part in a forum in St . Petersburg .", "take part", ["they", "forum"])
    assert replace(cl, "Steve Bannon") == "Leaders speak as Steve Bannon takes part in a forum"


def test_an_edit_that_cannot_be_made_grammatical_is_refused() -> None:
    cl = cut("A resident shoots at protesters .", "shoots", ["A resident", "protesters"])
    assert replace(cl, "Bernie Sanders") is None  # number unknown: "shoot" or "shoots"?
    assert replace(cl, "Bernie Sanders", 1) == "A resident shoots at Bernie Sanders"  # an object: no verb to agree
    # VOA_EN_NW_2017_01_12_3674165_0: "a bus members" would keep the singular determiner
    cl = cut("FILE - A policeman secures a crime scene after a bus driver was killed by suspected gang members .",
             "killed", ["driver", "members"], "Life.Die")
    assert swap(cl) is None
    cl = cut("Protesters rally in front of the parliament .", "rally", ["Protesters", "parliament"])
    assert replace(cl, "The Hague", 1) is None  # "the The Hague"


def test_doubled_words() -> None:
    assert doubled_words("Moon Jae - in in Seoul") == 1
    assert doubled_words("The the crowd gives money money") == 2
    assert doubled_words("Police arrest protesters") == 0


# --------------------------------------------------------------------------- how a clause uses its trigger
@pytest.mark.parametrize(("caption", "trigger", "noun", "participle", "obj"), [
    ("Two officials shake hands before a meeting at the port .", "meeting", True, False, None),
    ("Senators speak following their talks with Obama .", "talks", True, False, None),
    ("Clapper arrives for a weekly cabinet meeting , in Jerusalem .", "meeting", True, False, None),
    ("A truck carrying villagers heads to Kano .", "carrying", False, False, 0),
    ("Kizza Besigye is arrested by police .", "arrested", False, True, None),
    ("A resident calls relatives using a phone .", "calls", False, False, -1),
    ("Crowds gather after an attack in Kabul .", "attack", True, False, None),
])
def test_trigger_slot(caption: str, trigger: str, noun: bool, participle: bool, obj: int | None) -> None:
    args = [a for a in ("villagers", "a phone") if a in caption]
    slot = trigger_slot(cut(caption, trigger, args))
    assert (slot.noun, slot.participle, slot.object) == (noun, participle, obj)


def test_inflect_trigger_as_participle() -> None:
    assert inflect_trigger("gave money", "escorted", participle=True) == "given money"
    assert inflect_trigger("gave money", "escorted") == "gave money"
    assert inflect_trigger("arrested", "detained", participle=True) == "arrested"
    assert inflect_trigger("attacked", "drove") == "attacked"  # an irregular past stays past
