"""What a dataset is once loaded: its facts (DatasetInfo) and its splits (Dataset).

Its own module, below both the registry of built-in datasets (sources.py) and the user's own images
(custom.py): each builds these, and sources.py hands `folder:` and `npz:` names on to custom.py, so
neither may import the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cifarlab.data.formats import Split


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str                      # as printed in the article's summary blocks
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]         # true per-channel statistics of the train split, pixels in [0, 1]
    std: tuple[float, ...]
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    archives: tuple[tuple[str, str], ...]   # (url, md5) of what to download
    default_classes: tuple[str, ...] = field(default=())


@dataclass
class Dataset:
    info: DatasetInfo
    train: Split
    test: Split
    classes: list[str]
    val: Split | None = None        # a fixed val split (an image folder's val/); else --val-size carves one
