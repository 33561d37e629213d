"""Security (issue 7, part 4): nothing is unpickled on any loading path, tar member names cannot write outside
the output folder, and an API key never reaches a log, a manifest, a cache or a checkpoint."""

from __future__ import annotations

import ast
import codecs
import io
import json
import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import webdataset as wds
from llm_server import FakeLLMServer
from test_build import _image
from test_data import attack_sample, jpeg, keys_of, make_dm
from test_faults import ARREST, build, jsonl_input, keys, record
from test_train import write_config

from align.cli import run_cli
from align.model import _load_checkpoint
from align.schema import Sample
from data_gen.build import sample_key
from data_gen.cli import main as data_gen_main
from data_gen.shards import ShardError, iter_records, write_shard

REPO = Path(__file__).resolve().parent.parent
LOADING_PATHS = sorted(p for pkg in ("align", "data_gen") for p in (REPO / pkg).rglob("*.py"))
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
FAKE_KEY = "sk-proj-FAKE-do-not-leak-7Qx9Zr2Lm4"


# --------------------------------------------------------------------------- no pickle
def _call_name(node: ast.Call) -> str:
    """Dotted name of a call's function, e.g. "torch.load", "np.load", "x.decode"."""
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> Any:
    kw = next((k for k in node.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else ("missing" if kw is None
                                                                                          else "not a constant")


def _is_codec(node: ast.Call) -> bool:
    """`b.decode("utf-8")` names a codec; webdataset's `.decode("pil")` / `.decode(handler)` does not."""
    if not node.args:
        return True  # bytes.decode() - webdataset's decode() with no handler is caught by the name check below
    arg = node.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return False
    try:
        codecs.lookup(arg.value)
    except LookupError:
        return False
    return True


def pickle_uses(path: Path) -> list[str]:
    """Every place in a source file that could unpickle data, as "file:line: what"."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] + ([module] if module else [])
            bad = [n for n in names if n and (n.split(".")[0] in PICKLE_MODULES or n == "torch_loads"
                                              or (module == "torch" and n == "load"))]  # a bare load() escapes
            if bad:
                found.append(f"{where}: imports {bad}")
        elif isinstance(node, ast.Attribute | ast.Name):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if name in ("torch_loads", "Unpickler", "basichandlers", "allow_pickle"):
                found.append(f"{where}: uses {name}")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            last = name.rsplit(".", 1)[-1]
            if name.endswith("torch.load") or last == "load_checkpoint":
                if _keyword(node, "weights_only") is not True:
                    found.append(f"{where}: {name} without weights_only=True")
            elif any(k.arg == "weights_only" for k in node.keywords) and _keyword(node, "weights_only") is not True:
                found.append(f"{where}: {name} with weights_only={_keyword(node, 'weights_only')}")
            if last == "load" and _keyword(node, "allow_pickle") is True:
                found.append(f"{where}: {name} with allow_pickle=True")
            if last == "decode" and not _is_codec(node):
                found.append(f"{where}: {name}(...) looks like a webdataset decoder (its defaults unpickle .pyd)")
            if last == "extractall" or name.endswith("tarfile.extract"):
                found.append(f"{where}: {name} extracts tar members to disk")
    return found


def test_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom torch import load\nimport webdataset as wds\nimport numpy as np\n"
                   "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('a', allow_pickle=True)\n"
                   "wds.WebDataset('u').decode('pil')\nwds.WebDataset('u').decode(wds.torch_loads)\n"
                   "b'x'.decode('utf-8')\ntorch.load('x', map_location='cpu', weights_only=True)\n")
    found = pickle_uses(bad)
    assert sorted(int(f.split(":")[1]) for f in found) == [1, 2, 5, 6, 7, 8, 9, 9], found


def test_no_pickle_in_any_loading_path() -> None:
    """No module of align/ or data_gen/ imports pickle, calls torch.load / load_checkpoint without
    weights_only=True, passes allow_pickle=True, uses a webdataset decoder (whose default handlers unpickle
    `.pyd`/`.pickle` members) or extracts tar members to disk."""
    assert len(LOADING_PATHS) > 20
    found = [f for p in LOADING_PATHS for f in pickle_uses(p)]
    assert not found, "\n".join(found)


class _Trap:
    """Unpickling this creates `path`: proof that something unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def test_pickled_members_and_checkpoints_are_never_unpickled(tmp_path: Path, tokenizer: Any) -> None:
    """A shard whose samples carry `.pyd` / `.pickle` / `.pth` members, read by the DataModule, by
    `iter_records` and by `data-gen build --source wds`; a checkpoint holding a pickled object, given to the
    model loader and the `init_from` loader. Nothing is unpickled (the trap file is never created); the shard's
    samples are still read and the checkpoint is refused with an error naming it."""
    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(trap))
    shard = tmp_path / "val-000000.tar"
    with wds.TarWriter(str(shard), encoder=False) as tw:
        for i in range(3):
            s = attack_sample(f"k{i}")
            tw.write({"__key__": s.key, "jpg": jpeg((9, 9, 9)), "json": s.to_json().encode(), "pyd": payload,
                      "pickle": payload, "pth": payload, "txt": ARREST.encode()})
    assert sorted(keys_of(make_dm(tokenizer, val=str(shard)).val_dataloader())) == ["k0", "k1", "k2"]
    assert [s.key for s in iter_records([shard], with_images=True)] == ["k0", "k1", "k2"]
    assert build(shard, tmp_path / "out", source="wds", extractor="rules") == 0
    assert sorted(keys(tmp_path / "out")) == ["k0", "k1", "k2"]

    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "trap": _Trap(trap)}, ckpt)
    with pytest.raises(ValueError, match="evil.pt"):
        _load_checkpoint(torch.nn.Linear(1, 1), ckpt, "EventCLIP-Tiny")
    from align.module import EventAlignModule

    with pytest.raises(pickle.UnpicklingError):
        EventAlignModule._load_init(torch.nn.Linear(1, 1), str(ckpt))  # type: ignore[arg-type]
    assert not trap.exists()


# --------------------------------------------------------------------------- member names
def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _plain(member: str) -> bool:
    """A member name that extracts into the current folder: no folder part, no parent reference, not absolute."""
    return "/" not in member and "\\" not in member and not member.startswith(".") and member.count(".") == 1


def test_member_names_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    """img2dataset tars with members named `../../x.jpg`, `/abs/x.jpg`, `a/../../x.jpg` and JSONL ids of that
    form go through `data-gen build`; EventWorld writes its own shards. Nothing is written outside --out,
    every member name in every written shard is a plain `{key}.{ext}`, the keys are the sanitised ids (each
    sample kept, none merged), and the shard writer refuses a key with a path in it."""
    work = tmp_path / "work"
    work.mkdir()
    names = ["../../escape", "/tmp/absolute", "a/../../up", "ok"]
    src = work / "in"
    src.mkdir()
    _tar(src / "00000.tar", [m for i, n in enumerate(names)
                             for m in ((f"{n}.jpg", _image(i)), (f"{n}.txt", ARREST.encode()))])
    rows = [dict(record(n), image=f"imgs/{i}.jpg") for i, n in enumerate(["../../escape", "/etc/passwd", "ok"])]
    jsonl = jsonl_input(work / "j", rows)
    before = _tree(tmp_path)
    outs = [work / "out-wds", work / "out-jsonl", work / "out-ew"]
    assert build(src, outs[0], source="wds", extractor="rules") == 0
    assert build(jsonl, outs[1]) == 0
    assert data_gen_main(["eventworld", "--out", str(outs[2]), "--num-samples", "6", "--samples-per-shard", "3",
                          "--image-size", "64", "--quiet"]) == 0
    new = {p for p in _tree(tmp_path) - before if not any(p.startswith(str(o.relative_to(tmp_path))) for o in outs)}
    assert new == set(), new
    assert not Path("/tmp/absolute.jpg").exists() and not (tmp_path.parent / "escape.jpg").exists()
    for out in outs:
        for shard in out.glob("*.tar"):
            with tarfile.open(shard) as tar:
                bad = [m.name for m in tar.getmembers() if not (m.isfile() and _plain(m.name))]
            assert not bad, (shard, bad)
    assert sorted(keys(outs[0])) == sorted(sample_key(n) for n in names)
    assert sorted(keys(outs[1])) == sorted(sample_key(n) for n in ("../../escape", "/etc/passwd", "ok"))

    sample = Sample("../evil", ARREST, 8, 8, image=_image(0))
    with pytest.raises(ShardError, match="not a plain name"):
        write_shard(work / "x.tar", [sample])
    assert not (work / "x.tar").exists() and not list(work.glob(".tmp-*"))


# --------------------------------------------------------------------------- API keys
@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_api_key_never_written_or_logged(tmp_path: Path, shards: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A fake key in OPENAI_API_KEY while `data-gen extract --backend llm` and `data-gen build --extractor llm`
    run against the local server (with a 429 and a garbage answer, so error paths log too) and a tiny
    `align fit` runs. The server received the key; no byte of any file written (outputs, manifests, LLM cache
    and batch files, checkpoints, hparams.yaml, config.yaml, metrics) and no line of stdout, stderr or the
    log holds it."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    answer = {"events": [{"type": "Justice.Arrest-Jail", "trigger": "arrested",
                          "arguments": [{"role": "Agent", "text": "Police"}]}]}
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"c{i}", "text": f"Police arrested {i} men."}) + "\n"
                                for i in range(3)))
    rows = [record(f"r{i}", caption=f"Police arrested {i} women in Cairo.") for i in range(3)]
    src = jsonl_input(tmp_path / "build-in", rows)
    with FakeLLMServer(default=answer) as server:
        server.faults.extend(["429", "garbage"])
        llm = ["--llm-base-url", server.base_url, "--llm-cache-dir", str(tmp_path / "llm-cache")]
        assert data_gen_main(["extract", "--input", str(captions), "--output", str(tmp_path / "events.jsonl"),
                              "--backend", "llm", "--quiet", *llm]) == 0
        assert build(src, tmp_path / "build-out", *llm, extractor="llm") == 0
        assert f"Bearer {FAKE_KEY}" in server.auth_headers  # the key was really sent
    assert json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])["id"] == "c0"
    assert list((tmp_path / "llm-cache").rglob("*.json"))

    cfg = write_config(tmp_path / "fit.yaml", shards, tmp_path / "run", max_steps=2, every=2)
    assert run_cli(["fit", "--config", str(cfg)]).trainer.global_step == 2
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"last.ckpt", "hparams.yaml", "config.yaml", "metrics.csv", "manifest.json", "events.jsonl"} <= names
    leaks = [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    out = capfd.readouterr()
    assert FAKE_KEY not in out.out + out.err + caplog.text
