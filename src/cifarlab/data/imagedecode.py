"""Decode image files into raw uint8 pixels (H x W x C per image), in this process or in worker processes.

prepare_image() is the one way an image becomes model input (EXIF orientation, bit depth, mode, size):
image folders, their worker processes, arrays and `cifarlab predict` all call it.

Decoding a small PNG is mostly Pillow's Python code, which holds the GIL, so threads do not help while
worker processes scale with the cores (the figures: BENCHMARKS.md, "Figures behind choices in the code",
measured with benchmarks/folder_decode.py). Workers are plain
`python -c` subprocesses that run this file by path: they import Pillow and the standard library only,
never the cifarlab package (whose import pulls in torch, a second or more per worker). Keep it that way:
this module must not import torch, numpy or anything from cifarlab.

Protocol: the parent writes one JSON line {"files", "mode", "size", "resize"} to a worker's stdin, then
one "START END" line per chunk it wants; the worker writes the pixels of files[START:END] to stdout,
chunk after chunk, or on a bad file writes one MARK line of JSON to stderr and exits with ERROR_EXIT.
Requests are a few bytes, so the parent never blocks writing one while the worker waits to write pixels.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import deque
from typing import Callable

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The only Pillow decoders a file may reach: it is never handed to another of Pillow's plugins.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Pillow's modes for 16-bit grayscale PNGs ("I" in older releases). Pillow itself turns 16-bit RGB(A) PNGs
# into 8-bit RGB(A) by keeping each value's high byte, which scales without clipping (at most 1 level from
# value / 257), so those need nothing here.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# Where Image.getexif() finds an orientation (EXIF of JPEG/WebP/PNG, ImageMagick's PNG text, XMP); a TIFF
# (predict opens any format) keeps it in its tags. Asking getexif() of every image would cost a large part of
# a small PNG's decode (BENCHMARKS.md, "Figures behind choices in the code").
ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})
ORIENTATION = 0x0112                         # the EXIF tag
CHUNK = 256                                  # files per request: small enough to balance, big enough to amortise
MIN_FILES_PER_WORKER = 2000                  # below this a worker's start-up costs more than it saves (BENCHMARKS.md)
ERROR_EXIT = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARK = "cifarlab-decode-error: "
# Runs this file without putting its folder on sys.path (its sibling modules must not shadow anything).
_BOOT = "import runpy, sys; del sys.path[0]; runpy.run_path(sys.argv[1], run_name='__main__')"


class DecodeError(Exception):
    """A file that cannot be used as it is; `size` is set when the only problem is its size."""

    def __init__(self, path: str, reason: str, size: tuple[int, int] | None = None):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.size = path, reason, size


def channels_of(mode: str) -> int:
    """1 for Pillow's grayscale modes, 3 for everything else (RGB, RGBA, palette, CMYK, ...)."""
    return 1 if mode in GRAY_MODES else 3


def open_image(path: str) -> Image.Image:
    """The decoded image; a truncated or unreadable file raises DecodeError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()    # one read, then Pillow parses from memory: fewer syscalls per small file
    except OSError as e:
        raise DecodeError(path, f"cannot read image ({e.strerror or e})") from None
    if not data:
        raise DecodeError(path, "cannot read image (empty file)")
    try:
        if data.startswith(PNG_SIGNATURE):
            # Straight to the PNG plugin: Image.open's format probing is a sizeable part of a 32x32 PNG's decode.
            image = PngImagePlugin.PngImageFile(io.BytesIO(data))
            _check_pixels(image.size)
        else:
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        image.load()           # decodes now: a truncated file fails here, not later
    except UnidentifiedImageError:
        raise DecodeError(path, "cannot read image (not a PNG, JPEG, BMP or WebP file)") from None
    except Exception as e:     # Pillow raises many types on bad input (OSError, SyntaxError, ValueError, ...)
        raise DecodeError(path, f"cannot read image ({type(e).__name__}: {e})") from None
    return image


def _check_pixels(size: tuple[int, int]) -> None:
    # What Image.open does against decompression bombs (a tiny file that claims a huge image).
    if Image.MAX_IMAGE_PIXELS and size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{size[0]}x{size[1]} pixels, over Pillow's limit of "
                                           f"{2 * Image.MAX_IMAGE_PIXELS}")


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (as ImageOps.exif_transpose), 16-bit gray scaled to 8 bits.

    Cameras store portrait photos sideways with an orientation tag; viewers turn them, so the user
    expects the turned image. 16-bit values are divided by 257 and rounded: Pillow's own convert("L")
    clips them at 255, which makes nearly every pixel white.
    """
    if not ORIENTATION_SOURCES.isdisjoint(image.info) or hasattr(image, "tag_v2"):
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = image.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")
    return image


def prepare_image(image: Image.Image, mode: str, size: int, resize: bool = True, name: str = "image") -> Image.Image:
    """The one way every image becomes model input, in training (folders, arrays) and in `cifarlab predict`:
    upright and 8-bit (upright()), converted to `mode` ("L" or "RGB"), size x size.

    A different size is resized (bicubic; Pillow widens the filter when shrinking, so large photos are
    averaged down, not aliased) if `resize`, else a DecodeError naming `name` and the size.
    """
    image = upright(image)
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        if not resize:
            raise DecodeError(name, f"is {image.size[0]}x{image.size[1]}", image.size)
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def image_pixels(path: str, mode: str, size: int, resize: bool) -> bytes:
    """`path` as `mode` ("L" or "RGB") pixels, size x size (prepare_image)."""
    return prepare_image(open_image(path), mode, size, resize, path).tobytes()


def image_header(path: str) -> tuple[str, tuple[int, int]] | None:
    """(mode, (width, height) as shown upright) from the file's header, nothing decoded; None if unreadable.

    The orientation is seen only where it is in the header (an EXIF block after a PNG's pixels is not).
    """
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as image:
            width, height = image.size
            if not ORIENTATION_SOURCES.isdisjoint(image.info) and image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width       # turned by a quarter
            return image.mode, (width, height)
    except Exception:          # a bad file is named by the decode that follows, not here
        return None


def decode_here(files: list[str], mode: str, size: int, resize: bool, out: memoryview,
                progress: Callable[[int], None] | None = None) -> None:
    """Decode `files` into `out` (len(files) * size * size * channels bytes) in this process."""
    step = size * size * (1 if mode == "L" else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # e.g. palette transparency notes: one per file would flood
        for i, path in enumerate(files):
            out[i * step:(i + 1) * step] = image_pixels(path, mode, size, resize)
            if progress is not None and i % 256 == 255:
                progress(i + 1)
    if progress is not None:
        progress(len(files))


def worker_count(n_files: int) -> int:
    if getattr(sys, "frozen", False) or not sys.executable:
        return 1               # a frozen app's executable is not a Python that can run `-c`
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_files // MIN_FILES_PER_WORKER))


class _Chunks:
    """Hands out [start, end) ranges of the file list to whichever worker asks next.

    Small chunks handed out on demand, not one fixed slice per worker: a worker slowed down by big
    files or by another program on its core then takes fewer chunks instead of finishing last.
    """

    def __init__(self, n_files: int):
        self.ranges = [(a, min(a + CHUNK, n_files)) for a in range(0, n_files, CHUNK)]
        self.lock = threading.Lock()
        self.next_index = 0
        self.cancelled = False

    def take(self) -> tuple[int, int] | None:
        with self.lock:
            if self.cancelled or self.next_index == len(self.ranges):
                return None
            self.next_index += 1
            return self.ranges[self.next_index - 1]


def decode_files(files: list[str], mode: str, size: int, resize: bool, out: memoryview,
                 progress: Callable[[int], None] | None = None, workers: int | None = None) -> None:
    """Decode `files` into `out`, spread over `workers` processes (default: one per core for big jobs).

    Raises DecodeError for the first bad file a worker meets. A worker that cannot start or dies
    without a report (no Pillow in its environment, killed) costs speed, not correctness: the chunks
    it held are decoded here instead.
    """
    workers = worker_count(len(files)) if workers is None else workers
    if workers <= 1:
        decode_here(files, mode, size, resize, out, progress)
        return
    step = size * size * (1 if mode == "L" else 3)
    chunks = _Chunks(len(files))
    header = json.dumps({"files": files, "mode": mode, "size": size, "resize": resize}).encode() + b"\n"
    jobs = [_Worker(header, out, step, chunks) for _ in range(workers)]
    try:
        for job in jobs:
            job.start()
        while any(job.running() for job in jobs):
            if progress is not None:
                progress(sum(job.done for job in jobs))
            for job in jobs:
                if job.error is not None:
                    raise job.error
        for job in jobs:
            if job.error is not None:
                raise job.error
        leftovers = [r for job in jobs for r in job.unfinished]
        while (taken := chunks.take()) is not None:     # no worker could start: all is left to us
            leftovers.append(taken)
        for a, b in leftovers:
            decode_here(files[a:b], mode, size, resize, out[a * step:b * step])
        if progress is not None:
            progress(len(files))
    finally:
        chunks.cancelled = True
        for job in jobs:
            job.stop()


class _Worker:
    """One subprocess decoding chunk after chunk, each read straight into its place in `out`."""

    def __init__(self, header: bytes, out: memoryview, step: int, chunks: _Chunks):
        self.header, self.out, self.step, self.chunks = header, out, step, chunks
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None
        self.stderr = tempfile.TemporaryFile()     # a file, not a pipe: a chatty worker can never block on it
        self.done = 0                              # images received
        self.unfinished: list[tuple[int, int]] = []  # chunks given to a worker that died without a report
        self.error: DecodeError | None = None

    def start(self) -> None:
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                         bufsize=0)
        except OSError:
            return                                 # decode_files decodes this worker's share itself
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        if self.thread is None:
            return False
        self.thread.join(0.05)
        return self.thread.is_alive()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:                                # an unbuffered pipe may take part of a big write
            view = view[self.proc.stdin.write(view):]

    def _send(self, pending: deque) -> None:
        taken = self.chunks.take()
        if taken is not None:
            pending.append(taken)
            a, b = taken
            self._write(f"{a} {b}\n".encode())

    def _serve(self) -> None:
        pending: deque = deque()
        try:
            self._write(self.header)
            for _ in range(2):                     # two chunks in flight: the worker never waits for us
                self._send(pending)
            while pending:
                a, b = pending[0]
                self._read_into(self.out[a * self.step:b * self.step])
                pending.popleft()
                self.done += b - a
                self._send(pending)
            self.proc.stdin.close()
        except OSError:
            pass                                   # the worker died; its exit status says why
        code = self.proc.wait()
        if code == ERROR_EXIT:
            self.error = self._reported_error()
        if pending and self.error is None:
            self.unfinished = list(pending)

    def _read_into(self, view: memoryview) -> None:
        received = 0
        while received < len(view):
            n = self.proc.stdout.readinto(view[received:])
            if not n:
                raise _ShortOutput("worker output ended early")
            received += n

    def _reported_error(self) -> DecodeError | None:
        self.stderr.seek(0)
        for line in reversed(self.stderr.read().decode(errors="replace").splitlines()):
            if line.startswith(MARK):
                report = json.loads(line[len(MARK):])
                size = tuple(report["size"]) if report.get("size") else None
                return DecodeError(report["path"], report["reason"], size)
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.thread is not None:
            self.thread.join()
        if self.proc is not None:
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()
        self.stderr.close()


class _ShortOutput(OSError):
    """The worker closed its output before sending a whole chunk (it failed or was killed)."""


def _worker_main() -> int:
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    job = json.loads(stdin.readline())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for line in stdin:
                a, b = map(int, line.split())
                for path in job["files"][a:b]:
                    out.write(image_pixels(path, job["mode"], job["size"], job["resize"]))
                out.flush()                        # the parent reads chunk by chunk
    except DecodeError as e:
        sys.stderr.write(MARK + json.dumps({"path": e.path, "reason": e.reason, "size": e.size}) + "\n")
        return ERROR_EXIT
    except BrokenPipeError:
        return 1                                   # the parent stopped reading: it has given up on us
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
