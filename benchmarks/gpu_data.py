"""Part 2, data: the carried pack unpacked and checked, or the dry run's small copy; what cifarlab loads."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from gpu_part import PartFile


def small_copy(source: Path, dest: Path, images: int) -> None:
    """The first `images` images of every CIFAR file under `source`, in the official layout, into `dest`.

    The dry run trains on this copy: the same files and readers as the full data, at a size two CPU
    cores score in a second (cifar-mini's 1,000 test images take ~20 s under fast94's 6-view TTA)."""
    import pack_data

    for folder, batches, metas in pack_data.LAYOUT.values():
        if not (source / folder).is_dir():
            continue
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in batches:
            batch = pack_data.read_pickle(source / folder / name)
            n = len(batch[b"data"])    # every per-image field (data, labels, filenames) has n entries
            batch = {k: v[:images] if not isinstance(v, (bytes, int)) and len(v) == n else v
                     for k, v in batch.items()}
            pack_data.write_py2_pickle(batch, dest / folder / name)
        for name in metas:
            shutil.copyfile(source / folder / name, dest / folder / name)


def loadable(root: Path) -> dict:
    """What cifarlab loads from `root`, per dataset: its image counts, "absent", or why it failed."""
    from cifarlab.data.sources import DATASETS, load_dataset, missing_files
    from cifarlab.errors import CifarlabError

    found = {}
    for name in ("cifar10", "cifar100"):
        if missing_files(DATASETS[name], root):
            found[name] = "absent"
            continue
        try:
            data = load_dataset(name, root, download_missing=False)
        except (CifarlabError, OSError, ValueError) as e:
            found[name] = f"not loadable: {type(e).__name__}: {e}"
            continue
        found[name] = {"train": len(data.train), "test": len(data.test), "classes": len(data.classes)}
    return found


def part_data(args, out: PartFile) -> None:
    """The data the other parts use: the carried pack unpacked and checked (pack_data.py), or, in the dry
    run, a small copy; then what cifarlab loads from it. CIFAR-10 is required, CIFAR-100 optional."""
    import pack_data

    root, start = Path(args.data_dir), time.perf_counter()
    if args.pack:
        try:
            pack_data.unpack(Path(args.pack), root, min(8, os.cpu_count() or 1))
        except pack_data.PackError as e:
            return out.update(status="failed", reason=f"unpack: {e}")
        out.update(source=f"unpacked from {args.pack}")
    elif args.copy_from:
        small_copy(Path(args.copy_from), root, args.images)
        out.update(source=f"the first {args.images} images of every file of {args.copy_from}")
    else:
        out.update(source="used as found")
    out.update(data_dir=str(root), prepare_s=time.perf_counter() - start, datasets=loadable(root))
    if not isinstance(out.data["datasets"]["cifar10"], dict):
        out.update(status="failed", reason=f"cifarlab cannot load CIFAR-10 from {root}")
