"""CIFAR-10.1 (Recht et al. 2018): 2,000 new CIFAR-10 test images, for a test only.

The official release (v6, the version its authors recommend), as published in github.com/modestyachts/CIFAR-10.1
under datasets/: `cifar10.1_v6_data.npy` (uint8, N x 32 x 32 x 3, HWC as in a photo) and
`cifar10.1_v6_labels.npy` (N integer labels in CIFAR-10's class order). cifarlab reads them from
DATA_DIR/cifar10.1/ and downloads them there when missing (md5 checked before a file takes its name).
Models never train on it: `--dataset cifar10.1` is refused in sources.dataset_info.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.data.formats import Split
from cifarlab.data.sources import data_root
from cifarlab.errors import DataError

NAME = "cifar10.1"
FOLDER = "cifar10.1"                  # under --data-dir
TRAINED_ON = "cifar10"                # the dataset whose models it tests
BASE_URL = "https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/"
DATA_FILE, LABELS_FILE = "cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy"
MD5 = {DATA_FILE: "4fcae82cb1326aec9ed1dc1fc62345b8", LABELS_FILE: "09a97fb7c430502fcbd69d95093a3f85"}
IMAGES = 2000                         # in v6; the reader accepts any N > 0, as a smaller copy is still the layout


def cifar101_folder(data_dir: Path | str | None = None) -> Path:
    """Where the release files live: DATA_DIR/cifar10.1 (DATA_DIR: --data-dir, else the default data folder)."""
    return data_root(data_dir) / FOLDER


def load_cifar101(data_dir: Path | str | None = None, download_missing: bool = True) -> Split:
    """The CIFAR-10.1 images as a Split (uint8 N,3,32,32 and int64 labels), downloading missing files if allowed."""
    folder = cifar101_folder(data_dir)
    missing = [name for name in (DATA_FILE, LABELS_FILE) if not (folder / name).is_file()]
    if missing and not download_missing:
        raise DataError(f"{folder / missing[0]}: file not found, and downloading is off (--no-download, or a run "
                        f"trained with it or with --sample); {offline_hint(folder)}")
    if missing:
        download(folder, missing)
    return read_cifar101(folder)


def offline_hint(folder: Path) -> str:
    return (f"to work offline put {DATA_FILE} and {LABELS_FILE} (from github.com/modestyachts/CIFAR-10.1, folder "
            f"datasets/) in {folder}")


def download(folder: Path, names: list[str]) -> None:
    """Fetch each file under a temporary name, check its md5, then give it its name: a failed or corrupted download
    never leaves a file that the next run would read."""
    from torchvision.datasets.utils import check_integrity, download_url

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        url, part = BASE_URL + name, folder / (name + ".part")
        part.unlink(missing_ok=True)   # download_url would take a leftover for a finished download
        try:
            download_url(url, str(folder), filename=part.name)
            if not check_integrity(str(part), MD5[name]):
                raise DataError(f"md5 is not {MD5[name]}")
        except Exception as e:  # URLError, HTTPError, the md5 above, disk errors
            part.unlink(missing_ok=True)
            raise DataError(f"cannot download {url} ({e}); {offline_hint(folder)}") from None
        part.replace(folder / name)


def read_cifar101(folder: Path) -> Split:
    """Read the two .npy files in the official layout (no pickles: allow_pickle=False); any other shape or type is
    refused in one line that names the file and what it holds."""
    import numpy as np

    def load(name):
        try:
            return np.load(folder / name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{folder / name}: not a readable .npy file ({e})") from None
    images, labels = load(DATA_FILE), load(LABELS_FILE)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{folder / DATA_FILE}: expected uint8 N x 32 x 32 x 3 images, got {images.dtype} "
                        f"{'x'.join(map(str, images.shape))}")
    if len(images) == 0:   # no accuracy, and the drop's interval would divide by zero
        raise DataError(f"{folder / DATA_FILE}: holds no images (the release holds {IMAGES:,}); delete it to "
                        "download it again, or put the release's file there (github.com/modestyachts/CIFAR-10.1)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise DataError(f"{folder / LABELS_FILE}: expected {len(images)} integer labels, got {labels.dtype} "
                        f"{'x'.join(map(str, labels.shape))}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{folder / LABELS_FILE}: labels must be CIFAR-10 classes 0..9, found {labels.min()}.."
                        f"{labels.max()}")
    return Split(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                 torch.from_numpy(labels.astype(np.int64)))
