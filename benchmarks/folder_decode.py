"""How fast `folder:PATH` turns an ImageFolder of PNGs into tensors: first decode, cached start, plain Pillow.

Writes CIFAR-10 as PNGs in torchvision's ImageFolder layout (train/<class>/, test/<class>/; 60,000 files
for the full set) unless the folder already holds them, then times in this process:

  (a) the first load with an empty cache folder (scan, decode, statistics, cache write), in images/s,
      and the decode step alone with in-process, thread-pool and worker-process decoding;
  (b) the cached start (scan, fingerprint, read and verify the cache), in seconds, here and in a
      fresh process (which adds Python's and torch's import);
  (c) for reference, a plain single-threaded Pillow loop over the same files.

Every file is read once before the timings, so every figure is with the files in the OS page cache.

    python benchmarks/folder_decode.py --data-dir DIR_WITH_cifar-10-batches-py --folder OUT_PNG_DIR [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifarlab.data import custom, imagedecode
from cifarlab.data.sources import load_dataset

MARKER = "cifarlab-bench.json"      # at the folder's top, where the loader never looks


def write_pngs(data_dir: Path, folder: Path, limit: int | None) -> dict:
    """CIFAR-10 as folder/{train,test}/<class>/NNNNN.png, unless a complete copy is already there."""
    source = load_dataset("cifar10", data_dir, download_missing=False)
    counts = {"train": len(source.train), "test": len(source.test)}
    if limit is not None:
        counts = {"train": min(limit, counts["train"]), "test": min(max(limit // 5, 10), counts["test"])}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == counts:
        return counts
    started = time.perf_counter()
    for split in ("train", "test"):
        shutil.rmtree(folder / split, ignore_errors=True)
        data = getattr(source, split)
        images, labels = data.images[:counts[split]].permute(0, 2, 3, 1).numpy(), data.labels[:counts[split]]
        for name in source.classes:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(images, labels.tolist())):
            Image.fromarray(pixels).save(folder / split / source.classes[label] / f"{i:05d}.png")
    marker.write_text(json.dumps(counts))
    print(f"wrote {sum(counts.values())} PNGs to {folder} in {time.perf_counter() - started:.1f} s")
    return counts


def plain_pillow(files: list[str]) -> float:
    """Images/s of the obvious loop: open, convert, to numpy, one file after another."""
    started = time.perf_counter()
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    elapsed = time.perf_counter() - started
    assert len(images) == len(files)
    return len(files) / elapsed


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decode workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_rate(files: list[str], how: str) -> tuple[float, float]:
    """Images per second of wall time and per CPU-second of the decode step alone.

    `how`: 'in-process', 'threads' (one per core) or 'processes'. The CPU figure does not depend on what
    else the machine is running; on an idle machine the wall figure approaches it times the cores used.
    """
    out = memoryview(np.empty(len(files) * 32 * 32 * 3, np.uint8))
    cores = len(os.sched_getaffinity(0))
    cpu = cpu_seconds()
    started = time.perf_counter()
    if how == "in-process":
        imagedecode.decode_here(files, "RGB", 32, False, out)
    elif how == "threads":
        step, bounds = 32 * 32 * 3, [len(files) * k // cores for k in range(cores + 1)]
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(lambda ab: imagedecode.decode_here(files[ab[0]:ab[1]], "RGB", 32, False,
                                                             out[ab[0] * step:ab[1] * step]),
                          zip(bounds, bounds[1:])))
    else:
        imagedecode.decode_files(files, "RGB", 32, False, out, workers=cores)
    return len(files) / (time.perf_counter() - started), len(files) / (cpu_seconds() - cpu)


def timed_decode() -> dict:
    """Wraps custom.decode_folder so the first load reports how long its decode step took."""
    seen = {}
    real = custom.decode_folder

    def timer(*args, **kwargs):
        started = time.perf_counter()
        result = real(*args, **kwargs)
        seen["decode_s"] = time.perf_counter() - started
        return result
    custom.decode_folder = timer
    return seen


def fresh_process_start(spec: str) -> float:
    code = ("import time; t = time.perf_counter(); from cifarlab.data.sources import load_dataset; "
            f"load_dataset({spec!r}); print(time.perf_counter() - t)")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="folder holding cifar-10-batches-py")
    parser.add_argument("--folder", required=True, type=Path, help="where the PNG ImageFolder goes")
    parser.add_argument("--limit", type=int, help="at most N train images (and N/5 test images)")
    args = parser.parse_args()
    counts = write_pngs(args.data_dir, args.folder, args.limit)
    n = sum(counts.values())
    spec = f"folder:{args.folder}"
    cache = Path(tempfile.mkdtemp(prefix="cifarlab-bench-cache-"))
    os.environ["CIFARLAB_CACHE"] = str(cache)
    try:
        listing = custom.scan_folder(args.folder)
        files = listing.all_files()
        for name in files:                                  # every figure with the files in the page cache
            Path(name).read_bytes()
        reference = plain_pillow(files)
        seen = timed_decode()
        started = time.perf_counter()
        first = load_dataset(spec)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = load_dataset(spec)
        cached_s = time.perf_counter() - started
        fresh_s = fresh_process_start(spec)
        same = torch.equal(first.train.images, second.train.images)
        source = load_dataset("cifar10", args.data_dir, download_missing=False)
        order = torch.argsort(source.train.labels[:counts["train"]], stable=True)
        exact = torch.equal(first.train.images, source.train.images[:counts["train"]][order])
        rates = {how: decode_rate(files, how) for how in ("in-process", "threads", "processes")}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, "
          f"Pillow {Image.__version__}, torch {torch.__version__}")
    print(f"images: {n} 32x32 PNGs ({counts['train']} train, {counts['test']} test) in {args.folder}")
    print(f"(a) first load, empty cache:  {first_s:6.2f} s = {n / first_s:8.0f} images/s "
          f"(decode step {seen['decode_s']:.2f} s = {n / seen['decode_s']:.0f} images/s)")
    print("    decode step alone:        " + ", ".join(f"{how} {wall:.0f}/s" for how, (wall, _) in rates.items()))
    print("    per CPU-second:           " + ", ".join(f"{how} {cpu:.0f}" for how, (_, cpu) in rates.items()))
    print(f"    load average when done:   {os.getloadavg()[0]:.2f} (anything above 0 is other programs sharing "
          f"the cores)")
    print(f"(b) cached start:             {cached_s:6.2f} s in this process, {fresh_s:.2f} s in a fresh one "
          f"(with imports); same tensors: {same}")
    print(f"(c) plain Pillow loop:        {n / reference:6.2f} s = {reference:8.0f} images/s")
    print(f"first load vs plain loop: {n / first_s / reference:.2f}x; "
          f"pixels identical to the CIFAR batches: {exact}")


if __name__ == "__main__":
    main()
