"""Build the sample shipped in src/cifarlab/sample/ from a copy of the official CIFAR files.

    python tools/build_sample.py SRC [--out src/cifarlab/sample] [--train 200] [--test 100]

SRC holds cifar-10-batches-py/ and cifar-100-python/ in the official "python version" layout (the
full datasets, or any class-complete subset of them). From each dataset it takes the first
TRAIN/classes training and TEST/classes test images of every class, in file order, and writes them
in the same layout: protocol-2 pickles with Python 2 byte-string keys, as the official files are,
CIFAR-10's training images spread evenly over data_batch_1..5. The meta files are copied (CIFAR-10's
num_cases_per_batch set to the new batch size). The same SRC gives byte-identical files.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
# The official files are Python 2 pickles (raw byte strings: 3,072 bytes an image); Python 3's protocol 2
# would write each image's bytes as a latin-1 text, 40% bigger. pack_data.py writes them the official way.
from pack_data import write_py2_pickle  # noqa: E402

# (folder, train files, test file, label key, meta file, classes)
DATASETS = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels",
             "batches.meta", 10),
            ("cifar-100-python", ["train"], "test", b"fine_labels", "meta", 100))
FIELDS = (b"data", b"filenames", b"coarse_labels")   # per-image fields besides the label; kept where present


def read(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")   # the official files and this tool's own output only


def write(path: Path, obj: dict) -> None:
    write_py2_pickle(obj, path)


def concat(batches: list[dict], label_key: bytes) -> dict:
    keys = [k for k in (label_key, *FIELDS) if k in batches[0]]
    return {k: (np.concatenate([b[k] for b in batches]) if k == b"data" else sum((list(b[k]) for b in batches), []))
            for k in keys}


def first_per_class(batch: dict, label_key: bytes, per_class: int, classes: int) -> np.ndarray:
    """Indices of the first `per_class` images of every class, in file order; refuses a class that has fewer."""
    labels = np.asarray(batch[label_key])
    chosen = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            sys.exit(f"build_sample: class {c} has {len(idx)} images, {per_class} needed")
        chosen.append(idx)
    return np.sort(np.concatenate(chosen))


def subset(batch: dict, index: np.ndarray, batch_label: bytes) -> dict:
    out = {k: (v[index] if k == b"data" else [v[i] for i in index]) for k, v in batch.items()}
    return {b"batch_label": batch_label, **out}


def build(src: Path, out: Path, train: int, test: int) -> None:
    for folder, train_files, test_file, key, meta, classes in DATASETS:
        if train % (classes * len(train_files)) or test % classes:
            sys.exit(f"build_sample: --train must be a multiple of {classes * len(train_files)} and --test of "
                     f"{classes} for {folder}")
        dest = out / folder
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        whole = concat([read(src / folder / f) for f in train_files], key)
        picked = first_per_class(whole, key, train // classes, classes)
        # Spread over the batch files round-robin, so each batch keeps every class.
        for i, name in enumerate(train_files):
            label = f"training batch {i + 1} of {len(train_files)}".encode()
            write(dest / name, subset(whole, picked[i::len(train_files)], label))
        tests = concat([read(src / folder / test_file)], key)
        write(dest / test_file, subset(tests, first_per_class(tests, key, test // classes, classes),
                                       b"testing batch 1 of 1"))
        info = read(src / folder / meta)
        if b"num_cases_per_batch" in info:
            info[b"num_cases_per_batch"] = train // len(train_files)
        write(dest / meta, info)
        print(f"{dest}: {train} train, {test} test images")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="folder holding cifar-10-batches-py/ and cifar-100-python/")
    p.add_argument("--out", type=Path, default=REPO / "src" / "cifarlab" / "sample")
    p.add_argument("--train", type=int, default=200, help="training images per dataset (default 200)")
    p.add_argument("--test", type=int, default=100, help="test images per dataset (default 100)")
    args = p.parse_args(argv)
    build(args.src, args.out, args.train, args.test)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
