"""LLM plumbing and LLM-backed extraction / descriptions / negatives, against a local fake OpenAI server."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from llm_server import FakeLLMServer

from align.ontology import Ontology
from align.schema import Argument, Event, Trigger
from data_gen.extract_llm import LLMExtractor, events_schema, locate
from data_gen.llm import (
    ChatRequest,
    LLMClient,
    LLMConfig,
    LLMUnavailable,
    add_llm_arguments,
    config_from_args,
    llm_available,
    schema_error,
)
from data_gen.llm_describe import invented_names, llm_descriptions, llm_extra, llm_negatives

ARREST = "Police arrested two protesters outside the parliament in Kyiv."
ATTACK = "Troops attacked the village with artillery, killing three civilians."
EXTRACT_RULES = [
    ("Police arrested two", {"events": [{"type": "Justice.Arrest-Jail", "trigger": "arrested", "arguments": [
        {"role": "Agent", "text": "Police"}, {"role": "Person", "text": "two protesters"},
        {"role": "Place", "text": "Kyiv."}, {"role": "Instrument", "text": "batons"}]}]}),
    ("Troops attacked", {"events": [
        {"type": "Conflict.Attack", "trigger": "attacked", "arguments": [
            {"role": "Attacker", "text": "troops"}, {"role": "Target", "text": "the village"},
            {"role": "Instrument", "text": "artillery"}]},
        {"type": "Life.Die", "trigger": "shot dead", "arguments": [{"role": "Victim", "text": "three civilians"}]},
        {"type": "Life.Die", "trigger": "killing", "arguments": [{"role": "Victim", "text": "three civilians"}]}]}),
]
KEY_ENV = "EVENTALIGN_TEST_LLM_KEY"
FAKE_KEY = "sk-test-DO-NOT-LEAK-4f1c9e"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(rules=EXTRACT_RULES, default={"events": []}, sleep_s=2.0) as s:
        yield s


def config(server: FakeLLMServer, **kw: object) -> LLMConfig:
    options = {"base_url": server.base_url, "api_key_env": KEY_ENV, "backoff_s": 0.01, "timeout_s": 5.0,
               "batch_poll_s": 0.01, **kw}
    return LLMConfig(**options)  # type: ignore[arg-type]


def request(text: str) -> ChatRequest:
    schema = {"type": "object", "required": ["events"], "properties": {"events": {"type": "array"}}}
    return ChatRequest([{"role": "user", "content": text}], schema, "test-v1")


# ---------------------------------------------------------------------- extraction
def test_extraction_through_server(server: FakeLLMServer) -> None:
    ex = LLMExtractor(config(server))
    arrest, attack, none = ex.extract([ARREST, ATTACK, "A quiet harbour at sunset."])
    assert none == []
    (ev,) = arrest
    assert ev.type == "Justice.Arrest-Jail" and ARREST[ev.trigger.char_start:ev.trigger.char_end] == "arrested"
    got = {(a.role, ARREST[a.char_start:a.char_end]) for a in ev.arguments}
    assert got == {("Agent", "Police"), ("Person", "two protesters"), ("Place", "Kyiv")}
    assert [e.type for e in attack] == ["Conflict.Attack", "Life.Die"]
    assert attack[0].argument("Attacker").text == "Troops"  # located case-insensitively, caption's own casing kept
    assert ex.stats["dropped_arguments_not_found"] == 1  # "batons" is not in the caption
    assert ex.stats["dropped_events_trigger_not_found"] == 1  # "shot dead" is not either
    summary = ex.client.summary()
    assert summary["requests"] == 3 and summary["prompt_tokens"] > 0 and summary["cost_usd"] > 0


def test_schema_restricts_roles_per_type() -> None:
    schema = events_schema(Ontology.default())
    ok = {"events": [{"type": "Life.Die", "trigger": "died", "arguments": [{"role": "Victim", "text": "a man"}]}]}
    bad = {"events": [{"type": "Life.Die", "trigger": "died", "arguments": [{"role": "Attacker", "text": "x"}]}]}
    assert schema_error(schema, ok) is None
    assert "Attacker" in schema_error(schema, bad)
    assert "missing" in schema_error(schema, {"events": [{"type": "Life.Die"}]})
    assert schema_error(schema, {"events": [], "extra": 1}) == "$.extra: not allowed"


def test_locate_prefers_whole_words_near_the_trigger() -> None:
    text = "A man met a man in Paris"
    assert locate(text, "a  MAN", near=12) == (10, 15) and locate(text, "a man", near=0) == (0, 5)
    assert locate(text, "Par") is None and locate(text, "  ") is None


# ---------------------------------------------------------------------- retries and faults
def test_retries_on_429_and_500_then_success(server: FakeLLMServer) -> None:
    server.faults.extend(["429", "500"])
    client = LLMClient(config(server))
    assert client.chat_json([request(ARREST)])[0]["events"][0]["type"] == "Justice.Arrest-Jail"
    assert server.chat_requests == 3 and client.usage.retries == 2 and client.usage.failures == 0


def test_gives_up_after_max_retries(server: FakeLLMServer) -> None:
    server.faults.extend(["500"] * 3)
    client = LLMClient(config(server, max_retries=2))
    assert client.chat_json([request(ARREST)]) == [None]
    assert server.chat_requests == 3 and client.usage.failures == 1


def test_timeout_then_success(server: FakeLLMServer) -> None:
    server.faults.append("timeout")
    client = LLMClient(config(server, timeout_s=0.3))
    assert client.chat_json([request(ARREST)])[0] is not None
    assert client.usage.retries == 1 and server.chat_requests == 2


def test_json_schema_rejected_falls_back_to_json_object(server: FakeLLMServer) -> None:
    server.reject_json_schema = True
    client = LLMClient(config(server))
    assert client.chat_json([request(ARREST), request(ATTACK)])[0] is not None
    assert server.response_formats[0] == "json_schema" and server.response_formats[-1] == "json_object"
    assert client.usage.failures == 0


def test_garbage_and_schema_failures_are_counted(server: FakeLLMServer) -> None:
    server.faults.extend(["garbage", "badschema"])
    ex = LLMExtractor(config(server, concurrency=1))
    assert ex.extract([ARREST, ATTACK]) == [[], []]
    assert ex.stats["failed_texts"] == 2 and ex.client.usage.invalid == 2


# ---------------------------------------------------------------------- cache, batch, concurrency
def test_cache_second_run_makes_no_requests(server: FakeLLMServer, tmp_path: Path) -> None:
    first = LLMExtractor(config(server, cache_dir=tmp_path)).extract([ARREST, ATTACK])
    assert server.chat_requests == 2
    again = LLMExtractor(config(server, cache_dir=tmp_path))
    assert again.extract([ARREST, ATTACK]) == first
    assert server.chat_requests == 2 and again.client.usage.cache_hits == 2
    # another model is another cache key
    LLMExtractor(config(server, cache_dir=tmp_path, model="other")).extract([ARREST])
    assert server.chat_requests == 3


def test_batch_round_trip(server: FakeLLMServer, tmp_path: Path) -> None:
    client = LLMClient(config(server, cache_dir=tmp_path, batch=True))
    texts = [ARREST, ATTACK, ARREST]  # duplicates are asked once
    answers = client.chat_json([request(t) for t in texts])
    assert answers[0] == answers[2] == EXTRACT_RULES[0][1] and answers[1] == EXTRACT_RULES[1][1]
    assert server.chat_requests == 0 and len(server.batches) == 1
    assert not list((tmp_path / "batches").glob("*.state.json"))  # merged: nothing left to resume
    u = client.usage
    assert u.cost_usd == pytest.approx(0.5 * (u.prompt_tokens * 0.15 + u.completion_tokens * 0.60) / 1e6)  # half price
    sync = LLMClient(config(server, cache_dir=tmp_path))
    assert sync.chat_json([request(t) for t in texts]) == answers and server.chat_requests == 0


def test_batch_resumes_after_interruption(server: FakeLLMServer, tmp_path: Path) -> None:
    server.batch_polls = 3
    with pytest.raises(TimeoutError, match="re-run"):
        LLMClient(config(server, cache_dir=tmp_path, batch=True, batch_timeout_s=0.0)).chat_json([request(ARREST)])
    assert list((tmp_path / "batches").glob("*.state.json"))  # the batch id is kept
    answers = LLMClient(config(server, cache_dir=tmp_path, batch=True)).chat_json([request(ARREST)])
    assert answers == [EXTRACT_RULES[0][1]] and len(server.batches) == 1  # same batch polled, not paid twice


def test_concurrency_bound_respected() -> None:
    with FakeLLMServer(default={"events": []}, delay_s=0.1) as server:
        client = LLMClient(config(server, concurrency=3))
        assert len(client.chat_json([request(f"caption {i}") for i in range(12)])) == 12
        assert server.max_in_flight == 3


# ---------------------------------------------------------------------- credentials
def test_no_credentials_is_skipped_with_one_message(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("EVENTALIGN_TEST_NO_KEY", raising=False)
    cfg = LLMConfig(api_key_env="EVENTALIGN_TEST_NO_KEY")
    with caplog.at_level(logging.WARNING):
        assert not llm_available(cfg) and not llm_available(cfg)
    messages = [r.getMessage() for r in caplog.records if "LLM backends skipped" in r.getMessage()]
    assert len(messages) == 1 and "$EVENTALIGN_TEST_NO_KEY" in messages[0] and "--llm-base-url" in messages[0]
    with pytest.raises(LLMUnavailable, match="no API key"):
        LLMExtractor(cfg)
    monkeypatch.setenv("EVENTALIGN_TEST_NO_KEY", "x")
    assert llm_available(cfg)


def test_api_key_never_stored_or_logged(server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    server.faults.extend(["429", "garbage"])
    cfg = config(server, cache_dir=tmp_path)
    LLMExtractor(cfg).extract([ARREST, ATTACK])
    LLMClient(config(server, cache_dir=tmp_path, batch=True)).chat_json([request("batch me")])
    assert f"Bearer {FAKE_KEY}" in server.auth_headers  # the key was really used
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(FAKE_KEY in p.read_text(encoding="utf-8", errors="replace") for p in files)
    out = capsys.readouterr()
    assert FAKE_KEY not in caplog.text + out.out + out.err
    assert FAKE_KEY not in repr(cfg) + repr(LLMClient(cfg))


def test_cli_options_build_config() -> None:
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--llm-model", "m-1", "--llm-price", "m=1,2", "--llm-batch"]))
    assert cfg.model == "m-1" and cfg.batch and cfg.price() == (1.0, 2.0)
    with pytest.raises(ValueError, match="MODEL=INPUT_USD"):
        config_from_args(parser.parse_args(["--llm-price", "m=1"]))


# ---------------------------------------------------------------------- descriptions and negatives
EVENT = Event("Justice.Arrest-Jail", Trigger("arrested", 7, 15),
              [Argument("Agent", "Police", None, 0, 6), Argument("Person", "two protesters", None, 16, 30)])


def test_llm_descriptions_validated_with_fallback() -> None:
    rules = [("Police arrested two", {"descriptions": [
        "Two protesters are detained by police.",  # valid
        "Police detain people.",  # drops an argument
        "Police led by General Petrov arrest two protesters.",  # invents a participant
        "Police arrested two protesters outside the parliament in Kyiv.",  # the caption itself
        "In Kyiv, police take two protesters into custody.",  # valid
    ]})]
    other = "Officers arrested a man."
    other_event = Event("Justice.Arrest-Jail", Trigger("arrested", 9, 17), [Argument("Agent", "Officers")])
    with FakeLLMServer(rules=rules, default={"descriptions": ["Soldiers did it."]}) as server:
        client = LLMClient(config(server))
        out, counts = llm_descriptions([(ARREST, EVENT), (other, other_event), (other, None)], client, n=3)
    assert [d.text for d in out[0]] == ["Two protesters are detained by police.",
                                        "In Kyiv, police take two protesters into custody."]
    assert {d.kind for d in out[0]} == {"llm"}
    assert out[1][0].kind == "long" and "Officers" in out[1][0].text  # template fallback
    assert out[2] == []
    assert counts["rejected_missing_argument"] == 2 and counts["rejected_invented_name"] == 1
    assert counts["rejected_duplicate"] == 1 and counts["fallback"] == 1 and counts["llm_accepted"] == 2


def test_llm_negatives_validated_with_fallback() -> None:
    positives = ["Police arrest two protesters."]
    rules = [("Police arrested two", {"negatives": [
        {"text": "Police attack two protesters.", "change": "type", "detail": "arrest -> attack"},
        {"text": "Police arrest two protesters.", "change": "roles", "detail": "none"},  # still true
        {"text": "Police arrest Boris Johnson.", "change": "argument", "detail": "invented"},
    ]})]
    with FakeLLMServer(rules=rules, default={"negatives": []}) as server:
        server.faults.append("garbage")  # the first item's request (concurrency 1) gets garbage
        client = LLMClient(config(server, concurrency=1))
        out, counts = llm_negatives([("Officers arrested a man.", EVENT, positives), (ARREST, EVENT, positives)],
                                    client, n=2)
    fallback, llm = out
    assert [n.kind for n in fallback] == ["type_swap", "type_swap"]
    assert fallback[0].changed == {"type": ["Justice.Arrest-Jail", "Conflict.Attack"]}
    assert [(n.kind, n.text) for n in llm] == [("llm", "Police attack two protesters.")]
    assert llm[0].changed == {"change": "type", "detail": "arrest -> attack"}
    assert counts["rejected_same_as_positive"] == 1 and counts["rejected_invented_name"] == 1
    assert counts["llm_failed"] == 1 and counts["fallback"] == 1


def test_llm_descriptions_and_negatives_skip_and_fail_alike() -> None:
    """Both ask only about items with an event, keep answers on their items, and count skips and failures."""
    answers = {"descriptions": {"descriptions": ["In Kyiv, police take two protesters into custody."]},
               "negatives": {"negatives": [{"text": "Police attack two protesters.", "change": "type", "detail": "x"}]}}
    positives = ["Police arrest two protesters."]
    with FakeLLMServer(default=lambda body: answers[body["response_format"]["json_schema"]["name"]]) as server:
        client = LLMClient(config(server, concurrency=1))
        server.faults.append("garbage")  # the first asked item (the second item) fails
        descs, d_counts = llm_descriptions([("A harbour.", None), (ARREST, EVENT), (ARREST + " ", EVENT)], client)
        server.faults.append("garbage")
        negs, n_counts = llm_negatives([("A harbour.", None, []), (ARREST, EVENT, positives),
                                        (ARREST + " ", EVENT, positives)], client)
        assert server.chat_requests == 4  # two per call: the item without an event is never sent
    assert descs[0] == [] and negs[0] == []
    assert [d.kind for d in descs[1]] == ["long"] and {n.kind for n in negs[1]} == {"type_swap"}  # failed: fallback
    assert [d.text for d in descs[2]] == ["In Kyiv, police take two protesters into custody."]
    assert [n.text for n in negs[2]] == ["Police attack two protesters."]
    for counts in (d_counts, n_counts):
        assert (counts["skipped_no_event"], counts["llm_failed"], counts["fallback"], counts["llm_accepted"]) == (
            1, 1, 1, 1)


def test_invented_names() -> None:
    caption = "Kim Jong Un meets President Moon in Panmunjom."
    assert invented_names("President Moon meets Kim Jong Un in Seoul.", caption) == ["Seoul"]
    assert invented_names("Officials meet in Panmunjom's village.", caption) == []  # sentence-initial word


def test_llm_extra_hook_extends_describe_records() -> None:
    answers = {"descriptions": {"descriptions": ["In Kyiv, police take two protesters into custody."]},
               "negatives": {"negatives": [{"text": "Police attack two protesters.", "change": "type", "detail": "x"},
                                           {"text": "In Kyiv, police take two protesters into custody.",
                                            "change": "roles", "detail": "same as a positive"}]}}
    records = [
        {"id": "r1", "caption": ARREST, "events": [EVENT.to_dict()], "salient": 0,
         "positives": [{"kind": "caption", "text": ARREST}], "negatives": []},
        {"id": "r2", "caption": "A harbour.", "events": [], "salient": None, "positives": [], "negatives": []},
    ]
    counts: Counter[str] = Counter()
    with FakeLLMServer(default=lambda body: answers[body["response_format"]["json_schema"]["name"]]) as server:
        llm_extra(LLMClient(config(server)), counts=counts)(records)
        assert server.chat_requests == 2  # one description and one negative request; r2 has no event
    assert records[0]["positives"][1] == {"kind": "llm", "text": "In Kyiv, police take two protesters into custody."}
    assert [n["text"] for n in records[0]["negatives"]] == ["Police attack two protesters."]
    assert records[1]["positives"] == [] and records[1]["negatives"] == []
    assert counts["llm_negatives.rejected_same_as_positive"] == 1 and counts["llm_positives.skipped_no_event"] == 1
