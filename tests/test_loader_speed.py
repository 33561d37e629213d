"""The loader's fast paths give exactly what the slow ones gave (issue 7): token ids, image pixels, batch fields.

Speed itself is measured by benchmarks/perf_loader.py; these tests only pin down that the shortcuts change nothing:
`FastSimpleTokenizer` against open_clip's `SimpleTokenizer` over tricky texts, the one `ImageDecoder` behind both
training batches and `align.inference.load_image` (with each caller's error contract), the numpy-filled `collate`,
and shards written without a PAX header per member.
"""

from __future__ import annotations

import copy
import html
import pickle
import random
import re
import sys
import tarfile
from contextlib import nullcontext
from io import BytesIO
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import pytest
import torch
import webdataset as wds
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from align.batch import (
    PACKED,
    CachedTokenizer,
    FastSimpleTokenizer,
    ImageDecoder,
    ImageError,
    SampleEncoder,
    Skip,
    _iou,
    collate,
    fast_tokenizer,
    pack_tensors,
    unpack_tensors,
)
from align.data import CLIP_MEAN, CLIP_STD, EventDataModule
from align.inference import ImageSpec, load_image
from align.ontology import Ontology
from align.schema import (
    DESCRIPTION_KINDS,
    NEGATIVE_KINDS,
    Argument,
    Description,
    Event,
    Negative,
    Region,
    Sample,
    Trigger,
    _read_fast,
)
from data_gen.shards import write_shard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import perf_loader  # noqa: E402

TRICKY = [
    "", " ", "   Police  arrest\ta protester  ", "line one\nline two", "windows\r\nbreak", "bell\x07char",
    "&amp;", "AT&T", "Tom &amp; Jerry", "&amp;amp; twice", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;", "&nbsp;x",
    "<b>tags</b> & more", "caf\u00c3\u00a9 mojibake", "\u00e2\u20ac\u0153smart\u00e2\u20ac\x9d", "caf\u00e9",
    "\u201ccurly\u201d \u2018quotes\u2019", "\ufb01sh \ufb02ag ligatures", "\uff2c\uff2f\uff35\uff24 fullwidth",
    "e\u0301 combining", "non\u00a0breaking", "zero\u200bwidth", "emoji \U0001f600 face", "\u4e2d\u6587 text",
    "lone \ud800 surrogate", "c1 \x85 control", "esc \x1b[31mred\x1b[0m", "<start_of_text> inside",
    "<END_OF_TEXT> upper", "It's the soldiers' van, don't they'll we've I'm you'd", "snake_case and CamelCase",
    "numbers 12345 and 3.14159, dates 2024-01-02", "punctuation!!! ??? ... --- ;;; ::: ((( )))",
    "a " * 60, "Agent: the police officer", "Instrument: an AK-47 rifle",
]


def _texts(n_random: int = 600) -> list[str]:
    """Tricky texts, every event template of the default ontology, and seeded random strings (plain ASCII and
    ASCII mixed with the characters ftfy and html.unescape act on)."""
    onto = Ontology.default()
    texts = list(TRICKY)
    for name in onto.type_names:
        for style in ("long", "short"):
            texts.append(onto[name].render({}, style=style))
    rng = random.Random(0)
    ascii_printable = [chr(c) for c in range(32, 127)]
    special = ["&", "&amp;", ";", "#", "\u201c", "\u2019", "\u00c3", "\u00a9", "\x85", "\x07", "\t", "\n", "\r",
               "\u00a0", "\ufb01", "\uff2c", "\u00e9", "e\u0301", "\u200b", "\U0001f600", "_", "'s", "<", ">"]
    for i in range(n_random):
        alphabet = ascii_printable + (special if i % 2 else [])
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
    return texts


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable() and "&" not in text


def test_premise_ftfy_and_unescape_leave_plain_ascii_alone() -> None:
    """What the fast path relies on: for printable ASCII without '&' open_clip's basic_clean is only .strip()."""
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(32, 127) if chr(c) != "&"]
    plain = [t for t in _texts() if _plain(t)] + ["".join(rng.choices(alphabet, k=rng.randint(0, 200)))
                                                   for _ in range(3000)]
    for text in plain:
        assert html.unescape(html.unescape(ftfy.fix_text(text))) == text


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_fast_tokenizer_ids_equal_open_clip(clean: str) -> None:
    base = SimpleTokenizer(context_length=32, clean=clean)
    fast = FastSimpleTokenizer(base)
    assert fast.plain_chunks is not None and isinstance(fast.plain_words, re.Pattern)  # the fast paths are on
    texts = _texts()
    for text in texts:
        assert fast.encode(text) == base.encode(text), repr(text)
    assert torch.equal(fast(texts), base(texts))  # start/end tokens, truncation at 32 with the end token kept
    assert torch.equal(fast(texts, context_length=77), base(texts, context_length=77))
    assert torch.equal(fast(texts[7]), base(texts[7]))  # a single string
    assert fast(texts).dtype == torch.long


def test_fast_path_skips_cleaning_only_for_plain_text() -> None:
    base = SimpleTokenizer(context_length=32)
    fast = FastSimpleTokenizer(base)
    cleaned: list[str] = []
    original = base.clean_fn
    base.clean_fn = lambda t: cleaned.append(t) or original(t)
    texts = ["Police arrest a protester.", "Tom &amp; Jerry", "caf\u00e9", "tab\there", "\u201cquoted\u201d"]
    fast(texts)
    assert cleaned == texts[1:]


def test_fast_tokenizer_is_used_only_for_plain_simple_tokenizers(tokenizer) -> None:
    assert isinstance(fast_tokenizer(tokenizer), FastSimpleTokenizer)
    assert isinstance(CachedTokenizer(tokenizer).tokenizer, FastSimpleTokenizer)
    masked = SimpleTokenizer(reduction_mask="simple")
    assert fast_tokenizer(masked) is masked

    def other(texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts), 4, dtype=torch.long)

    assert fast_tokenizer(other) is other
    texts = ["Agent: police", "Agent: police", "Person: a man &amp; a dog"]
    assert torch.equal(CachedTokenizer(tokenizer)(texts), tokenizer(texts))
    # spawned DataLoader workers get the dataset, tokenizer included, by pickle (our own object, not input data)
    clone = pickle.loads(pickle.dumps(CachedTokenizer(tokenizer)))
    assert torch.equal(clone(texts), tokenizer(texts))


# --------------------------------------------------------------------------- records
def _record() -> dict[str, Any]:
    """A record using every field: two events (spans, entity types, boxes and none), all description and
    negative kinds, regions of each source, provenance."""
    attack = Event("Conflict.Attack", Trigger("attacked", 9, 17), [
        Argument("Attacker", "Soldiers", "soldier", 0, 8, (0.0, 0.0, 32.5, 24)),
        Argument("Target", "a building", None, 18, 28, (32, 24, 64, 48)), Argument("Place", "Kyiv")])
    meet = Event("Contact.Meet", Trigger("met"), [Argument("Participant", "leaders", box=(1, 2, 3, 4))])
    return Sample(
        key="k0", caption="Soldiers attacked a building in Kyiv.", width=64, height=48, events=[attack, meet],
        salient=0, positives=[Description(k, f"{k} text") for k in DESCRIPTION_KINDS],
        negatives=[Negative(k, f"{k} text", {"mode": "template", "role": "Target", "new": "a school"})
                   for k in NEGATIVE_KINDS] + [Negative("type_swap", "no changed")],
        regions=[Region((0, 0, 64, 48), "scene", 0.1, "grid"), Region((0, 0, 32, 24), "person", 1, "detector"),
                 Region((32.5, 24, 64, 48.0), "", 0.75, "annotation")],
        provenance={"source": "test", "seed": 3}).to_dict()


def _places(obj: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value in a JSON tree."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    return [p for k, v in items for p in [(obj, k), *_places(v)]]


class _Str(str):
    """A str subclass: the fast reader leaves such values to the checked one."""


def _read(data: Any) -> tuple[str, str]:
    try:
        return "ok", repr(Sample._read_checked(data, b"img"))
    except Exception as e:  # noqa: BLE001  the checked reader's outcome, whatever it is
        return type(e).__name__, str(e)


def test_fast_record_reader_agrees_with_the_checked_one() -> None:
    """`_read_fast` returns the checked reader's Sample (same values and types) or None, which sends the record to
    the checked reader for its error; it must never accept what the checked reader rejects. Every value of a full
    record is deleted or replaced by values of other types and ranges (about 4,000 records)."""
    base = _record()
    assert repr(_read_fast(copy.deepcopy(base), b"img")) == _read(base)[1]  # valid records take the fast path
    values = [None, True, False, 0, 1, -1, 2, 1.5, -0.5, 64.0, 1e9, float("nan"), float("inf"), -float("inf"),
              10**400, "", "x", _Str("grid"), "grid", "caption", "type_swap", [], [0, 0, 1, 1], [0, 0, 64, 48],
              [1, 2, 3], [3, 0, 1, 1], (0, 0, 1, 1), [True, 0, 1, 1], {}, {"text": "t"}]
    checked = accepted = 0
    for i in range(len(_places(base))):
        for value in [...] + values:  # ...: delete the field
            record = copy.deepcopy(base)
            container, key = _places(record)[i]
            if value is ...:
                if isinstance(container, list):
                    continue
                del container[key]
            else:
                container[key] = copy.deepcopy(value)
            fast, (outcome, text) = _read_fast(record, b"img"), _read(record)
            checked += 1
            if fast is not None:
                accepted += 1
                assert outcome == "ok" and repr(fast) == text, (i, value, outcome, text)
                assert fast.image == b"img"
            with pytest.raises(Exception) if outcome != "ok" else nullcontext():
                assert repr(Sample.from_dict(record, b"img")) == text
    assert checked > 3000 and accepted > 300


# --------------------------------------------------------------------------- images
SIZE = 32


def _encoded(fmt: str, size: tuple[int, int] = (90, 50), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, fmt)
    return buf.getvalue()


def _encoder(max_pixels: int = 10**8) -> SampleEncoder:
    return SampleEncoder(image_size=SIZE, mean=CLIP_MEAN, std=CLIP_STD, positive_kinds=("long",),
                         negative_kinds=("type_swap",), num_negatives=1, max_regions=2, max_arguments=2,
                         num_arg_negatives=0, ontology=Ontology.default(), seed=0, max_image_pixels=max_pixels)


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA")])
def test_training_and_inference_decode_the_same_pixels(fmt: str, mode: str) -> None:
    data = _encoded(fmt, mode=mode)
    train = _encoder()._image(data)
    infer, size = load_image(data, ImageSpec(size=SIZE, mean=CLIP_MEAN, std=CLIP_STD))
    assert size == (90, 50) and infer.dtype == torch.float32 and infer.shape == (3, SIZE, SIZE)
    assert np.array_equal(train, infer.numpy())
    with Image.open(BytesIO(data)) as im:  # an independent float64 reference of resize + normalise
        rgb = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64)
    ref = ((rgb / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(train, ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("size", [(90, 50), (SIZE, SIZE), (300, 40), (200, 100)])
def test_decoder_equals_the_plain_pipeline_bit_for_bit(size: tuple[int, int], mode: str) -> None:
    """Skipping convert() and resize() where they would only copy, and reading rows line-interleaved, change no
    bit: the same float32 arithmetic on convert -> resize -> HWC array, with and without JPEG DCT scaling."""
    data = _encoded("JPEG", size, mode)
    decoder = ImageDecoder(SIZE, CLIP_MEAN, CLIP_STD, 10**8)
    with Image.open(BytesIO(data)) as im:
        im.draft("RGB", (SIZE, SIZE))
        rgb = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    x, original = decoder(data)
    assert original == size and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x, (rgb.transpose(2, 0, 1) - decoder.shift) * decoder.scale)
    batch = np.full((2, 3, SIZE, SIZE), np.nan, dtype=np.float32)  # training decodes into a row of the batch
    row, _ = decoder(data, batch[1])
    assert np.shares_memory(row, batch) and np.array_equal(batch[1], x) and np.isnan(batch[0]).all()


def test_each_caller_keeps_its_error_contract(tmp_path: Path) -> None:
    garbage = b"\xff\xd8\xff not a jpeg"
    spec = ImageSpec(size=SIZE)
    with pytest.raises(Skip) as bad:
        _encoder()._image(garbage)
    assert bad.value.reason == "bad_image"
    with pytest.raises(Skip) as big:
        _encoder(max_pixels=90 * 50 - 1)._image(_encoded("PNG"))
    assert big.value.reason == "image_too_large" and "90x50" in str(big.value)

    path = tmp_path / "broken.jpg"
    path.write_bytes(garbage)
    with pytest.raises(ValueError, match="broken.jpg: cannot decode image") as e:
        load_image(path, spec)
    assert isinstance(e.value, ImageError) and e.value.reason == "bad_image"
    big_png = tmp_path / "big.png"
    big_png.write_bytes(_encoded("PNG"))
    with pytest.raises(ValueError, match="big.png: image is 90x50, more than 100 pixels") as e:
        load_image(big_png, spec, max_pixels=100)
    assert e.value.reason == "image_too_large"
    with pytest.raises(FileNotFoundError, match="missing.png: image not found"):
        load_image(tmp_path / "missing.png", spec)
    with pytest.raises(FileNotFoundError):
        ImageDecoder(SIZE, CLIP_MEAN, CLIP_STD, 10**8)(tmp_path / "missing.png")


# --------------------------------------------------------------------------- collate and shards
def test_collate_fields_dtypes_and_values(tokenizer) -> None:
    img = np.zeros((3, 4, 4), dtype=np.float32)
    ex = [
        {"key": "a", "image": img, "pos": ["long a", None], "neg": [("neg a", 0)], "boxes": [[0.1, 0.2, 3.3, 4.4]],
         "box_labels": ["person"], "event_type": 2, "args": ["Agent: x", "Place: y"], "arg_boxes": [[1, 1, 2, 2], None],
         "arg_region": [0, -1], "neg_args": [(["Agent: y", "Place: x"], 1)]},
        {"key": "b", "image": img + 1, "pos": [None, "long a"], "neg": [], "boxes": [], "box_labels": [],
         "event_type": -1, "args": [], "arg_boxes": [], "arg_region": [], "neg_args": []},
    ]
    out = collate(ex, tokenizer, {"P": 2, "K": 2, "R": 3, "N": 2, "Kn": 1})
    tok = {t: tokenizer([t])[0] for t in ("long a", "neg a", "Agent: x", "Place: y", "Agent: y", "Place: x")}
    zero = torch.zeros_like(tok["long a"])
    assert torch.equal(out["pos_tokens"], torch.stack([torch.stack([tok["long a"], zero]),
                                                       torch.stack([zero, tok["long a"]])]))
    assert out["pos_mask"].tolist() == [[True, False], [False, True]]
    assert torch.equal(out["neg_tokens"][0, 0], tok["neg a"])
    assert out["neg_mask"].tolist() == [[True, False], [False, False]]
    assert out["neg_kinds"].tolist() == [[0, -1], [-1, -1]]
    assert torch.equal(out["boxes"][0, 0], torch.tensor([0.1, 0.2, 3.3, 4.4]))  # float32 rounding as torch's
    assert out["box_mask"].tolist() == [[True, False, False], [False, False, False]]
    assert torch.equal(out["arg_tokens"][0], torch.stack([tok["Agent: x"], tok["Place: y"]]))
    assert out["arg_boxes"][0].tolist() == [[1, 1, 2, 2], [0, 0, 0, 0]]
    assert out["arg_box_mask"].tolist() == [[True, False], [False, False]]
    assert out["arg_region"].tolist() == [[0, -1], [-1, -1]]
    assert torch.equal(out["neg_arg_tokens"][0, 0], torch.stack([tok["Agent: y"], tok["Place: x"]]))
    assert out["neg_arg_mask"].tolist() == [[True], [False]] and out["neg_arg_kinds"].tolist() == [[1], [-1]]
    assert out["event_type"].tolist() == [2, -1] and out["keys"] == ["a", "b"]
    assert torch.equal(out["images"][1], torch.ones(3, 4, 4))
    dtypes = {k: v.dtype for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert dtypes == {
        "images": torch.float32, "pos_tokens": torch.long, "pos_mask": torch.bool, "neg_tokens": torch.long,
        "neg_mask": torch.bool, "neg_kinds": torch.long, "boxes": torch.float32, "box_mask": torch.bool,
        "event_type": torch.long, "arg_tokens": torch.long, "arg_mask": torch.bool, "arg_boxes": torch.float32,
        "arg_box_mask": torch.bool, "arg_region": torch.long, "neg_arg_tokens": torch.long,
        "neg_arg_mask": torch.bool, "neg_arg_kinds": torch.long,
    }


def _same_batch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return list(a) == list(b) and all(
        (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)) if isinstance(x, torch.Tensor)
        else x == y for x, y in zip(a.values(), b.values()))


def test_packed_tensors_unpack_to_the_same_batch(tokenizer) -> None:
    img = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    ex = {"key": "a", "image": img, "pos": ["long a"], "neg": [("neg a", 0)], "boxes": [[0.1, 0.2, 3.3, 4.4]],
          "box_labels": ["person"], "event_type": 2, "args": ["Agent: x"], "arg_boxes": [None], "arg_region": [-1],
          "neg_args": []}
    batch = collate([ex, ex | {"key": "b", "image": img + 1}], tokenizer, {"P": 1, "K": 2, "R": 3, "N": 2, "Kn": 1})
    batch |= {"skipped": {"bad_image": 1}, "position": {"epoch": 0, "worker": 0, "records": 3, "batches": 1}}
    packed = pack_tensors(dict(batch))
    assert [k for k, v in packed.items() if isinstance(v, torch.Tensor)] == ["images"]
    assert len(packed[PACKED][1]) == 3  # long, bool and float32 tensors: one each
    # across a process boundary the batch is pickled (torch's own tensor reduction; our object, not input data)
    assert _same_batch(unpack_tensors(pickle.loads(pickle.dumps(packed))), batch)
    assert unpack_tensors(batch) is batch


def test_packed_tensors_survive_pin_memory(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """On GPU machines DataLoader's pin-memory thread rebuilds the packed batch (tuples come back as lists) before
    `_Loader` unpacks it; pinning is simulated by a copy, as this machine may have no accelerator."""
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self.clone())
    img = np.ones((3, 4, 4), dtype=np.float32)
    ex = {"key": "a", "image": img, "pos": ["long a"], "neg": [], "boxes": [[1, 2, 3, 4]], "box_labels": ["x"],
          "event_type": 0, "args": [], "arg_boxes": [], "arg_region": [], "neg_args": []}
    batch = collate([ex], tokenizer, {"P": 1, "K": 1, "R": 2, "N": 1, "Kn": 1})
    assert _same_batch(unpack_tensors(pin_memory(pack_tensors(dict(batch)))), batch)


def test_worker_batches_equal_main_process_batches(shards: Path, tokenizer) -> None:
    """One worker plays the stream the main process plays: batches packed for the trip equal those made here."""
    def batches(workers: int) -> list[dict[str, Any]]:
        dm = EventDataModule(train=str(shards / "train-*.tar"), val=str(shards / "val-*.tar"), batch_size=4,
                             num_workers=workers, image_size=SIZE, samples_per_epoch=16, shuffle_buffer=8)
        dm.tokenizer = tokenizer
        return list(dm.train_dataloader()) + list(dm.val_dataloader())

    here, there = batches(0), batches(1)
    assert len(here) == len(there) > 4 and all(_same_batch(a, b) for a, b in zip(here, there))


def test_iou_equals_the_min_max_formula() -> None:
    def reference(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    rng = random.Random(0)

    def box() -> list[float]:
        x, y = rng.choice([0.0, 10.0, rng.uniform(0, 30)]), rng.choice([0.0, 10.0, rng.uniform(0, 30)])
        w, h = (rng.choice([0.0, 5.0, rng.uniform(1, 30), rng.uniform(1, 30)]) for _ in range(2))
        return [x, y, x + w, y + h]

    pairs = [(box(), box()) for _ in range(5000)] + [([0, 0, 10, 10], [0, 0, 10, 10]), ([0, 0, 5, 5], [5, 5, 9, 9])]
    assert sum(reference(a, b) > 0 for a, b in pairs) > 500  # overlapping pairs, not only disjoint ones
    for a, b in pairs:
        assert _iou(a, b) == reference(a, b), (a, b)


def test_shards_have_no_pax_header_per_member(tmp_path: Path) -> None:
    samples = [Sample(key=f"k{i}", caption="Police arrest a protester.", width=90, height=50,
                      image=_encoded("JPEG")) for i in range(3)]
    path = tmp_path / "s.tar"
    assert write_shard(path, samples) == 3
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"k{i}.{ext}" for i in range(3) for ext in ("jpg", "json")]
        assert all(m.pax_headers == {} and m.mtime == 0 for m in members)
        assert Sample.from_json(tar.extractfile(members[1]).read()).key == "k0"


def test_benchmark_rewrites_old_shards_without_pax_headers(tmp_path: Path) -> None:
    """perf_loader measures shards as data-gen writes them now; an old one (float mtime) is rewritten in order."""
    old = tmp_path / "old.tar"
    records = [Sample(key=f"k{i}", caption=f"caption {i}", width=90, height=50) for i in range(3)]
    with open(old, "wb") as f, wds.TarWriter(f, mtime=0.0, encoder=False) as sink:
        for i, r in enumerate(records):
            sink.write({"__key__": r.key, "jpg": _encoded("JPEG", (90 + i, 50)), "json": r.to_json().encode()})
    with tarfile.open(old) as tar:
        before = [(m.name, tar.extractfile(m).read()) for m in tar]
        assert all(m.pax_headers for m in tar.getmembers())  # what a float mtime costs
    perf_loader.rewrite_shard(old)
    with tarfile.open(old) as tar:
        after = [(m.name, tar.extractfile(m).read()) for m in tar]
        assert not any(m.pax_headers for m in tar.getmembers())
    assert [n for n, _ in after] == [n for n, _ in before]
    assert [d for n, d in after if n.endswith(".jpg")] == [d for n, d in before if n.endswith(".jpg")]
    assert [Sample.from_json(d) for n, d in after if n.endswith(".json")] == records
