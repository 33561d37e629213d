"""Shard lists and their sizes: brace/glob expansion that fails early, and the manifest beside the shards.

`align.data` uses them to split shards over ranks and workers and to know epoch lengths; `align.export` and
`align.mee` use `expand_shards` to read the same patterns.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.json", "sizes.json")


def expand_shards(pattern: str, what: str) -> list[str]:
    """Expand a brace pattern (or a local glob such as `dir/train-*.tar`); local files must exist, so a typo
    fails now rather than looping in a worker."""
    urls = []
    for url in wds.shardlists.expand_urls(pattern):
        urls += sorted(glob.glob(url)) if _is_local(url) and glob.has_magic(url) else [url]
    if not urls:
        raise ValueError(f"{what}: pattern {pattern!r} matches no shards")
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(urls)} shards of {pattern!r} not found, "
                                f"e.g. {missing[:3]}")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard from a manifest beside the shards: {"shards": [{"name", "num_samples"}]} or {name: n}."""
    by_dir: dict[str, dict[str, int]] = {}
    sizes = {}
    for url in urls:
        if not _is_local(url):
            continue
        folder = os.path.dirname(url)
        if folder not in by_dir:
            by_dir[folder] = _read_manifest(Path(folder or "."))
        n = by_dir[folder].get(os.path.basename(url))
        if n is not None:
            sizes[url] = n
    return sizes


def _read_manifest(folder: Path) -> dict[str, int]:
    for name in MANIFEST_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("ignoring unreadable shard manifest %s: %s", path, e)
            continue
        entries = data.get("shards") if isinstance(data, dict) else None
        if isinstance(entries, list):
            pairs = [(e.get("name"), e.get("num_samples")) for e in entries if isinstance(e, dict)]
        else:
            pairs = list(data.items()) if isinstance(data, dict) else []
        out = {os.path.basename(k): v for k, v in pairs
               if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        if out:
            return out
        log.warning("shard manifest %s lists no shard sizes", path)
    return {}


def rank_without_shards(sources: list[list[str]], counts: dict[str, int], world: int) -> bool:
    """Whether splitting whole shards over `world` ranks leaves one rank without a shard or a known sample."""
    for rank in range(world):
        mine = [u for urls in sources for u in urls[rank::world]]
        if not mine or (all(u in counts for u in mine) and sum(counts[u] for u in mine) == 0):
            return True
    return False
