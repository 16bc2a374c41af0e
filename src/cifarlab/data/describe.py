"""`cifarlab data info|verify`: the facts of a dataset as training will use it, as a dict (what --json
prints) and as text.

The facts are the ones a run is built from: classes, images per split and class, the image size and
channels after decoding, the mean and std the inputs are normalised with, and, for an image folder,
the sizes of the files as stored and every file that was left out, with the reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from cifarlab.errors import UsageError
from cifarlab.data.sources import Dataset, data_root, dataset_info, is_custom, load_dataset, missing_files

SHOWN_SIZES = 5               # stored sizes named in the text; --json has them all


def describe_dataset(name: str, data_dir: Path | str | None = None, image_size: int | None = None,
                     channels: int | None = None, download_missing: bool = False, verify: bool = False) -> dict:
    """The facts of dataset `name` (a built-in name, folder:PATH or npz:FILE) as JSON-ready values.

    A built-in dataset whose files are missing gives {"present": False, "missing": [...]}, unless
    `verify` or `download_missing` ask for the files (then missing files are an error, or downloaded).
    """
    if name.startswith("folder:"):
        return _describe_folder(name, image_size, channels)
    if is_custom(name):
        ds = load_dataset(name, image_size=image_size, channels=channels)
        return {"kind": "npz", "path": name.partition(":")[2], **_facts(ds)}
    info = dataset_info(name)
    if image_size is not None or channels is not None:
        raise UsageError(f"--image-size and --channels apply to your own images (folder:PATH, npz:FILE), not {name}")
    root = data_root(data_dir)
    facts = {"kind": "built-in", "path": str(root / info.folder)}
    missing = missing_files(info, root)
    if missing and not (verify or download_missing):
        return {"dataset": name, "title": info.title, **facts, "present": False,
                "missing": [p.name for p in missing]}
    ds = load_dataset(name, root, download_missing=download_missing)
    return {**facts, "present": True, **_facts(ds)}


def _facts(ds: Dataset) -> dict:
    splits = {"train": ds.train, "test": ds.test, **({"val": ds.val} if ds.val is not None else {})}
    counts = {}
    for split, data in splits.items():
        per_class = torch.bincount(data.labels, minlength=len(ds.classes)).tolist()
        counts[split] = {"images": len(data), "per_class": dict(zip(ds.classes, per_class))}
    return {"dataset": ds.info.name, "title": ds.info.title, "classes": list(ds.classes), "splits": counts,
            "image_size": list(ds.train.images.shape[2:]), "channels": int(ds.train.images.shape[1]),
            "mean": list(ds.info.mean), "std": list(ds.info.std)}


def _describe_folder(spec: str, image_size: int | None, channels: int | None) -> dict:
    from cifarlab.data import imagedecode
    from cifarlab.data.custom import check_options, load_folder_with_listing

    check_options(image_size, channels)
    root = Path(spec.partition(":")[2]).expanduser()
    ds, listing, choice = load_folder_with_listing(spec, root, image_size, channels, quiet=True)
    sizes = Counter()
    for path in listing.all_files():
        header = imagedecode.image_header(path)
        sizes["unreadable" if header is None else f"{header[1][0]}x{header[1][1]}"] += 1
    return {"kind": "folder", "path": str(root.resolve()), **_facts(ds),
            "channels_chosen": {"given": choice.given, "sampled": choice.sampled, "grayscale": choice.gray,
                                "reason": choice.reason()},
            "stored_sizes": dict(sizes.most_common()),
            "skipped": [{"path": path, "reason": why} for path, why in listing.skipped]}


def format_description(facts: dict, verify: bool = False) -> str:
    """The facts as the text `cifarlab data info|verify` prints."""
    if not facts.get("present", True):
        return f"{facts['title']}: not present in {facts['path']} (missing: {', '.join(facts['missing'])})\n"
    classes = facts["classes"]
    shown = ", ".join(classes) if len(classes) <= 20 else ", ".join(classes[:20]) + ", ..."
    lines = [f"{facts['dataset']} ({facts['title']}) in {facts['path']}", f"  {len(classes)} classes: {shown}"]
    for split, count in facts["splits"].items():
        per_class = list(count["per_class"].values())
        spread = (", ".join(f"{c} {n:,}" for c, n in count["per_class"].items()) if len(per_class) <= 10
                  else f"{min(per_class):,} to {max(per_class):,} per class")
        lines.append(f"  {split}: {count['images']:,} images ({spread})")
    height, width = facts["image_size"]
    chosen = facts.get("channels_chosen")
    why = f" ({chosen['reason']})" if chosen else ""
    lines.append(f"  images: {width}x{height}, {facts['channels']} channel{'s' if facts['channels'] != 1 else ''}"
                 f"{why}, uint8")
    if "stored_sizes" in facts:
        sizes = list(facts["stored_sizes"].items())
        more = f", and {len(sizes) - SHOWN_SIZES} more sizes" if len(sizes) > SHOWN_SIZES else ""
        lines.append("  stored as: " + ", ".join(f"{s} ({n:,})" for s, n in sizes[:SHOWN_SIZES]) + more)
    lines.append("  normalised with mean " + ", ".join(f"{v:.4f}" for v in facts["mean"]) +
                 "; std " + ", ".join(f"{v:.4f}" for v in facts["std"]))
    skipped = facts.get("skipped", [])
    if skipped:
        lines.append(f"  skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''}:")
        lines += [f"    {s['path']} ({s['reason']})" for s in skipped]
    elif "skipped" in facts:
        lines.append("  skipped: nothing")
    if verify:
        lines.append("structure OK (files present and readable, shapes, dtype, label range and counts checked)")
    return "\n".join(lines) + "\n"
