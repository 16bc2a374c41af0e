"""What a study checks before it trains anything, and the refusals that keep a number what was asked: every
folder checked first (sequential studies too), a compare with no split in common, --overwrite of a folder
that holds more than a run, a resume on other data files, --jobs with a --data-dir that does not exist, the
Ray driver's comparison, and the command a best recipe needs. All on the sample shipped with cifarlab."""

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest

import cifarlab
from cifarlab.errors import UsageError
from cifarlab.fingerprint import reuse_state
from cifarlab.recipes import train_config
from cifarlab.run import Run
from cifarlab.study.runs import Launch, run_all

TINY = {"model": "basic-cnn", "dataset": "cifar10", "limit_train": 100, "epochs": 1, "quiet": True,
        "eval_batch_size": 100, "model_args": {}}


def tiny(data, out, **changes):
    return train_config({**TINY, "data_dir": str(data), "out": str(out), **changes})


@pytest.fixture(scope="module")
def trained(cifar_sample, tmp_path_factory):
    """Two finished tiny runs at lr 0.001: one scored on test only, one on val only (--no-test --val-size)."""
    from cifarlab.training.engine import fit

    base = tmp_path_factory.mktemp("trained")
    test_only = tiny(cifar_sample, base / "test-only")
    val_only = tiny(cifar_sample, base / "val-only", test=False, val_size=20)
    fit(test_only)
    fit(val_only)
    return test_only, val_only


def test_compare_of_runs_with_no_split_in_common_is_one_line(trained):
    test_only, val_only = trained
    with pytest.raises(UsageError, match=r"^no split was scored by every run \(.*test-only test only, "
                                         r".*val-only val only\): nothing to compare$"):
        cifarlab.compare([test_only.out, val_only.out])


def test_a_sequential_study_checks_every_folder_before_the_first_run_trains(trained, cifar_sample, tmp_path):
    shutil.copytree(trained[0].out, tmp_path / "seed-1")          # seed 1's folder: a run at lr 0.001
    cfgs = [dataclasses.replace(tiny(cifar_sample, tmp_path / f"seed-{s}", lr=0.05), seed=s) for s in (0, 1)]
    with pytest.raises(UsageError, match=r"seed-1 was trained with"):
        run_all(cfgs)
    assert not (tmp_path / "seed-0").exists()                     # seed 0 was never trained


def test_ablate_no_test_without_val_size_is_refused_before_any_training(cifar_sample, tmp_path):
    with pytest.raises(UsageError, match="--no-test without --val-size"):
        cifarlab.ablate("basic-cnn", "cifar10", without="dropout", seeds=1, out=tmp_path / "a", test=False,
                        data_dir=str(cifar_sample), limit_train=100, epochs=1, quiet=True)
    assert not (tmp_path / "a").exists()


def test_overwrite_refuses_a_folder_holding_files_cifarlab_did_not_write(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    (out / "src").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match=r"holds files that are not a run's \(my_notes.txt, src\): --overwrite "
                                         "replaces a run folder only"):
        Run.create(out, overwrite=True, default_name="x")
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "src").is_dir()
    monkeypatch.chdir(out)
    with pytest.raises(UsageError, match="is the current folder: --overwrite would empty it"):
        Run.create(".", overwrite=True, default_name="x")


def test_resume_on_other_data_files_is_refused(trained, cifar_sample, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(cifar_sample, other)
    batch = other / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        data = pickle.load(f, encoding="bytes")
    data[b"data"] = data[b"data"][::-1].copy()                  # the same images in another order
    with open(batch, "wb") as f:
        pickle.dump(data, f, protocol=2)
    with pytest.raises(UsageError, match=r"was trained on other cifar10 files \(sha256 [0-9a-f]{12}\) than "
                                         r"--data-dir .*other holds \([0-9a-f]{12}\)"):
        cifarlab.resume(trained[0].out, data_dir=str(other))


def test_jobs_with_a_data_dir_that_does_not_exist_is_refused_before_any_worker(tmp_path):
    cfgs = [tiny(tmp_path / "nowhere", tmp_path / "study" / f"seed-{s}", seed=s) for s in (0, 1)]
    with pytest.raises(UsageError, match=r"--data-dir .*nowhere: no such folder"):
        run_all(cfgs, Launch(jobs=2))
    assert not (tmp_path / "nowhere").exists()


def test_the_ray_driver_leaves_what_resolves_on_the_node_to_the_node(trained, tmp_path):
    folder = tmp_path / "gpu-run"
    shutil.copytree(trained[0].out, folder)
    config = json.loads((folder / "config.json").read_text())
    config["fingerprint"].update(device="cuda", threads=None, precision="bf16")     # as a GPU node records it
    (folder / "config.json").write_text(json.dumps(config))
    cfg = dataclasses.replace(trained[0], out=str(folder), device="cuda")
    assert reuse_state(cfg, resolve=False) == "finished"           # a CPU-only driver does not resolve cuda
    with pytest.raises(UsageError):                                # where it trains, the device is checked
        reuse_state(dataclasses.replace(cfg, device="cpu"))


def test_a_best_recipe_names_the_settings_a_recipe_cannot_hold(tmp_path):
    from cifarlab.study.tune_results import repeat_command

    cfg = dataclasses.replace(tiny(tmp_path, tmp_path / "t", threads=1), model_args={"width": 64})
    assert repeat_command(cfg, Path("OUT/best-recipe.toml")) == (
        "cifarlab train --model basic-cnn --dataset cifar10 --recipe OUT/best-recipe.toml --model-arg width=64 "
        "--threads 1")
