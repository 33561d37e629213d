"""`align index build|search`: FAISS indexes over an `align export` folder.

Vectors are L2-normalised and searched by inner product, so scores are cosines. Beside INDEX (`faiss.write_index`)
live INDEX.keys.jsonl (line i = the export row with FAISS id i: key, kind, box/text/...) and INDEX.meta.json (dim,
factory, kind, metric, search defaults, the export's checkpoint, recall measured at build time). Ids are added
with `add_with_ids` (IVF) or through `IndexIDMap2` (Flat, HNSW), so the id <-> key mapping survives any index type.
Search parameters (`nprobe`, `efSearch`) go through `faiss.ParameterSpace`; with GPUs, indexes that support them
are cloned to all GPUs (`index_cpu_to_all_gpus`) for training and search and copied back for saving.
For IVF-PQ, FAISS's polysemous training is switched off: it only serves polysemous search, which is not used
here, and it makes training minutes instead of seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from align.atomic import atomic_open, atomic_write_text

KINDS = ("image", "region", "text", "prompt")
# Search defaults, on the safe side of benchmarks/perf_index.py (IVF1024,Flat reached recall@10 1.0 at nprobe=4 on
# its clustered vectors; real embeddings are less clustered); `build` prints the recall they give on your data.
DEFAULT_PARAMS = {"nprobe": 16, "efSearch": 64}


class IndexInputError(ValueError):
    """Bad index input (empty kind, dim mismatch, untrainable factory); the message names the file."""


def sidecars(path: str | Path) -> tuple[Path, Path]:
    """(INDEX.keys.jsonl, INDEX.meta.json)."""
    path = Path(path)
    return path.with_name(path.name + ".keys.jsonl"), path.with_name(path.name + ".meta.json")


def to_gpu(index: faiss.Index) -> tuple[faiss.Index, bool]:
    """The index cloned to all GPUs when there are any and it supports them, else itself."""
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except RuntimeError as e:  # e.g. HNSW has no GPU version
        print(f"[index] staying on CPU: {e}".splitlines()[0], file=sys.stderr)
        return index, False


def to_cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def make_index(vectors: np.ndarray, factory: str, train_size: int = 100_000, seed: int = 0,
               ids: np.ndarray | None = None, gpu: bool = True) -> faiss.Index:
    """A CPU index of `factory` (inner product) trained on a sample of `vectors` and holding all of them, with
    `ids` (default 0..n-1)."""
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexInputError(f"factory {factory!r} for dim {d}: {str(e).splitlines()[0]}") from e
    ivf = faiss.try_extract_index_ivf(index)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False
    if ivf is None:
        index = faiss.IndexIDMap2(index)
    ids = np.arange(n, dtype=np.int64) if ids is None else ids.astype(np.int64)
    work, on_gpu = to_gpu(index) if gpu else (index, False)
    if not work.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, train_size), replace=False))]
        try:
            work.train(sample)
        except RuntimeError as e:
            raise IndexInputError(f"cannot train {factory!r} on {len(sample)} vectors: {str(e).splitlines()[0]} "
                              "(use a smaller factory, e.g. fewer IVF lists, or 'Flat')") from e
    work.add_with_ids(vectors, ids)
    return to_cpu(work, on_gpu)


def set_params(index: faiss.Index, params: dict[str, Any]) -> dict[str, Any]:
    """Apply the search parameters this index has (through ParameterSpace); returns those applied."""
    on_gpu = hasattr(faiss, "GpuParameterSpace") and "Gpu" in type(index).__name__
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    applied = {}
    for name, value in params.items():
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            continue  # e.g. efSearch on an IVF index
        applied[name] = value
    return applied


def normalized(vectors: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(out)
    return out


def recall_vs_flat(index: faiss.Index, vectors: np.ndarray, k: int, queries: int, seed: int = 0) -> float:
    """Recall@k of `index` against an exact inner-product search, with `queries` stored vectors as queries."""
    rng = np.random.default_rng(seed)
    q = vectors[np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))]
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    k = min(k, len(vectors))
    _, truth = flat.search(q, k)
    _, found = index.search(q, k)
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))


# --------------------------------------------------------------------------- build
def build(emb: str | Path, kind: str, factory: str, out: str | Path, *, k: int = 10, recall_queries: int = 1000,
          train_size: int = 100_000, params: dict[str, Any] | None = None, log: bool = True) -> dict[str, Any]:
    """Build, check and save an index over one kind of an export; returns the meta dict."""
    from align.export import load

    if kind not in KINDS:
        raise IndexInputError(f"--kind {kind!r} is not one of {list(KINDS)}")
    exp = load(emb, kinds=(kind,))
    table = exp.tables[kind]
    if len(table) == 0:
        why = " (its shards have no regions)" if kind == "region" else ""
        raise IndexInputError(f"{emb}: the export has no {kind} embeddings{why}; nothing to index")
    vectors = normalized(table.vectors)
    t0 = time.perf_counter()
    index = make_index(vectors, factory, train_size=train_size)
    build_s = time.perf_counter() - t0
    given = {name: value for name, value in (params or {}).items() if value is not None}
    applied = set_params(index, {**DEFAULT_PARAMS, **given})
    meta: dict[str, Any] = {"format": 1, "dim": int(vectors.shape[1]), "factory": factory, "kind": kind,
                            "metric": "inner_product", "count": len(table), "params": applied,
                            "export": str(Path(emb).resolve()), "checkpoint": exp.manifest.get("checkpoint"),
                            "build_s": round(build_s, 3)}
    if factory.replace(" ", "") != "Flat":
        meta["recall"] = {"k": k, "queries": min(recall_queries, len(table)),
                          "value": round(recall_vs_flat(index, vectors, k, recall_queries), 4)}
        if log:
            print(f"[index] recall@{k} vs Flat: {meta['recall']['value']:.4f} on {meta['recall']['queries']} stored "
                  f"vectors as queries ({', '.join(f'{n}={v}' for n, v in applied.items()) or 'defaults'})",
                  file=sys.stderr)
    save(index, table.rows, meta, out)
    if log:
        print(f"[index] {factory} over {len(table)} {kind} vectors (dim {meta['dim']}) in {build_s:.1f}s -> {out}",
              file=sys.stderr)
    return meta


def save(index: faiss.Index, rows: list[dict[str, Any]], meta: dict[str, Any], out: str | Path) -> None:
    """INDEX, then its keys and meta, each written atomically."""
    out = Path(out)
    with atomic_open(out, "wb") as f:
        f.write(faiss.serialize_index(index).tobytes())
    keys, meta_path = sidecars(out)
    atomic_write_text(keys, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------- load and search
class LoadedIndex:
    """An index read back with its id -> row mapping and meta; searches normalised float32 queries."""

    def __init__(self, path: str | Path, gpu: bool = True) -> None:
        self.path = Path(path)
        keys, meta_path = sidecars(self.path)
        for p in (self.path, keys, meta_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not found (an index is INDEX + INDEX.keys.jsonl + INDEX.meta.json)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.rows = [json.loads(line) for line in keys.read_text(encoding="utf-8").splitlines() if line]
        self.index = faiss.read_index(str(self.path))
        if self.index.ntotal != len(self.rows) or self.index.d != self.meta["dim"]:
            raise IndexInputError(f"{self.path}: {self.index.ntotal} vectors of dim {self.index.d}, but {keys.name} "
                                  f"has {len(self.rows)} rows and the meta says dim {self.meta['dim']}")
        set_params(self.index, self.meta.get("params", {}))
        if gpu:
            self.index, _ = to_gpu(self.index)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int = 10, params: dict[str, Any] | None = None,
               what: str = "query") -> list[list[dict[str, Any]]]:
        """Top-k per query: rank, FAISS id, score (cosine), key and the export row (`row`, e.g. a region's box
        and detector score); `what` names the queries in a dim mismatch error."""
        queries = np.atleast_2d(queries)
        if queries.shape[1] != self.dim:
            raise IndexInputError(f"{what} has dim {queries.shape[1]}, but index {self.path} has dim {self.dim} "
                              f"(built from {self.meta.get('export')})")
        if params:
            set_params(self.index, params)
        scores, ids = self.index.search(normalized(queries), min(k, len(self.rows)))
        return [[{"rank": r + 1, "id": int(i), "score": round(float(s), 6), "key": self.rows[i]["key"],
                  "row": self.rows[i]}
                 for r, (s, i) in enumerate((s, i) for s, i in zip(srow, irow) if i >= 0)]
                for srow, irow in zip(scores, ids)]


def _query_vectors(args: argparse.Namespace, index: LoadedIndex) -> tuple[np.ndarray, list[str]]:
    if args.query_text is not None:
        if not args.ckpt:
            raise IndexInputError("--query-text needs --ckpt to encode the text")
        from align.export import checkpoint_id
        from align.inference import encode_texts, load_module

        built_from = (index.meta.get("checkpoint") or {}).get("sha256")
        if built_from and checkpoint_id(args.ckpt)["sha256"] != built_from:
            print(f"[index] warning: {args.ckpt} is not the checkpoint the index was built from; its embedding "
                  "space may differ", file=sys.stderr)
        module = load_module(args.ckpt)
        return encode_texts(module, args.query_text).cpu().numpy(), list(args.query_text)
    from align.export import load

    table = load(args.query_emb, kinds=(args.query_kind,)).tables[args.query_kind]
    rows = [i for i, r in enumerate(table.rows) if r["key"] == args.query_key]
    if not rows:
        raise IndexInputError(f"{args.query_emb}: no {args.query_kind} embedding with key {args.query_key!r}")
    names = [f"{args.query_kind} of {args.query_key} #{j}" for j in range(len(rows))]
    return table.vectors[rows].astype(np.float32), names


def _describe(row: dict[str, Any]) -> str:
    """One result line: rank, score, key and the text, caption or box."""
    r = row["row"]
    extra = r.get("text") or r.get("caption") or (f"box {r['box']} {r.get('label', '')}" if "box" in r else "")
    return f"{row['rank']:>3}  {row['score']:.4f}  {row['key']}  {extra}".rstrip()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="align index", description="FAISS indexes over `align export` embeddings")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and save an index over one kind of embeddings")
    b.add_argument("--emb", required=True, help="an `align export` folder")
    b.add_argument("--kind", required=True, choices=KINDS)
    b.add_argument("--factory", default="Flat", help='FAISS factory string: "Flat", "IVF1024,Flat", '
                   '"IVF1024,PQ32", "HNSW32,Flat", ...')
    b.add_argument("--out", required=True, help="index file; INDEX.keys.jsonl and INDEX.meta.json go beside it")
    b.add_argument("--train-size", type=int, default=100_000, help="vectors sampled to train IVF/PQ")
    b.add_argument("--recall-k", type=int, default=10)
    b.add_argument("--recall-queries", type=int, default=1000)
    s = sub.add_parser("search", help="top-k neighbours of a text or of stored embeddings")
    s.add_argument("--index", required=True)
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-text", action="append", help="text query (repeatable); needs --ckpt")
    q.add_argument("--query-emb", help="an `align export` folder holding the query embedding (with --query-key)")
    s.add_argument("--query-key", help="sample key of the query embedding in --query-emb")
    s.add_argument("--query-kind", default="image", choices=KINDS, help="which embedding of --query-key")
    s.add_argument("--ckpt", help="checkpoint to encode --query-text")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON")
    for a in (b, s):
        a.add_argument("--nprobe", type=int, help=f"IVF lists probed (default {DEFAULT_PARAMS['nprobe']})")
        a.add_argument("--ef-search", type=int, help=f"HNSW efSearch (default {DEFAULT_PARAMS['efSearch']})")
    args = p.parse_args(argv)
    params = {"nprobe": args.nprobe, "efSearch": args.ef_search}
    try:
        if args.command == "build":
            meta = build(args.emb, args.kind, args.factory, args.out, k=args.recall_k,
                         recall_queries=args.recall_queries, train_size=args.train_size, params=params)
            print(json.dumps(meta))
            return 0
        if args.query_emb is not None and not args.query_key:
            p.error("--query-emb needs --query-key")
        index = LoadedIndex(args.index)
        vectors, names = _query_vectors(args, index)
        results = index.search(vectors, args.k, params, what=names[0])
    except (IndexInputError, FileNotFoundError, ValueError) as e:
        print(f"align index: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"index": str(args.index), "queries": [{"query": n, "results": r}
                                                                 for n, r in zip(names, results)]}))
    else:
        for name, res in zip(names, results):
            print(f"query: {name}")
            print("\n".join(_describe(r) for r in res))
    return 0
