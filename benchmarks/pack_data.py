"""Pack the CIFAR "python version" files into small compressed chunks, and unpack them again.

Made for carrying the full CIFAR-10 (or CIFAR-100) to a machine that cannot download it, through a
channel that takes a limited number of MiB per transfer (e.g. the device tool: 64 MiB a call).

    python benchmarks/pack_data.py pack --data-dir DIR --out .carry/pack [--datasets cifar10,cifar100]
                                        [--chunk-mib 60] [--preset 6] [--jobs N]
    python benchmarks/pack_data.py unpack --pack .carry/pack --out DIR [--jobs N]

`pack` reads DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (and/or
DIR/cifar-100-python/{train,test,meta}). Each image array is made smaller before compression by
predicting every pixel from its left, upper and upper-left neighbours (the median edge detector of
LOCO-I / JPEG-LS), subtracting the red residual from the green one and the green from the blue one,
and mapping residuals to small bytes (zig-zag); the residual bytes are then compressed with xz
(lzma). On the CIFAR-10 training data this stores the pixels in ~56% of their raw size (zlib of raw
bytes: 92%, xz of raw bytes: 76%), so the full CIFAR-10 fits in two 60 MiB chunks. The other fields
(labels, file names, batch labels, the meta files) travel as compressed JSON. All streams are
concatenated and cut into chunk files, each in its own folder (OUT/c1/part.bin, OUT/c2/part.bin,
...), so one transfer can carry exactly one folder; every folder also holds the manifest
(manifest.json: the streams, their offsets, and the sha256 of every decoded array, field set and
chunk).

`unpack` gathers the chunks, checks their sha256, decodes, checks the sha256 of every decoded array,
writes the official layout (protocol-2 pickles with Python 2 byte-string keys, as the original files
are) and reads the written files back to check them once more. On any mismatch it prints one line
and exits with status 1 (2 for a missing or unreadable pack).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import lzma
import os
import pickle
import struct
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cifarlab.storage import atomic_write_bytes

FORMAT = "cifarlab-pack-1"
LAYOUT = {
    "cifar10": ("cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], ["batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test"], ["meta"]),
}


class PackError(Exception):
    """A pack that is missing, incomplete or does not match its manifest."""


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- pixel coding (lossless)

def _med(left: np.ndarray, up: np.ndarray, upleft: np.ndarray) -> np.ndarray:
    """Median edge detector: min(a, b) if c >= max(a, b), max(a, b) if c <= min(a, b), else a + b - c."""
    hi, lo = np.maximum(left, up), np.minimum(left, up)
    return np.where(upleft >= hi, lo, np.where(upleft <= lo, hi, left + up - upleft))


def encode_pixels(data: np.ndarray) -> bytes:
    """(N, 3072) uint8 planar CIFAR rows -> residual bytes, laid out (row, column, image, channel)."""
    img = data.reshape(-1, 3, 32, 32).astype(np.int16)
    left = np.zeros_like(img)
    left[..., :, 1:] = img[..., :, :-1]
    up = np.zeros_like(img)
    up[..., 1:, :] = img[..., :-1, :]
    upleft = np.zeros_like(img)
    upleft[..., 1:, 1:] = img[..., :-1, :-1]
    res = img - _med(left, up, upleft)
    del left, up, upleft
    res[:, 2] -= res[:, 1]
    res[:, 1] -= res[:, 0]
    wrapped = (res + 128) % 256 - 128                    # -128..127, the same value mod 256
    zigzag = np.where(wrapped >= 0, 2 * wrapped, -2 * wrapped - 1).astype(np.uint8)
    return np.ascontiguousarray(zigzag.transpose(2, 3, 0, 1)).tobytes()


def decode_pixels(buf: bytes, n: int) -> np.ndarray:
    zigzag = np.frombuffer(buf, np.uint8).reshape(32, 32, n, 3).astype(np.int16)
    res = (zigzag >> 1) ^ -(zigzag & 1)
    res[..., 1] += res[..., 0]
    res[..., 2] += res[..., 1]
    img = np.zeros((32, 32, n, 3), np.int16)
    zero = np.zeros((n, 3), np.int16)
    for i in range(32):
        for j in range(32):
            left = img[i, j - 1] if j else zero
            up = img[i - 1, j] if i else zero
            upleft = img[i - 1, j - 1] if i and j else zero
            img[i, j] = (_med(left, up, upleft) + res[i, j]) & 255
    return np.ascontiguousarray(img.astype(np.uint8).transpose(2, 3, 0, 1)).reshape(n, 3072)


# ---------------------------------------------------------------- Python 2 style values <-> JSON

def to_json(value):
    if isinstance(value, bytes):
        return {"b": value.decode("latin1")}
    if isinstance(value, str):
        return {"s": value}
    if isinstance(value, dict):
        return {"d": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"l": [to_json(v) for v in value]}
    if isinstance(value, (int, np.integer)):
        return int(value)
    raise PackError(f"cannot pack a value of type {type(value).__name__}")


def from_json(value):
    if isinstance(value, int):
        return value
    (tag, inner), = value.items()
    if tag == "b":
        return inner.encode("latin1")
    if tag == "s":
        return inner
    if tag == "l":
        return [from_json(v) for v in inner]
    if tag == "d":
        return {from_json(k): from_json(v) for k, v in inner}
    raise PackError(f"unknown tag {tag!r} in the packed fields")


def labels_sha(fields: dict) -> dict:
    """sha256 of each label list of a batch, as int64 bytes."""
    return {k.decode("latin1"): sha256(np.asarray(v, np.int64).tobytes())
            for k, v in fields.items() if isinstance(k, bytes) and k.endswith(b"labels")}


# ---------------------------------------------------------------- official-format pickles

def _numpy_core() -> str:
    """numpy.core (the official files' module path) where this numpy still has it, else numpy._core."""
    try:
        return "numpy.core" if importlib.util.find_spec("numpy.core.multiarray") is not None else "numpy._core"
    except ImportError:
        return "numpy._core"


_NUMPY_CORE = _numpy_core()


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Protocol 2, every str/bytes written as a Python 2 string (SHORT_BINSTRING / BINSTRING) as in the
    official files: pickle.load(encoding='bytes') gives b'data' keys, encoding='latin1' gives 'data'.
    numpy globals are named under numpy.core (the official files' path) where this numpy has it."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        name = name or getattr(obj, "__qualname__", None) or obj.__name__
        module = pickle.whichmodule(obj, name)
        for old in ("numpy._core", "numpy.core"):
            if module == old or module.startswith(old + "."):
                module = _NUMPY_CORE + module[len(old):]
        self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        self.memoize(obj)


def write_py2_pickle(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf).dump(obj)
    atomic_write_bytes(path, buf.getvalue())


def read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


# ---------------------------------------------------------------- pack

def _pack_file(job: tuple[str, str, str, int]) -> dict:
    path, kind, name, preset = job
    src = Path(path)
    raw = src.read_bytes()
    obj = read_pickle(src)
    entry = {"name": name, "kind": kind, "source_sha256": sha256(raw)}
    streams = []
    if kind == "batch":
        key_order = [k.decode("latin1") for k in obj]
        data = obj.pop(b"data")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            raise PackError(f"{src}: 'data' is not an (N, 3072) uint8 array")
        data = np.ascontiguousarray(data)
        entry.update(n=int(data.shape[0]), data_sha256=sha256(data.tobytes()), labels_sha256=labels_sha(obj),
                     key_order=key_order)
        streams.append(("pixels", lzma.compress(encode_pixels(data), preset=preset)))
    fields = json.dumps(to_json(obj), separators=(",", ":")).encode()
    entry["fields_sha256"] = sha256(fields)
    streams.append(("fields", lzma.compress(fields, preset=9)))
    entry["streams"] = [{"what": what, "bytes": len(blob)} for what, blob in streams]
    return {"entry": entry, "blobs": [blob for _, blob in streams]}


def pack(data_dir: Path, out: Path, datasets: list[str], chunk_mib: float, preset: int, jobs: int) -> dict:
    t0 = time.time()
    work = []
    for ds in datasets:
        folder, batches, metas = LAYOUT[ds]
        for name in batches + metas:
            path = data_dir / folder / name
            if not path.is_file():
                raise PackError(f"{path}: not found")
            work.append((str(path), "batch" if name in batches else "meta", f"{folder}/{name}", preset))
    # biggest first, so the pool is not left waiting on one large file at the end
    work.sort(key=lambda j: -os.path.getsize(j[0]))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip([j[2] for j in work], pool.map(_pack_file, work)))
    files, blob_parts, offset = [], [], 0
    for ds in datasets:
        folder, batches, metas = LAYOUT[ds]
        for name in batches + metas:
            r = results[f"{folder}/{name}"]
            for stream, blob in zip(r["entry"]["streams"], r["blobs"]):
                stream.update(offset=offset, sha256=sha256(blob))
                blob_parts.append(blob)
                offset += len(blob)
            files.append(r["entry"])
    blob = b"".join(blob_parts)
    chunk = int(chunk_mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("c[0-9]*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    chunks = []
    for k, start in enumerate(range(0, len(blob), chunk), 1):
        part = blob[start:start + chunk]
        (out / f"c{k}").mkdir()
        (out / f"c{k}" / "part.bin").write_bytes(part)
        chunks.append({"folder": f"c{k}", "bytes": len(part), "sha256": sha256(part)})
    manifest = {"format": FORMAT, "datasets": datasets, "total_bytes": len(blob), "chunks": chunks,
                "files": files, "coding": "pixels: MED prediction, G-=R, B-=G residuals, zig-zag, "
                                           "(row, col, image, channel) order, xz; fields: JSON, xz"}
    text = json.dumps(manifest, indent=1) + "\n"
    for c in chunks:
        (out / c["folder"] / "manifest.json").write_text(text)
    raw = sum(f["n"] * 3072 for f in files if f["kind"] == "batch")
    print(f"packed {', '.join(datasets)}: {raw / 2**20:.1f} MiB of pixels -> {len(blob) / 2**20:.1f} MiB "
          f"in {len(chunks)} chunk(s) of <= {chunk_mib:g} MiB under {out} ({time.time() - t0:.0f} s)")
    return manifest


# ---------------------------------------------------------------- unpack

def load_manifest(pack_dir: Path) -> dict:
    found = sorted(pack_dir.glob("c[0-9]*/manifest.json")) + sorted(pack_dir.glob("manifest.json"))
    if not found:
        raise PackError(f"{pack_dir}: no manifest.json in any chunk folder")
    manifest = json.loads(found[-1].read_text())
    if manifest.get("format") != FORMAT:
        raise PackError(f"{found[-1]}: not a {FORMAT} manifest")
    return manifest


def _unpack_file(job: tuple[dict, list[bytes]]) -> tuple[str, dict]:
    entry, blobs = job
    by_what = dict(zip([s["what"] for s in entry["streams"]], blobs))
    fields_raw = lzma.decompress(by_what["fields"])
    if sha256(fields_raw) != entry["fields_sha256"]:
        raise PackError(f"{entry['name']}: fields sha256 mismatch")
    obj = from_json(json.loads(fields_raw))
    if entry["kind"] == "batch":
        data = decode_pixels(lzma.decompress(by_what["pixels"]), entry["n"])
        if sha256(data.tobytes()) != entry["data_sha256"]:
            raise PackError(f"{entry['name']}: decoded pixel array sha256 mismatch")
        if labels_sha(obj) != entry["labels_sha256"]:
            raise PackError(f"{entry['name']}: labels sha256 mismatch")
        obj[b"data"] = data
        obj = {k.encode("latin1"): obj[k.encode("latin1")] for k in entry["key_order"]}
    return entry["name"], obj


def unpack(pack_dir: Path, out: Path, jobs: int) -> None:
    t0 = time.time()
    manifest = load_manifest(pack_dir)
    parts = []
    for c in manifest["chunks"]:
        path = pack_dir / c["folder"] / "part.bin"
        if not path.is_file():
            raise PackError(f"{path}: chunk missing ({len(manifest['chunks'])} expected)")
        part = path.read_bytes()
        if len(part) != c["bytes"] or sha256(part) != c["sha256"]:
            raise PackError(f"{path}: chunk sha256 mismatch")
        parts.append(part)
    blob = memoryview(b"".join(parts))
    work = []
    for entry in manifest["files"]:
        blobs = []
        for s in entry["streams"]:
            piece = bytes(blob[s["offset"]:s["offset"] + s["bytes"]])
            if sha256(piece) != s["sha256"]:
                raise PackError(f"{entry['name']}: {s['what']} stream sha256 mismatch")
            blobs.append(piece)
        work.append((entry, blobs))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        decoded = dict(pool.map(_unpack_file, work))
    same_bytes = 0
    for entry in manifest["files"]:
        path = out / entry["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_py2_pickle(decoded[entry["name"]], path)
        back = read_pickle(path)                                  # read back what was written
        if entry["kind"] == "batch":
            data = back.get(b"data")
            if not isinstance(data, np.ndarray) or sha256(np.ascontiguousarray(data).tobytes()) != entry["data_sha256"]:
                raise PackError(f"{path}: written file reads back with a different pixel array")
            if labels_sha(back) != entry["labels_sha256"]:
                raise PackError(f"{path}: written file reads back with different labels")
        elif back != decoded[entry["name"]]:
            raise PackError(f"{path}: written file reads back differently")
        same_bytes += sha256(path.read_bytes()) == entry["source_sha256"]
    n = sum(e.get("n", 0) for e in manifest["files"])
    print(f"unpacked {', '.join(manifest['datasets'])} ({n} images, {len(manifest['files'])} files) into {out}: "
          f"all sha256 checks passed; {same_bytes}/{len(manifest['files'])} files byte-identical to the "
          f"source files ({time.time() - t0:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="official files -> compressed chunks")
    p.add_argument("--data-dir", required=True, type=Path, help="holds cifar-10-batches-py/ and/or cifar-100-python/")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--datasets", default="cifar10", help="comma list of cifar10, cifar100 (default cifar10)")
    p.add_argument("--chunk-mib", type=float, default=60.0)
    p.add_argument("--preset", type=int, default=6, help="xz preset for the pixels (0-9)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    u = sub.add_parser("unpack", help="chunks -> official files, checked")
    u.add_argument("--pack", required=True, type=Path)
    u.add_argument("--out", required=True, type=Path)
    u.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
            unknown = [d for d in datasets if d not in LAYOUT]
            if unknown or not datasets:
                raise PackError(f"unknown dataset(s) {unknown}; choose from {sorted(LAYOUT)}")
            pack(args.data_dir, args.out, datasets, args.chunk_mib, args.preset, max(1, args.jobs))
        else:
            unpack(args.pack, args.out, max(1, args.jobs))
    except PackError as e:
        print(f"pack_data: {e}", file=sys.stderr)
        return 1 if "mismatch" in str(e) or "differen" in str(e) else 2
    except (OSError, lzma.LZMAError, ValueError, KeyError, pickle.UnpicklingError) as e:
        print(f"pack_data: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
