"""FAISS index choice for `align index build`: exact Flat vs IVF and HNSW on clustered synthetic embeddings.

Usage: python benchmarks/perf_index.py [--json] [--n 1000000] [--dim 256] [--queries 1000] [--threads T]

Data: `--clusters` Gaussian clusters (unit-norm centres, per-dimension noise 1/sqrt(dim), so two points of one
cluster have cosine about 0.5 and points of different clusters about 0), every vector L2-normalised, float32;
queries are fresh draws from the same clusters. All indexes use inner product (= cosine here). Ground truth is
the exact `Flat` top-10. For each factory the build time (train + add) is measured once; each search setting
(`nprobe` for IVF, `efSearch` for HNSW, through `faiss.ParameterSpace`) is a row with its batch-search QPS (all
queries in one call, best of `--repeats`) and recall@10 against Flat. Every index runs with the same thread
count (reported). "best" is the setting with the highest QPS among those with recall@10 >= 0.95; its speed-up
over Flat is reported as `speedup_vs_flat` (target >= 10x).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.index import make_index, set_params  # noqa: E402

TARGET_RECALL = 0.95
# (factory, search parameter, values to sweep); IVF lists ~ sqrt(n) (FAISS suggests 4-16 sqrt(n); fewer lists
# train in a fraction of the time on a small CPU and, with ~1000 vectors per list, probe as fast).
SWEEPS = [
    ("Flat", None, [None]),
    ("IVF{nlist},Flat", "nprobe", [4, 8, 16, 32, 64]),
    ("IVF{nlist},PQ32", "nprobe", [8, 16, 32, 64]),
    ("HNSW32,Flat", "efSearch", [16, 32, 64, 128, 256]),
]


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator,
              centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) normalised float32 vectors around `clusters` centres (drawn here unless given), and the centres."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for i in range(0, n, step):  # in chunks: the noise of 1M x 256 at once would double peak memory
        m = min(step, n - i)
        out[i:i + m] = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
        out[i:i + m] += centres[rng.integers(0, len(centres), m)]
    faiss.normalize_L2(out)
    return out, centres


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k found in the returned top-k."""
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))


def build(factory: str, xb: np.ndarray, train_size: int, seed: int) -> tuple[faiss.Index, float]:
    """The index exactly as `align index build` makes it (train on a sample, add with ids), and seconds taken."""
    t0 = time.perf_counter()
    index = make_index(xb, factory, train_size=train_size, seed=seed)
    return index, time.perf_counter() - t0


def timed_search(index: faiss.Index, xq: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(xq, k)
        best = min(best, time.perf_counter() - t0)
    return ids, len(xq) / best


def run(n: int, dim: int, clusters: int, queries: int, k: int, threads: int, repeats: int, seed: int,
        log: bool) -> dict:
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    xb, centres = clustered(n, dim, clusters, rng)
    xq, _ = clustered(queries, dim, clusters, rng, centres)
    nlist = max(16, 1 << int(round(np.log2(np.sqrt(n)))))
    train_size = min(n, 64 * nlist)
    if log:
        print(f"[perf_index] {n} x {dim} vectors, {clusters} clusters, {queries} queries in "
              f"{time.perf_counter() - t0:.1f}s; nlist {nlist}, train {train_size}, {threads} threads",
              file=sys.stderr)
    configs, truth, flat_qps = [], None, None
    for template, param, values in SWEEPS:
        factory = template.format(nlist=nlist)
        if "PQ32" in factory and dim % 32:
            continue
        index, build_s = build(factory, xb, train_size, seed)
        for value in values:
            if param is not None:
                set_params(index, {param: value})
            ids, qps = timed_search(index, xq, k, repeats)
            if truth is None:  # Flat comes first: its answer is the ground truth
                truth, flat_qps = ids, qps
            row = {"factory": factory, "params": f"{param}={value}" if param else "", "build_s": round(build_s, 2),
                   "qps": round(qps, 1), "recall_at_10": round(recall_at(ids, truth), 4),
                   "speedup_vs_flat": round(qps / flat_qps, 2)}
            configs.append(row)
            if log:
                print(f"[perf_index] {row}", file=sys.stderr)
        del index
    ok = [c for c in configs if c["factory"] != "Flat" and c["recall_at_10"] >= TARGET_RECALL]
    best = max(ok, key=lambda c: c["qps"]) if ok else None
    return {"n": n, "dim": dim, "clusters": clusters, "queries": queries, "k": k, "threads": threads,
            "nlist": nlist, "train_size": train_size, "faiss_version": faiss.__version__, "configs": configs,
            "best": best["factory"] if best else None, "best_params": best["params"] if best else None,
            "best_speedup_vs_flat": best["speedup_vs_flat"] if best else None,
            "target": {"recall_at_10": TARGET_RECALL, "speedup_vs_flat": 10.0}}


def markdown(result: dict) -> str:
    lines = [f"FAISS on {result['n']} x {result['dim']} clustered vectors, {result['queries']} queries, "
             f"{result['threads']} threads (faiss {result['faiss_version']})", "",
             "| factory | params | build s | QPS | x Flat | recall@10 |", "|---|---|---|---|---|---|"]
    for c in result["configs"]:
        mark = " **best**" if c["factory"] == result["best"] and c["params"] == result["best_params"] else ""
        lines.append(f"| {c['factory']}{mark} | {c['params']} | {c['build_s']} | {c['qps']} | "
                     f"{c['speedup_vs_flat']} | {c['recall_at_10']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=faiss.omp_get_max_threads(), help="FAISS threads for every index")
    p.add_argument("--repeats", type=int, default=2, help="search repeats; the fastest counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    args = p.parse_args(argv)
    result = run(args.n, args.dim, args.clusters, args.queries, args.k, args.threads, args.repeats, args.seed,
                 log=True)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
