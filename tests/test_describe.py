"""Salient event selection, positive descriptions, caption clauses and the `data-gen describe` command."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen import describe as describe_mod
from data_gen.caption_edit import clause, find_span, match_tokenisation
from data_gen.describe import describe
from data_gen.salient import merge_same_type, select_salient

ONT = Ontology.default()


def ev(type_: str, trigger: str, *args: tuple[str, str]) -> Event:
    return Event(type_, Trigger(trigger), [Argument(r, t) for r, t in args])


# --------------------------------------------------------------------------- salient event
def test_no_events_gives_none() -> None:
    assert select_salient([], ONT) == ([], None)


def test_same_type_events_merge_their_arguments() -> None:
    a = ev("Contact.Meet", "met", ("Participant", "Trump"))
    b = ev("Contact.Meet", "talks", ("Participant", "Abe"), ("Participant", "trump"), ("Place", "Tokyo"))
    c = ev("Life.Die", "died", ("Victim", "a man"))
    merged, _ = select_salient([a, c, b], ONT)
    assert [e.type for e in merged] == ["Contact.Meet", "Life.Die"]
    meet = merged[0]
    assert meet.trigger.text == "talks"  # the trigger of the event with most arguments
    assert [(x.role, x.text) for x in meet.arguments] == [("Participant", "Abe"), ("Participant", "trump"),
                                                          ("Place", "Tokyo"), ]
    assert merge_same_type([c]) == [c]


def test_salience_uses_roles_frequency_and_image_prior() -> None:
    attack = ev("Conflict.Attack", "attack", ("Attacker", "rebels"), ("Target", "a convoy"))
    meet = ev("Contact.Meet", "met", ("Participant", "leaders"))
    # Roles: attack fills 2 of 4 roles, meet 1 of 2: a tie, broken by order.
    assert select_salient([meet, attack], ONT)[1] == 0
    assert select_salient([attack, meet], ONT)[1] == 0
    # Corpus frequency breaks it.
    assert select_salient([attack, meet], ONT, type_counts={"Contact.Meet": 900, "Conflict.Attack": 10})[1] == 1
    # The image prior outweighs the text cues.
    prior = {"Conflict.Attack": 0.9, "Contact.Meet": 0.05}
    assert select_salient([attack, meet], ONT, {"Contact.Meet": 900, "Conflict.Attack": 10}, prior)[1] == 0


# --------------------------------------------------------------------------- positives
VOA = ("FILE - South Korean President Park Geun - hye speaks during a meeting with reporters at the Blue House "
       "in Seoul , South Korea , in this handout picture released by Yonhap , Jan . 1 , 2017 . Sen . John "
       "McCain attends .")
MEET = Event("Contact.Meet", Trigger("meeting", VOA.index("meeting"), VOA.index("meeting") + 7), [
    Argument("Participant", "reporters"), Argument("Place", "Blue House"), Argument("Participant", "Park Geun-hye")])


def test_all_positive_kinds() -> None:
    out = {d.kind: d.text for d in describe(VOA, [MEET], 0, ONT, random.Random(0))}
    assert out["caption"] == VOA
    assert out["long"] == "Reporters and Park Geun-hye met in Blue House"
    assert out["short"] in {"Meeting of reporters", "Meeting of Park Geun-hye"}
    assert out["caption_edit"] == ("South Korean President Park Geun - hye speaks during a meeting with reporters "
                                   "at the Blue House in Seoul")


def test_without_salient_event_only_the_caption() -> None:
    assert [d.kind for d in describe("A quiet street .", [], None, ONT, random.Random(0))] == ["caption"]


def test_repeated_positives_are_left_out() -> None:
    caption = "Rebels attacked a convoy"
    event = Event("Conflict.Attack", Trigger("attacked", 7, 15), [Argument("Attacker", "Rebels", None, 0, 6),
                                                                  Argument("Target", "a convoy", None, 16, 24)])
    kinds = [d.kind for d in describe(caption, [event], 0, ONT, random.Random(0))]
    assert kinds == ["caption", "short"]  # long and caption_edit equal the caption


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown description kinds"):
        describe("x", [], None, ONT, random.Random(0), kinds=("caption", "llm"))


def test_clause_sentence_and_spans() -> None:
    caption = "Crowds cheer . U . S . troops attacked the town of Raqqa near the river and then left ."
    event = Event("Conflict.Attack", Trigger("attacked"), [Argument("Attacker", "troops"),
                                                           Argument("Place", "Raqqa"), Argument("Target", "Mosul")])
    cl = clause(caption, event)
    assert cl is not None
    assert cl.text == "U . S . troops attacked the town of Raqqa"
    assert cl.text[slice(*cl.trigger)] == "attacked"
    assert [None if s is None else cl.text[slice(*s)] for s in cl.arguments] == ["troops", "Raqqa", None]


def test_find_span_tolerates_tokenisation() -> None:
    text = "Choi Soon - sil and Park Geun - hye ' s aides"
    assert text[slice(*find_span(text, "Park Geun-hye"))] == "Park Geun - hye"
    assert find_span(text, "soon") is not None and find_span(text, "Soo") is None
    assert match_tokenisation("Kim Jong-un", text) == "Kim Jong - un"
    assert match_tokenisation("Kim Jong-un", "Plain text, untokenised.") == "Kim Jong-un"


# --------------------------------------------------------------------------- command
RECORDS = [
    {"id": "a_0", "caption": "A man walks to a bus stop while police arrested protesters .", "image_url": "u",
     "events": [
         {"type": "Movement.TransportPerson", "trigger": {"text": "walks", "char_start": 6, "char_end": 11},
          "arguments": [{"role": "Person", "text": "man"}, {"role": "Destination", "text": "stop"},
                        {"role": "Agent", "text": "man"}]},
         {"type": "Justice.ArrestJail", "trigger": {"text": "arrested", "char_start": 37, "char_end": 45},
          "arguments": [{"role": "Agent", "text": "police"}, {"role": "Person", "text": "protesters"}]}]},
    {"id": "a_1", "caption": "Newly elected president speaks .",
     "events": [{"type": "Personnel.Elect", "trigger": {"text": "elected"}, "arguments": []}]},
    {"id": "a_2", "caption": "Soldiers attacked rebels in Aleppo .", "events": [
        {"type": "Conflict.Attack", "trigger": {"text": "attacked"},
         "arguments": [{"role": "Attacker", "text": "Soldiers"}, {"role": "Target", "text": "rebels"},
                       {"role": "Place", "text": "Aleppo"}]}]},
    {"id": "a_3", "caption": "Militants attacked a checkpoint in Homs .", "events": [
        {"type": "Conflict.Attack", "trigger": {"text": "attacked"},
         "arguments": [{"role": "Attacker", "text": "militants"}, {"role": "Target", "text": "checkpoint"},
                       {"role": "Place", "text": "Homs"}]}]},
]


def run_cli(tmp_path: Path, *argv: str, records: list | None = None,
            lines: list[str] | None = None) -> tuple[int, Path]:
    src, out = tmp_path / "in.jsonl", tmp_path / "out" / "described.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    src.write_text("\n".join(lines if lines is not None else [json.dumps(r) for r in records or RECORDS]) + "\n")
    parser = argparse.ArgumentParser()
    describe_mod.register(parser.add_subparsers())
    args = parser.parse_args(["describe", "--input", str(src), "--output", str(out), "--no-progress", *argv])
    return args.func(args), out


def test_cli_output(tmp_path: Path) -> None:
    rc, out = run_cli(tmp_path, "--mode", "both", "--negatives", "type_swap=2,role_swap=1,arg_replace=1")
    assert rc == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["a_0", "a_1", "a_2", "a_3"]
    first = recs[0]
    assert first["image_url"] == "u"
    assert [e["type"] for e in first["events"]] == ["Movement.Transport", "Justice.Arrest-Jail"]
    assert [a["role"] for a in first["events"][0]["arguments"]] == ["Artifact", "Destination", "Agent"]
    assert first["salient"] in (0, 1) and first["flags"] == []
    assert {p["kind"] for p in first["positives"]} == {"caption", "short", "long", "caption_edit"}
    assert recs[1]["salient"] is None and recs[1]["events"] == [] and recs[1]["flags"] == ["no_event"]
    assert recs[1]["positives"] == [{"kind": "caption", "text": "Newly elected president speaks ."}]
    negs = recs[2]["negatives"]
    assert sum(n["kind"] == "type_swap" and n["changed"]["mode"] == "template" for n in negs) == 2
    assert {n["changed"]["mode"] for n in negs} == {"template", "caption_edit"}
    replaced = [n for n in negs if n["kind"] == "arg_replace"]
    # the pool: arguments of the same role seen in the input
    assert replaced and all(n["changed"]["argument"]["to"] in {"militants", "checkpoint", "Homs"} for n in replaced)
    texts = [n["text"].lower() for n in negs]
    assert len(set(texts)) == len(texts)


def test_cli_is_deterministic_per_seed(tmp_path: Path) -> None:
    _, out = run_cli(tmp_path / "a", "--seed", "3")
    _, again = run_cli(tmp_path / "b", "--seed", "3")
    assert out.read_text() == again.read_text()
    _, reordered = run_cli(tmp_path / "c", "--seed", "3", records=RECORDS[::-1])
    assert sorted(out.read_text().splitlines()) == sorted(reordered.read_text().splitlines())


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": 3, "caption": "x"}), "field 'id' must be a string"),
    (json.dumps({"id": "b", "caption": "x", "events": [{"type": "Life.Die"}]}), "events[0].trigger"),
    (json.dumps({"id": "b", "caption": "x", "image_prior": {"Life.Die": "high"}}), "image_prior"),
])
def test_cli_bad_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                          problem: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "described.jsonl").write_text("previous\n")
    rc, out = run_cli(tmp_path, lines=[json.dumps(RECORDS[2]), line])
    err = capsys.readouterr().err
    assert rc == 2 and "in.jsonl:2: " in err and problem in err
    assert out.read_text() == "previous\n"  # the old output is untouched
    assert [p.name for p in out.parent.iterdir()] == ["described.jsonl"]  # no temporary file left


def test_negatives_option_is_validated(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "--negatives", "swap=1")


def test_extra_hook_sees_every_record_once(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 100))
    seen: list[str] = []

    def extra(chunk: list[dict]) -> None:
        for r in chunk:
            seen.append(r["id"])
            r["positives"].append({"kind": "llm", "text": "added"})

    config = describe_mod.DescribeConfig()
    stats = describe_mod.run_describe(tmp_path / "in.jsonl", tmp_path / "out.jsonl", ONT, config, extra, False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(seen) == len(out) == stats["records"] == 400
    assert all(r["positives"][-1] == {"kind": "llm", "text": "added"} for r in out)
