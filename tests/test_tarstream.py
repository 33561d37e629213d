"""align.tarstream reads shards into the samples webdataset's reader makes, and reports what it cannot read.

Valid archives in every header format tarfile writes (ustar with a prefix, GNU long names, PAX) and with the member
kinds a shard may hold are compared sample for sample with `webdataset.tarfile_to_samples`; broken ones (cut short,
bad checksum, unsafe names, duplicates, not a tar) must name the shard, keep what came before, and never stop
the stream.
"""

from __future__ import annotations

import io
import tarfile
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from align.tarstream import ShardReadError, _number, iter_samples, unsafe_name


def _tar(path: Path, members: list[tuple[str, bytes | None]], fmt: int = tarfile.GNU_FORMAT, **info: Any) -> Path:
    """A tar of (name, data) members; data None makes a directory."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            m = tarfile.TarInfo(name)
            for k, v in info.items():
                setattr(m, k, v)
            if data is None:
                m.type = tarfile.DIRTYPE
                tar.addfile(m)
            else:
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
    return path


def _ours(urls: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    errors: list[str] = []
    return list(iter_samples(urls, lambda e: errors.append(str(e)) or True)), errors


def _webdataset(urls: list[str]) -> list[dict[str, Any]]:
    return list(wds.tarfile_to_samples()([{"url": u} for u in urls]))


MEMBERS = [
    ("k0.jpg", b"\xff\xd8 image 0"), ("k0.json", b'{"key": "k0"}'), ("k0.TXT", b"upper-case extension"),
    ("dir.v2/k1.seg.png", b"x" * 512), ("dir.v2/k1.json", b""), ("dir.v2/", None), ("__meta__", b"skipped"),
    ("__b__/c.jpg", b"skipped too"), ("a/__b__/c.jpg", b"kept"), ("noext", b"no extension: no key"),
    ("k2.jpg", b"y" * 1000), ("k3.jpg", b"split"), ("k2.json", b"k2 again after k3: a new sample, as in webdataset"),
    ("deep/" + "d" * 120 + "/k4.jpg", b"a name longer than 100 bytes"), ("k5.jpg", bytes(range(256)) * 3),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_same_samples_as_webdataset(tmp_path: Path, fmt: int) -> None:
    shard = _tar(tmp_path / "s.tar", MEMBERS, fmt, mtime=1.5 if fmt == tarfile.PAX_FORMAT else 0)
    other = _tar(tmp_path / "t.tar", [("z.jpg", b"z"), ("z.json", b"{}")], fmt)
    urls = [str(shard), str(other)]
    ours, errors = _ours(urls)
    assert ours == _webdataset(urls) and not errors
    assert [s["__key__"] for s in ours] == ["k0", "dir.v2/k1", "a/__b__/c", "k2", "k3", "k2",
                                            "deep/" + "d" * 120 + "/k4", "k5", "z"]
    assert ours[0]["txt"] == b"upper-case extension" and ours[1]["seg.png"] == b"x" * 512
    assert ours[-1]["__url__"] == str(other)


def test_eventworld_shards_read_as_webdataset(shards: Path) -> None:
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    ours, errors = _ours(urls)
    assert ours == _webdataset(urls) and len(ours) > 10 and not errors


def test_urls_are_drawn_lazily(tmp_path: Path) -> None:
    """Resampled training draws the next shard only when a sample after the last one is asked for."""
    shard = str(_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("b.jpg", b"2")]))
    drawn: list[int] = []

    def urls() -> Any:
        for i in count():
            drawn.append(i)
            yield shard

    it = iter_samples(urls(), lambda e: True)
    assert [next(it)["__key__"] for _ in range(2)] == ["a", "b"] and drawn == [0]
    assert next(it)["__key__"] == "a" and drawn == [0, 1]


def test_cut_short_keeps_what_came_before(tmp_path: Path) -> None:
    shard = _tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("a.json", b"2"), ("b.jpg", b"3" * 700), ("b.json", b"4")])
    whole = shard.read_bytes()
    for cut, left in ((512 * 4 + 512 + 300, [{"jpg": b"1", "json": b"2"}]),  # inside b.jpg's data
                      (512 * 4 + 100, [{"jpg": b"1", "json": b"2"}]),  # inside b.jpg's header
                      (512 * 7 + 512 + 200, [{"jpg": b"1", "json": b"2"}, {"jpg": b"3" * 700}])):  # in b.json
        shard.write_bytes(whole[:cut])
        ours, errors = _ours([str(shard), str(shard)])
        assert [{k: v for k, v in s.items() if not k.startswith("__")} for s in ours] == left * 2
        assert len(errors) == 2 and all("s.tar: truncated tar" in e for e in errors)
    shard.write_bytes(whole[: 512 * 9])  # the last member complete, no end blocks: the end, as tarfile reads it
    assert _ours([str(shard)]) == (_webdataset([str(shard)]), [])


def test_unreadable_shards_are_reported_and_skipped(tmp_path: Path) -> None:
    good = str(_tar(tmp_path / "good.tar", [("a.jpg", b"1")]))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 50)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    bad_sum = _tar(tmp_path / "badsum.tar", [("a.jpg", b"1"), ("b.jpg", b"2")])
    data = bytearray(bad_sum.read_bytes())
    data[1024 + 10] ^= 1  # one bit of the second header's name: its checksum no longer matches
    bad_sum.write_bytes(bytes(data))
    ours, errors = _ours([str(garbage), good, str(empty), str(tmp_path / "missing.tar"), str(bad_sum)])
    assert [(s["__key__"], Path(s["__url__"]).name) for s in ours] == [("a", "good.tar"), ("a", "badsum.tar")]
    assert len(errors) == 4
    assert "garbage.tar: invalid tar header at byte 0" in errors[0] and "empty.tar: empty file" in errors[1]
    assert "missing.tar: cannot read shard (FileNotFoundError" in errors[2]
    assert "badsum.tar: invalid tar header at byte 1024 (bad checksum)" in errors[3]


def test_unsafe_names_and_duplicates_are_skipped_one_by_one(tmp_path: Path) -> None:
    shard = _tar(tmp_path / "s.tar", [("../up.jpg", b"1"), ("/abs/x.jpg", b"2"), ("a/../../b.jpg", b"3"),
                                      ("k.jpg", b"4"), ("k.jpg", b"5"), ("k.json", b"6"), ("..ok.jpg", b"7")])
    ours, errors = _ours([str(shard)])
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in ours] == [
        {"__key__": "k", "jpg": b"4", "json": b"6"}]  # "..ok.jpg" has no key (webdataset's rule), not unsafe
    assert len(errors) == 4 and all(isinstance(e, str) and "s.tar: " in e for e in errors)
    assert ["not a plain relative name" in e for e in errors] == [True, True, True, False]
    assert "duplicate member 'k.jpg'" in errors[3]
    assert unsafe_name("a\\..\\b") and not unsafe_name("a/b..c/d.jpg")


def test_handler_false_stops_and_errors_carry_the_shard(tmp_path: Path) -> None:
    shard = _tar(tmp_path / "s.tar", [("../x.jpg", b"1"), ("a.jpg", b"2")])
    seen: list[Exception] = []
    assert list(iter_samples([str(shard)], lambda e: seen.append(e) or False)) == []
    assert len(seen) == 1 and isinstance(seen[0], ShardReadError) and str(shard) in str(seen[0])


def test_numbers_as_tarfile_reads_them() -> None:
    for value in (0, 7, 511, 8**11 - 1):
        assert _number(tarfile.itn(value, 12, tarfile.GNU_FORMAT)) == value
    for value in (8**11, 2**40, -5):  # base-256, as GNU tar writes sizes of 8 GB and more (and negative times)
        assert _number(tarfile.itn(value, 12, tarfile.GNU_FORMAT)) == value
    assert _number(b"0000644 \0") == 0o644 and _number(b"\0" * 8) == 0
    with pytest.raises(ValueError):
        _number(b"12x4\0")
