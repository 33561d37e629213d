"""`data-gen build` end to end: every source type, skip reasons, resume, job arrays, detector regions."""

import argparse
import csv
import io
import json
import tarfile

import pytest
from PIL import Image

from align.ontology import Ontology
from data_gen import build
from data_gen.build import RegionSpec, prepare_image, sample_key
from data_gen.shards import MANIFEST, iter_records
from data_gen.sources import Skip, list_items

CAPTIONS = [
    "Police arrested two protesters in Cairo on Monday.",
    "Soldiers attacked the village near Mosul.",
    "Thousands of people protested in Paris against the new law.",
    "The president met the prime minister in Berlin.",
    "A man was killed in a shooting in Chicago.",
    "Refugees traveled from Syria to Turkey by boat.",
    "A cat sleeps on a sofa.",
]
EXPECTED_TYPE = {0: "Justice.Arrest-Jail", 1: "Conflict.Attack", 2: "Conflict.Demonstrate", 3: "Contact.Meet",
                 5: "Movement.Transport"}


def _image(i: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    Image.new(mode, size, (i * 30 % 256, 80, 120) + ((200,) if mode == "RGBA" else ())).save(buf, fmt)
    return buf.getvalue()


def main(argv):
    """`data-gen build` through its own parser, so these tests do not depend on other subcommands."""
    parser = argparse.ArgumentParser()
    build.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _build(src, out, *extra, source="folder"):
    return main(["build", "--source", source, "--input", str(src), "--out", str(out), "--quiet", *extra])


def _samples(out, with_images=True):
    return list(iter_records(sorted(out.glob("**/*.tar")), with_images=with_images))


def _manifest(out):
    return json.loads((out / MANIFEST).read_text())


def _folder(root, n):
    root.mkdir()
    for i in range(n):
        (root / f"img{i:02d}.jpg").write_bytes(_image(i))
        (root / f"img{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)] + "\n")
    return root


def _check_valid(samples):
    ontology = Ontology.default()
    for s in samples:
        s.validate(ontology)
        assert s.image[:2] == b"\xff\xd8"
        assert Image.open(io.BytesIO(s.image)).size == (s.width, s.height)
        assert s.positives[0].kind == "caption" and s.positives[0].text == s.caption
        assert not {p.text.lower() for p in s.positives} & {n.text.lower() for n in s.negatives}


def test_folder_source_rules_events_and_skip_reasons(tmp_path):
    src = _folder(tmp_path / "src", 4)
    (src / "sub").mkdir()
    (src / "sub" / "png.png").write_bytes(_image(9, "PNG"))  # re-encoded to JPEG, alpha on white
    (src / "sub" / "png.txt").write_text(CAPTIONS[4])
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "broken.txt").write_text(CAPTIONS[0])
    (src / "empty.webp").write_bytes(_image(3, "WEBP"))
    (src / "empty.txt").write_text("  \n")
    (src / "nocap.jpg").write_bytes(_image(4))
    (src / ".hidden.jpg").write_bytes(_image(5))
    (src / "latin1.jpg").write_bytes(_image(6))
    (src / "latin1.txt").write_bytes("Soldaten griffen M\xfcnchen an.".encode("latin-1"))
    out = tmp_path / "out"
    assert _build(src, out, "--samples-per-shard", "3", "--mode", "both") == 0
    manifest = _manifest(out)
    assert manifest["skipped"] == {"unreadable_image": 1, "empty_caption": 1, "missing_caption": 1,
                                   "caption_not_utf8": 1}
    samples = _samples(out)
    _check_valid(samples)
    by_key = {s.key: s for s in samples}
    assert set(by_key) == {"img00", "img01", "img02", "img03", sample_key("sub/png")}
    assert manifest["num_samples"] == 5 and len(manifest["shards"]) == 3  # 9 items, 3 per shard
    for i, etype in EXPECTED_TYPE.items():
        if f"img{i:02d}" in by_key:
            assert by_key[f"img{i:02d}"].salient_event.type == etype
    arrest = by_key["img00"]
    assert {(a.role, a.text) for a in arrest.salient_event.arguments} >= {("Agent", "Police"), ("Place", "Cairo")}
    assert {n.kind for n in arrest.negatives} >= {"type_swap", "role_swap"}
    assert {n.changed["mode"] for n in arrest.negatives} == {"template", "caption_edit"}
    assert len(arrest.regions) == 9 and {g.source for g in arrest.regions} == {"grid"}
    assert arrest.regions[-1].box == (40 * 2 / 3, 30 * 2 / 3, 40.0, 30.0)
    png = by_key[sample_key("sub/png")]
    assert png.provenance["image_format"] == "PNG" and png.provenance["id"] == "sub/png"
    assert Image.open(io.BytesIO(png.image)).getpixel((0, 0))[0] > 25  # composited, not black


def test_folder_caption_table_wins_over_sidecar(tmp_path):
    src = _folder(tmp_path / "src", 2)
    with open(src / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "text"], ["img01.jpg", CAPTIONS[5]]])
    items = list_items("folder", src)
    assert [it.id for it in items] == ["img00", "img01"]
    assert items[1].load_caption(100) == CAPTIONS[5] and items[0].load_caption(100) == CAPTIONS[0]


def _records(root):
    """A JSONL/CSV fixture: good rows, a bad line, a too-long caption, a missing image, non-UTF-8 text."""
    images = root / "imgs"
    images.mkdir(parents=True)
    rows = []
    for i in range(4):
        (images / f"r{i}.png").write_bytes(_image(i, "PNG"))
        rows.append({"id": f"rec-{i}", "image": f"imgs/r{i}.png", "caption": CAPTIONS[i], "url": f"http://x/{i}"})
    rows.append({"id": "long", "image": "imgs/r0.png", "caption": "word " * 2500})
    rows.append({"id": "gone", "image": str(images / "missing.jpg"), "text": CAPTIONS[1]})
    rows.append({"id": "rec-0", "image": "imgs/r1.png", "caption": CAPTIONS[2]})  # repeated id
    return rows


def test_jsonl_and_csv_sources_give_the_same_samples(tmp_path):
    rows = _records(tmp_path)
    lines = [json.dumps(r).encode() for r in rows] + [b"{not json", b'{"id": "bad8", "image": "imgs/r2.png", '
                                                                     b'"caption": "Police \xe9 arrested"}']
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "image", "caption", "text", "url"])
        w.writeheader()
        w.writerows(rows)
    skipped = {"caption_too_long": 1, "missing_image": 1, "duplicate_id": 1}
    keys = {f"rec-{i}" for i in range(4)}
    outs = {}
    for fmt in ("jsonl", "csv"):
        outs[fmt] = tmp_path / f"out-{fmt}"
        assert _build(tmp_path / f"data.{fmt}", outs[fmt], source=fmt) == 0
        samples = _samples(outs[fmt])
        _check_valid(samples)
        assert {s.key for s in samples} == keys
        assert samples[0].provenance["url"] == "http://x/0" and samples[0].provenance["source"] == fmt
    assert _manifest(outs["jsonl"])["skipped"] == {**skipped, "bad_record": 1, "caption_not_utf8": 1}
    assert _manifest(outs["csv"])["skipped"] == skipped
    assert [s.to_dict()["events"] for s in _samples(outs["jsonl"])] == \
        [s.to_dict()["events"] for s in _samples(outs["csv"])]


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_wds_source_reads_img2dataset_shards(tmp_path):
    src = tmp_path / "wds"
    src.mkdir()
    for shard in range(2):
        members = []
        for j in range(3):
            key = f"{shard:05d}{j:04d}"
            i = shard * 3 + j
            members += [(f"{key}.jpg", _image(i)), (f"{key}.txt", CAPTIONS[i].encode()),
                        (f"{key}.json", json.dumps({"url": f"http://img/{i}", "key": key}).encode())]
        _tar(src / f"{shard:05d}.tar", members)
    _tar(src / "00002.tar", [("000020000.jpg", b"garbage"), ("000020000.txt", b"Police arrested a man."),
                             ("000020001.txt", CAPTIONS[0].encode())])  # an undecodable image, a missing one
    (src / "notes.txt").write_text("not a shard")
    out = tmp_path / "out"
    assert _build(src, out, "--samples-per-shard", "4", source="wds") == 0
    samples = _samples(out)
    _check_valid(samples)
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002", "000010000", "000010001", "000010002"]
    assert samples[4].provenance["url"] == "http://img/4" and samples[4].provenance["tar"] == "00001.tar"
    assert samples[1].salient_event.type == "Conflict.Attack"
    assert _manifest(out)["skipped"] == {"unreadable_image": 1, "missing_image": 1}
    gz = tmp_path / "gz.tar"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(src / "00000.tar", arcname="x.jpg")
    assert _build(gz, tmp_path / "out-gz", source="wds") == 1


def _voa(tmp_path):
    images = tmp_path / "voa-images"
    images.mkdir()
    recs = [
        {"id": "VOA_1_0", "caption": "Police detained a man in Kabul .", "image_url": "https://voa/1.jpg",
         "events": [{"event_id": "E1", "type": "Justice.ArrestJail",
                     "trigger": {"text": "detained", "char_start": 7, "char_end": 15},
                     "arguments": [{"role": "Agent", "entity_id": "x", "text": "Police"},
                                   {"role": "Person", "text": "man"}, {"role": "Place", "text": "Kabul"}]}]},
        {"id": "VOA_1_1", "caption": "Troops were flown to Mosul from Baghdad .", "image_url": "https://voa/2.jpg",
         "events": [{"type": "Movement.TransportPerson", "trigger": {"text": "flown", "char_start": 12,
                                                                    "char_end": 17},
                     "arguments": [{"role": "Person", "text": "Troops"}, {"role": "Destination", "text": "Mosul"},
                                   {"role": "Origin", "text": "Baghdad"}]},
                    {"type": "Unknown.Type", "trigger": {"text": "Troops"}}]},
        {"id": "VOA_2_0", "caption": "Protesters rallied in Cairo .", "image_url": "https://voa/3.jpg",
         "events": [{"type": "Conflict.Demonstrate", "trigger": {"text": "rallied", "char_start": 11}}]},
        {"id": "VOA_3_0", "caption": "A bomb exploded in Kabul .", "events": []},
    ]
    for i, r in enumerate(recs[:3]):
        (images / f"{r['id']}.jpg").write_bytes(_image(i, size=(50, 40)))
    path = tmp_path / "voa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, images


def test_voa_source_imports_record_events(tmp_path):
    path, images = _voa(tmp_path)
    out = tmp_path / "out"
    assert _build(path, out, "--images", str(images), "--extractor", "import", source="voa") == 0
    samples = _samples(out)
    _check_valid(samples)
    assert [s.key for s in samples] == ["VOA_1_0", "VOA_1_1"]
    arrest, move = samples
    assert arrest.salient_event.type == "Justice.Arrest-Jail" and arrest.provenance["image_url"] == "https://voa/1.jpg"
    assert [e.type for e in move.events] == ["Movement.Transport"]  # unmapped type dropped
    assert {a.role for a in move.salient_event.arguments} == {"Artifact", "Destination", "Origin"}
    assert arrest.negatives and move.negatives
    # record 3 has a span with one end (bad events), record 4 has no image
    assert _manifest(out)["skipped"] == {"bad_events": 1, "missing_image": 1}
    assert _build(path, tmp_path / "o2", source="voa") == 1  # --images is required


def test_resume_rebuilds_the_same_bytes_and_every_id_once(tmp_path):
    src = _folder(tmp_path / "src", 10)
    out = tmp_path / "out"
    assert _build(src, out, "--samples-per-shard", "3", "--workers", "2") == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert sorted(before) == [f"train-{j:06d}.tar" for j in range(4)]
    (out / "train-000001.tar").unlink()
    assert _build(src, out, "--samples-per-shard", "3") == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    keys = [s.key for s in _samples(out, with_images=False)]
    assert sorted(keys) == [f"img{i:02d}" for i in range(10)]
    (src / "img10.jpg").write_bytes(_image(10))  # the input changed: resuming would mix two inputs
    (src / "img10.txt").write_text(CAPTIONS[0])
    assert _build(src, out, "--samples-per-shard", "3") == 1


def test_job_array_covers_the_input_exactly_once(tmp_path):
    src = _folder(tmp_path / "src", 11)
    single, array = tmp_path / "single", tmp_path / "array"
    assert _build(src, single, "--samples-per-shard", "2") == 0
    for job in range(3):
        assert _build(src, array, "--samples-per-shard", "2", "--shard-index", str(job), "--num-shards", "3") == 0
    names = [p.name for p in array.glob("job-*/*.tar")]
    assert len(names) == len(set(names)) == 6
    assert sorted(p.name for p in (array / "job-001-of-003").glob("*.tar")) == ["train-000001.tar",
                                                                               "train-000004.tar"]
    merged = {p.name: p.read_bytes() for p in array.glob("job-*/*.tar")}
    assert merged == {p.name: p.read_bytes() for p in single.glob("*.tar")}
    keys = [s.key for s in _samples(array, with_images=False)]
    assert sorted(keys) == [f"img{i:02d}" for i in range(11)]
    assert _build(src, array, "--shard-index", "3", "--num-shards", "3") == 2


def test_detector_regions_land_in_samples(tmp_path, capsys):
    src = _folder(tmp_path / "src", 2)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"img00": [[1, 2, 20, 25, "person", 0.9], [30, 10, 60, 50, "car"], [5, 5, 9, 9, 0.5],
                                           [100, 100, 120, 120, "outside", 0.5]]}))
    out = tmp_path / "out"
    assert _build(src, out, "--regions", f"json:{boxes}") == 0
    first, second = _samples(out, with_images=False)
    assert [g.to_dict() for g in first.regions] == [
        {"box": [1.0, 2.0, 20.0, 25.0], "label": "person", "score": 0.9, "source": "detector"},
        {"box": [30.0, 10.0, 40.0, 30.0], "label": "car", "score": 1.0, "source": "detector"},
        {"box": [5.0, 5.0, 9.0, 9.0], "label": "", "score": 0.5, "source": "detector"}]
    assert second.regions == []
    boxes.write_text(json.dumps({"img00": [[10, 10, 5, 20]]}))
    assert _build(src, tmp_path / "out2", "--regions", f"json:{boxes}") == 2
    assert "'img00'[0]" in capsys.readouterr().err
    assert RegionSpec.parse("grid:2").regions("x", 10, 10)[3].box == (5.0, 5.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="--regions"):
        RegionSpec.parse("boxes")


def test_image_checks_and_keys():
    data, w, h, fmt = prepare_image(_image(1), 10**6)
    assert (w, h, fmt) == (40, 30, "JPEG") and data == _image(1)  # an upright RGB JPEG is kept as is
    with pytest.raises(Skip) as e:
        prepare_image(_image(1, size=(100, 100)), 2_000)
    assert e.value.reason == "image_too_large"
    with pytest.raises(Skip, match="unreadable_image"):
        prepare_image(_image(1)[:200], 10**6)
    assert sample_key("VOA_EN_1_0") == "VOA_EN_1_0"
    assert sample_key("a.b") != sample_key("a_b") and "." not in sample_key("a.b")


def test_import_extractor_reads_existing_ie_output(tmp_path, capsys):
    rows = _records(tmp_path)[:2]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ie = tmp_path / "ie.jsonl"
    ie.write_text(json.dumps({"id": "rec-1", "events": [{"type": "Conflict.Attack", "trigger": {
        "text": "attacked", "char_start": 9, "char_end": 17}, "arguments": [{"role": "Target", "text": "village"}]}]})
        + "\n")
    out = tmp_path / "out"
    assert _build(tmp_path / "data.jsonl", out, "--extractor", "import", "--import-path", str(ie), source="jsonl") == 0
    first, second = _samples(out, with_images=False)
    assert first.events == [] and first.salient is None and [p.kind for p in first.positives] == ["caption"]
    assert second.salient_event.type == "Conflict.Attack" and second.salient_event.arguments[0].text == "village"
    assert _build(tmp_path / "data.jsonl", tmp_path / "o2", "--extractor", "import", source="jsonl") == 2
    assert "--import-path" in capsys.readouterr().err


def test_llm_extractor_through_a_local_server(tmp_path, monkeypatch):
    from llm_server import FakeLLMServer

    src = _folder(tmp_path / "src", 2)
    answer = {"events": [{"type": "Justice.Arrest-Jail", "trigger": "arrested",
                          "arguments": [{"role": "Agent", "text": "Police"}]}]}
    monkeypatch.setenv("EVENTALIGN_TEST_BUILD_KEY", "sk-test-build")
    with FakeLLMServer(rules=[("arrested", answer)], default={"events": []}) as server:
        url = server.base_url
        assert _build(src, tmp_path / "out", "--extractor", "llm", "--llm-base-url", url,
                      "--llm-api-key-env", "EVENTALIGN_TEST_BUILD_KEY") == 0
        assert server.chat_requests == 2
    arrest, attack = _samples(tmp_path / "out", with_images=False)
    assert arrest.salient_event.type == "Justice.Arrest-Jail" and attack.events == []
    assert _manifest(tmp_path / "out")["config"]["extractor_options"] == {"model": "gpt-4o-mini",
                                                                          "base_url": url}
