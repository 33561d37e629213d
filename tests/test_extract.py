"""Caption event extraction: rules backend, import formats, `data-gen extract` CLI and the benchmark scorer."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.extract import Extractor, InputError, get_extractor, read_captions, register
from data_gen.extract_import import ImportExtractor, ImportFormatError, detect_format, read_jsonl
from data_gen.extract_rules import Lexicon, LexiconError, RulesExtractor
from data_gen.jsonl import JSONLineError, count_records, read_json_lines, record_id
from data_gen.llm_describe import fillers

ROOT = Path(__file__).resolve().parents[1]

CAPTIONS = {
    "attack": "Taliban militants attacked a police checkpoint with rockets in Kabul, Afghanistan, on Monday.",
    "arrest": "Police arrested a protester outside the parliament in Paris.",
    "die": "A soldier was killed by a roadside bomb in Mosul.",
    "meet": "President Trump meets with Chinese President Xi Jinping in Beijing.",
    "transport": "Refugees traveled from Syria to Germany by bus.",
    "demonstrate": "Thousands of protesters rallied in Hong Kong on Sunday.",
    "money": "The World Bank paid $5 million to the government of Kenya.",
    "phone": "President Putin spoke by phone with Chancellor Merkel on Tuesday.",
    "none": "A view of the mountains at sunset.",
}


@pytest.fixture(scope="module")
def rules() -> RulesExtractor:
    return RulesExtractor(max_per_role=2)


@pytest.fixture(scope="module")
def extracted(rules: RulesExtractor) -> dict[str, list[Event]]:
    return dict(zip(CAPTIONS, rules.extract(list(CAPTIONS.values()))))


def only(events: list[Event], type_name: str) -> Event:
    matching = [e for e in events if e.type == type_name]
    assert len(matching) == 1, [e.to_dict() for e in events]
    return matching[0]


# ---------------------------------------------------------------- rules backend
@pytest.mark.parametrize(("key", "type_name", "trigger", "expected"), [
    ("attack", "Conflict.Attack", "attacked",
     {"Attacker": "Taliban militants", "Target": "police checkpoint", "Instrument": "rockets", "Place": "Kabul"}),
    ("arrest", "Justice.Arrest-Jail", "arrested", {"Agent": "Police", "Person": "protester"}),
    ("die", "Life.Die", "killed", {"Victim": "soldier", "Instrument": "roadside bomb", "Place": "Mosul"}),
    ("meet", "Contact.Meet", "meets", {"Participant": "Xi Jinping", "Place": "Beijing"}),
    ("transport", "Movement.Transport", "traveled",
     {"Artifact": "Refugees", "Origin": "Syria", "Destination": "Germany", "Vehicle": "bus"}),
    ("demonstrate", "Conflict.Demonstrate", "rallied", {"Entity": "protesters", "Place": "Hong Kong"}),
    ("money", "Transaction.Transfer-Money", "paid", {"Giver": "World Bank", "Recipient": "government"}),
    ("phone", "Contact.Phone-Write", "spoke by phone", {"Entity": "Merkel"}),
])
def test_rules_types_triggers_roles(extracted, key, type_name, trigger, expected):
    event = only(extracted[key], type_name)
    assert event.trigger.text == trigger
    found = fillers(event)
    for role, text in expected.items():
        assert text in found.get(role, []), (role, found)


def test_rules_no_event_and_spans_consistent(extracted):
    assert extracted["none"] == []
    for key, events in extracted.items():
        text = CAPTIONS[key]
        for e in events:
            assert text[e.trigger.char_start:e.trigger.char_end] == e.trigger.text
            for a in e.arguments:
                assert text[a.char_start:a.char_end] == a.text


def test_rules_money_role_and_passive_agent(rules):
    (paid,) = rules.extract(["The World Bank paid $5 million to the government of Kenya."])[0]
    assert "$5 million" in fillers(paid)["Money"]
    events = rules.extract(["The journalist was arrested by soldiers in Cairo."])[0]
    assert fillers(only(events, "Justice.Arrest-Jail"))["Agent"] == ["soldiers"]


def test_rules_window_offsets_after_skipped_sentence(rules):
    """The first sentence has no trigger word and is not parsed; spans still index the full text."""
    text = "A quiet street at dawn. Rebels shelled the town of Idlib."
    (events,) = rules.extract([text])
    attack = only(events, "Conflict.Attack")
    assert text[attack.trigger.char_start:attack.trigger.char_end] == "shelled"
    assert attack.trigger.char_start == text.index("shelled")


def test_rules_max_per_role(rules):
    (events,) = RulesExtractor(max_per_role=1, lexicon=rules.lexicon).extract([CAPTIONS["meet"]])
    assert len(fillers(only(events, "Contact.Meet"))["Participant"]) == 1


def test_lexicon_errors_name_file(tmp_path):
    bad = tmp_path / "lex.yaml"
    bad.write_text("Conflict.Attack:\n  verbs: [attack]\n  subj: Victim\n")
    with pytest.raises(LexiconError, match="lex.yaml.*Victim"):
        Lexicon.load(bad)
    bad.write_text("Conflict.Attack:\n  verbs: [attack]\n  preps: {on: Target}\n")
    with pytest.raises(LexiconError, match="quote"):
        Lexicon.load(bad)


def test_registry():
    assert isinstance(get_extractor("rules"), Extractor)
    with pytest.raises(ValueError, match="unknown extractor backend"):
        get_extractor("nope")


# ---------------------------------------------------------------- JSON lines (shared by both readers)
def ids(path: Path, skip_bad: bool = False) -> list[str | None]:
    return list(read_json_lines(path, record_id, skip_bad=skip_bad))


def test_json_lines_skip_blank_lines_and_number_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n  \t\r\n{"id": 7}\r\n{"id": "c", \n{"id": "d"}')
    assert count_records(path) == 4  # the three record lines and the malformed one; not the blank two
    with pytest.raises(JSONLineError, match=r"in\.jsonl:5: not valid JSON: .* at column 13$") as info:
        ids(path)
    assert "line 1" not in str(info.value)  # json's own position is within the line, not the file
    assert ids(path, skip_bad=True) == ["a", "7", None, "d"]
    path.write_bytes(b'\n\n{"id": "a", "text": "caf\xe9"}\n')
    with pytest.raises(JSONLineError, match=r"in\.jsonl:3: not UTF-8 \(byte 25 of the line\)$"):
        ids(path)


@pytest.mark.parametrize(("line", "problem"), [
    (b'\xef\xbb\xbf{"id": "a"}', "starts with a UTF-8 byte-order mark"),
    (b'["a"]', "expected a JSON object, got list"),
    (b'{"id": true}', "missing or empty 'id'"),
    (b'{"id": ""}', "missing or empty 'id'"),
    (b'{"text": "x"}', "missing or empty 'id'"),
])
def test_json_lines_bad_records(tmp_path, line, problem):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 1, "text": "t"}\n' + line + b"\n")
    with pytest.raises(JSONLineError, match=f"in\\.jsonl:2: {problem}"):
        ids(path)
    with pytest.raises(InputError, match=f"in\\.jsonl:2: {problem}.* --skip-bad"):
        list(read_captions(path))
    with pytest.raises(ImportFormatError, match=f"in\\.jsonl:2: {problem}"):
        read_jsonl(path)


def test_import_jsonl_errors_name_line(tmp_path):
    path = tmp_path / "ie.jsonl"
    path.write_text('{"id": 3, "text": "t", "events": []}\n\n{"id": "b", "events": [{"type": 5}]}\n')
    with pytest.raises(ImportFormatError, match=r"ie\.jsonl:3: .*events\[0\]"):
        read_jsonl(path)
    path.write_text('{"id": "b", "events": 5}\n')
    with pytest.raises(ImportFormatError, match=r"ie\.jsonl:1: 'events' must be a list, got int"):
        read_jsonl(path)
    path.write_text('{"id": 3, "text": "t", "events": []}\n{"id": "b"}\n')
    assert read_jsonl(path) == ({"3": [], "b": []}, {"3": "t"})


# ---------------------------------------------------------------- CLI
def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract", *argv])
    return args.func(args)


def test_cli_round_trip(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": "a", "text": CAPTIONS["attack"]}, {"id": "b", "caption": CAPTIONS["none"]},
            {"id": "c", "text": CAPTIONS["arrest"]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli("--input", str(src), "--output", str(out), "--quiet", "--batch-size", "2") == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b", "c"]
    assert lines[1]["events"] == []
    assert lines[0]["events"][0]["type"] == "Conflict.Attack"
    assert Event.from_dict(lines[2]["events"][0]).type == "Justice.Arrest-Jail"
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["lines"] == 3


def test_cli_resumes_from_partial(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "b", "text": CAPTIONS["die"]}))
    # a finished first line plus a torn second one, as left by an interrupted run
    (tmp_path / "out.jsonl.partial").write_text('{"id": "a", "events": []}\n{"id": "b", "ev')
    assert run_cli("--input", str(src), "--output", str(out), "--quiet") == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b"] and lines[1]["events"][0]["type"] == "Life.Die"


def test_cli_bad_lines(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"id": "a", "text": "Rebels attacked the town."}\nnot json\n{"text": "no id"}\n'
                    b'{"id": "d"}\n{"id": "e", "text": "caf\xe9"}\n')
    assert run_cli("--input", str(src), "--output", str(out), "--quiet") == 1
    assert "in.jsonl:2" in capsys.readouterr().err
    assert not out.exists()
    items = list(read_captions(src, skip_bad=True))
    assert items[0] == ("a", "Rebels attacked the town.") and items[1:] == [None] * 4
    for line, what in ((3, "id"), (4, "text"), (5, "UTF-8")):
        bad = tmp_path / f"bad{line}.jsonl"
        bad.write_bytes(src.read_bytes().splitlines(keepends=True)[line - 1])
        with pytest.raises(InputError, match=f"bad{line}.jsonl:1: .*{what}"):
            list(read_captions(bad))
    (tmp_path / "out.jsonl.partial").unlink()
    assert run_cli("--input", str(src), "--output", str(out), "--quiet", "--skip-bad") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped_bad"] == 4
    assert len(out.read_text().splitlines()) == 1


# ---------------------------------------------------------------- import backend
def test_import_jsonl_and_cli(tmp_path):
    ie = tmp_path / "ie.jsonl"
    event = {"type": "Movement.TransportPerson", "trigger": {"text": "arrives", "char_start": 6, "char_end": 13},
             "arguments": [{"role": "Person", "text": "Trump"}, {"role": "Destination", "text": "Paris"}]}
    ie.write_text(json.dumps({"id": "x", "caption": "Trump arrives in Paris", "events": [event]}) + "\n")
    extractor = ImportExtractor(ie)
    (events,) = extractor.extract(["ignored"], ids=["x"])
    assert events[0].type == "Movement.Transport"
    assert fillers(events[0]) == {"Artifact": ["Trump"], "Destination": ["Paris"]}
    assert extractor.extract(["Trump arrives in Paris", "other"]) == [events, []]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "x", "text": "Trump arrives in Paris"})
                   + "\n" + json.dumps({"id": "y", "text": "z"}))
    assert run_cli("--input", str(src), "--output", str(out), "--backend", "import", "--import-path", str(ie),
                   "--quiet") == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["events"][0]["type"] == "Movement.Transport" and lines[1]["events"] == []


def test_import_m2e2(tmp_path):
    path = tmp_path / "m2e2.json"
    path.write_text(json.dumps([{
        "sentence_id": "s1", "words": ["Police", "arrested", "two", "men", "in", "Lagos", "."],
        "golden-event-mentions": [{
            "trigger": {"start": 1, "end": 2, "text": "arrested"}, "event_type": "Justice:Arrest-Jail",
            "arguments": [{"start": 0, "end": 1, "role": "Agent", "text": "Police"},
                          {"start": 2, "end": 4, "role": "Person", "text": "two men"},
                          {"start": 5, "end": 6, "role": "Place", "text": "Lagos"}]}]}]))
    assert detect_format(path) == "m2e2"
    text = "Police arrested two men in Lagos ."
    (events,) = ImportExtractor(path, format="m2e2").extract([text], ids=["s1"])
    (event,) = events
    assert event.type == "Justice.Arrest-Jail"  # M2E2's "Justice:Arrest-Jail"
    assert text[event.trigger.char_start:event.trigger.char_end] == "arrested"
    for a in event.arguments:
        assert text[a.char_start:a.char_end] == a.text
    assert fillers(event) == {"Agent": ["Police"], "Person": ["two men"], "Place": ["Lagos"]}
    data = json.loads(path.read_text())
    data[0]["golden-event-mentions"][0]["trigger"] = {"start": 5, "end": 9}
    path.write_text(json.dumps(data))
    with pytest.raises(ImportFormatError, match=r"m2e2.json: sentence \[0\].*outside 7 words"):
        ImportExtractor(path)


def test_import_cold_start(tmp_path):
    path = tmp_path / "out.cs"
    doc = "Rebels attacked Aleppo ."  # offsets below are Cold Start's inclusive ends
    path.write_text("\n".join([
        "gaia_run",
        ":Entity_1\ttype\tPER",
        ':Entity_1\tmention\t"Rebels"\tD1:0-5\t1.0',
        ':Entity_1\tcanonical_mention\t"Rebels"\tD1:0-5\t1.0',
        ":Entity_2\ttype\tGPE",
        ':Entity_2\tmention\t"Aleppo"\tD1:16-21\t1.0',
        ":Event_1\ttype\tConflict.Attack",
        ':Event_1\tmention.actual\t"attacked"\tD1:7-14\t1.0',
        ':Event_1\tcanonical_mention.actual\t"attacked"\tD1:7-14\t1.0',
        ":Event_1\tConflict.Attack_Attacker.actual\t:Entity_1\tD1:0-5\t1.0",
        ":Event_1\tConflict.Attack_Place.actual\t:Entity_2\tD1:16-21\t1.0",
        ":Event_2\ttype\tPersonnel.Elect",
        ':Event_2\tmention.actual\t"elected"\tD1:30-36\t1.0',
    ]) + "\n")
    assert detect_format(path) == "cs"
    (events,) = ImportExtractor(path).extract([doc], ids=["D1"])
    (event,) = events  # Personnel.Elect has no mapping and is dropped
    assert event.type == "Conflict.Attack"
    assert doc[event.trigger.char_start:event.trigger.char_end] == "attacked"
    assert {a.role: (a.text, a.entity_type, doc[a.char_start:a.char_end]) for a in event.arguments} == {
        "Attacker": ("Rebels", "PER", "Rebels"), "Place": ("Aleppo", "GPE", "Aleppo")}
    bad = tmp_path / "bad.cs"
    bad.write_text(':Event_1\tmention.actual\t"x"\tD1-nooffset\t1.0\n')
    with pytest.raises(ImportFormatError, match="bad.cs:1"):
        ImportExtractor(bad)


# ---------------------------------------------------------------- scorer
def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_extraction", ROOT / "benchmarks" / "extraction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ev(type_name: str, start: int, end: int, *args: tuple[str, str]) -> Event:
    return Event(type_name, Trigger("t", start, end), [Argument(r, t) for r, t in args])


def test_scorer_hand_computed():
    bench = _load_benchmark()
    assert bench.text_match("President Park Geun - hye", "Park Geun-hye")
    assert bench.text_match("the reporters", "reporters") and not bench.text_match("Seoul", "South Korea")
    gold = {"c1": [ev("Conflict.Attack", 0, 5, ("Attacker", "Taliban"), ("Place", "Kabul")),
                   ev("Life.Die", 10, 15, ("Victim", "soldiers"))],
            "c2": [ev("Contact.Meet", 3, 8, ("Participant", "Donald Trump"))]}
    pred = {"c1": [ev("Conflict.Attack", 0, 5, ("Attacker", "Taliban fighters"), ("Target", "Kabul")),
                   ev("Conflict.Attack", 10, 15)],
            "c2": [ev("Contact.Meet", 3, 8, ("Participant", "President Trump"), ("Place", "Oval Office"))]}
    result = bench.score(gold, pred)
    # triggers: 3 predicted spans, 3 gold spans, all 3 match
    assert result["trigger"]["correct"] == 3 and result["trigger"]["f1"] == 1.0
    # events: (0-5 Attack) and (3-8 Meet) match; (10-15 Attack) vs gold Die does not -> P = R = 2/3
    assert result["event"]["p"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["event"]["r"] == pytest.approx(2 / 3, abs=1e-4)
    # arguments, 4 predicted and 4 gold: "Taliban fighters" vs "Taliban" differ in head word; "Kabul" (as Target,
    # gold Place) and "President Trump" ~ "Donald Trump" match -> 2 identified; only Trump has the right role -> 1
    assert (result["argument_id"]["pred"], result["argument_id"]["gold"], result["argument_id"]["correct"]) == (4, 4, 2)
    assert result["argument_role"]["correct"] == 1 and result["argument_role"]["f1"] == 0.25
    assert result["per_type"]["Life.Die"]["event"]["r"] == 0.0
    assert result["per_type"]["Contact.Meet"]["argument_role"]["p"] == 0.5


def test_benchmark_load_events_normalises_and_keeps_text(tmp_path: Path):
    bench = _load_benchmark()
    attack = {"type": "Conflict.Attack", "trigger": {"text": "attacked", "char_start": 8, "char_end": 16},
              "arguments": [{"role": "Attacker", "text": "Rebels"}]}
    elect = {"type": "Personnel.Elect", "trigger": {"text": "elected"}}  # no mapping in the ontology: dropped
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"id": "a", "caption": "Rebels attacked.", "events": [attack, elect]}) + "\n\n"
                    + json.dumps({"id": "b", "events": []}) + "\n")
    events, texts = bench.load_events(path, Ontology.default())
    assert [e.type for e in events["a"]] == ["Conflict.Attack"] and events["b"] == []
    assert texts == {"a": "Rebels attacked."}


@pytest.mark.parametrize(("line", "problem"), [
    ('{"id": "a", "events": [', "not valid JSON"),
    (b'{"id": "a", "caption": "caf\xe9"}', "not UTF-8"),
    ('["a"]', "expected a JSON object"),
    ('{"id": 7, "events": []}', "string 'id'"),  # ids are compared as written: no int -> str guessing
    ('{"id": "a", "events": {"type": "Conflict.Attack"}}', "'events' must be a list"),
    ('{"id": "a", "events": [{"type": "Conflict.Attack"}]}', "events\\[0\\]"),  # Event.from_dict's field path
])
def test_benchmark_load_events_bad_line_exits_with_file_and_line(tmp_path: Path, line: str | bytes, problem: str):
    bench = _load_benchmark()
    path = tmp_path / "pred.jsonl"
    raw = line if isinstance(line, bytes) else line.encode()
    path.write_bytes(b'{"id": "ok", "events": []}\n\n' + raw + b"\n")
    with pytest.raises(SystemExit, match=rf"pred\.jsonl:3: .*{problem}"):
        bench.load_events(path, Ontology.default())
