"""Data: official-format readers, downloads, the on-device loader and batched augmentation."""

from cifarlab.data.formats import Split
from cifarlab.data.sources import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "Split", "load_dataset"]
