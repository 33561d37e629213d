"""Ontology: the default M2E2 file, templates, aliases, and clear errors for bad files."""

import json

import pytest

from align.ontology import M2E2_TYPES, Ontology, OntologyError
from align.schema import Argument, Event, Trigger


def test_default_has_the_eight_m2e2_types_with_templates():
    o = Ontology.default()
    assert set(o.type_names) == set(M2E2_TYPES)
    for t in o.types.values():
        assert t.confusable and all(c in o for c in t.confusable) and t.name not in t.confusable
        full = t.render({r: r.upper() for r in t.roles})
        for r in t.roles:
            assert r.upper() in full, (t.name, r, full)
        assert t.render({}, "short")


def test_optional_parts_vanish_and_lists_join():
    attack = Ontology.default()["Conflict.Attack"]
    assert attack.render({"Attacker": "rebels", "Target": "a convoy"}) == "Rebels attacked a convoy"
    assert attack.render({"Attacker": ["A", "B", "C"], "Target": "x", "Place": "Aleppo"}) == \
        "A, B and C attacked x in Aleppo"


def test_symmetric_roles():
    o = Ontology.default()
    assert o["Contact.Meet"].is_symmetric("Participant", "Participant")
    assert not o["Conflict.Attack"].is_symmetric("Attacker", "Target")


def test_aliases_map_fine_types_and_roles():
    o = Ontology.default()
    ev = Event("Movement.TransportPerson", Trigger("flown", 0, 5),
               [Argument("Person", "refugees"), Argument("Instrument", "plane"), Argument("Bogus", "x")])
    mapped = o.normalize(ev)
    assert mapped.type == "Movement.Transport"
    assert [(a.role, a.text) for a in mapped.arguments] == [("Artifact", "refugees"), ("Vehicle", "plane")]
    assert o.normalize(Event("Personnel.Elect", Trigger("elected"))) is None
    assert o.normalize(Event("Conflict.Demonstrate", Trigger("rally"), [Argument("Demonstrator", "x")])) \
        .arguments[0].role == "Entity"


def test_unknown_type_lookup_is_clear():
    with pytest.raises(KeyError, match="unknown event type 'Nope'"):
        Ontology.default()["Nope"]


def test_user_ontology_json_and_yaml(tmp_path):
    spec = {"types": {"Sport.Score": {"roles": ["Player", "Place"], "long_template": "{Player} scored[ in {Place}]",
                                      "short_template": "{Player} scores"}}}
    (tmp_path / "o.json").write_text(json.dumps(spec))
    o = Ontology.load(tmp_path / "o.json")
    assert o["Sport.Score"].render({"Player": "Ann"}) == "Ann scored"
    (tmp_path / "o.yaml").write_text("types:\n  Sport.Score:\n    roles: [Player]\n"
                                     "    long_template: '{Player} scored'\n    short_template: '{Player}'\n")
    assert Ontology.load(tmp_path / "o.yaml").type_names == ("Sport.Score",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("types: [", "not valid YAML"),
        ("{}", "non-empty 'types'"),
        ("types:\n  A.B: {roles: [X], long_template: '{Y}', short_template: x}", "unknown role '{Y}'"),
        ("types:\n  A.B: {roles: [X], short_template: x}", "missing \\['long_template'\\]"),
        ("types:\n  A.B: {roles: [X], long_template: x, short_template: x, confusable: [C.D]}",
         "unknown confusable type 'C.D'"),
        ("types:\n  A.B: {roles: [X], long_template: x, short_template: x}\naliases:\n  F: {type: Z.Z}",
         "alias 'F'"),
    ],
)
def test_bad_files_name_file_and_entry(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(OntologyError, match=message) as err:
        Ontology.load(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(OntologyError, match="cannot read"):
        Ontology.load(tmp_path / "none.yaml")
