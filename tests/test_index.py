"""`align index`: save/load, search equal to brute force, recall printed for approximate indexes, clear errors;
and the index benchmark's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.export import load, run_export
from align.index import IndexInputError, LoadedIndex, main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    run_export(tiny_ckpt, [str(p) for p in sorted(tiny_shards.glob("train-*.tar"))[:2]], out, negatives=True,
               progress=False)
    return out


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ v.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def test_flat_save_load_search_equals_brute_force(tiny_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "text.faiss"
    assert main(["build", "--emb", str(tiny_export), "--kind", "text", "--factory", "Flat", "--out", str(path)]) == 0
    meta = json.loads(path.with_name("text.faiss.meta.json").read_text())
    table = load(tiny_export, kinds=("text",))["text"]
    assert meta["dim"] == 128 and meta["kind"] == "text" and meta["count"] == len(table) and "recall" not in meta
    index = LoadedIndex(path, gpu=False)
    queries = table.vectors[::7].astype(np.float32)
    results = index.search(queries, k=5)
    want_scores, want_ids = brute_force(table.vectors.astype(np.float32), queries, 5)
    for res, scores, ids in zip(results, want_scores, want_ids):
        np.testing.assert_allclose([r["score"] for r in res], scores, atol=1e-5)
        distinct = np.r_[np.diff(scores) < -1e-5, True]  # ids are only comparable where scores do not tie
        assert [r["id"] for r, d in zip(res, distinct) if d] == [int(i) for i, d in zip(ids, distinct) if d]
        assert all(r["key"] == table.rows[r["id"]]["key"] and r["row"] == table.rows[r["id"]] for r in res)


def test_ivf_recall_printed_and_hnsw(tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ivf.faiss"
    args = ["build", "--emb", str(tiny_export), "--kind", "text", "--factory", "IVF4,Flat", "--out", str(path)]
    assert main([*args, "--nprobe", "1"]) == 0
    err = capsys.readouterr().err
    assert "recall@10 vs Flat:" in err and "nprobe=1" in err
    low = json.loads(path.with_name("ivf.faiss.meta.json").read_text())["recall"]["value"]
    assert main([*args, "--nprobe", "4"]) == 0  # every list probed: exact
    meta = json.loads(path.with_name("ivf.faiss.meta.json").read_text())
    assert meta["recall"]["value"] == 1.0 and meta["params"] == {"nprobe": 4} and 0.0 < low <= 1.0
    regions = tmp_path / "region.faiss"
    assert main(["build", "--emb", str(tiny_export), "--kind", "region", "--out", str(regions)]) == 0
    exp = load(tiny_export, kinds=("region", "text"))
    query = exp["text"].vectors[:1].astype(np.float32)  # a text against regions: no self-match at score 1
    hits = LoadedIndex(regions, gpu=False).search(query, k=3)[0]
    scores, _ = brute_force(exp["region"].vectors.astype(np.float32), query, 3)
    np.testing.assert_allclose([h["score"] for h in hits], scores[0], atol=1e-5)
    assert scores[0, 0] < 0.999
    assert "box" in hits[0]["row"] and "score" in hits[0]["row"]
    hnsw = tmp_path / "hnsw.faiss"
    assert main(["build", "--emb", str(tiny_export), "--kind", "image", "--factory", "HNSW8,Flat", "--out",
                 str(hnsw), "--ef-search", "32"]) == 0
    capsys.readouterr()
    table = load(tiny_export, kinds=("image",))["image"]
    assert main(["search", "--index", str(hnsw), "--query-emb", str(tiny_export), "--query-key", table.keys[3],
                 "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queries"][0]["results"][0]["key"] == table.keys[3]
    assert out["queries"][0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_query_and_errors(tiny_export: Path, tiny_ckpt: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "image.faiss"
    assert main(["build", "--emb", str(tiny_export), "--kind", "image", "--out", str(path)]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(path), "--query-text", "A soldier arrests a protester", "--ckpt",
                 str(tiny_ckpt), "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: A soldier arrests a protester" and len(lines) == 5
    index = LoadedIndex(path, gpu=False)
    with pytest.raises(IndexInputError, match="has dim 64, but index .*image.faiss has dim 128"):
        index.search(np.ones((1, 64), np.float32))
    assert main(["search", "--index", str(path), "--query-text", "x"]) == 2
    assert "--query-text needs --ckpt" in capsys.readouterr().err
    assert main(["build", "--emb", str(tiny_export), "--kind", "image", "--factory", "IVF4096,Flat",
                 "--out", str(tmp_path / "big.faiss")]) == 2
    assert "cannot train 'IVF4096,Flat'" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "none.faiss"), "--query-emb", str(tiny_export),
                 "--query-key", "k"]) == 2
    assert "none.faiss: not found" in capsys.readouterr().err


@pytest.mark.slow
def test_perf_index_json_schema() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf_index.py"), "--n", "20000", "--dim", "64",
                           "--clusters", "50", "--queries", "200", "--repeats", "1", "--json"],
                          capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(proc.stdout)
    factories = {c["factory"] for c in result["configs"]}
    assert {"Flat", "HNSW32,Flat"} <= factories and any(f.startswith("IVF") for f in factories)
    for c in result["configs"]:
        assert {"factory", "build_s", "qps", "recall_at_10"} <= set(c) and 0.0 <= c["recall_at_10"] <= 1.0
    assert result["best"] in factories and result["threads"] >= 1
