"""Your own images reach the model as they are meant to be seen: channels from the majority of the images,
16-bit PNGs scaled to 8 bits, EXIF orientation applied (in training, its worker processes, and predict),
skipped files named, `data info|verify` on a folder, and a --data-dir that does not exist refused."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.cli import main
from cifarlab.data import imagedecode
from cifarlab.data.sources import load_dataset
from cifarlab.errors import DataError
from cifarlab.predict import read_image

from conftest import run_cli, write_cifar10

ORIENTATION = 0x0112            # the EXIF tag
ROTATE_CLOCKWISE = 6            # its value for: the camera was turned; show the image turned 90 degrees clockwise


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))


def pixels(seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_images(root: Path, per_class: int = 5, classes=("cat", "dog"), splits=("train", "test")) -> dict:
    """Random RGB PNGs root/<split>/<class>/NN.png; returns {path: pixels}."""
    written = {}
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                path = root / split / name / f"{i:02d}.png"
                written[path] = pixels(1000 * s + 100 * c + i)
                Image.fromarray(written[path]).save(path)
    return written


def first_image(root: Path) -> Path:
    return sorted((root / "train" / "cat").iterdir())[0]


# ---------------------------------------------------------------- channels

def test_channels_come_from_the_majority_of_the_images_not_the_first(tmp_path, capsys):
    written = write_images(tmp_path / "d")
    gray = first_image(tmp_path / "d")
    Image.fromarray(written[gray]).convert("L").save(gray)       # the first file, and only it, is grayscale
    ds = load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    assert ds.info.channels == 3 and ds.train.images.shape[1:] == (3, 32, 32)
    second = sorted((tmp_path / "d" / "train" / "cat").iterdir())[1]
    assert torch.equal(ds.train.images[1], torch.from_numpy(written[second]).permute(2, 0, 1))
    as_gray = torch.from_numpy(np.array(Image.open(gray)))
    assert all(torch.equal(ds.train.images[0][c], as_gray) for c in range(3))   # gray repeated in R, G and B
    assert capsys.readouterr().err == (f"cifarlab: folder:{tmp_path / 'd'}: 3 channels (RGB: 19 of 20 sampled "
                                       f"images; --channels 1 for grayscale)\n")
    assert load_dataset(f"folder:{tmp_path / 'd'}", channels=1).train.images.shape[1] == 1   # --channels decides
    load_dataset(f"folder:{tmp_path / 'd'}", quiet=True)
    assert capsys.readouterr().err == ""


def test_a_mostly_grayscale_folder_is_one_channel(tmp_path, capsys):
    written = write_images(tmp_path / "d")
    for path in sorted(written)[1:]:
        Image.fromarray(written[path]).convert("L").save(path)
    ds = load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    assert ds.info.channels == 1 and len(ds.info.mean) == 1
    assert "1 channel (grayscale: 19 of 20 sampled images; --channels 3 for RGB)" in capsys.readouterr().err


def test_the_channel_sample_is_spread_over_the_classes(tmp_path, monkeypatch):
    written = write_images(tmp_path / "d", per_class=30)
    for path in written:                     # cat (half the files, sorted first) is grayscale, dog is RGB
        if path.parent.name == "cat":
            Image.fromarray(written[path]).convert("L").save(path)
    seen = []
    real = imagedecode.image_header
    monkeypatch.setattr(imagedecode, "image_header", lambda p: seen.append(p) or real(p))
    monkeypatch.setattr("cifarlab.data.folder.CHANNEL_SAMPLE", 20)
    load_dataset(f"folder:{tmp_path / 'd'}")
    sampled = [Path(p).parent.name for p in seen]
    assert len(sampled) == 20 and sampled.count("cat") == sampled.count("dog") == 10


# ---------------------------------------------------------------- 16-bit images

def test_16_bit_grayscale_pngs_are_scaled_to_8_bits_not_clipped(tmp_path):
    write_images(tmp_path / "d")
    wide = np.random.default_rng(7).integers(0, 65536, (32, 32), dtype=np.uint16)
    wide[0, :4] = [0, 257, 65535, 32767]
    path = tmp_path / "d" / "train" / "dog" / "0-16bit.png"
    Image.fromarray(wide).save(path)                                  # Pillow writes a 16-bit grayscale PNG
    with Image.open(path) as written:
        assert written.mode == "I;16"
    expected = (wide.astype(np.int64) + 128) // 257                   # value / 257, rounded
    assert expected[0, :4].tolist() == [0, 1, 255, 127]
    ds = load_dataset(f"folder:{tmp_path / 'd'}", channels=1)
    dogs = ds.train.images[ds.train.labels == 1]
    assert torch.equal(dogs[0, 0], torch.from_numpy(expected).to(torch.uint8))     # 16bit.png sorts first
    assert (dogs[0] == 255).float().mean() < 0.01                     # clipped, 99.6% of it would be white
    as_rgb = load_dataset(f"folder:{tmp_path / 'd'}").train.images[5]
    assert all(torch.equal(as_rgb[c], dogs[0, 0]) for c in range(3))
    assert torch.equal(read_image(path, 1, 32)[0], dogs[0, 0])        # predict reads it the same way


def write_rgb16_png(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2, unfiltered rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, 2, 0, 0, 0)
    path.write_bytes(imagedecode.PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb_pngs_keep_their_range(tmp_path):
    # Pillow reads these as 8-bit RGB by keeping each value's high byte: scaled, never clipped, and within
    # one level of value / 257 (what imagedecode.SIXTEEN_BIT_MODES' comment relies on).
    write_images(tmp_path / "d")
    wide = np.random.default_rng(8).integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    wide[0, 0] = [0, 32767, 65535]
    write_rgb16_png(tmp_path / "d" / "train" / "cat" / "0-16bit.png", wide)
    got = load_dataset(f"folder:{tmp_path / 'd'}").train.images[0].permute(1, 2, 0).numpy().astype(int)
    assert got[0, 0].tolist() == [0, 127, 255]
    assert np.abs(got - wide / 257).max() < 1


# ---------------------------------------------------------------- EXIF orientation

def with_orientation(image: Image.Image, path: Path, orientation: int = ROTATE_CLOCKWISE, **save) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **save)


@pytest.mark.parametrize("workers", [1, 2])
def test_exif_orientation_is_applied_to_training_images(tmp_path, monkeypatch, workers):
    written = write_images(tmp_path / "d", per_class=20)
    turned = sorted((tmp_path / "d" / "test" / "dog").iterdir())[3]
    with_orientation(Image.fromarray(written[turned]), turned)
    monkeypatch.setattr(imagedecode, "worker_count", lambda n: workers)   # 2: decoded by worker processes
    monkeypatch.setattr(imagedecode, "CHUNK", 8)
    if workers > 1:
        monkeypatch.setattr(imagedecode, "decode_here", None)              # every image from a worker
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    clockwise = np.ascontiguousarray(np.rot90(written[turned], k=-1))
    assert not np.array_equal(clockwise, written[turned])
    assert torch.equal(ds.test.images[20 + 3], torch.from_numpy(clockwise).permute(2, 0, 1))


def test_exif_orientation_is_applied_by_predict_to_png_and_jpeg(tmp_path):
    stored = pixels(3)
    with_orientation(Image.fromarray(stored), tmp_path / "turned.png")
    clockwise = torch.from_numpy(np.ascontiguousarray(np.rot90(stored, k=-1))).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "turned.png", 3, 32), clockwise)
    # A landscape JPEG, dark on the left, bright on the right, taken with the camera turned clockwise:
    # shown upright it is a portrait, dark on top.
    photo = np.zeros((32, 48, 3), np.uint8)
    photo[:, 24:] = 255
    with_orientation(Image.fromarray(photo), tmp_path / "turned.jpg", quality=95)
    seen = read_image(tmp_path / "turned.jpg", 1, 32)[0].float()
    assert seen[:14].mean() < 10 and seen[18:].mean() > 245


def test_exif_orientation_decides_the_size_of_a_folder(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "test"):
        (root / split / "x").mkdir(parents=True)
        for i in range(2):                   # stored 40x30, shown 30x40: not square either way, say so as shown
            with_orientation(Image.fromarray(pixels(i, (30, 40, 3))), root / split / "x" / f"{i}.png")
    with pytest.raises(DataError, match="is 30x40, not square"):
        load_dataset(f"folder:{root}")
    assert load_dataset(f"folder:{root}", image_size=16).train.images.shape == (2, 3, 16, 16)


# ---------------------------------------------------------------- skipped files

def add_strays(root: Path) -> list[str]:
    (root / "train" / "notes.txt").write_text("not an image")
    Image.fromarray(pixels(9)).save(root / "train" / "cat" / "x.tif")
    (root / "train" / "cat" / "Thumbs.db").write_bytes(b"\0")
    (root / "test" / "dog" / ".DS_Store").write_bytes(b"\0")
    (root / "valid" / "cat").mkdir(parents=True)
    return ["test/dog/.DS_Store (hidden file)", "train/cat/Thumbs.db (system file)",
            "train/cat/x.tif (.tif not supported)", "train/notes.txt (not in a class folder)",
            "valid/ (not train/, test/ or val/)"]


def test_skipped_files_are_counted_and_named_in_one_line(tmp_path, capsys):
    write_images(tmp_path / "d")
    named = add_strays(tmp_path / "d")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    assert len(ds.train) == 10 and len(ds.test) == 10
    lines = capsys.readouterr().err.splitlines()
    assert lines[1] == f"cifarlab: folder:{tmp_path / 'd'}: skipped 5 files: " + ", ".join(named)
    (tmp_path / "d" / "train" / "cat" / "y.gif").write_bytes(b"GIF89a")
    load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    [line] = capsys.readouterr().err.splitlines()          # the channels line again? no: said once per process
    assert "skipped 6 files: " in line and line.endswith(f", and 1 more (`cifarlab data info --dataset "
                                                         f"folder:{tmp_path / 'd'}` lists them)")


# ---------------------------------------------------------------- cifarlab data info|verify

def test_data_info_and_verify_describe_a_folder(tmp_path, capsys):
    write_images(tmp_path / "d", per_class=4)
    (tmp_path / "d" / "test" / "dog" / "03.png").unlink()
    Image.fromarray(pixels(5)).convert("L").save(first_image(tmp_path / "d"))
    named = add_strays(tmp_path / "d")
    spec = f"folder:{tmp_path / 'd'}"
    ds = load_dataset(spec)
    assert main(["data", "info", "--dataset", spec, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["classes"] == ["cat", "dog"] and facts["kind"] == "folder"
    assert facts["splits"] == {"train": {"images": 8, "per_class": {"cat": 4, "dog": 4}},
                               "test": {"images": 7, "per_class": {"cat": 4, "dog": 3}}}
    assert facts["image_size"] == [32, 32] and facts["channels"] == 3 and facts["stored_sizes"] == {"32x32": 15}
    assert facts["channels_chosen"] == {"given": False, "sampled": 15, "grayscale": 1,
                                        "reason": "RGB: 14 of 15 sampled images; --channels 1 for grayscale"}
    assert facts["mean"] == list(ds.info.mean) and facts["std"] == list(ds.info.std)
    assert [f"{s['path']} ({s['reason']})" for s in facts["skipped"]] == named

    assert main(["data", "verify", "--dataset", spec, "--image-size", "16", "--channels", "1"]) == 0
    text = capsys.readouterr().out
    gray = load_dataset(spec, image_size=16, channels=1).info
    for part in ("2 classes: cat, dog", "train: 8 images (cat 4, dog 4)", "test: 7 images (cat 4, dog 3)",
                 "images: 16x16, 1 channel (--channels 1), uint8", "stored as: 32x32 (15)",
                 f"normalised with mean {gray.mean[0]:.4f}; std {gray.std[0]:.4f}", "skipped 5 files:",
                 *(f"    {n}\n" for n in named), "structure OK"):
        assert part in text


def test_data_info_on_a_broken_folder_is_one_line(tmp_path, capsys):
    write_images(tmp_path / "d")
    first_image(tmp_path / "d").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["data", "verify", "--dataset", f"folder:{tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(first_image(tmp_path / "d")) in err and "cannot read image" in err


# ---------------------------------------------------------------- --data-dir

def test_a_data_dir_that_does_not_exist_is_no_such_folder(tmp_path):
    missing = tmp_path / "typo"
    result = run_cli("data", "download", "--dataset", "cifar10", "--data-dir", str(missing))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cifarlab: error: --data-dir {missing}: no such folder (create it")
    assert not missing.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("cifar10", tmp_path / "file")


def test_data_info_json_for_a_built_in_dataset(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=20, test=10)
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["present"] and facts["splits"]["train"]["images"] == 100 and facts["splits"]["test"]["images"] == 10
    assert sum(facts["splits"]["train"]["per_class"].values()) == 100 and len(facts["classes"]) == 10
    assert facts["mean"] == [0.4914, 0.4822, 0.4465] and facts["image_size"] == [32, 32]   # what training uses
    assert main(["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["present"] is False
