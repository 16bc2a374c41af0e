"""Readers for the official on-disk formats, into uint8 tensors (N x C x H x W).

CIFAR-10/100 "python version" pickles and MNIST-style IDX files (plain or
gzipped). Every reader validates what it reads and raises `DataError` with a
message that names the file and the problem, so the CLI can print one line.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import DataError


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


class _ArrayUnpickler(pickle.Unpickler):
    # The CIFAR pickles hold only dicts, lists, strings and numpy arrays; refusing every
    # other global means a crafted file cannot run code when it is read.
    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR pickle (truncated or corrupt: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict in the pickle, found {type(obj).__name__}")
    # Official files are Python 2 pickles with byte-string keys; files written by
    # Python 3 tools have str keys. Accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> Split:
    """Read one CIFAR batch file (`data` (N, 3072) uint8 and a label list)."""
    entry = _unpickle(path)
    for key in ("data", label_key):
        if key not in entry:
            raise DataError(f"{path}: missing key '{key}' (keys: {sorted(entry)})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array, found {kind}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise DataError(f"{path}: 'data' has shape {tuple(data.shape)}, expected (N, 3072) with N > 0")
    labels = np.asarray(entry[label_key])
    return _checked_split(path, data.reshape(-1, 3, 32, 32), labels, num_classes)


def read_cifar_names(path: Path, key: str) -> list[str] | None:
    """Class names from `batches.meta` / `meta`, or None when the file is absent."""
    if not path.is_file():
        return None
    names = _unpickle(path).get(key)
    if not isinstance(names, list):
        raise DataError(f"{path}: missing list '{key}'")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz) as a numpy array of its declared shape."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot decompress ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: file is empty or truncated ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: holds {len(raw) - header} data bytes, header declares {shape} = {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_split(images_path: Path, labels_path: Path, num_classes: int) -> Split:
    """An MNIST-style pair of IDX files (images N x H x W, labels N) as a Split."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[0] == 0:
        raise DataError(f"{images_path}: images have shape {images.shape}, expected (N, H, W) with N > 0")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels have shape {labels.shape}, expected (N,)")
    return _checked_split(labels_path, images[:, None], labels, num_classes, images_path)


def _checked_split(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int,
                   images_path: Path | None = None) -> Split:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a list of integers")
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images"
                        + (f" in {images_path.name}" if images_path else ""))
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{path}: label {int(labels.max() if labels.max() >= num_classes else labels.min())} "
                        f"outside 0..{num_classes - 1}")
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def concat(splits: list[Split]) -> Split:
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))
