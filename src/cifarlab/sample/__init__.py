"""A real sample of CIFAR-10 and CIFAR-100, shipped with cifarlab so that it runs offline from the first command.

200 training and 100 test images of each dataset, taken class-balanced from the official files (20 and
10 per class for CIFAR-10, 2 and 1 for CIFAR-100) and stored in their layout, so that it is a
`--data-dir` like any other: `cifarlab train --sample ...` or `--data-dir "$(python -c 'import cifarlab;
print(cifarlab.sample_dir())')"`. tools/build_sample.py in the repository built it.

Enough to see every command work and accuracy rise above chance on CIFAR-10; far too few images for
accuracies comparable with the full datasets'.
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.errors import UsageError

DATA_DIR = Path(__file__).resolve().parent
DATASETS = ("cifar10", "cifar100")
TRAIN_IMAGES, TEST_IMAGES = 200, 100     # per dataset


def sample_dir() -> Path:
    """The folder holding cifar-10-batches-py/ and cifar-100-python/: pass it as data_dir."""
    return DATA_DIR


def as_data_dir(data_dir: str | None, datasets: tuple[str | None, ...]) -> str:
    """What --sample means as a --data-dir, refused in one line beside another --data-dir or for another dataset."""
    if data_dir is not None:
        raise UsageError(f"--sample and --data-dir {data_dir} both given: --sample is the data folder {DATA_DIR}; "
                         "pass one of them")
    for dataset in datasets:
        if dataset is not None and dataset not in DATASETS:
            raise UsageError(f"--sample holds {' and '.join(DATASETS)}, not {dataset}: pass --data-dir DIR, or leave "
                             "--sample out to download it")
    return str(DATA_DIR)
