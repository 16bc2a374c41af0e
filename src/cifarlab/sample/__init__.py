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


def with_sample(settings: dict, sample: bool, datasets: tuple[str | None, ...]) -> dict:
    """`settings` (data_dir, download, ...) with --sample applied: the shipped sample is the data folder and
    nothing is downloaded; without --sample, `settings` as they are."""
    if not sample:
        return settings
    return {**settings, "data_dir": as_data_dir(settings.get("data_dir"), datasets), "download": False}


# reproduce --sample: half the epochs on 100 images, a minute or two on 2 idle CPU cores
STUDY_SCALE = 0.5


def study_settings(data_dir: str | None, scale: float | None, out: str | None, overrides: dict,
                   sample: bool) -> tuple[str | None, float, str, dict]:
    """`cifarlab reproduce`'s data folder, scale, study folder and setting overrides (None: not given), with the
    defaults --sample changes: the sample's folder, scale STUDY_SCALE and a study folder of its own, so that the
    full study never meets the sample's runs."""
    if sample:
        data_dir, overrides = as_data_dir(data_dir, ()), {**overrides, "download": False}
    if scale is None:
        scale = STUDY_SCALE if sample else 1.0
    return data_dir, scale, out or ("runs/reproduce-sample" if sample else "runs/reproduce"), overrides
