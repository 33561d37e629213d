"""EventWorld: determinism, gold consistency, role swaps (and which ones the picture can verify), sizes, schema,
M2E2 round trips and the world version (manifest, resume refusal, demo re-render, quality result key)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from align.demo import ensure_eventworld
from align.ontology import Ontology
from align.schema import Argument, Event, Negative, Sample, Trigger
from data_gen.cli import main as data_gen_main
from data_gen.eventworld import (
    EVENT_TYPES,
    VISIBLE_TYPES,
    WORLD_VERSION,
    build_scene,
    event_type_for,
    render_sample,
    render_scene,
    visible_alternatives,
)
from data_gen.eventworld.audit import audit, swap_verdict
from data_gen.eventworld.captions import (
    BUILDING_PLACES,
    COUNTRIES,
    PERSON_NOUNS,
    TEMPLATES,
    TITLES,
    Filler,
    building_style,
    compose,
    subject_plural,
)
from data_gen.eventworld.cli import EventWorldSamples, stored_world_version
from data_gen.eventworld.m2e2 import read_m2e2, write_m2e2_gold
from data_gen.eventworld.preview import preview_grid
from data_gen.shards import MANIFEST

ONTOLOGY = Ontology.default()
SWAPS = {
    "Conflict.Attack": ("Attacker", "Target"),
    "Conflict.Demonstrate": ("Entity", "Police"),
    "Justice.Arrest-Jail": ("Agent", "Person"),
    "Transaction.Transfer-Money": ("Giver", "Recipient"),
    "Movement.Transport": ("Origin", "Destination"),
    "Contact.Meet": ("Participant", "Participant"),
}


def _pixels(sample: Sample) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample.image)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [render_sample(i, 7) for i in range(48)]


def test_deterministic_and_seed_dependent() -> None:
    a, b = render_sample(5, 11), render_sample(5, 11)
    assert a.image == b.image and a.to_json() == b.to_json()
    assert render_sample(5, 12).image != a.image
    assert render_sample(6, 11).image != a.image


def test_index_independent_of_render_order() -> None:
    later = render_sample(30, 3)
    for i in range(5):
        render_sample(i, 3)
    assert render_sample(30, 3).image == later.image


def test_balanced_types(samples: list[Sample]) -> None:
    counts = {t: 0 for t in EVENT_TYPES}
    for s in samples:
        counts[s.events[0].type] += 1
    assert set(counts.values()) == {len(samples) // len(EVENT_TYPES)}
    # shuffled within each block, so the type is not a function of index % 8
    blocks = {tuple(event_type_for(b * 8 + i, 7, ONTOLOGY.type_names) for i in range(8)) for b in range(4)}
    assert len(blocks) > 1


def test_same_bytes_in_another_process() -> None:
    code = ("import hashlib; from data_gen.eventworld import render_sample; "
            "print(hashlib.sha256(b''.join(render_sample(i, 9).image for i in range(8))).hexdigest())")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(root)})
    here = hashlib.sha256(b"".join(render_sample(i, 9).image for i in range(8))).hexdigest()
    assert out.stdout.strip() == here


def test_gold_consistency(samples: list[Sample]) -> None:
    for s in samples:
        s.validate(ONTOLOGY)
        assert s.width == s.height == 128 and s.salient == 0 and len(s.events) == 1
        img = Image.open(io.BytesIO(s.image))
        assert img.format == "JPEG" and img.size == (128, 128)
        e = s.events[0]
        roles = ONTOLOGY[e.type].roles
        assert s.caption[e.trigger.char_start:e.trigger.char_end] == e.trigger.text != ""
        assert e.arguments, s.key
        for a in e.arguments:
            assert a.role in roles, (s.key, a.role)
            assert s.caption[a.char_start:a.char_end] == a.text, (s.key, a)
            assert a.entity_type in VISIBLE_TYPES, (s.key, a)
            assert a.box is not None, (s.key, a)
            x1, y1, x2, y2 = a.box
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128, (s.key, a)
        for g in s.regions:
            x1, y1, x2, y2 = g.box
            assert g.source == "annotation" and g.label in VISIBLE_TYPES
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128, (s.key, g)
        # every argument box (but Place) is the union of annotated regions of its entity type
        labels = {g.label for g in s.regions}
        assert all(a.entity_type in labels or a.entity_type == "place" for a in e.arguments)
        assert s.provenance["source"] == "eventworld" and s.provenance["index"] == int(s.key.split("-")[-1])


def test_layout_varies(samples: list[Sample]) -> None:
    assert {s.provenance["mirrored"] for s in samples} == {True, False}
    assert {s.provenance["distractors"] for s in samples} >= {0, 1, 2, 3}
    assert len({s.provenance["place"] for s in samples}) == 5
    # the attacker stands on the left in some images and on the right in others
    sides = set()
    for s in samples:
        if s.events[0].type == "Conflict.Attack":
            att = s.events[0].argument("Attacker")
            sides.add((att.box[0] + att.box[2]) / 2 < 64)
    assert sides == {True, False}


@pytest.mark.parametrize("event_type", sorted(SWAPS))
def test_role_swap_changes_picture(event_type: str) -> None:
    role_a, role_b = SWAPS[event_type]
    for index in range(40):
        try:
            swapped = render_sample(index, 1, event_type=event_type, swap_roles=(role_a, role_b))
        except ValueError:  # e.g. an attacked building cannot swap with a person
            continue
        plain = render_sample(index, 1, event_type=event_type)
        break
    else:
        pytest.fail(f"no swappable {event_type} scene in 40 indices")
    diff = np.abs(_pixels(plain) - _pixels(swapped)).max(axis=2) > 40
    assert diff.mean() > 0.01, f"swap changed only {diff.mean():.2%} of the pixels"
    swapped.validate(ONTOLOGY)
    a, b = plain.events[0], swapped.events[0]
    assert swapped.provenance["swapped_roles"] == [role_a, role_b]
    assert swapped.provenance["swap_is_symmetric"] == (event_type == "Contact.Meet")
    if role_a != role_b:
        assert a.argument(role_a).entity_type == b.argument(role_b).entity_type
        assert a.argument(role_b).entity_type == b.argument(role_a).entity_type


def test_meet_is_recorded_symmetric() -> None:
    s = render_sample(0, 0, event_type="Contact.Meet")
    assert s.provenance["symmetric_roles"] == [["Participant"]]
    assert [a.role for a in s.events[0].arguments].count("Participant") == 2
    assert render_sample(0, 0, event_type="Conflict.Attack").provenance["symmetric_roles"] == []


def test_bad_swap_and_type_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="role 'Giver'"):
        render_sample(0, 0, event_type="Life.Die", swap_roles=("Giver", "Victim"))
    with pytest.raises(ValueError, match="cannot draw event type"):
        render_sample(0, 0, event_type="Business.Merge")


@pytest.mark.parametrize("size", [64, 224])
def test_sizes(size: int) -> None:
    for i, t in enumerate(EVENT_TYPES):
        s = render_sample(i, 2, image_size=size, event_type=t)
        assert Image.open(io.BytesIO(s.image)).size == (size, size)
        s.validate(ONTOLOGY)
    # boxes scale with the image
    small = render_sample(3, 2, image_size=64).events[0].arguments[0].box
    large = render_sample(3, 2, image_size=224).events[0].arguments[0].box
    assert np.allclose(np.array(small) * 224 / 64, large, atol=2.5)


def test_json_round_trip(samples: list[Sample]) -> None:
    for s in samples[:16]:
        back = Sample.from_json(s.to_json(), image=s.image)
        back.validate(ONTOLOGY)
        assert back == s and back.to_json() == s.to_json()


def test_m2e2_round_trip(samples: list[Sample], tmp_path) -> None:
    path = write_m2e2_gold(samples, tmp_path / "gold.json")
    gold = read_m2e2(path)
    assert set(gold) == {s.key for s in samples}
    for s in samples:
        e = s.events[0]
        entry = gold[s.key]
        assert entry["event_type"] == e.type
        expected = {a.role for a in e.arguments if a.role != "Place"}
        assert set(entry["role"]) == expected
        for role, boxes in entry["role"].items():
            union = e.argument(role).box if role != "Participant" else None
            for x1, y1, x2, y2 in boxes:
                assert 0 <= x1 < x2 <= s.width and 0 <= y1 < y2 <= s.height
            assert len({tuple(b) for b in boxes}) == len(boxes), f"{s.key} {role}: a box is listed twice"
            if union is not None:
                assert min(b[0] for b in boxes) <= union[0] + 1 and max(b[2] for b in boxes) >= union[2] - 1
    raw = (tmp_path / "gold.json").read_text()
    assert "Conflict:Attack" in raw or "Life:Die" in raw


def test_m2e2_reader_errors(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"img1": {"event_type": "Conflict:Attack", "role": {"Attacker": [[1, 2, 3]]}}}')
    with pytest.raises(ValueError, match="img1"):
        read_m2e2(bad)
    ok = tmp_path / "ok.json"
    ok.write_text('{"img2": {"event_type": "Justice:ArrestJail", "role": {"Agent": [["1", 1, 2, 30, 40]]}}}')
    assert read_m2e2(ok) == {"img2": {"event_type": "Justice.Arrest-Jail", "role": {"Agent": [[1, 2, 30, 40]]}}}


def test_visible_alternatives() -> None:
    alts = visible_alternatives(Argument("Agent", "Kenyan police officers", "police"), "Justice.Arrest-Jail")
    assert alts == ["soldiers"]
    alts = visible_alternatives(Argument("Target", "a journalist", "journalist"), "Conflict.Attack")
    assert "a soldier" in alts and "a journalist" not in alts and all(not a.endswith("s") for a in alts)
    assert visible_alternatives(Argument("Instrument", "a rifle", "weapon"), "Conflict.Attack") == ["a vehicle"]
    assert visible_alternatives(Argument("Money", "cash", "money"), "Transaction.Transfer-Money") == []
    places = visible_alternatives(Argument("Place", "a market in Kabul", "place"), "Contact.Meet")
    assert len(places) == 4 and "the port of Kabul" in places and "a market in Kabul" not in places
    assert visible_alternatives(Argument("Origin", "Gao", "place"), "Movement.Transport") == []
    ends = visible_alternatives(Argument("Origin", "a warehouse in Mexico City", "place"), "Movement.Transport")
    assert ends == ["a house in Mexico City", "an office building in Mexico City", "a clinic in Mexico City"]
    # without the event type (the negatives generator's entity_pool hook): union over types having the role
    assert "a vehicle" in visible_alternatives(Argument("Instrument", "a rifle", "weapon"))
    for s in [render_sample(i, 4) for i in range(16)]:
        for a in s.events[0].arguments:
            for alt in visible_alternatives(a, s.events[0].type):
                assert alt != a.text and alt.strip() == alt and alt
    with pytest.raises(ValueError, match="not a role"):
        visible_alternatives(Argument("Giver", "a man", "civilian"), "Life.Die")


@pytest.mark.parametrize(("count", "variant", "want"), [
    (2, 0, "Cash is evacuated"),  # two wads drawn, still "cash": the slip was "Cash are evacuated"
    (2, 1, "Bundles of cash are evacuated"),
    (1, 0, "Cash is evacuated"),
    (1, 1, "Money is evacuated"),
    (1, 2, "Banknotes are evacuated"),  # one wad drawn, but a plural word
    (1, 3, "A wad of cash is evacuated"),
])
def test_money_subject_agrees_with_its_words(count: int, variant: int, want: str) -> None:
    subject, template = TEMPLATES["Movement.Transport"][1]
    assert subject == "Artifact" and "{V:is|are}" in template
    fillers = {"Artifact": [Filler("money", count, variant, "cash")], "Vehicle": [Filler("vehicle", 1, 0, "truck")],
               "Origin": [Filler("place", name="a depot in Kano")],
               "Destination": [Filler("place", name="a clinic in Abuja")]}
    caption, trigger, _ = compose(template, subject, fillers, "street", "Monday")
    assert caption == f"{want} in a truck from a depot in Kano to a clinic in Abuja on Monday."
    assert trigger[0] == "evacuated"


def test_person_subjects_agree_with_the_drawn_count() -> None:
    """For people the words and the drawn count agree, so the number rule (`subject_plural`) keeps every person
    caption as it was: "Kenyan police are", "Mayor Maria Santos is" (a surname in -s, one person)."""
    for etype in PERSON_NOUNS:
        for count in (1, 2, 3):
            for variant in range(6):
                for nationality in (None, COUNTRIES[0][1]):
                    for name, title in [(None, None)] + [("Maria Santos", t) for t in TITLES] * (count == 1):
                        f = Filler(etype, count, variant, nationality=nationality, name=name, title=title)
                        assert subject_plural(f) == (count > 1), f


def test_preview_grid(samples: list[Sample], tmp_path) -> None:
    path = preview_grid(samples[:8], tmp_path / "grid.png", cols=4)
    im = Image.open(path)
    assert im.width > 4 * 128 and im.height > 2 * 128


# --------------------------------------------------------------------------- Transport ends name their buildings
def test_transport_places_name_the_drawn_buildings() -> None:
    ends: dict[str, set[str]] = {"Origin": set(), "Destination": set()}
    for index in range(40):
        scene = build_scene(index, 5, "Movement.Transport", ONTOLOGY)
        sample = render_scene(scene, ontology=ONTOLOGY)
        event = sample.events[0]
        drawn = {}
        for role in ends:
            style = scene.slots[scene.slot_index(role)].filler.style
            arg = event.argument(role)
            assert sample.caption[arg.char_start:arg.char_end] == arg.text and arg.entity_type == "place"
            assert building_style(arg.text) == style, (sample.caption, role, style)
            assert any(b.label == "building" for b in sample.regions)
            drawn[role] = style
            ends[role].add(style)
        assert drawn["Origin"] != drawn["Destination"], sample.caption
    # every style at either end: the words tell origin from destination only through the picture
    assert ends["Origin"] == ends["Destination"] == set(BUILDING_PLACES)


def test_transport_role_swap_exchanges_the_building_words() -> None:
    make = EventWorldSamples(3, 128, {"role_swap": 2})
    checked = 0
    for index in range(64):
        sample = make(index)
        event = sample.events[0]
        if event.type != "Movement.Transport":
            continue
        origin, dest = event.argument("Origin").text, event.argument("Destination").text
        swaps = [n for n in sample.negatives if n.kind == "role_swap"
                 and set(n.changed["roles"]) == {origin, dest}]
        assert swaps, sample.caption
        for n in swaps:
            assert n.text.lower().index(dest.lower()) < n.text.lower().index(origin.lower()), n.text
            assert swap_verdict(event, n) == "building style"
        # the picture of the swapped scene draws what the swapped caption says
        swapped = render_sample(index, 3, event_type=event.type, swap_roles=("Origin", "Destination"))
        assert building_style(swapped.events[0].argument("Origin").text) == building_style(dest)
        checked += 1
    assert checked >= 4


def test_audit_finds_no_unverifiable_role_swap() -> None:
    make = EventWorldSamples(2, 128, {"role_swap": 2})
    counts = audit(make(i) for i in range(48))
    assert sum(sum(c.values()) for c in counts.values()) > 40
    assert all(c["unverifiable"] == 0 for c in counts.values()), counts
    assert counts["Movement.Transport"]["building style"] > 0
    # the phrasing of world version 1: two city names, which no picture shows
    old = Event("Movement.Transport", Trigger("heads", 0, 5),
                [Argument("Origin", "Kharkiv", "place"), Argument("Destination", "Odesa", "place")])
    swap = Negative("role_swap", "x", {"roles": {"Kharkiv": ["Origin", "Destination"],
                                                 "Odesa": ["Destination", "Origin"]}})
    assert swap_verdict(old, swap) == "unverifiable"


# --------------------------------------------------------------------------- world version
def _old_world_set(out: Path) -> dict:
    """A partial 16-sample set as world version 1 left it: no `world_version` in its manifest, a shard missing."""
    assert data_gen_main(["eventworld", "--out", str(out), "--num-samples", "16", "--samples-per-shard", "8",
                          "--quiet"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"].pop("world_version") == WORLD_VERSION
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "train-000001.tar").unlink()
    return manifest


def test_resuming_a_set_of_another_world_version_is_refused(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ew"
    _old_world_set(out)
    assert stored_world_version(out) == 1 and stored_world_version(tmp_path) is None
    assert data_gen_main(["eventworld", "--out", str(out), "--num-samples", "16", "--samples-per-shard", "8",
                          "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "version 1" in err and f"version {WORLD_VERSION}" in err
    assert not (out / "train-000001.tar").exists(), "nothing was written into the old set"


def test_demo_moves_a_stale_set_aside_and_renders_anew(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ew"
    old = _old_world_set(out)
    ensure_eventworld(out, 16, 0, 1)
    stale = tmp_path / "ew.stale-v1"
    assert json.loads((stale / MANIFEST).read_text()) == old, "the old set is kept as it was"
    assert f"moved them to {stale}" in capsys.readouterr().out
    assert stored_world_version(out) == WORLD_VERSION
    assert json.loads((out / MANIFEST).read_text())["num_samples"] == 16
    ensure_eventworld(out, 16, 0, 1)  # a finished set of this version is used as it is
    assert "using EventWorld shards" in capsys.readouterr().out
    shutil.rmtree(out)
    _old_world_set(out)
    ensure_eventworld(out, 16, 0, 1)  # a second stale set does not overwrite the first
    assert (tmp_path / "ew.stale-v1-2" / MANIFEST).exists() and stale.exists()


def test_quality_results_are_keyed_by_the_world_version(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    digest = quality.code_digest()
    assert quality.code_digest() == digest
    monkeypatch.setattr(quality, "WORLD_VERSION", WORLD_VERSION + 1)
    assert quality.code_digest() != digest  # so the run folder (NAME-STEPSsteps-SHA-CODE) and the result key
