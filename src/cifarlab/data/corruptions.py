"""CIFAR-10-C-style test sets: the 15 corruptions x 5 severities of Hendrycks & Dietterich (2019), generated
from a split's own images (seeded, cached), or read from the official CIFAR-10-C / CIFAR-100-C files.

The severity constants are those of their CIFAR script (hendrycks/robustness,
ImageNet-C/create_c/make_cifar_c.py); the batched methods are in corruption_ops.py, which says where ours
differ (motion blur, frost, elastic).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from cifarlab.data import corruption_ops as ops
from cifarlab.data.foldercache import cache_dir
from cifarlab.errors import UsageError
from cifarlab.storage import atomic_file

# Bump when any corruption's output changes: cached sets made by older code are then not used.
# 2: one random stream per block of BLOCK images; truncation to 8 bits as theirs; pixelate exactly PIL's
CODE_VERSION = "2"
# Images per random stream. Each block is corrupted on its own, padded to BLOCK images, so an image's bytes
# depend only on the seed and its index, never on how many images were asked for: the sets of the first 500
# images are the first 500 images of the full sets. 100 divides every usual limit and the 10,000 of CIFAR.
BLOCK = 100
SIDE = 32   # the severity constants (pixelate's sizes, elastic's, motion radii, the fog map) are for 32x32

# How the sets generated here differ from Hendrycks & Dietterich's (also in the report and corruptions.json)
DIFFERENCES = {
    "frost": "a procedural texture (plasma haze, ice needles), not crops of their six photographs of frost; "
             "not fitted to them: frost differs most",
    "motion_blur": "ImageMagick's line kernel reimplemented in torch (snow's streaks too): agrees in kind, not "
                   "to the byte",
    "elastic_transform": "the random affine and the smooth displacement in one bilinear sample, not two",
    "random draws": f"torch's generators, one per block of {BLOCK} images, not numpy's: the same distributions, "
                    "other draws",
}

# name -> (function, its parameter at severities 1..5), in the order of CIFAR-10-C's tables
CORRUPTIONS: dict[str, tuple[Callable, tuple]] = {
    "gaussian_noise": (ops.gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (ops.shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (ops.impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": (ops.defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": (ops.glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    "motion_blur": (ops.motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": (ops.zoom_blur, tuple(tuple(np.arange(1, end, 0.01)) for end in (1.06, 1.11, 1.16, 1.21, 1.26))),
    "snow": (ops.snow, ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    "frost": (ops.frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    "fog": (ops.fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (ops.brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (ops.contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    # (displacement strength, its smoothness, affine jitter), each a fraction of the image side (32)
    "elastic_transform": (ops.elastic_transform, tuple((32 * a, 32 * b, 32 * c) for a, b, c in (
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))),
    "pixelate": (ops.pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (ops.jpeg_compression, (80, 65, 58, 50, 40)),
}
NAMES = tuple(CORRUPTIONS)
SEVERITIES = (1, 2, 3, 4, 5)


def parse_corruptions(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """'all' | 'NAME,NAME' | a list -> the names, in the table's order; an unknown name refused in one line."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"] or not names:
        return list(NAMES)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise UsageError(f"unknown corruption '{unknown[0]}' (choose 'all' or from {', '.join(NAMES)})")
    return [n for n in NAMES if n in names]


def parse_severities(text: str | int | list[int] | None) -> list[int]:
    """'1-5' | '3' | '1,3,5' | a list -> sorted severities in 1..5, else one line."""
    if text is None:
        return list(SEVERITIES)
    if isinstance(text, int):
        text = [text]
    try:
        if isinstance(text, str):
            low, dash, high = text.partition("-")
            values = list(range(int(low), int(high) + 1)) if dash else [int(v) for v in text.split(",")]
        else:
            values = [int(v) for v in text]
    except ValueError:
        raise UsageError(f"--severities '{text}': give a range like 1-5 or a list like 1,3,5") from None
    if not values or any(v not in SEVERITIES for v in values):
        raise UsageError(f"--severities '{text}': severities run from 1 to 5")
    return sorted(set(values))


def _stream_seed(seed: int, name: str, severity: int, block: int) -> int:
    # one generator per set and block, so a set does not depend on which others were asked for, or in what
    # order, nor an image on how many follow it
    text = f"{seed}|{name}|{severity}|{block}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """One corrupted copy of uint8 images (N, 3, 32, 32) -> uint8 (N, 3, 32, 32). Image i's bytes depend only
    on it, the seed and i (its block of BLOCK images), not on the other images, their number or the threads."""
    if name not in CORRUPTIONS:
        parse_corruptions([name])
    if severity not in SEVERITIES:
        raise UsageError(f"severity {severity}: severities run from 1 to 5")
    if images.dim() != 4 or images.shape[1] != 3:
        raise UsageError(f"corruptions need colour images (N, 3, H, W); these are {tuple(images.shape)}")
    check_side(images.shape[-2:])
    function, params = CORRUPTIONS[name]
    out = torch.empty_like(images, dtype=torch.uint8)

    def one_block(start: int) -> None:
        block = images[start:start + BLOCK]
        padded = torch.zeros((BLOCK, *images.shape[1:]), dtype=torch.float32)
        padded[:len(block)] = block.float() / 255   # black filler: every corruption works image by image
        gen = torch.Generator().manual_seed(_stream_seed(seed, name, severity, start // BLOCK))
        # truncated to 8 bits, as their np.uint8(...)
        out[start:start + len(block)] = ops.to_levels(function(padded, params[severity - 1], gen)[:len(block)])

    # The blocks run side by side, each on one thread: a block's many small ops would otherwise wait for each
    # other's threads (slow on a busy machine), and the bytes cannot depend on the thread count.
    starts = range(0, len(images), BLOCK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, min(threads, len(starts)))) as pool:
            list(pool.map(one_block, starts))
    finally:
        torch.set_num_threads(threads)
    return out


def check_side(size) -> None:
    """Refuse images that are not 32x32 in one line: the constants are CIFAR's."""
    h, w = int(size[0]), int(size[1])
    if (h, w) != (SIDE, SIDE):
        raise UsageError(f"corruptions: the images are {h}x{w}; the severity constants are CIFAR's, for "
                         f"{SIDE}x{SIDE} images")


def _images_hash(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def set_cache_path(images_hash: str, identity: str | None, name: str, severity: int, seed: int) -> Path:
    import PIL

    # torch's version: its generators' streams; Pillow's: its JPEG codec
    versions = f"{CODE_VERSION}|{torch.__version__}|{PIL.__version__}"
    key = hashlib.sha256(f"{identity}|{images_hash}|{seed}|{versions}".encode()).hexdigest()[:24]
    return cache_dir() / "corruptions" / key / f"{name}-{severity}.npy"


def corrupted_sets(images: torch.Tensor, names: list[str], severities: list[int], seed: int = 0,
                   identity: str | None = None, cache: bool = True) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(name, severity, uint8 images) for each set asked, read from the cache where it was made before by this
    code version from the same images and seed (identity: the dataset's, from fingerprint.data_identity)."""
    digest = _images_hash(images) if cache else ""
    for name in names:
        for severity in severities:
            path = set_cache_path(digest, identity, name, severity, seed)
            if cache and path.is_file():
                try:
                    cached = np.load(path, allow_pickle=False)
                    if cached.shape == tuple(images.shape) and cached.dtype == np.uint8:
                        yield name, severity, torch.from_numpy(cached)
                        continue
                except (OSError, ValueError, EOFError):
                    pass   # a damaged (or empty) cache file is made again
            out = corrupt(images, name, severity, seed)
            if cache:
                with atomic_file(path) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, out.numpy())
            yield name, severity, out


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """np.load, with an object-array, pickled or damaged file refused in one line that names it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"--corruptions-dir: {path} is not a readable .npy array ({e})") from None


def read_official(folder: str | Path, names: list[str], severities: list[int],
                  image_shape: tuple[int, int, int]) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """CIFAR-10-C / CIFAR-100-C: FOLDER/NAME.npy (5*N, H, W, C) uint8, severities 1..5 in order, and
    FOLDER/labels.npy (5*N,). Yields (name, severity, uint8 images (N, C, H, W), int64 labels); a missing file
    or a wrong shape is refused in one line before anything is evaluated."""
    folder = Path(folder).expanduser()
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise UsageError(f"--corruptions-dir {folder}: no labels.npy (the official CIFAR-10-C layout: "
                         f"one NAME.npy per corruption and labels.npy)")
    labels = _load_npy(labels_path)
    if labels.ndim != 1 or len(labels) % 5:
        raise UsageError(f"--corruptions-dir: labels.npy has shape {labels.shape}; expected (5*N,) for 5 severities")
    per = len(labels) // 5
    c, h, w = image_shape
    arrays = {}
    for name in names:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise UsageError(f"--corruptions-dir {folder}: no {name}.npy")
        arrays[name] = _load_npy(path, mmap_mode="r")
        if arrays[name].shape != (5 * per, h, w, c) or arrays[name].dtype != np.uint8:
            raise UsageError(f"--corruptions-dir: {name}.npy is {arrays[name].dtype} {arrays[name].shape}; "
                             f"expected uint8 {(5 * per, h, w, c)} (5 severities x {per:,} images, as labels.npy)")
    for name in names:
        for severity in severities:
            part = slice((severity - 1) * per, severity * per)
            # a copy: the file is mapped read-only
            images = torch.from_numpy(np.array(arrays[name][part])).permute(0, 3, 1, 2).contiguous()
            yield name, severity, images, torch.from_numpy(labels[part].astype(np.int64))
