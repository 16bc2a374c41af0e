"""An image folder (torchvision's ImageFolder layout) listed: its classes, its images per split, what was
left out and why, and how many channels its images have.

Listing reads no pixels, so a folder whose decoded images are cached starts in the time `os.scandir`
takes. Everything the listing passes over is recorded with a reason, so that a `.tif` photo or a
`valid/` folder never drops out of a dataset without a word (`cifarlab data info` names them all).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab.data import imagedecode
from cifarlab.errors import DataError

SPLITS = ("train", "test", "val")
CHANNEL_SAMPLE = 200          # images whose header decides the channels: enough for a clear majority
SHOWN_SKIPPED = 5             # skipped files named in the summary line; `data info` names every one
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})   # Windows' own, lower-cased


@dataclass
class FolderListing:
    """Every image of an ImageFolder tree: per split, paths, labels and (size, mtime_ns) stamps.

    `skipped` holds (path relative to root, reason) for every file or folder that is not used.
    """

    root: Path
    classes: list[str]
    files: dict[str, list[str]]
    labels: dict[str, list[int]]
    stamps: dict[str, list[tuple[int, int]]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def all_files(self) -> list[str]:
        return [f for split in SPLITS for f in self.files.get(split, [])]

    def skip(self, path: str | Path, is_dir: bool, why: str) -> None:
        name = Path(path).relative_to(self.root).as_posix()
        self.skipped.append((name + "/" if is_dir else name, why))


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _why_not_an_image(name: str, is_dir: bool) -> str:
    if not _visible(name):
        return "hidden folder" if is_dir else "hidden file"
    if name.lower() in SYSTEM_FILES:
        return "system file"
    if name.lower().endswith(imagedecode.EXTENSIONS):
        return "not a regular file (a broken link?)"
    suffix = os.path.splitext(name)[1].lower()
    return f"{suffix} not supported" if suffix else "no file extension"


def _class_dirs(split_dir: Path, listing: FolderListing) -> list[Path]:
    """The class folders of a split; its other entries go to listing.skipped."""
    found = []
    for p in sorted(split_dir.iterdir(), key=lambda p: p.name):
        is_dir = p.is_dir()
        if not _visible(p.name):
            listing.skip(p, is_dir, _why_not_an_image(p.name, is_dir))
        elif is_dir:
            found.append(p)
        else:
            listing.skip(p, False, "not in a class folder")
    return found


def _image_files(class_dir: Path, listing: FolderListing) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the images under `class_dir`, nested folders included, sorted by path."""
    found = []
    pending = [str(class_dir)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:   # the hot loop of a cached start (60,000 files): cheap tests first
                name = entry.name
                if name.lower().endswith(imagedecode.EXTENSIONS) and _visible(name) and entry.is_file():
                    stat = entry.stat()
                    found.append((entry.path, stat.st_size, stat.st_mtime_ns))
                elif _visible(name) and entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    listing.skip(entry.path, is_dir, _why_not_an_image(name, is_dir))
    found.sort()
    return found


def scan_folder(root: Path) -> FolderListing:
    """List root/{train,test,val}/<class>/* and check the layout; DataError naming the folder if wrong."""
    try:
        return _scan(root)
    except OSError as e:            # unreadable folder (permissions), a folder removed while we list it
        raise DataError(f"{e.filename or root}: cannot list ({e.strerror or e})") from None


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (folder:PATH wants PATH/train/<class>/<image>)")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root}: no {split}/ folder (expected {root}/train/<class>/<image> and "
                            f"{root}/test/<class>/<image>)")


def _scan(root: Path) -> FolderListing:
    _check_root(root)
    listing = FolderListing(root, [], {}, {}, {})
    # A `valid/` or `images/` beside train/ is never read: say so (hidden entries are the user's business).
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if _visible(p.name) and p.name not in SPLITS:
            listing.skip(p, p.is_dir(), "not train/, test/ or val/")
    for split in SPLITS:
        if not (root / split).is_dir():         # only val/ may be absent (_check_root)
            continue
        class_dirs = _class_dirs(root / split, listing)
        if split == "train":
            listing.classes = [p.name for p in class_dirs]
            if not class_dirs:
                raise DataError(f"{root / 'train'}: no images (expected class folders: train/<class>/<image>)")
        files, labels, stamps = [], [], []
        for class_dir in class_dirs:
            if class_dir.name not in listing.classes:
                raise DataError(f"{class_dir}: class '{class_dir.name}' is not in {root / 'train'} "
                                f"(classes: {', '.join(listing.classes)})")
            images = _image_files(class_dir, listing)
            if not images:
                raise DataError(f"{class_dir}: empty class folder (no {'/'.join(imagedecode.EXTENSIONS)} files)")
            label = listing.classes.index(class_dir.name)
            files += [path for path, _, _ in images]
            labels += [label] * len(images)
            stamps += [(size, mtime) for _, size, mtime in images]
        if not files:
            raise DataError(f"{root / split}: no images (expected {split}/<class>/<image>)")
        listing.files[split], listing.labels[split], listing.stamps[split] = files, labels, stamps
    listing.skipped.sort()
    return listing


def skipped_summary(spec: str, listing: FolderListing) -> str | None:
    """One line naming the skipped files (the first few) and why; None when nothing was skipped."""
    if not listing.skipped:
        return None
    n = len(listing.skipped)
    shown = ", ".join(f"{path} ({why})" for path, why in listing.skipped[:SHOWN_SKIPPED])
    more = (f", and {n - SHOWN_SKIPPED} more (`cifarlab data info --dataset {spec}` lists them)"
            if n > SHOWN_SKIPPED else "")
    return f"{spec}: skipped {n} file{'s' if n != 1 else ''}: {shown}{more}"


@dataclass(frozen=True)
class ChannelChoice:
    """How many channels a folder is decoded with, and why: `gray` of `sampled` images were grayscale."""

    channels: int
    sampled: int = 0
    gray: int = 0
    given: bool = False         # --channels said so

    def reason(self) -> str:
        if self.given:
            return f"--channels {self.channels}"
        if self.channels == 1:
            return f"grayscale: {self.gray} of {self.sampled} sampled images; --channels 3 for RGB"
        return f"RGB: {self.sampled - self.gray} of {self.sampled} sampled images; --channels 1 for grayscale"

    def line(self, spec: str) -> str:
        return f"{spec}: {self.channels} channel{'s' if self.channels == 3 else ''} ({self.reason()})"


def choose_channels(listing: FolderListing, channels: int | None) -> ChannelChoice:
    """`channels` if given, else the majority of up to CHANNEL_SAMPLE images spread evenly over the
    (class-sorted) file list, so over every class and split; a tie keeps colour (RGB loses nothing)."""
    if channels is not None:
        return ChannelChoice(channels, given=True)
    files = listing.all_files()
    count = min(CHANNEL_SAMPLE, len(files))
    headers = [imagedecode.image_header(files[i * len(files) // count]) for i in range(count)]
    modes = [h[0] for h in headers if h is not None]   # an unreadable file is named by the decode instead
    gray = sum(imagedecode.channels_of(m) == 1 for m in modes)
    return ChannelChoice(1 if gray > len(modes) - gray else 3, len(modes), gray)


def fingerprint(listing: FolderListing, image_size: int | None, channels: int | None, version: str) -> str:
    """sha256 of every image's relative path, size and mtime, plus the options and the cache `version`.

    Pillow's version is in it too: another release may resize (or convert) a little differently.
    """
    from PIL import __version__ as pillow
    h = hashlib.sha256(json.dumps([version, pillow, image_size, channels, listing.classes]).encode())
    prefix = len(str(listing.root)) + 1
    for split in SPLITS:
        for path, (size, mtime) in zip(listing.files.get(split, []), listing.stamps.get(split, [])):
            h.update(f"{split}\0{path[prefix:]}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()
