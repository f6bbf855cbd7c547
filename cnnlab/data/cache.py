"""Decoded-image cache: a split of a folder / zip / CSV source decoded once to uint8 and kept on disk.

A second run on the same data (same files, sizes and modification times, same geometry and resize policy) loads
`<key>.npy` instead of decoding every JPEG again; a streamed split reads its rows from the same file through a
memory map, so no epoch decodes twice. What "the same files" means is the container's to say
(Container.fingerprint). Array sources (npz, IDX, builtins) need no cache. Turn it off with
`--set data.cache=false`.

Location: one cache root for everything cnnlab caches, `cache_root()` = $CNNLAB_CACHE_DIR (default
~/.cache/cnnlab). Decoded splits are `<root>/<key>.npy` with `<key>.json` beside them; the transfer code's
bottleneck features go in `features_cache_dir()` = `<root>/features`.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.dataset import DecodedSplit, ImageGeometry, decode_or_reason, decode_split, decoder_fingerprint
from cnnlab.data.readers import DataSource, Split

CACHE_VERSION = 1


def cache_root() -> Path:
    """The root of every cnnlab cache: $CNNLAB_CACHE_DIR, default ~/.cache/cnnlab. Decoded splits live in it."""
    env = os.environ.get("CNNLAB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cnnlab"


def features_cache_dir() -> Path:
    """Where bottleneck features (cnnlab.transfer) are kept: <cache_root>/features."""
    return cache_root() / "features"


def split_key(src: DataSource, split: Split, geom: ImageGeometry, policy: str) -> str | None:
    """A hash of everything the decoded pixels depend on; None for array sources (nothing to cache)."""
    if split.refs is None or src.container is None:
        return None
    from PIL import Image

    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, decoder_fingerprint(), geom.size, geom.channels, policy,
                         Image.MAX_IMAGE_PIXELS]).encode())
    h.update(src.container.fingerprint(split.refs).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:32]


def _paths(key: str) -> tuple[Path, Path]:
    base = cache_root()
    return base / f"{key}.npy", base / f"{key}.json"


def load_meta(key: str) -> dict | None:
    """The cached split's ids, labels, skipped files and row count, or None when not cached."""
    npy, meta = _paths(key)
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_array_path(key: str) -> Path:
    return _paths(key)[0]


def _write_meta(key: str, n: int, ids: list[str], labels: list[int], skipped: list[tuple[str, str]]) -> None:
    _, meta = _paths(key)
    tmp = meta.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"n": n, "ids": ids, "labels": labels, "skipped": skipped}), encoding="utf-8")
    os.replace(tmp, meta)


def decode_split_cached(src: DataSource, split: Split, geom: ImageGeometry, policy: str,
                        use_cache: bool = True, log=None) -> DecodedSplit:
    """decode_split, through the on-disk cache when the source has files and the cache is on."""
    key = split_key(src, split, geom, policy) if use_cache else None
    if key is not None:
        meta = load_meta(key)
        if meta is not None:
            x = np.load(cached_array_path(key))[: meta["n"]]
            return DecodedSplit(torch.from_numpy(x), torch.tensor(meta["labels"]),
                                meta["ids"], [tuple(s) for s in meta["skipped"]])
    decoded = decode_split(src, split, geom, policy)
    if key is not None:
        try:
            _save(key, decoded)
        except OSError as e:  # a full or read-only disk costs speed, never the run
            if log:
                log(f"warning: could not write the decoded-image cache in {cache_root()} ({e.strerror})")
    return decoded


def _save(key: str, decoded: DecodedSplit) -> None:
    npy, _ = _paths(key)
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f"{key}.tmp{os.getpid()}.npy")
    np.save(tmp, decoded.x.numpy())
    os.replace(tmp, npy)
    _write_meta(key, len(decoded), decoded.ids, decoded.y.tolist(), decoded.skipped)


def decode_split_to_file(src: DataSource, split: Split, geom: ImageGeometry, policy: str, key: str,
                         chunk: int = 512, workers: int = 4) -> dict:
    """Decode a split chunk by chunk into the cache's .npy (memory-mapped), never holding it all; returns meta."""
    meta = load_meta(key)
    if meta is not None:
        return meta
    npy, _ = _paths(key)
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f"{key}.tmp{os.getpid()}.npy")
    h, w = geom.size
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(split), geom.channels, h, w))
    n, ids, labels, skipped = 0, [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lo in range(0, len(split), chunk):
            jobs = [(src.container, ref, geom, policy) for ref in split.refs[lo : lo + chunk]]
            for i, result in enumerate(pool.map(decode_or_reason, jobs), start=lo):
                if isinstance(result, str):
                    skipped.append((split.ids[i], result))
                    continue
                out[n] = result.transpose(2, 0, 1)
                ids.append(split.ids[i])
                labels.append(int(split.labels[i]))
                n += 1
    out.flush()
    del out
    os.replace(tmp, npy)
    _write_meta(key, n, ids, labels, skipped)
    return load_meta(key)
