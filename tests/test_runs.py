"""Run folders a study trusts: fingerprints (reuse and resume only the exact same run), --overwrite from an empty
folder, file modes from the umask, cleanup when a run fails, and studies of runs that never scored test."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

import cifarlab
from cifarlab.errors import CifarlabError, Interrupted, UsageError
from cifarlab.recipes import train_config
from cifarlab.run import Run, atomic_write_text, load_run
from conftest import StopAtStep, run_cli

TINY = {"model": "basic-cnn", "dataset": "cifar10", "limit_train": 200, "epochs": 1, "quiet": True, "model_args": {}}


def tiny(data, out, **changes):
    """The settings of a tiny real run (as `ablate` makes them: the model's article recipe)."""
    return train_config({**TINY, "data_dir": str(data), "out": str(out), **changes}, default_recipe=True)


@pytest.fixture(scope="module")
def finished(cifar_sample, tmp_path_factory):
    """A finished tiny run at lr 0.001: (its settings, its folder). Tests copy the folder before changing it."""
    from cifarlab.training.engine import fit

    cfg = tiny(cifar_sample, tmp_path_factory.mktemp("finished") / "full" / "seed-0", lr=0.001)
    fit(cfg)
    return cfg


def copy_of(cfg, tmp_path):
    out = tmp_path / "full" / "seed-0"
    shutil.copytree(cfg.out, out)
    return dataclasses.replace(cfg, out=str(out))


# ---------------------------------------------------------------- fingerprints

def test_config_json_records_the_fingerprint_and_null_for_a_switch_the_model_lacks(finished):
    config = load_run(finished.out).config
    assert config["fingerprint"]["lr"] == 0.001 and config["fingerprint"]["limit_train"] == 200
    assert config["fingerprint"]["threads"] >= 1 and len(config["fingerprint"]["data_files"]) == 64
    assert config["batchnorm"] is None and config["fingerprint"]["batchnorm"] is None   # basic-cnn has no BatchNorm
    assert config["dropout"] is True
    assert load_run(finished.out).train_config().batchnorm is True                      # and it still loads


def test_ablate_after_a_run_with_another_lr_is_refused_in_one_line_naming_lr(finished, tmp_path):
    cfg = copy_of(finished, tmp_path)
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", cfg.data_dir,
                     "--limit-train", "200", "--epochs", "1", "--seeds", "1", "--without", "dropout", "--lr", "0.05",
                     "--out", str(tmp_path), "--quiet")
    assert result.returncode == 2
    assert result.stderr == (f"cifarlab: error: {cfg.out} was trained with lr 0.001, this study asks 0.05: "
                             "use another --out or --overwrite\n")
    assert not (tmp_path / "no-dropout").exists()                                       # nothing trained


def test_an_identical_rerun_reuses_the_finished_run(finished, tmp_path, capsys):
    from cifarlab.fingerprint import reuse_state
    from cifarlab.study.runs import run_or_reuse

    cfg = copy_of(finished, tmp_path)
    before = (tmp_path / "full" / "seed-0" / "model.safetensors").read_bytes()
    assert reuse_state(cfg) == "finished"
    run_or_reuse(dataclasses.replace(cfg, quiet=False))
    assert "already finished, reusing it" in capsys.readouterr().out
    assert (tmp_path / "full" / "seed-0" / "model.safetensors").read_bytes() == before


def test_a_study_with_overwrite_retrains_the_folder_the_refusal_named(finished, tmp_path):
    from cifarlab.study.runs import run_or_reuse

    cfg = copy_of(finished, tmp_path)
    run = run_or_reuse(dataclasses.replace(cfg, lr=0.05, overwrite=True))
    assert run.config["lr"] == 0.05 and run.config["fingerprint"]["lr"] == 0.05 and run.finished


def test_a_folder_from_before_fingerprints_is_compared_on_what_it_records(finished, tmp_path):
    from cifarlab.fingerprint import reuse_state

    cfg = copy_of(finished, tmp_path)
    config = json.loads((tmp_path / "full" / "seed-0" / "config.json").read_text())
    del config["fingerprint"]
    config["batchnorm"] = True                 # what main recorded for basic-cnn
    (tmp_path / "full" / "seed-0" / "config.json").write_text(json.dumps(config))
    assert reuse_state(cfg) == "finished"
    with pytest.raises(UsageError, match="was trained with weight-decay 0.0, this study asks 0.0005"):
        reuse_state(dataclasses.replace(cfg, weight_decay=5e-4))


def test_an_unfinished_run_of_other_settings_is_refused_not_resumed(cifar_sample, tmp_path, monkeypatch, capsys):
    from cifarlab.study.runs import run_or_reuse
    from cifarlab.training import engine

    cfg = tiny(cifar_sample, tmp_path / "run", lr=0.001)
    monkeypatch.setattr(engine, "StopSignals", StopAtStep(2))
    with pytest.raises(Interrupted, match="stopped by SIGINT at epoch 1, step 2"):
        run_or_reuse(cfg)
    monkeypatch.undo()
    saved = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UsageError, match=r"run was trained with lr 0\.001, this study asks 0\.05: use another --out"):
        run_or_reuse(dataclasses.replace(cfg, lr=0.05))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == saved        # not continued
    run_or_reuse(dataclasses.replace(cfg, quiet=False))                                 # the same settings resume
    assert "resuming from epoch 1, step 2" in capsys.readouterr().out                  # where the stop said
    assert load_run(tmp_path / "run").finished


# ---------------------------------------------------------------- --overwrite

def test_overwrite_leaves_nothing_of_the_old_run_even_if_the_new_one_dies_before_its_first_save(
        finished, tmp_path, monkeypatch):
    from cifarlab.training import engine

    cfg = copy_of(finished, tmp_path)

    def dies(*args, **kwargs):
        raise RuntimeError("the new run dies before its first save")
    monkeypatch.setattr(engine, "make_loaders", dies)          # after the folder is replaced, before any save
    with pytest.raises(RuntimeError):
        engine.fit(dataclasses.replace(cfg, overwrite=True, lr=0.05))
    folder = tmp_path / "full" / "seed-0"
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == [".lock", "checkpoints"]             # an empty checkpoints/: no last.pt, model.safetensors, config
    assert [p.name for p in folder.parent.iterdir()] == ["seed-0"]          # the old folder, moved aside, is gone
    with pytest.raises(UsageError, match="not a cifarlab run folder"):     # nothing old to continue
        cifarlab.resume(folder)


def test_overwrite_keeps_the_folder_locked_while_the_old_run_is_replaced(finished, tmp_path):
    from cifarlab.run import release_folders

    cfg = copy_of(finished, tmp_path)
    try:
        Run.create(cfg.out, overwrite=True, default_name="x")
        code = f"from cifarlab.run import lock_folder; lock_folder({cfg.out!r})"    # a second writer, elsewhere
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "is being written by another process" in other.stderr
        assert sorted(os.listdir(cfg.out)) == [".lock", "checkpoints"]
    finally:
        release_folders()


# ---------------------------------------------------------------- run folders and checkpoints of cifarlab 0.1

def test_a_run_folder_from_0_1_still_shows_its_times(finished, tmp_path):
    from cifarlab.report.summary import article_summary

    old = copy_of(finished, tmp_path).out
    summary = json.loads((tmp_path / "full" / "seed-0" / "summary.json").read_text())
    summary.pop("train_and_eval_time_s")
    summary["train_time_s"] = 123.456             # 0.1's name for training plus evaluation
    atomic_write_text(f"{old}/summary.json", json.dumps(summary))
    rows = [json.loads(line) for line in open(f"{old}/metrics.jsonl")]
    for row in rows:
        row["train_time_s"] = row.pop("train_only_time_s")          # 0.1's name in a row: training only
    atomic_write_text(f"{old}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(old)
    assert run.summary["train_and_eval_time_s"] == 123.456 and "train_time_s" not in run.summary
    assert [r["train_only_time_s"] for r in run.metrics] == [r["train_time_s"] for r in rows]
    assert "Training Time: 123.46 seconds" in article_summary(run.summary)
    table = str(cifarlab.compare([old, finished.out]))
    assert "123.46" in table and f"{load_run(finished.out).summary['train_and_eval_time_s']:.2f}" in table


def test_a_checkpoint_from_0_1_is_refused_naming_what_differs(finished, tmp_path):
    import torch

    cfg = copy_of(finished, tmp_path)
    last = tmp_path / "full" / "seed-0" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert "rng" not in checkpoint                 # rank 0's random state is stored once, in rng_ranks
    checkpoint["rng"], checkpoint["cifarlab"] = checkpoint["rng_ranks"][0], "0.1.0"
    state = checkpoint["run"]
    state["train_time"] = state.pop("train_and_eval_time")
    state["partial"]["seconds"] = state["partial"].pop("earlier_s")
    torch.save(checkpoint, last)
    with pytest.raises(UsageError) as refused:
        cifarlab.resume(cfg.out)
    assert str(refused.value) == (
        f"{last}: a checkpoint of another version of cifarlab (0.1.0; this is {cifarlab.__version__}), which this "
        "one cannot resume: has rng; run state: has train_time, lacks train_and_eval_time; partial epoch: has "
        "seconds, lacks earlier_s")


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_folder_files_take_their_mode_from_the_umask(tmp_path, umask, mode):
    import torch

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        Run(tmp_path).save_weights({"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "config.json").st_mode & 0o777) == oct(mode)
    assert oct(os.stat(tmp_path / "model.safetensors").st_mode & 0o777) == oct(mode)


def test_a_failed_weights_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    def full_disk(tensors, filename):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CifarlabError, match="model.safetensors: could not write \\(No space left on device\\)"):
        Run(tmp_path).save_weights({"w": torch.zeros(2)})
    assert os.listdir(tmp_path) == []


def test_the_tensorboard_writer_is_closed_when_a_run_fails(cifar_sample, tmp_path, monkeypatch):
    from cifarlab.training import engine

    class Writer:
        closed = False

        def add_scalar(self, *args, **kwargs):
            pass

        def flush(self):
            pass

        def close(self):
            Writer.closed = True

    def fails(row):
        raise RuntimeError("a trial pruned after its first epoch")
    monkeypatch.setattr(engine, "tensorboard_writer", lambda folder, enabled: Writer())
    with pytest.raises(RuntimeError):
        engine.fit(tiny(cifar_sample, tmp_path / "run"), on_epoch=fails)
    assert Writer.closed


# ---------------------------------------------------------------- studies of runs that never scored test

@pytest.fixture(scope="module")
def no_test_seeds(cifar_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("no-test") / "seeds"
    result = cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn", out=out, seeds=2, test=False,
                            val_size=50, data_dir=cifar_sample, limit_train=150, epochs=1, quiet=True)
    return out, result


def test_seeds_without_test_report_val_accuracy_and_say_so(no_test_seeds):
    out, result = no_test_seeds
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["final_val_acc"] for s in (0, 1)]
    assert result["scored_on"] == "val" and result["final_val_acc_per_seed"] == per_seed
    assert result["final_val_acc_mean"] == pytest.approx(sum(per_seed) / 2)
    assert [type(r) for r in result.runs] == [cifarlab.Run] * 2      # the user's Run: result.runs[0].evaluate()
    text = (out / "summary.txt").read_text()
    assert "Final Test Accuracy: not scored (--no-test)" in text
    assert f"Per-seed Val Accuracy (test not scored): {per_seed[0]:.2f}%, {per_seed[1]:.2f}%" in text


def test_compare_of_runs_without_test_compares_val_accuracy_and_says_so(no_test_seeds):
    out, _ = no_test_seeds
    a, b = (json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in (0, 1))
    text = str(cifarlab.compare([out / "seed-0", out / "seed-1"]))
    assert f"Basic CNN (seed-0) Val Accuracy (test not scored): {a['final_val_acc']:.2f}%" in text
    assert f"Improvement: {b['final_val_acc'] - a['final_val_acc']:+.2f}%" in text


def test_ablate_without_test_measures_on_val_and_says_so(cifar_sample, tmp_path):
    result = cifarlab.ablate("basic-cnn", "cifar10", without="dropout", seeds=1, out=tmp_path / "ab", test=False,
                             val_size=50, data_dir=cifar_sample, limit_train=150, epochs=1, quiet=True)
    full, gone = (json.loads((tmp_path / "ab" / v / "seed-0" / "summary.json").read_text())
                  for v in ("full", "no-dropout"))
    assert result["scored_on"] == "val"
    assert result["variants"][1]["effect_mean"] == pytest.approx(gone["final_val_acc"] - full["final_val_acc"])
    text = str(result)
    assert "scored on val (test not scored) accuracy" in text.splitlines()[0]
    assert f"Removing dropout: val (test not scored) accuracy {gone['final_val_acc']:.2f}%" in text


def test_compare_refuses_runs_on_different_datasets(finished, cifar_sample, tmp_path):
    from cifarlab.training.engine import fit

    other = tiny(cifar_sample, tmp_path / "c100", dataset="cifar100")
    fit(other)
    with pytest.raises(UsageError) as refused:
        cifarlab.compare([finished.out, other.out])
    assert str(refused.value) == (f"{finished.out} was trained on cifar10 and {other.out} on cifar100: their "
                                  "accuracies are not comparable; compare runs on one dataset")


# ---------------------------------------------------------------- wording

def test_ablate_header_and_budget_say_one_epoch_and_no_recipe():
    from cifarlab.study.ablate import budget_note, text_report

    result = {"model": "my:net", "dataset": "cifar10", "recipe": None, "epochs": 1, "seeds": 1, "limit_train": None,
              "variants": [], "skipped": [], "findings": [], "budget": budget_note(1, 1000)}
    head = text_report(result).splitlines()[0]
    assert head == "Ablation: my:net on cifar10, no recipe (the defaults), 1 epoch, 1 seed"
    assert result["budget"].startswith("Budget: 1 epoch x 1,000 train images")

