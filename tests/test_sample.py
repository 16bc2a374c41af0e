"""The real CIFAR sample shipped in the package: its content, `--sample` on the commands, and its rebuild."""

import fnmatch
import json
import sys
from pathlib import Path

import pytest
import torch

import cifarlab
from cifarlab.cli import main
from cifarlab.data.sources import DATASETS, load_dataset

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.mark.parametrize("name,per_class", [("cifar10", (20, 10)), ("cifar100", (2, 1))])
def test_the_sample_holds_real_class_balanced_images_in_the_official_layout(cifar_sample, name, per_class):
    ds = load_dataset(name, cifar_sample, download_missing=False)
    assert (len(ds.train), len(ds.test)) == (200, 100)
    for split, k in zip((ds.train, ds.test), per_class):
        assert split.labels.bincount(minlength=ds.info.num_classes).tolist() == [k] * ds.info.num_classes
    assert ds.classes[:3] == (["airplane", "automobile", "bird"] if name == "cifar10" else ["apple", "aquarium_fish",
                                                                                              "baby"])
    # Photographs, not noise: neighbouring pixels correlate strongly, and the colour means are CIFAR's.
    x = ds.train.images.float() / 255
    left, right = x[..., :-1].flatten(), x[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.8
    assert x.mean((0, 2, 3)).tolist() == pytest.approx(list(DATASETS[name].mean), abs=0.05)


def test_the_sample_is_at_most_2_mb_and_every_file_is_package_data():
    files = [p for p in cifarlab.sample_dir().rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert sum(p.stat().st_size for p in files) <= 2_000_000
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cifarlab"]
    package = Path(cifarlab.__file__).parent
    missing = [p for p in files if not any(fnmatch.fnmatch(p.relative_to(package).as_posix(), g) for g in globs)]
    assert len(files) == 10 and missing == []


def test_build_sample_rebuilds_the_shipped_files_byte_for_byte(cifar_mini, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import build_sample
    finally:
        sys.path.remove(str(REPO / "tools"))
    build_sample.main([str(cifar_mini), "--out", str(tmp_path)])
    shipped = sorted(p.relative_to(cifarlab.sample_dir()) for p in cifarlab.sample_dir().glob("cifar-*/*"))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.glob("cifar-*/*")) == shipped
    assert all((tmp_path / p).read_bytes() == (cifarlab.sample_dir() / p).read_bytes() for p in shipped)


def test_data_verify_sample_reads_the_shipped_files(capsys):
    assert main(["data", "verify", "--sample", "--dataset", "cifar100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cifar100 (CIFAR-100) in {cifarlab.sample_dir() / 'cifar-100-python'}\n  100 classes: "
                          "apple, aquarium_fish,")
    assert "  train: 200 images (2 to 2 per class)\n  test: 100 images (1 to 1 per class)\n" in out


@pytest.mark.parametrize("args,line", [
    (["train", "--model", "basic-cnn", "--dataset", "cifar10", "--sample", "--data-dir", "data"],
     f"cifarlab: error: --sample and --data-dir data both given: --sample is the data folder {cifarlab.sample_dir()}; "
     "pass one of them"),
    (["train", "--model", "basic-cnn", "--dataset", "mnist", "--sample"],
     "cifarlab: error: --sample holds cifar10 and cifar100, not mnist: pass --data-dir DIR, or leave --sample out "
     "to download it"),
    (["data", "info", "--dataset", "fashion-mnist", "--sample"],
     "cifarlab: error: --sample holds cifar10 and cifar100, not fashion-mnist: pass --data-dir DIR, or leave "
     "--sample out to download it"),
    (["reproduce", "--sample", "--data-dir", "data"],
     f"cifarlab: error: --sample and --data-dir data both given: --sample is the data folder {cifarlab.sample_dir()}; "
     "pass one of them"),
], ids=["train-and-data-dir", "train-mnist", "data-fashion-mnist", "reproduce-and-data-dir"])
def test_sample_with_another_data_dir_or_dataset_is_one_line_exit_2(args, line, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_train_sample_trains_offline_on_the_shipped_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "empty"))    # a download would land here
    out = tmp_path / "run"
    assert main(["train", "--model", "basic-cnn", "--dataset", "cifar100", "--sample", "--epochs", "1",
                 "--limit-train", "64", "--no-tensorboard", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_dir"] == str(cifarlab.sample_dir()) and config["download"] is False
    assert json.loads((out / "summary.json").read_text())["dataset"] == "cifar100"
    assert not (tmp_path / "empty").exists()


def test_metrics_frame_is_a_dataframe_of_the_metrics_rows(cifar_sample, tmp_path):
    pd = pytest.importorskip("pandas")      # the [notebook] extra
    run = cifarlab.train("basic-cnn", "cifar10", data_dir=cifar_sample, epochs=2, limit_train=64, quiet=True,
                         out=tmp_path / "run")
    frame = run.metrics_frame()
    assert isinstance(frame, pd.DataFrame) and frame["epoch"].tolist() == [1, 2]
    assert frame["test_acc"].tolist() == [row["test_acc"] for row in run.metrics]
    assert frame["test_acc"].iloc[-1] == run.summary["final_test_acc"]


def test_reproduce_sample_defaults_to_half_scale_in_its_own_folder_and_ends_with_the_full_command(monkeypatch,
                                                                                                  capsys):
    from cifarlab.study import reproduce

    asked = {}

    class Result(dict):
        def __str__(self):
            return "TABLE\n"

    def fake(data_dir, scale, tuned, out, overrides, launch, questions, robustness):
        asked.update(data_dir=data_dir, scale=scale, out=out, overrides=overrides)
        return Result(folder=out)

    monkeypatch.setattr(reproduce, "reproduce", fake)
    assert main(["reproduce", "--sample"]) == 0
    assert asked == {"data_dir": str(cifarlab.sample_dir()), "scale": 0.5, "out": "runs/reproduce-sample",
                     "overrides": {"download": False}}
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["TABLE", "report: runs/reproduce-sample/report.html (and report.md)"]
    assert lines[-1] == "  cifarlab reproduce --out runs/reproduce"
    assert main(["reproduce", "--sample", "--scale", "1", "--out", "mine"]) == 0
    assert (asked["scale"], asked["out"]) == (1.0, "mine")
    assert main(["reproduce"]) == 0                     # without --sample: nothing changes
    assert asked == {"data_dir": None, "scale": 1.0, "out": "runs/reproduce", "overrides": {}}
