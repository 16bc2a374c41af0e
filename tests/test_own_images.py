"""`--dataset folder:PATH` from the command line: real CIFAR PNGs in the ImageFolder layout train, evaluate and
predict; every kind of broken folder stops before training with one line naming it, and exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cifarlab.data.sources import load_dataset
from cifarlab.run import load_run

from conftest import run_cli

PER_CLASS = {"train": 150, "test": 40}


def write_pngs(ds, root, per_class: dict) -> Path:
    """A dataset's first images of each class written out as PNG files: ROOT/train/<class>/*.png, ROOT/test/..."""
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        written = {}
        for image, label in zip(split.images, split.labels.tolist()):
            name = ds.classes[label]
            if written.get(name, 0) < per_class[split_name]:
                folder = root / split_name / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{written.get(name, 0):04d}.png")
                written[name] = written.get(name, 0) + 1
    return root


@pytest.fixture(scope="module")
def png_folder(cifar_mini, tmp_path_factory):
    """cifar-mini written out as PNG files (150 train, 40 test images per class): enough to beat chance clearly."""
    return write_pngs(load_dataset("cifar10", cifar_mini, download_missing=False), tmp_path_factory.mktemp("pets"),
                      PER_CLASS)


@pytest.fixture(scope="module")
def sample_png_folder(cifar_sample, tmp_path_factory):
    """The shipped sample written out as PNG files (20 train, 10 test images per class): for what a folder's
    structure does, not for accuracy."""
    return write_pngs(load_dataset("cifar10", cifar_sample, download_missing=False),
                      tmp_path_factory.mktemp("sample-pets"), {"train": 20, "test": 10})


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "CIFARLAB_CACHE": str(tmp_path / "cache")}


def test_an_image_folder_trains_evaluates_and_predicts(png_folder, tmp_path, env):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "basic-cnn", "--dataset", f"folder:{png_folder}", "--epochs", "3",
                     "--quiet", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    run = load_run(out)
    assert run.summary["final_test_acc"] > 20.0                 # 10 classes: chance is 10%
    assert run.config["train_size"] == 1500 and run.config["test_size"] == 400
    assert run.config["classes"] == sorted(p.name for p in (png_folder / "train").iterdir())
    assert list(run.config["data_info"]["mean"]) == pytest.approx([0.49, 0.48, 0.45], abs=0.03)
    assert list((tmp_path / "cache").rglob("*")), "the decoded images are cached in CIFARLAB_CACHE"

    result = run_cli("evaluate", str(out), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(run.summary["final_test_acc"], abs=0.101)
    cat = next((png_folder / "test" / "cat").iterdir())
    result = run_cli("predict", str(out), str(cat), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["top"][0]["label"] in run.config["classes"]


def copy_of(png_folder, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(png_folder, root)
    return root


def truncate_an_image(root):
    bad = root / "train" / "cat" / "0003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def empty_a_class(root):
    for f in (root / "train" / "frog").iterdir():
        f.unlink()
    return root / "train" / "frog"


def add_a_test_only_class(root):
    (root / "test" / "zebra").mkdir()
    shutil.copy(next((root / "test" / "cat").iterdir()), root / "test" / "zebra" / "z.png")
    return root / "test" / "zebra"


def remove_every_image(root):
    for f in root.rglob("*.png"):
        f.unlink()
    return root / "train"


def mix_sizes(root):
    odd = root / "train" / "dog" / "0000.png"
    Image.open(odd).resize((40, 40)).save(odd)
    return odd


@pytest.mark.parametrize("damage", [truncate_an_image, empty_a_class, add_a_test_only_class, remove_every_image,
                                    mix_sizes])
def test_a_broken_folder_stops_with_one_line_naming_the_problem(sample_png_folder, tmp_path, env, damage):
    root = copy_of(sample_png_folder, tmp_path)
    named = damage(root)
    result = run_cli("train", "--model", "basic-cnn", "--dataset", f"folder:{root}", "--epochs", "1",
                     "--out", str(tmp_path / "run"), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("cifarlab: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(named) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()              # nothing trained


def test_a_missing_folder_and_mixed_sizes_with_image_size(sample_png_folder, tmp_path, env):
    result = run_cli("train", "--model", "basic-cnn", "--dataset", f"folder:{tmp_path / 'nowhere'}", env=env)
    assert result.returncode == 2 and result.stderr == f"cifarlab: error: {tmp_path / 'nowhere'}: no such folder\n"
    root = copy_of(sample_png_folder, tmp_path)
    mix_sizes(root)
    result = run_cli("train", "--model", "basic-cnn", "--dataset", f"folder:{root}", "--image-size", "32",
                     "--epochs", "1", "--limit-train", "100", "--quiet", "--out", str(tmp_path / "run"), env=env)
    assert result.returncode == 0, result.stderr
    assert load_run(tmp_path / "run").dataset_info().size == 32
