"""Data: official-format readers (formats.py), what a loaded dataset is (dataset.py), the dataset registry and
downloads (sources.py), your own images (custom.py; folder.py lists a folder, imagedecode.py decodes,
foldercache.py caches), what `cifarlab data info` shows (describe.py), the on-device loader (loader.py) and
batched augmentation (augment.py)."""
