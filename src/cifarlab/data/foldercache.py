"""The decoded images of a folder, cached in cifarlab's cache folder, never in the user's folder (which may
be read-only): one safetensors file per folder and options, keyed by the listing's fingerprint, written
atomically and checked with a sha256 before it is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cifarlab.data.folder import SPLITS
from cifarlab.data.formats import Split
from cifarlab.storage import atomic_file

# Bump when the cache's layout or the decoding changes: old files are then rebuilt.
# 2: EXIF orientation applied, 16-bit grayscale scaled, channels from the majority of the images.
CACHE_VERSION = "2"
_CACHE_FORMAT = "cifarlab-folder-cache"

Decoded = tuple[dict[str, Split], tuple[float, ...], tuple[float, ...]]


def cache_dir() -> Path:
    """Where decoded folders and saved arrays live: $CIFARLAB_CACHE, else ~/.cache/cifarlab."""
    return Path(os.environ.get("CIFARLAB_CACHE") or Path.home() / ".cache" / "cifarlab").expanduser()


def folder_cache_path(root: Path, image_size: int | None, channels: int | None) -> Path:
    """One cache file per folder and options; a changed folder overwrites it rather than adding one."""
    resolved = root.resolve()
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in resolved.name) or "root"
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    return cache_dir() / "folders" / f"{name}-{key}-s{image_size or 'auto'}-c{channels or 'auto'}.safetensors"


def _cache_checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy())
    return h.hexdigest()


def write_folder_cache(path: Path, key: str, decoded: Decoded) -> None:
    """Save decoded splits atomically (temp file in the same folder, fsync, rename); a failure only warns."""
    from safetensors.torch import save_file

    splits, mean, std = decoded
    tensors = {}
    for split, data in splits.items():
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = data.images, data.labels
    meta = {"format": _CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": key,
            "mean": json.dumps(mean), "std": json.dumps(std)}
    meta["checksum"] = _cache_checksum(tensors, meta)
    try:
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)     # straight to disk: no second copy in memory
    except OSError as e:
        import warnings
        warnings.warn(f"{path}: cannot write the decoded-image cache ({e}); the next run decodes again",
                      stacklevel=2)


def read_folder_cache(path: Path, key: str) -> Decoded | None:
    """The cached splits if `path` holds a sound cache for `key`; None (so: decode again) otherwise."""
    from safetensors.torch import load

    try:
        raw = path.read_bytes()
        header_length = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + header_length]).get("__metadata__") or {}
        tensors = load(raw)         # copies into memory: nothing stays mapped onto a file we may replace
    except Exception:               # missing, truncated, not safetensors at all: all mean "rebuild"
        return None
    del raw
    if meta.get("format") != _CACHE_FORMAT or meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != key:
        return None
    checksum = meta.pop("checksum", None)
    try:
        if checksum != _cache_checksum(tensors, meta):
            return None
        splits = {s: Split(tensors[f"{s}_images"], tensors[f"{s}_labels"]) for s in SPLITS if f"{s}_images" in tensors}
        mean, std = tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"]))
    except (KeyError, ValueError, TypeError):
        return None
    if "train" not in splits or "test" not in splits:
        return None
    return splits, mean, std
