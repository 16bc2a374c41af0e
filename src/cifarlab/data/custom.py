"""The user's own images as a dataset: `folder:PATH` (torchvision's ImageFolder layout) and `npz:FILE` (arrays).

Both end as the uint8 tensors the built-in datasets use (N x C x H x W, int64 labels) with a DatasetInfo
measured on the train split. An image folder is listed (folder.py), decoded once (imagedecode.py, one
worker process per core for big folders) and cached (foldercache.py).

`save_arrays` stores arrays handed to the Python API as an .npz named by its content, so a run can
record `npz:PATH` and be resumed or evaluated later.
"""

from __future__ import annotations

import hashlib
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from cifarlab.data import imagedecode
from cifarlab.data.foldercache import CACHE_VERSION, Decoded, cache_dir, folder_cache_path, read_folder_cache, \
    write_folder_cache
from cifarlab.data.folder import SPLITS, ChannelChoice, FolderListing, choose_channels, fingerprint, scan_folder, \
    skipped_summary
from cifarlab.data.formats import Split
from cifarlab.data.dataset import Dataset, DatasetInfo
from cifarlab.errors import DataError, UsageError
from cifarlab.storage import atomic_file


def load_custom_dataset(spec: str, image_size: int | None = None, channels: int | None = None,
                        quiet: bool = True) -> Dataset:
    """`folder:PATH` or `npz:FILE` as a Dataset; `image_size` resizes to a square, `channels` is 1 or 3."""
    check_options(image_size, channels)
    kind, _, target = spec.partition(":")
    if kind not in ("folder", "npz"):
        raise DataError(f"unknown dataset '{spec}' (custom data is folder:PATH or npz:FILE)")
    if not target:
        example = "~/photos" if kind == "folder" else "data.npz"
        raise DataError(f"'{spec}': give a path after '{kind}:' (e.g. {kind}:{example})")
    path = Path(target).expanduser()
    if kind == "folder":
        return load_folder(spec, path, image_size, channels, quiet)
    return load_npz(spec, path, image_size, channels)


def check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise UsageError(f"--image-size must be a positive integer, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise UsageError(f"--channels must be 1 or 3, got {channels!r}")


def _mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _info(spec: str, title: str, classes: list[str], images: torch.Tensor,
          mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetInfo:
    return DatasetInfo(name=spec, title=title, num_classes=len(classes), channels=int(images.shape[1]),
                       size=int(images.shape[2]), mean=mean, std=std, folder="", train_files=(), test_files=(),
                       archives=(), default_classes=tuple(classes))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images N x C x H x W, pixels scaled to [0, 1].

    Sums of x and x^2 are exact integers, so the result does not depend on float accumulation order.
    """
    array = images.numpy()
    total = np.zeros(array.shape[1], np.int64)
    squares = np.zeros(array.shape[1], np.int64)
    for start in range(0, len(array), 2048):      # blocks keep the uint32 copy small
        block = array[start:start + 2048]
        total += block.sum(axis=(0, 2, 3), dtype=np.int64)
        wide = block.astype(np.uint32)
        squares += (wide * wide).sum(axis=(0, 2, 3), dtype=np.int64)
    n = array.shape[0] * array.shape[2] * array.shape[3]
    mean = tuple(int(s) / n / 255 for s in total)
    std = tuple(math.sqrt((int(q) * n - int(s) ** 2) / (n * n)) / 255 for s, q in zip(total, squares))
    return mean, std


# ---------------------------------------------------------------- image folders

_SAID: set[str] = set()       # the notes printed so far: a study loading one folder per run says each once


def load_folder(spec: str, root: Path, image_size: int | None = None, channels: int | None = None,
                quiet: bool = True) -> Dataset:
    """An image folder as a Dataset; unless quiet, one line each on stderr for the channels chosen
    (when not given) and for the files skipped."""
    return load_folder_with_listing(spec, root, image_size, channels, quiet)[0]


def load_folder_with_listing(spec: str, root: Path, image_size: int | None = None, channels: int | None = None,
                             quiet: bool = True) -> tuple[Dataset, FolderListing, ChannelChoice]:
    """load_folder, with the listing (what was skipped) and the channel choice it was built from."""
    listing = scan_folder(root)
    choice = choose_channels(listing, channels)
    key = fingerprint(listing, image_size, choice.channels, CACHE_VERSION)
    cache = folder_cache_path(root, image_size, choice.channels)
    cached = read_folder_cache(cache, key)
    if cached is None:
        cached = decode_folder(listing, image_size, choice.channels, quiet)
        write_folder_cache(cache, key, cached)
    splits, mean, std = cached
    dataset = Dataset(_info(spec, root.resolve().name, listing.classes, splits["train"].images, mean, std),
                      splits["train"], splits["test"], list(listing.classes), splits.get("val"))
    if not quiet:       # after the decode: a folder that fails to load gets its one error line, nothing more
        for line in (None if choice.given else choice.line(spec), skipped_summary(spec, listing)):
            if line and line not in _SAID:
                print(f"cifarlab: {line}", file=sys.stderr)
                _SAID.add(line)
    return dataset, listing, choice


def decode_folder(listing: FolderListing, image_size: int | None, channels: int, quiet: bool) -> Decoded:
    """Decode every image of `listing` (with a progress bar) into Splits, and measure the train split."""
    from tqdm.auto import tqdm

    files = listing.all_files()
    first = files[0]
    try:
        probe = imagedecode.upright(imagedecode.open_image(first))    # without image_size, decides the size
    except imagedecode.DecodeError as e:
        raise DataError(str(e)) from None
    if image_size is None and probe.size[0] != probe.size[1]:
        raise DataError(f"{first} is {probe.size[0]}x{probe.size[1]}, not square; pass --image-size N "
                        f"to resize every image to NxN")
    size = image_size or probe.size[0]
    pixels = np.empty((len(files), size, size, channels), np.uint8)
    with tqdm(total=len(files), desc=f"decoding {listing.root.name}", unit="img", leave=False,
              dynamic_ncols=True, disable=not _wants_bar(quiet)) as bar:
        def progress(done: int) -> None:
            bar.update(done - bar.n)
        try:
            imagedecode.decode_files(files, _mode(channels), size, image_size is not None,
                                     memoryview(pixels).cast("B"), progress)
        except imagedecode.DecodeError as e:
            if e.size is None:
                raise DataError(str(e)) from None
            raise DataError(f"{first} is {size}x{size} but {e.path} is {e.size[0]}x{e.size[1]}; pass "
                            f"--image-size N to resize every image to NxN") from None
    splits, start = {}, 0
    for split in SPLITS:
        if split in listing.files:
            n = len(listing.files[split])
            # One N x C x H x W copy per split: separate storages, as the cache file format needs.
            images = torch.from_numpy(pixels[start:start + n]).permute(0, 3, 1, 2).contiguous()
            splits[split] = Split(images, torch.tensor(listing.labels[split], dtype=torch.int64))
            start += n
    mean, std = channel_stats(splits["train"].images)
    return splits, mean, std


def _wants_bar(quiet: bool) -> bool:
    # As the training bars (training/progress.py): on a terminal or in Jupyter only, so that logs and
    # captured stderr (where the CLI's one-line errors go) hold no carriage-return clutter.
    return not quiet and (sys.stderr.isatty() or "ipykernel" in sys.modules)


# ---------------------------------------------------------------- arrays (.npz files and the Python API)

ArraySplits = dict[str, tuple[np.ndarray, np.ndarray]]


def _to_nhwc(images: np.ndarray, where: str, key: str) -> np.ndarray:
    """uint8 images as N x H x W x C from NHWC, NCHW or (grayscale) NHW."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}{key} must be uint8 images (0..255), found {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[3] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[3] not in (1, 3) or 0 in images.shape[1:]:
        raise DataError(f"{where}{key} has shape {tuple(images.shape)}; expected (N, H, W, C), (N, C, H, W) "
                        f"or (N, H, W) with C 1 or 3")
    if images.shape[0] == 0:
        raise DataError(f"{where}{key} holds no images")
    return images


def _labels(labels: np.ndarray, n: int, where: str, key: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]               # Keras ships CIFAR labels as (N, 1)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}{key} must be a 1-D array of integer labels, found {labels.dtype} "
                        f"{tuple(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{where}{key} has {len(labels)} labels for {n} images")
    return labels.astype(np.int64)


def checked_arrays(arrays: dict[str, np.ndarray], where: str) -> tuple[ArraySplits, list[str]]:
    """Validate x_/y_ train, test (and val) arrays: NHWC uint8 images, int64 labels, and the class names.

    `where` prefixes every message ("FILE: " for an .npz, "" for arrays given in Python).
    """
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in arrays:
            raise DataError(f"{where}missing '{key}' (need x_train, y_train, x_test, y_test; "
                            f"found {', '.join(sorted(arrays)) or 'nothing'})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{where}x_val and y_val go together; found only {'x_val' if 'x_val' in arrays else 'y_val'}")
    splits: ArraySplits = {}
    for split in SPLITS:
        if f"x_{split}" not in arrays:
            continue
        images = _to_nhwc(arrays[f"x_{split}"], where, f"x_{split}")
        splits[split] = (images, _labels(arrays[f"y_{split}"], len(images), where, f"y_{split}"))
        if images.shape[1:] != splits["train"][0].shape[1:]:
            raise DataError(f"{where}x_{split} images are {_shape_text(images)} but x_train images are "
                            f"{_shape_text(splits['train'][0])}")
    classes = _class_names(arrays.get("classes"), where)
    highest = max(int(labels.max()) for _, labels in splits.values())
    lowest = min(int(labels.min()) for _, labels in splits.values())
    count = len(classes) if classes is not None else highest + 1
    if lowest < 0 or highest >= count:
        bad = lowest if lowest < 0 else highest
        split = next(s for s, (_, y) in splits.items() if bad in (int(y.min()), int(y.max())))
        named = f" ({count} class names given)" if classes is not None else ""
        raise DataError(f"{where}y_{split} holds label {bad}, outside 0..{count - 1}{named}")
    return splits, classes if classes is not None else [str(i) for i in range(count)]


def _shape_text(images: np.ndarray) -> str:
    return f"{images.shape[1]}x{images.shape[2]}x{images.shape[3]}"


def _class_names(names: np.ndarray | None, where: str) -> list[str] | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise DataError(f"{where}classes must be a 1-D array of strings, found {names.dtype} {tuple(names.shape)}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]


def convert_images(images: np.ndarray, channels: int | None, image_size: int | None) -> np.ndarray:
    """NHWC uint8 images converted to `channels` and resized to image_size x image_size, as Pillow does it.

    Pillow, not torch, so arrays get exactly the pixels an image folder (and `cifarlab predict`) would.
    """
    from PIL import Image

    channels = channels or images.shape[3]
    size = image_size or images.shape[1]
    if channels == images.shape[3] and images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, pixels in enumerate(images):
        image = Image.fromarray(pixels[..., 0] if images.shape[3] == 1 else pixels)   # uint8: "L" or "RGB"
        out[i] = np.asarray(imagedecode.prepare_image(image, _mode(channels), size)).reshape(size, size, channels)
    return out


def load_npz(spec: str, path: Path, image_size: int | None = None, channels: int | None = None) -> Dataset:
    """x_train, y_train, x_test, y_test (and x_val, y_val, classes) from an .npz, as a Dataset."""
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    arrays = read_npz(path)
    splits, classes = checked_arrays(arrays, f"{path}: ")
    if image_size is None and splits["train"][0].shape[1] != splits["train"][0].shape[2]:
        raise DataError(f"{path}: images are {splits['train'][0].shape[2]}x{splits['train'][0].shape[1]}, "
                        f"not square; pass --image-size N to resize every image to NxN")
    tensors = {split: Split(torch.from_numpy(np.ascontiguousarray(
                   convert_images(x, channels, image_size).transpose(0, 3, 1, 2))), torch.from_numpy(y))
               for split, (x, y) in splits.items()}
    mean, std = channel_stats(tensors["train"].images)
    return Dataset(_info(spec, path.name, classes, tensors["train"].images, mean, std),
                   tensors["train"], tensors["test"], classes, tensors.get("val"))


def _as_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise UsageError(f"{name} must be a numpy array or a torch tensor, found {type(value).__name__}")


def _canonical(splits: ArraySplits, classes: list[str]) -> dict[str, np.ndarray]:
    arrays = {}
    for split, (x, y) in splits.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.ascontiguousarray(x), np.ascontiguousarray(y, np.int64)
    arrays["classes"] = np.array(classes, dtype=np.str_)
    return arrays


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{value.dtype.str}\0{value.shape}\n".encode())
        h.update(value.view(np.uint8) if value.size else b"")
    return h.hexdigest()


def save_arrays(x_train, y_train, x_test, y_test, classes: list[str] | None = None) -> Path:
    """Validate arrays (numpy or torch; uint8 images NHWC, NCHW or NHW) and store them as an .npz.

    The file is cache_dir()/arrays/<sha256 of the content>.npz, written atomically and reused when the
    same content was saved before, so `npz:<path>` names these exact arrays for as long as it exists.
    """
    given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays = {key: _as_numpy(value, key) for key, value in given.items()}
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) for c in classes):
            raise UsageError("classes must be a list of strings")
        arrays["classes"] = np.array(list(classes), dtype=np.str_)
    splits, names = checked_arrays(arrays, "")
    canonical = _canonical(splits, names)
    digest = _content_hash(canonical)
    path = cache_dir() / "arrays" / f"{digest}.npz"
    if not _holds(path, digest):
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **canonical)            # a file object: given a name, savez would append ".npz"
    return path


def _holds(path: Path, digest: str) -> bool:
    """Whether `path` exists and still holds the arrays whose hash is `digest` (a damaged file is rewritten)."""
    if not path.is_file():
        return False
    try:
        return _content_hash(read_npz(path)) == digest
    except Exception:  # noqa: BLE001 - any damage: the file is written again
        return False


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling anything; one-line DataErrors for what is not one."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if magic != b"PK":              # not a zip: numpy would guess .npy or pickle and say confusing things
        raise DataError(f"{path}: not an .npz file (write one with numpy.savez(FILE, x_train=..., ...))")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as e:         # object arrays (they need pickle, never allowed) and broken headers
        raise DataError(f"{path}: cannot read its arrays ({e}); save no dtype=object arrays "
                        f"(class names as np.array(names, dtype=str))") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
