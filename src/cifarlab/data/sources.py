"""Where each dataset lives on disk, how it is downloaded, and how it is loaded (the built-in ones here; the
user's own `folder:` and `npz:` images in custom.py, which load_dataset hands them to).

Layouts are the official ones (and torchvision's folders for MNIST-style sets,
so an existing torchvision download is reused). Downloads use torchvision's
utilities with the archive's md5 checked before anything is extracted.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import torch

from cifarlab.data.dataset import Dataset, DatasetInfo
from cifarlab.data.formats import concat, read_cifar_batch, read_cifar_names, read_idx_split
from cifarlab.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        tuple(CIFAR10_CLASSES)),
    "cifar100": DatasetInfo(
        "cifar100", "CIFAR-100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "cifar-100-python", ("train",), ("test",),
        (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),)),
    "mnist": DatasetInfo(
        "mnist", "MNIST", 10, 1, 28, (0.1307,), (0.3081,), "MNIST/raw", _MNIST_FILES, _MNIST_TEST,
        ((_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
         (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
         (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
         (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
        tuple(str(i) for i in range(10))),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST", 10, 1, 28, (0.2860,), (0.3530,), "FashionMNIST/raw", _MNIST_FILES,
        _MNIST_TEST,
        ((_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
         (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
         (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        tuple(FASHION_CLASSES)),
}


CUSTOM_PREFIXES = ("folder:", "npz:")
# Test sets without a train split (data/cifar101.py reads them), and the dataset whose models they test.
TEST_ONLY = {"cifar10.1": "cifar10"}


def is_custom(name: str) -> bool:
    """`folder:PATH` (an ImageFolder tree) or `npz:FILE` (arrays): the user's own images."""
    return name.startswith(CUSTOM_PREFIXES)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a one-line error listing the valid names."""
    if name in TEST_ONLY:
        raise DataError(f"{name} is a test set only: train on {TEST_ONLY[name]}, then measure the run on it with "
                        f"`cifarlab evaluate RUN --dataset {name}`")
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (choose from {', '.join(DATASETS)})")
    return DATASETS[name]


def default_data_dir() -> Path:
    return Path(os.environ.get("CIFARLAB_DATA") or Path.home() / ".cache" / "cifarlab")


def data_root(data_dir: Path | str | None) -> Path:
    """The dataset root: `data_dir`, which must be an existing folder, else default_data_dir().

    A --data-dir that does not exist is most likely a typo: refused in one line rather than created and
    filled with a download the user did not ask for (the default folder is created when needed).
    """
    if data_dir is None:
        return default_data_dir()
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise DataError(f"--data-dir {root}: {what} (create it to download there, or leave --data-dir out to use "
                        f"{default_data_dir()})")
    return root


def _is_idx(info: DatasetInfo) -> bool:
    return info.channels == 1


def _present(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def missing_files(info: DatasetInfo, root: Path) -> list[Path]:
    folder = root / info.folder
    return [folder / n for n in info.train_files + info.test_files if _present(folder, n) is None]


def download(info: DatasetInfo, root: Path) -> None:
    """Fetch the official archives, check their md5, extract safely into `root`."""
    from torchvision.datasets.utils import download_url

    for url, md5 in info.archives:
        target = root / info.folder if _is_idx(info) else root
        filename = url.rsplit("/", 1)[-1]
        try:
            download_url(url, str(target), filename=filename, md5=md5)
        except Exception as e:  # URLError, HTTPError, md5 mismatch (RuntimeError), disk errors
            raise DataError(
                f"cannot download {url} ({e}); to work offline put the files "
                f"{', '.join(info.train_files + info.test_files)} in {root / info.folder} "
                f"(or pass --data-dir DIR)") from None
        if filename.endswith(".tar.gz"):
            _extract_tar(target / filename, target)


def _extract_tar(archive: Path, dest: Path) -> None:
    # filter="data" refuses absolute paths, "..", links out of dest and device files.
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({e})") from None


def load_dataset(name: str, data_dir: Path | str | None = None, download_missing: bool = True,
                 image_size: int | None = None, channels: int | None = None, quiet: bool = True) -> Dataset:
    """Load both splits of `name` as uint8 tensors, downloading missing files if allowed.

    `folder:PATH` and `npz:FILE` are the user's own images (data/custom.py); image_size and channels
    apply to them only.
    """
    if is_custom(name):
        from cifarlab.data.custom import load_custom_dataset
        return load_custom_dataset(name, image_size=image_size, channels=channels, quiet=quiet)
    info = dataset_info(name)
    root = data_root(data_dir)
    missing = missing_files(info, root)
    if missing and not download_missing:
        raise DataError(f"{missing[0]}: file not found and --no-download given; put the {info.title} files "
                        f"({', '.join(p.name for p in missing)}) in {root / info.folder}")
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        download(info, root)
    folder = root / info.folder
    if _is_idx(info):
        def pair(files):
            return read_idx_split(_present(folder, files[0]) or folder / files[0],
                                  _present(folder, files[1]) or folder / files[1], info.num_classes)
        train, test = pair(info.train_files), pair(info.test_files)
        classes = list(info.default_classes)
    else:
        key = "labels" if info.num_classes == 10 else "fine_labels"
        train = concat([read_cifar_batch(folder / f, key, info.num_classes) for f in info.train_files])
        test = read_cifar_batch(folder / info.test_files[0], key, info.num_classes)
        meta, names_key = ("batches.meta", "label_names") if info.num_classes == 10 else ("meta", "fine_label_names")
        classes = read_cifar_names(folder / meta, names_key) or list(info.default_classes) \
            or [str(i) for i in range(info.num_classes)]
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{folder}: train images {tuple(train.images.shape[1:])} and test images "
                        f"{tuple(test.images.shape[1:])} differ in shape")
    return Dataset(info, train, test, classes)


def class_balanced_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): `val_size` examples spread evenly over classes, chosen by `seed`."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [val_size // len(classes) + (1 if i < val_size % len(classes) else 0) for i in range(len(classes))]
    val = []
    for c, k in zip(classes.tolist(), per_class):
        idx = torch.nonzero(labels == c).flatten()
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx
