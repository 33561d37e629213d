"""The fault suite: one test per failure the library promises to survive (issue 7, part 3).

Each test feeds one fault to the code paths it can reach - `data-gen build` (user data in, shards out) and
`EventDataModule` (shards in, batches out), or a real process killed with SIGKILL - and asserts what the
README's "Reliability" section guarantees: which inputs were skipped and under which counter, and that nothing
else was lost (the exact set of keys that come out, the bytes of shards written before the fault).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from llm_server import FakeLLMServer
from test_build import _image, _manifest, _samples
from test_build import main as build_main
from test_data import attack_sample, jpeg, keys_of, make_dm, write_shards
from test_train import logged, write_config

from data_gen import shards as shards_module
from data_gen.build import sample_key
from data_gen.shards import MANIFEST, SIZES, TMP_PREFIX, sha256_file

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ARREST = "Police arrested two protesters in Cairo on Monday."


# --------------------------------------------------------------------------- helpers
def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (4e8 pixels for 20000) in about 50 KB: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def record(key: str, **fields: Any) -> dict[str, Any]:
    """One `data-gen build` JSONL row with an image file `imgs/{key}.jpg` and no events (`--extractor import`)."""
    return {"id": key, "image": f"imgs/{key}.jpg", "caption": ARREST, "events": [], **fields}


def jsonl_input(root: Path, rows: list[dict[str, Any] | bytes], images: dict[str, bytes] | None = None) -> Path:
    """Write `root/data.jsonl` (dict rows as JSON, bytes rows as they are) and `root/imgs/*.jpg`: a good JPEG
    for every dict row's image unless `images` gives other bytes."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            image = row.get("image")
            if isinstance(image, str) and image.startswith("imgs/"):
                name = image.removeprefix("imgs/")
                path = root / image
                if not path.exists():
                    path.write_bytes((images or {}).get(name, _image(i)))
            lines.append(json.dumps(row).encode())
        else:
            lines.append(row)
    path = root / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def build(src: Path, out: Path, *extra: str, source: str = "jsonl", extractor: str = "import") -> int:
    return build_main(["build", "--source", source, "--input", str(src), "--out", str(out), "--quiet",
                       "--extractor", extractor, *extra])


def keys(out: Path) -> list[str]:
    return [s.key for s in _samples(out, with_images=False)]


def accounted(out: Path, inputs: int) -> None:
    """Every input is in the manifest exactly once: as a sample or as a counted skip."""
    m = _manifest(out)
    assert m["num_samples"] + sum(m["skipped"].values()) == inputs, m
    assert m["num_samples"] == len(keys(out)) == len(set(keys(out)))
    assert json.loads((out / SIZES).read_text()) == {s["name"]: s["num_samples"] for s in m["shards"]}
    assert all(sha256_file(out / s["name"]) == s["sha256"] for s in m["shards"])
    assert not list(out.glob(f"{TMP_PREFIX}*"))


def val_keys(tokenizer: Any, pattern: str) -> tuple[list[str], Counter[str]]:
    dm = make_dm(tokenizer, val=pattern)
    return sorted(keys_of(dm.val_dataloader())), dm.skipped


def good_keys(prefix: str, n_shards: int, per_shard: int) -> list[str]:
    """The keys `test_data.write_shards` gives its good samples."""
    return sorted(f"{prefix}{s:02d}{i:03d}" for s in range(n_shards) for i in range(per_shard))


def raw_sample(key: str, image: bytes | None = None, record_json: bytes | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"__key__": key}
    if image is not None:
        raw["jpg"] = image
    if record_json is not None:
        raw["json"] = record_json
    return raw


# --------------------------------------------------------------------------- bad bytes in the input
def test_corrupt_jpeg_bytes(tmp_path: Path, tokenizer: Any) -> None:
    """Corrupt JPEGs (garbage after the JPEG magic; a JPEG cut after 200 bytes). Skipped: `unreadable_image`
    (build) / `bad_image` (training), one per corrupt image. Lost: nothing - every other input is a sample."""
    corrupt = {"garbage.jpg": b"\xff\xd8\xff\xe0 not really a JPEG", "cut.jpg": _image(1, size=(64, 64))[:200]}
    rows = [record("ok0"), record("garbage"), record("ok1"), record("cut"), record("ok2")]
    out = tmp_path / "out"
    assert build(jsonl_input(tmp_path, rows, corrupt), out, "--samples-per-shard", "2") == 0
    assert _manifest(out)["skipped"] == {"unreadable_image": 2}
    assert sorted(keys(out)) == ["ok0", "ok1", "ok2"]
    accounted(out, 5)

    pattern = write_shards(tmp_path / "val", "val", 2, 3, extra={
        s: [raw_sample(k, corrupt[f"{k}.jpg"], attack_sample(k).to_json().encode())]
        for s, k in enumerate(("garbage", "cut"))})
    got, skipped = val_keys(tokenizer, pattern)
    assert got == good_keys("val", 2, 3)
    assert skipped == Counter({"bad_image": 2})


def test_truncated_tar(tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A tar cut short. Training: the samples before the cut are read, the torn sample is counted
    (`missing_member`), the unreadable rest is counted under `tar`, and the other shards are read in full.
    `data-gen build --source wds`: refused before any work with an error naming the tar and "truncated"
    (cut inside a member, or exactly at a member boundary where tarfile itself stops quietly). Lost: only
    the bytes that are not in the file; skipped: nothing else."""
    pattern = write_shards(tmp_path / "val", "val", 2, 5)
    shard = tmp_path / "val" / "val-000000.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[4:6]] == ["val00002.jpg", "val00002.json"]
    shard.write_bytes(shard.read_bytes()[: members[5].offset_data + 100])  # inside val00002.json
    got, skipped = val_keys(tokenizer, pattern)
    assert got == ["val00000", "val00001"] + good_keys("val", 2, 5)[5:]
    assert skipped["missing_member"] == 1 and skipped["tar"] >= 1 and set(skipped) == {"missing_member", "tar"}

    src = tmp_path / "wds"
    src.mkdir()
    members = []
    for j in range(4):
        members += [(f"{j:09d}.jpg", _image(j)), (f"{j:09d}.txt", ARREST.encode())]
    with tarfile.open(src / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = (src / "00000.tar").read_bytes()
    with tarfile.open(src / "00000.tar") as tar:
        offsets = [m.offset for m in tar.getmembers()]
    assert build(src, tmp_path / "complete", source="wds", extractor="rules") == 0  # the tar itself is fine
    assert sorted(keys(tmp_path / "complete")) == [f"{j:09d}" for j in range(4)]
    capsys.readouterr()
    for cut in (offsets[2] + 600, offsets[4]):  # inside the data of member 2 (a JPEG); at the header of member 4
        (src / "00000.tar").write_bytes(whole[:cut])
        out = tmp_path / f"out-{cut}"
        assert build(src, out, source="wds", extractor="rules") == 1
        assert f"{src / '00000.tar'}: truncated tar" in capsys.readouterr().err
        assert not out.exists()


def test_malformed_json_record(tmp_path: Path, tokenizer: Any) -> None:
    """A JSONL line that is not JSON (build) and a shard record that is not JSON (training). Skipped:
    `bad_record` / `bad_json`, one each. Lost: nothing - the lines and samples around them are all kept."""
    rows: list[dict[str, Any] | bytes] = [record("a"), b'{"id": "torn", "image": "imgs/a.jpg", "capt', record("b"),
                                          b"[1, 2, 3]"]
    out = tmp_path / "out"
    assert build(jsonl_input(tmp_path, rows), out) == 0
    assert _manifest(out)["skipped"] == {"bad_record": 2}
    assert sorted(keys(out)) == ["a", "b"]
    accounted(out, 4)

    pattern = write_shards(tmp_path / "val", "val", 2, 3, extra={
        1: [raw_sample("torn", jpeg((1, 2, 3)), b'{"key": "torn", "caption": ')]})
    got, skipped = val_keys(tokenizer, pattern)
    assert got == good_keys("val", 2, 3) and skipped == Counter({"bad_json": 1})


def test_missing_keys(tmp_path: Path, tokenizer: Any) -> None:
    """Records without a required key: a JSONL row without `image` or without `caption`/`text` (build), a
    shard record without `caption` or `width`, a sample without its `.json` member (training). Skipped:
    `bad_record` + `missing_caption`; `schema` x2 + `missing_member`. Lost: nothing else."""
    rows: list[dict[str, Any] | bytes] = [record("a"), {"id": "noimage", "caption": ARREST},
                                          {"id": "nocap", "image": "imgs/a.jpg"}, record("b")]
    out = tmp_path / "out"
    assert build(jsonl_input(tmp_path, rows), out) == 0
    assert _manifest(out)["skipped"] == {"bad_record": 1, "missing_caption": 1}
    assert sorted(keys(out)) == ["a", "b"]
    accounted(out, 4)

    full = attack_sample("full").to_dict()
    no_caption = {k: v for k, v in full.items() if k != "caption"} | {"key": "nocaption"}
    no_width = {k: v for k, v in full.items() if k != "width"} | {"key": "nowidth"}
    pattern = write_shards(tmp_path / "val", "val", 2, 3, extra={
        0: [raw_sample("nocaption", jpeg((1, 2, 3)), json.dumps(no_caption).encode()),
            raw_sample("nojson", jpeg((1, 2, 3)))],
        1: [raw_sample("nowidth", jpeg((1, 2, 3)), json.dumps(no_width).encode())]})
    got, skipped = val_keys(tokenizer, pattern)
    assert got == good_keys("val", 2, 3) and skipped == Counter({"schema": 2, "missing_member": 1})


def test_decompression_bomb_png(tmp_path: Path, tokenizer: Any) -> None:
    """A 20000 x 20000 PNG of 50 KB (4e8 pixels, 400 MB once decoded) is rejected from its header, never
    decoded. Skipped: `image_too_large`, once in build and once in training. Lost: nothing else."""
    bomb = png_bomb()
    assert len(bomb) < 100_000
    rows = [record("a"), record("bomb"), record("b")]
    out = tmp_path / "out"
    assert build(jsonl_input(tmp_path, rows, {"bomb.jpg": bomb}), out) == 0
    assert _manifest(out)["skipped"] == {"image_too_large": 1}
    assert sorted(keys(out)) == ["a", "b"]
    accounted(out, 3)

    pattern = write_shards(tmp_path / "val", "val", 1, 3, extra={
        0: [raw_sample("bomb", bomb, attack_sample("bomb").to_json().encode())]})
    got, skipped = val_keys(tokenizer, pattern)
    assert got == good_keys("val", 1, 3) and skipped == Counter({"image_too_large": 1})


def test_non_utf8_caption(tmp_path: Path) -> None:
    """Latin-1 bytes in a caption (JSONL, CSV, sidecar .txt, img2dataset .txt) and in an id or a URL. Every
    source skips such an item and counts it: `caption_not_utf8` for the caption, `not_utf8` for any other
    field; the rest of the file is read. Lost: nothing else; the run does not fail."""
    bad = "Police arrested M\xfcller in Cairo.".encode("latin-1")
    lines = [json.dumps(record("a")).encode(),
             b'{"id": "cap", "image": "imgs/a.jpg", "events": [], "caption": "' + bad + b'"}',
             b'{"id": "caf\xe9", "image": "imgs/a.jpg", "events": [], "caption": "Police arrested a man."}',
             b'{"id": "url", "image": "imgs/a.jpg", "events": [], "url": "http://x/\xe9", "caption": "A man."}',
             json.dumps(record("b")).encode()]
    src = jsonl_input(tmp_path / "j", [record("a"), record("b")])
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out-jsonl"
    assert build(src, out) == 0
    assert _manifest(out)["skipped"] == {"caption_not_utf8": 1, "not_utf8": 2}
    assert sorted(keys(out)) == ["a", "b"]
    accounted(out, 5)

    csv_path = tmp_path / "j" / "data.csv"
    csv_path.write_bytes(b"id,image,caption\na,imgs/a.jpg,Police arrested a man.\ncap,imgs/a.jpg," + bad +
                         b"\ncaf\xe9,imgs/b.jpg,Police arrested a man.\n")
    out = tmp_path / "out-csv"
    assert build(csv_path, out, source="csv", extractor="rules") == 0
    assert _manifest(out)["skipped"] == {"caption_not_utf8": 1, "not_utf8": 1} and keys(out) == ["a"]

    folder = tmp_path / "folder"
    folder.mkdir()
    for name, caption in (("ok", ARREST.encode()), ("latin", bad)):
        (folder / f"{name}.jpg").write_bytes(_image(3))
        (folder / f"{name}.txt").write_bytes(caption)
    (folder / b"caf\xe9.jpg".decode("utf-8", "surrogateescape")).write_bytes(_image(4))
    (folder / b"caf\xe9.txt".decode("utf-8", "surrogateescape")).write_bytes(ARREST.encode())
    out = tmp_path / "out-folder"
    assert build(folder, out, source="folder", extractor="rules") == 0
    assert _manifest(out)["skipped"] == {"caption_not_utf8": 1, "not_utf8": 1} and keys(out) == ["ok"]

    wds_dir = tmp_path / "wds"
    wds_dir.mkdir()
    with tarfile.open(wds_dir / "00000.tar", "w") as tar:
        for name, data in (("000.jpg", _image(5)), ("000.txt", ARREST.encode()), ("001.jpg", _image(6)),
                           ("001.txt", bad)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out-wds"
    assert build(wds_dir, out, source="wds", extractor="rules") == 0
    assert _manifest(out)["skipped"] == {"caption_not_utf8": 1} and keys(out) == ["000"]


# --------------------------------------------------------------------------- the LLM server misbehaves
def test_llm_server_429_500_timeout_garbage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data-gen build --extractor llm` while the server answers 429, 500, a timeout and garbage to the first
    four requests. 429 / 500 / timeout are retried and answered. The garbage answer is not cached and its item
    is skipped as `llm_failed` (a sample claiming "no events" would be wrong). Lost: nothing - a re-run with
    the same cache asks only for that caption and then every item is a sample."""
    answer = {"events": [{"type": "Justice.Arrest-Jail", "trigger": "arrested",
                          "arguments": [{"role": "Agent", "text": "Police"}]}]}
    rows = [record(f"r{i}", caption=f"Police arrested {n} protesters in Cairo.")
            for i, n in enumerate(("two", "three", "four", "five", "six"))]
    src = jsonl_input(tmp_path, rows)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVENTALIGN_TEST_FAULT_KEY", "sk-fault-suite")
    with FakeLLMServer(default=answer, sleep_s=3.0) as server:
        server.faults.extend(["429", "500", "timeout", "garbage"])
        opts = ["--llm-base-url", server.base_url, "--llm-api-key-env", "EVENTALIGN_TEST_FAULT_KEY",
                "--llm-timeout", "0.5", "--llm-concurrency", "4", "--llm-cache-dir", str(cache)]
        out = tmp_path / "out"
        assert build(src, out, *opts, extractor="llm") == 0
        assert server.chat_requests == 5 + 3  # five captions, three retries, garbage not retried
        assert _manifest(out)["skipped"] == {"llm_failed": 1}
        samples = _samples(out, with_images=False)
        assert len(samples) == 4 and all(s.salient_event.type == "Justice.Arrest-Jail" for s in samples)
        accounted(out, 5)

        again = tmp_path / "again"
        assert build(src, again, *opts, extractor="llm") == 0
        assert server.chat_requests == 8 + 1  # four answers came from the cache
        assert sorted(keys(again)) == [f"r{i}" for i in range(5)] and _manifest(again)["skipped"] == {}


# --------------------------------------------------------------------------- killed processes
def _feed_fifo(path: Path, data: bytes, timeout_s: float = 120.0) -> threading.Thread:
    """Write `data` into a FIFO as soon as a reader opens it (a background thread; gives up after timeout_s)."""
    def run() -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO or time.monotonic() > deadline:  # ENXIO: no reader yet
                    return
                time.sleep(0.01)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate: Any, proc: subprocess.Popen, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}: "
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_kill9_data_gen_build_mid_shard_then_rerun(tmp_path: Path) -> None:
    """`data-gen build` is killed with SIGKILL while it builds shard 1 (it is blocked reading an image from a
    FIFO: a slow disk), after shard 0 is finished. Then the same command runs again. Lost: nothing - the
    manifest lists every input exactly once, shard 0 is neither rebuilt nor changed, the torn temporary file
    is gone. Skipped: exactly the two bad inputs (`unreadable_image` in shard 0, `missing_image` in shard 1),
    each counted once although shard 1 was started twice."""
    rows = [record(f"k{i}") for i in range(9)]
    rows[5]["image"] = str(tmp_path / "imgs" / "gone.jpg")
    src = jsonl_input(tmp_path, rows, {"k1.jpg": b"\xff\xd8 broken"})
    fifo = tmp_path / "imgs" / "k4.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_gen.cli", "build", "--source", "jsonl", "--input", str(src), "--out", str(out),
           "--extractor", "import", "--samples-per-shard", "3", "--quiet"]

    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: any(out.glob(f"{TMP_PREFIX}train-000001.tar*")), proc, "shard 1 to start")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    shard0 = out / "train-000000.tar"
    before = (shard0.read_bytes(), shard0.stat().st_mtime_ns)
    manifest = _manifest(out)  # complete JSON: it is replaced atomically
    assert [s["name"] for s in manifest["shards"]] == ["train-000000.tar"] and manifest["num_samples"] == 2
    assert manifest["skipped"] == {"unreadable_image": 1}
    assert not (out / "train-000001.tar").exists()

    feeder = _feed_fifo(fifo, _image(4))
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    feeder.join(timeout=5)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (shard0.read_bytes(), shard0.stat().st_mtime_ns) == before
    manifest = _manifest(out)
    assert [s["name"] for s in manifest["shards"]] == [f"train-{j:06d}.tar" for j in range(3)]
    assert manifest["skipped"] == {"unreadable_image": 1, "missing_image": 1}
    assert sorted(keys(out)) == [f"k{i}" for i in range(9) if i not in (1, 5)]
    accounted(out, 9)


def test_crash_between_shard_rename_and_manifest_update(tmp_path: Path) -> None:
    """The narrow window of a kill after a shard is renamed into place but before the manifest lists it (made
    here by removing the shard's manifest entry), and a shard deleted by hand. Lost: nothing; skipped counts
    stay exact: a shard without skips is adopted as is, one with skips is rebuilt (same bytes) so its skip
    reasons are counted again, never twice."""
    rows = [record(f"k{i}") for i in range(6)]
    src = jsonl_input(tmp_path, rows, {"k1.jpg": b"\xff\xd8 broken"})
    out = tmp_path / "out"
    assert build(src, out, "--samples-per-shard", "3") == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    full = _manifest(out)
    for name in ("train-000000.tar", "train-000001.tar"):  # with a skip, without
        manifest = dict(full, shards=[s for s in full["shards"] if s["name"] != name])
        (out / MANIFEST).write_text(json.dumps(manifest))
        assert build(src, out, "--samples-per-shard", "3") == 0
        assert _manifest(out) == full
    (out / "train-000000.tar").unlink()
    assert build(src, out, "--samples-per-shard", "3") == 0
    assert _manifest(out) == full and {p.name: p.read_bytes() for p in out.glob("*.tar")} == first
    assert full["skipped"] == {"unreadable_image": 1}
    accounted(out, 6)


@pytest.mark.slow
def test_kill9_align_fit_mid_epoch_then_resume(shards: Path, tmp_path: Path) -> None:
    """`align fit` is killed with SIGKILL mid-epoch, after its first step checkpoint - while the next checkpoint
    is being written when the poll catches Lightning's temporary file - and resumed with `--ckpt_path last`.
    Lost: nothing but the steps after the last checkpoint; every checkpoint on disk loads (weights_only=True),
    and the resumed run continues at the checkpoint's global step. Skipped: nothing."""
    scratch = tmp_path / "tmp"  # the process's TMPDIR: Lightning writes a checkpoint there first, then moves it
    scratch.mkdir()
    cfg = write_config(tmp_path / "fit.yaml", shards, tmp_path, max_steps=1000, every=2,
                       data={"samples_per_epoch": 8000})
    cmd = [sys.executable, "-m", "align.cli", "fit", "--config", str(cfg)]
    env = {**ENV, "TMPDIR": str(scratch)}
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(last.exists, proc, "the first checkpoint", timeout_s=300)
    seen = set(scratch.iterdir())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(scratch.iterdir()) - seen:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    steps = {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in ckpts}
    step = steps["last.ckpt"]
    assert step >= 2 and step % 2 == 0 and all(s <= step for s in steps.values())
    resumed = subprocess.run([*cmd, "--ckpt_path", "last", "--trainer.max_steps", str(step + 2)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [s for s, _ in logged(tmp_path, "train/loss", version=1)] == [step, step + 1]
    after = torch.load(last, map_location="cpu", weights_only=True)
    assert after["global_step"] == step + 2 and after["epoch"] == 0  # still the first epoch: killed mid-epoch
    for p in (tmp_path / "checkpoints").glob("*.ckpt"):
        torch.load(p, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- a full disk
class _FullDisk:
    """A file that accepts `budget` bytes and then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, f: IO[bytes], budget: int) -> None:
        self.f, self.budget = f, budget

    def write(self, data: bytes) -> int:
        if len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def test_enospc_while_writing_a_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk is full when shard 1 is written (the first 1 KB fits). `data-gen build` exits with code 1 and
    an error naming the shard and "No space left on device". Lost: nothing - shard 0 is intact (same bytes
    as a run without the fault, listed in the manifest with its sha256), no partial file is left, and a
    re-run once there is space writes the missing shards and lists every input exactly once. Skipped: the
    one corrupt image, counted once."""
    rows = [record(f"k{i}") for i in range(6)]
    src = jsonl_input(tmp_path, rows, {"k2.jpg": b"\xff\xd8 broken"})
    reference = tmp_path / "reference"
    assert build(src, reference, "--samples-per-shard", "3") == 0

    real = shards_module.atomic_open
    opened: list[Path] = []

    @contextmanager
    def full_disk(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
        opened.append(Path(path))
        with real(path, mode) as f:
            yield _FullDisk(f, 1024) if Path(path).name == "train-000001.tar" else f

    monkeypatch.setattr(shards_module, "atomic_open", full_disk)
    out = tmp_path / "out"
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert build(src, out, "--samples-per-shard", "3") == 1
    monkeypatch.undo()
    message = err.getvalue()
    assert "train-000001.tar" in message and "No space left on device" in message and "re-run" in message
    assert [p.name for p in opened] == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, SIZES, "train-000000.tar"]
    assert (out / "train-000000.tar").read_bytes() == (reference / "train-000000.tar").read_bytes()
    assert _manifest(out)["shards"] == _manifest(reference)["shards"][:1]

    assert build(src, out, "--samples-per-shard", "3") == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == \
        {p.name: p.read_bytes() for p in reference.glob("*.tar")}
    assert _manifest(out)["skipped"] == {"unreadable_image": 1}
    accounted(out, 6)


def test_sample_keys_stay_unique_after_sanitising(tmp_path: Path) -> None:
    """Ids that differ only in characters a WebDataset key cannot hold ("a.b", "a_b", "a/b") stay distinct
    samples. Lost: nothing; skipped: nothing."""
    rows = [record("a.b"), record("a_b"), dict(record("a/b"), image="imgs/ab.jpg")]
    out = tmp_path / "out"
    assert build(jsonl_input(tmp_path, rows), out) == 0
    assert sorted(keys(out)) == sorted(sample_key(k) for k in ("a.b", "a_b", "a/b"))
    accounted(out, 3)
