"""The user's own images: folder:PATH (ImageFolder of real CIFAR PNGs), npz:FILE, and save_arrays."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.data import custom, imagedecode
from cifarlab.data.sources import load_dataset
from cifarlab.errors import DataError, UsageError

from conftest import SAMPLE

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar():
    """Real CIFAR-10 images (the shipped sample: 20 train and 10 test per class), as the built-in loader reads them."""
    return load_dataset("cifar10", SAMPLE, download_missing=False)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CIFARLAB_CACHE", str(folder))
    return folder


def pick(split, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` images of each class, NHWC uint8, and their labels."""
    images, labels = split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy()
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    keep.sort()
    return images[keep], labels[keep]


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, size: int | None = None,
                mode: str = "RGB") -> tuple[np.ndarray, np.ndarray]:
    """PNGs in folder/<class>/NNNNN.png; returns the pixels (NHWC) and labels in the loader's order."""
    written = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        image = Image.fromarray(pixels).convert(mode)
        if size is not None:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        image.save(folder / CLASSES[label] / f"{i:05d}.png")
        written.append(np.asarray(image).reshape(image.size[1], image.size[0], -1))
    order = np.argsort(labels, kind="stable")        # class folders in order, files by name within each
    return np.stack(written)[order], labels[order]


def write_folder(root: Path, cifar, train: int = 5, test: int = 2, val: int = 0, **kw) -> dict:
    expected = {"train": write_split(root / "train", *pick(cifar.train, train), **kw),
                "test": write_split(root / "test", *pick(cifar.test, test), **kw)}
    if val:
        expected["val"] = write_split(root / "val", *pick(cifar.test, val), **kw)
    return expected


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.fixture
def decodes(monkeypatch):
    """Counts full decodes of a folder (a cache hit does none)."""
    calls = []
    real = custom.decode_folder

    def spy(*args, **kwargs):
        calls.append(args[0].root)
        return real(*args, **kwargs)
    monkeypatch.setattr(custom, "decode_folder", spy)
    return calls


def one_line_error(excinfo, *parts) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message
    return message


def refused(spec: str, *parts) -> str:
    """load_dataset(spec) stops with a DataError of one line naming every part; returns the message."""
    with pytest.raises(DataError) as excinfo:
        load_dataset(spec)
    return one_line_error(excinfo, *parts)


# ---------------------------------------------------------------- folder:PATH

def test_folder_decodes_exact_pixels_labels_and_stats(tmp_path, cifar):
    expected = write_folder(tmp_path / "pets", cifar, train=20, test=10)
    ds = load_dataset(f"folder:{tmp_path / 'pets'}")
    for split in ("train", "test"):
        images, labels = expected[split]
        got = getattr(ds, split)
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        assert torch.equal(got.images, nchw(images))            # PNG is lossless: every pixel as written
        assert torch.equal(got.labels, torch.from_numpy(labels).long())
    assert ds.val is None and ds.classes == CLASSES
    info = ds.info
    assert (info.name, info.title, info.num_classes, info.channels, info.size) == (
        f"folder:{tmp_path / 'pets'}", "pets", 10, 3, 32)
    assert (info.folder, info.train_files, info.test_files, info.archives) == ("", (), (), ())
    assert info.default_classes == tuple(CLASSES)
    pixels = expected["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 1, 2)), rtol=1e-12)
    assert all(isinstance(v, float) for v in info.mean + info.std)


def test_worker_processes_give_the_same_tensors(tmp_path, cifar, monkeypatch):
    write_folder(tmp_path / "d", cifar, train=20, test=10)
    here = load_dataset(f"folder:{tmp_path / 'd'}")
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.setattr(imagedecode, "MIN_FILES_PER_WORKER", 50)       # 300 files: several chunks, 2 workers
    monkeypatch.setattr(imagedecode, "CHUNK", 16)
    monkeypatch.setattr(imagedecode, "worker_count", lambda n: 2)
    real_decode_here = imagedecode.decode_here
    monkeypatch.setattr(imagedecode, "decode_here", None)             # every chunk must come from a worker
    pooled = load_dataset(f"folder:{tmp_path / 'd'}")
    assert torch.equal(here.train.images, pooled.train.images)
    assert torch.equal(here.test.images, pooled.test.images)
    assert here.info == pooled.info

    # Workers that die without a report (here: exit at once) cost speed only: their chunks are decoded here.
    monkeypatch.setattr(imagedecode, "decode_here", real_decode_here)
    monkeypatch.setattr(imagedecode, "_BOOT", "import sys; sys.exit(1)")
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "third-cache"))
    fallback = load_dataset(f"folder:{tmp_path / 'd'}")
    assert torch.equal(here.train.images, fallback.train.images)


def test_progress_bar_on_a_terminal_only(tmp_path, cifar, capsys, monkeypatch):
    write_folder(tmp_path / "d", cifar, train=2, test=1)
    load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    err = capsys.readouterr().err                   # a pipe or a log file: no bar, only the channels line
    assert "\r" not in err and err.count("\n") == 1 and "3 channels" in err
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache-2"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    load_dataset(f"folder:{tmp_path / 'd'}", quiet=False)
    assert "decoding d" in capsys.readouterr().err
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache-3"))
    load_dataset(f"folder:{tmp_path / 'd'}", quiet=True)
    assert capsys.readouterr().err == ""


def test_second_load_comes_from_the_cache(tmp_path, cifar, cache, decodes):
    write_folder(tmp_path / "d", cifar)
    before = sorted(p for p in (tmp_path / "d").rglob("*"))
    first = load_dataset(f"folder:{tmp_path / 'd'}")
    second = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(decodes) == 1
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert first.info == second.info
    assert sorted(p for p in (tmp_path / "d").rglob("*")) == before            # nothing written beside the images
    assert [p.suffix for p in (cache / "folders").iterdir()] == [".safetensors"]  # no temp file left behind


@pytest.mark.parametrize("change", ["touch", "add", "remove"])
def test_a_changed_folder_is_decoded_again(tmp_path, cifar, decodes, change):
    write_folder(tmp_path / "d", cifar)
    first = load_dataset(f"folder:{tmp_path / 'd'}")
    cat = sorted((tmp_path / "d" / "train" / "cat").iterdir())
    if change == "touch":
        stat = cat[0].stat()
        os.utime(cat[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif change == "add":
        (cat[0].parent / "zz-new.png").write_bytes(cat[0].read_bytes())
    else:
        cat[0].unlink()
    again = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(decodes) == 2
    assert len(again.train) == len(first.train) + {"touch": 0, "add": 1, "remove": -1}[change]
    assert len(list((tmp_path / "cache" / "folders").iterdir())) == 1          # replaced, not accumulated


@pytest.mark.parametrize("damage", ["truncate", "flip-a-pixel", "garbage"])
def test_a_damaged_cache_is_rebuilt(tmp_path, cifar, cache, decodes, damage):
    write_folder(tmp_path / "d", cifar)
    first = load_dataset(f"folder:{tmp_path / 'd'}")
    [cached] = (cache / "folders").iterdir()
    raw = bytearray(cached.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "flip-a-pixel":
        raw[-5000] ^= 0xFF                     # inside the image data, past the header
    else:
        raw = bytearray(b"not a cache file")
    cached.write_bytes(bytes(raw))
    again = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(decodes) == 2
    assert torch.equal(again.train.images, first.train.images)
    load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(decodes) == 2                   # the rebuilt cache is sound again


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_cache_files_take_their_mode_from_the_umask(tmp_path, cifar, cache, decodes, umask, mode):
    write_folder(tmp_path / "d", cifar)
    old = os.umask(umask)
    try:
        first = load_dataset(f"folder:{tmp_path / 'd'}")
        arrays = custom.save_arrays(*pick(cifar.train, 1), *pick(cifar.test, 1))
    finally:
        os.umask(old)
    [cached] = (cache / "folders").iterdir()
    assert oct(cached.stat().st_mode & 0o777) == oct(mode)
    assert oct(arrays.stat().st_mode & 0o777) == oct(mode)
    again = load_dataset(f"folder:{tmp_path / 'd'}")           # the cache still reads back whole
    assert len(decodes) == 1
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.labels, first.test.labels)


def test_an_unwritable_cache_only_warns(tmp_path, cifar, monkeypatch):
    write_folder(tmp_path / "d", cifar)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "a-file"))
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache"):
        ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(ds.train) == 50


def test_image_size_resizes_with_pillow_bicubic(tmp_path, cifar):
    expected = write_folder(tmp_path / "d", cifar, size=40)
    ds = load_dataset(f"folder:{tmp_path / 'd'}", image_size=32)
    assert ds.train.images.shape == (50, 3, 32, 32) and ds.info.size == 32
    resized = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BICUBIC))
                        for x in expected["train"][0]])
    assert torch.equal(ds.train.images, nchw(resized))
    assert torch.equal(load_dataset(f"folder:{tmp_path / 'd'}").train.images, nchw(expected["train"][0]))


def test_image_size_makes_mixed_sizes_usable(tmp_path, cifar):
    write_folder(tmp_path / "d", cifar)
    Image.new("RGB", (64, 48), "red").save(tmp_path / "d" / "train" / "cat" / "big.jpg")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", image_size=24)
    assert ds.train.images.shape == (51, 3, 24, 24)


def test_channels(tmp_path, cifar):
    expected = write_folder(tmp_path / "d", cifar)
    gray = load_dataset(f"folder:{tmp_path / 'd'}", channels=1)
    luma = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in expected["train"][0]])
    assert gray.info.channels == 1 and torch.equal(gray.train.images, torch.from_numpy(luma)[:, None])
    assert len(gray.info.mean) == len(gray.info.std) == 1

    write_folder(tmp_path / "g", cifar, mode="L")
    assert load_dataset(f"folder:{tmp_path / 'g'}").train.images.shape[1] == 1         # taken from the images
    as_rgb = load_dataset(f"folder:{tmp_path / 'g'}", channels=3).train.images
    assert as_rgb.shape[1] == 3 and torch.equal(as_rgb[:, 0], as_rgb[:, 2])


def test_val_folder_is_used(tmp_path, cifar):
    expected = write_folder(tmp_path / "d", cifar, val=3)
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(ds.val) == 30
    assert torch.equal(ds.val.images, nchw(expected["val"][0]))
    assert torch.equal(ds.val.labels, torch.from_numpy(expected["val"][1]).long())


def test_hidden_files_and_other_extensions_are_ignored(tmp_path, cifar):
    write_folder(tmp_path / "d", cifar)
    cat = tmp_path / "d" / "train" / "cat"
    (cat / "notes.txt").write_text("not an image")
    (cat / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "d" / "train" / ".ipynb_checkpoints").mkdir()
    next(cat.iterdir()).rename(cat / "UPPER.PNG")
    pixels = np.array(Image.open(next(cat.iterdir())))
    Image.fromarray(pixels).save(cat / "copy.bmp")
    Image.fromarray(pixels).save(cat / "copy.webp", lossless=True)
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert len(ds.train) == 52 and ds.classes == CLASSES
    names = sorted(p.name for p in cat.iterdir() if p.suffix.lower() in (".png", ".bmp", ".webp")
                   and not p.name.startswith("."))
    cats = ds.train.images[ds.train.labels == CLASSES.index("cat")]
    for copy in ("copy.bmp", "copy.webp"):                                       # both lossless
        assert torch.equal(cats[names.index(copy)], torch.from_numpy(pixels).permute(2, 0, 1))


def test_a_truncated_image_is_named(tmp_path, cifar, monkeypatch):
    write_folder(tmp_path / "d", cifar, train=20, test=10)
    bad = sorted((tmp_path / "d" / "train" / "horse").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
    refused(f"folder:{tmp_path / 'd'}", bad, "cannot read image")
    monkeypatch.setattr(imagedecode, "worker_count", lambda n: 2)      # the same report from a worker process
    monkeypatch.setattr(imagedecode, "CHUNK", 32)
    refused(f"folder:{tmp_path / 'd'}", bad, "cannot read image")
    assert not (tmp_path / "cache" / "folders").exists()                # nothing cached from partial data


def test_mixed_sizes_name_two_files(tmp_path, cifar, monkeypatch):
    write_folder(tmp_path / "d", cifar)
    odd = tmp_path / "d" / "test" / "ship" / "odd.png"
    Image.new("RGB", (40, 30)).save(odd)
    first = sorted((tmp_path / "d" / "train" / "airplane").iterdir())[0]
    for workers in (1, 2):
        monkeypatch.setattr(imagedecode, "worker_count", lambda n: workers)
        refused(f"folder:{tmp_path / 'd'}", first, "32x32", odd, "40x30", "--image-size N")


def test_a_non_square_first_image(tmp_path, cifar):
    write_folder(tmp_path / "d", cifar)
    first = sorted((tmp_path / "d" / "train" / "airplane").iterdir())[0]
    Image.new("RGB", (40, 30)).save(first)
    refused(f"folder:{tmp_path / 'd'}", first, "40x30", "not square", "--image-size N")


def break_layout(root: Path, case: str) -> Path:
    """Damage a written folder; returns the path the error must name."""
    if case == "empty-class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
        (root / "train" / "dog" / "readme.txt").write_text("")
        return root / "train" / "dog"
    if case == "class-only-in-test":
        (root / "test" / "zebra").mkdir()
        Image.new("RGB", (32, 32)).save(root / "test" / "zebra" / "z.png")
        return root / "test" / "zebra"
    if case == "class-only-in-val":
        (root / "val" / "zebra").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(root / "val" / "zebra" / "z.png")
        return root / "val" / "zebra"
    if case == "no-images":
        for split in ("train", "test"):
            for folder in (root / split).iterdir():
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
        return root / "train"
    if case in ("no-train", "no-test"):
        split = case[3:]
        for folder in (root / split).iterdir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        (root / split).rmdir()
        return root
    raise AssertionError(case)


@pytest.mark.parametrize("case, words", [
    ("empty-class", "empty class folder"), ("class-only-in-test", "not in"), ("class-only-in-val", "not in"),
    ("no-images", "no images"), ("no-train", "no train/ folder"), ("no-test", "no test/ folder")])
def test_bad_layouts_are_named(tmp_path, cifar, case, words):
    write_folder(tmp_path / "d", cifar, train=2, test=1)
    named = break_layout(tmp_path / "d", case)
    refused(f"folder:{tmp_path / 'd'}", named, words)


def test_missing_paths_and_bad_options(tmp_path):
    refused(f"folder:{tmp_path / 'nowhere'}", tmp_path / "nowhere", "no such folder")
    (tmp_path / "file").write_text("")
    refused(f"folder:{tmp_path / 'file'}", tmp_path / "file", "not a folder")
    with pytest.raises(DataError, match="give a path"):
        load_dataset("folder:")
    with pytest.raises(UsageError, match="--channels must be 1 or 3"):
        load_dataset(f"folder:{tmp_path}", channels=2)
    with pytest.raises(UsageError, match="--image-size must be a positive integer"):
        load_dataset(f"folder:{tmp_path}", image_size=0)


def test_the_worker_module_never_imports_torch():
    # Workers run the file by path; importing torch there would cost a second or more per worker.
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'cifarlab')))")
    out = subprocess.run([sys.executable, "-c", code, imagedecode.__file__], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- npz:FILE

def arrays(cifar, per_class=3):
    x_train, y_train = pick(cifar.train, per_class)
    x_test, y_test = pick(cifar.test, 1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_round_trip(tmp_path, cifar, layout):
    data = arrays(cifar)
    stored = dict(data, classes=np.array(CLASSES))
    if layout == "NCHW":
        stored.update(x_train=data["x_train"].transpose(0, 3, 1, 2), x_test=data["x_test"].transpose(0, 3, 1, 2))
    np.savez(tmp_path / "mine.npz", **stored)
    ds = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert torch.equal(ds.train.images, nchw(data["x_train"]))
    assert torch.equal(ds.test.labels, torch.from_numpy(data["y_test"]).long())
    assert ds.classes == CLASSES and ds.val is None
    assert (ds.info.title, ds.info.size, ds.info.channels, ds.info.num_classes) == ("mine.npz", 32, 3, 10)
    np.testing.assert_allclose(ds.info.mean, (data["x_train"] / 255).mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(ds.info.std, (data["x_train"] / 255).std(axis=(0, 1, 2)), rtol=1e-12)


def test_npz_grayscale_val_keras_labels_and_conversions(tmp_path, cifar):
    data = arrays(cifar)
    gray = {k: (v[..., 0] if k.startswith("x_") else v[:, None]) for k, v in data.items()}   # NHW, (N, 1)
    np.savez(tmp_path / "g.npz", **gray, x_val=gray["x_test"], y_val=gray["y_test"])
    ds = load_dataset(f"npz:{tmp_path / 'g.npz'}")
    assert ds.train.images.shape == (30, 1, 32, 32) and ds.classes == [str(i) for i in range(10)]
    assert torch.equal(ds.val.images, ds.test.images)
    rgb = load_dataset(f"npz:{tmp_path / 'g.npz'}", channels=3, image_size=16)
    assert rgb.train.images.shape == (30, 3, 16, 16) and torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 1])
    expected = np.array(Image.fromarray(gray["x_train"][0]).resize((16, 16), Image.Resampling.BICUBIC))
    assert torch.equal(rgb.train.images[0, 0], torch.from_numpy(expected))
    np.savez(tmp_path / "c.npz", **data)
    luma = load_dataset(f"npz:{tmp_path / 'c.npz'}", channels=1).train.images
    assert torch.equal(luma[0, 0], torch.from_numpy(np.array(Image.fromarray(data["x_train"][0]).convert("L"))))


def npz_cases(data):
    n = len(data["x_train"])
    return {
        "missing key": ({k: v for k, v in data.items() if k != "y_test"}, "missing 'y_test'"),
        "float images": (dict(data, x_train=data["x_train"] / 255), "x_train must be uint8"),
        "lengths differ": (dict(data, y_train=data["y_train"][:-1]), f"{n - 1} labels for {n} images"),
        "label out of range": (dict(data, y_test=data["y_test"] + 5, classes=np.array(CLASSES)), "outside 0..9"),
        "negative label": (dict(data, y_train=data["y_train"] - 1), "label -1"),
        "bad shape": (dict(data, x_train=data["x_train"][..., :2]), "has shape"),
        "float labels": (dict(data, y_train=data["y_train"].astype(np.float32)), "integer labels"),
        "shapes differ": (dict(data, x_test=data["x_test"][:, :16, :16]), "x_test images are 16x16x3"),
        "val alone": (dict(data, x_val=data["x_test"]), "x_val and y_val go together"),
    }


@pytest.mark.parametrize("case", ["missing key", "float images", "lengths differ", "label out of range",
                                  "negative label", "bad shape", "float labels", "shapes differ", "val alone"])
def test_npz_errors(tmp_path, cifar, case):
    stored, words = npz_cases(arrays(cifar))[case]
    np.savez(tmp_path / "bad.npz", **stored)
    refused(f"npz:{tmp_path / 'bad.npz'}", tmp_path / "bad.npz", words)


def test_npz_unreadable_files(tmp_path, cifar):
    refused(f"npz:{tmp_path / 'absent.npz'}", tmp_path / "absent.npz", "no such file")
    (tmp_path / "text.npz").write_text("hello")
    refused(f"npz:{tmp_path / 'text.npz'}", tmp_path / "text.npz", "not an .npz file")
    np.savez(tmp_path / "objects.npz", **arrays(cifar), classes=np.array([object(), 1], dtype=object))
    # object arrays need pickle, which is never allowed
    refused(f"npz:{tmp_path / 'objects.npz'}", tmp_path / "objects.npz", "dtype=object")
    data = arrays(cifar)
    np.savez(tmp_path / "wide.npz", **dict(data, x_train=data["x_train"][:, :, :28], x_test=data["x_test"][:, :, :28]))
    refused(f"npz:{tmp_path / 'wide.npz'}", "28x32", "not square", "--image-size N")
    assert load_dataset(f"npz:{tmp_path / 'wide.npz'}", image_size=32).train.images.shape[2:] == (32, 32)


# ---------------------------------------------------------------- save_arrays

def test_save_arrays_names_files_by_content(cifar, cache):
    data = arrays(cifar)
    from_numpy = custom.save_arrays(data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    as_tensors = [torch.from_numpy(data["x_train"]).permute(0, 3, 1, 2), torch.from_numpy(data["y_train"]),
                  torch.from_numpy(data["x_test"]).permute(0, 3, 1, 2), torch.from_numpy(data["y_test"])]
    assert custom.save_arrays(*as_tensors) == from_numpy                  # same content, NCHW or NHWC
    assert from_numpy.parent == cache / "arrays" and len(from_numpy.stem) == 64
    named = custom.save_arrays(*as_tensors, classes=CLASSES)
    assert named != from_numpy
    ds = load_dataset(f"npz:{named}")
    assert torch.equal(ds.train.images, as_tensors[0]) and ds.classes == CLASSES
    other = custom.save_arrays(data["x_train"][1:], data["y_train"][1:], data["x_test"], data["y_test"])
    assert other != from_numpy
    assert sorted(p.name for p in (cache / "arrays").iterdir()) == sorted(p.name for p in (from_numpy, named, other))


def test_save_arrays_rewrites_a_damaged_file(cifar):
    data = arrays(cifar)
    path = custom.save_arrays(*data.values())
    path.write_bytes(path.read_bytes()[:100])
    assert custom.save_arrays(*data.values()) == path
    assert torch.equal(load_dataset(f"npz:{path}").test.images, nchw(data["x_test"]))


def test_save_arrays_refuses_bad_input(cifar):
    data = arrays(cifar)
    with pytest.raises(UsageError) as excinfo:
        custom.save_arrays(data["x_train"].astype(np.float32), data["y_train"], data["x_test"], data["y_test"])
    one_line_error(excinfo, "x_train must be uint8", "float32")
    with pytest.raises(UsageError, match="x_test must be a numpy array or a torch tensor"):
        custom.save_arrays(data["x_train"], data["y_train"], data["x_test"].tolist(), data["y_test"])
    with pytest.raises(UsageError, match="y_train has 29 labels for 30 images"):
        custom.save_arrays(data["x_train"], data["y_train"][1:], data["x_test"], data["y_test"])
    with pytest.raises(UsageError, match=r"outside 0\.\.2 \(3 class names given\)"):
        custom.save_arrays(*data.values(), classes=["a", "b", "c"])
