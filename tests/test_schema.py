"""Shard record: JSON round trip and validation errors that name the sample key and field."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align.ontology import Ontology
from align.schema import (
    DESCRIPTION_KINDS,
    NEGATIVE_KINDS,
    REGION_SOURCES,
    Argument,
    Description,
    Event,
    Negative,
    Region,
    Sample,
    SchemaError,
    Trigger,
)

SIZE = 128
text = st.text(min_size=1, max_size=20)
coord = st.floats(min_value=0, max_value=SIZE, allow_nan=False)


@st.composite
def boxes(draw):
    x1, x2 = sorted((draw(coord), draw(coord)))
    y1, y2 = sorted((draw(coord), draw(coord)))
    return (x1, y1, x2, y2)


@st.composite
def spans(draw):
    start = draw(st.integers(0, 50))
    return start, start + draw(st.integers(0, 20))


@st.composite
def arguments(draw):
    span = draw(st.one_of(st.none(), spans()))
    return Argument(draw(text), draw(text), draw(st.one_of(st.none(), text)),
                    span and span[0], span and span[1], draw(st.one_of(st.none(), boxes())))


@st.composite
def events(draw):
    s, e = draw(spans())
    return Event(draw(text), Trigger(draw(text), s, e), draw(st.lists(arguments(), max_size=4)))


@st.composite
def samples(draw):
    evs = draw(st.lists(events(), max_size=3))
    return Sample(
        key=draw(st.text(alphabet="abc123-_", min_size=1, max_size=12)), caption=draw(st.text(max_size=60)),
        width=SIZE, height=SIZE, events=evs,
        salient=draw(st.one_of(st.none(), st.integers(0, len(evs) - 1))) if evs else None,
        positives=draw(st.lists(st.builds(Description, st.sampled_from(DESCRIPTION_KINDS), text), max_size=3)),
        negatives=draw(st.lists(st.builds(Negative, st.sampled_from(NEGATIVE_KINDS), text,
                                          st.dictionaries(text, text, max_size=2)), max_size=3)),
        regions=draw(st.lists(st.builds(Region, boxes(), text, st.floats(0, 1), st.sampled_from(REGION_SOURCES)),
                              max_size=3)),
        provenance=draw(st.dictionaries(text, st.integers(), max_size=2)),
    )


@settings(max_examples=60, deadline=None)
@given(samples())
def test_json_round_trip(sample):
    back = Sample.from_json(sample.to_json())
    assert back == sample
    assert back.to_json() == sample.to_json()


def _good() -> dict:
    ev = Event("Life.Die", Trigger("died", 4, 8), [Argument("Victim", "man", "civilian", 0, 3, (1, 2, 30, 40))])
    return Sample("k-1", "man died", SIZE, SIZE, [ev], 0).to_dict()


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.pop("caption"), "caption"),
        (lambda d: d["events"][0]["arguments"][0].update(role=3), "events[0].arguments[0].role"),
        (lambda d: d["events"][0]["arguments"][0].update(box=[0, 0, 500, 5]), "events[0].arguments[0].box"),
        (lambda d: d["events"][0]["arguments"][0].update(box=[9, 0, 1, 5]), "events[0].arguments[0].box"),
        (lambda d: d["events"][0]["trigger"].update(char_end=None), "events[0].trigger.char_end"),
        (lambda d: d.update(salient=3), "salient"),
        (lambda d: d.update(negatives=[{"kind": "flip", "text": "x"}]), "negatives[0].kind"),
        (lambda d: d.update(regions=[{"box": [0, 0, 1], "label": "x"}]), "regions[0].box"),
        (lambda d: d.update(width=True), "width"),
        (lambda d: d.update(schema_version=99), "schema_version"),
    ],
)
def test_validation_errors_name_key_and_field(mutate, path):
    data = _good()
    mutate(data)
    with pytest.raises(SchemaError) as err:
        Sample.from_dict(data)
    assert err.value.path == path
    assert "'k-1'" in str(err.value) and path in str(err.value)


def test_not_json_is_a_schema_error():
    with pytest.raises(SchemaError, match="not valid JSON"):
        Sample.from_json(b"{broken")


def test_ontology_validation_names_type_and_role():
    ontology = Ontology.default()
    sample = Sample.from_dict(_good())
    sample.validate(ontology)
    sample.events[0].arguments[0].role = "Attacker"
    with pytest.raises(SchemaError, match=r"events\[0\]\.arguments\[0\]\.role.*not a role of Life.Die"):
        sample.validate(ontology)
    sample.events[0].type = "Life.Explode"
    with pytest.raises(SchemaError, match="unknown event type 'Life.Explode'"):
        sample.validate(ontology)


def test_record_is_plain_json():
    data = json.loads(Sample.from_dict(_good()).to_json())
    assert data["events"][0]["arguments"][0]["box"] == [1, 2, 30, 40]
