"""Data: official-format readers (formats.py), the dataset registry and downloads (sources.py), your own
images (custom.py, imagedecode.py), the on-device loader (loader.py) and batched augmentation (augment.py)."""
