"""Nothing lost: exact resume after SIGKILL / SIGINT / SIGTERM, non-finite losses, full disks,
crafted checkpoints, and bad values. Real subprocesses, real signals, real files."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from cifarlab.recipes import build_config
from cifarlab.settings import TrainConfig
from cifarlab.validation import validate
from cifarlab.errors import CifarlabError, Diverged, UsageError
from cifarlab import storage as ckpt
from cifarlab.training.engine import fit

from conftest import run_cli, without_timing

RUN = ["--model", "basic-cnn", "--dataset", "cifar10", "--limit-train", "2000", "--epochs", "3",
       "--augment", "crop,flip", "--batch-size", "32", "--quiet"]


def metrics(out):
    return without_timing([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])


def assert_same_run(a, b):
    """Same weights bit for bit, same per-epoch metrics, same final summary numbers."""
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metrics(a) == metrics(b)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["final_test_acc"] == sb["final_test_acc"] and sa["final_train_acc"] == sb["final_train_acc"]


@pytest.fixture(scope="module")
def uninterrupted(cifar_mini, tmp_path_factory):
    """The reference run, trained whole in a subprocess (~25 s on 2 cores: the tests taking it are marked slow)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    result = run_cli("train", *RUN, "--data-dir", str(cifar_mini), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def start(data_dir, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "cifarlab", "train", *RUN, "--data-dir", str(data_dir),
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(out, proc, n, extra_s=0.0):
    deadline = time.time() + 300
    while time.time() < deadline:
        done = (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= n
        if done:
            time.sleep(extra_s)
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not reach the epoch in time")


@pytest.mark.slow
def test_a_second_writer_is_refused_with_the_holders_pid_and_a_killed_one_leaves_no_lock(cifar_mini, tmp_path):
    out = tmp_path / "busy"
    proc = start(cifar_mini, out, "--epochs", "60")      # long enough to be running through the whole test
    wait_for_epochs(out, proc, 1)                         # last.pt exists: a --resume would otherwise go ahead
    lines_before = (out / "metrics.jsonl").read_text()
    for args in (["--resume", str(out)], [*RUN, "--data-dir", str(cifar_mini), "--out", str(out), "--overwrite"]):
        result = run_cli("train", *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().startswith(f"cifarlab: error: {out.resolve()} is being written by another "
                                                f"process (pid {proc.pid}, started ")
        assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "metrics.jsonl").read_text().startswith(lines_before)     # --overwrite deleted nothing
    assert proc.poll() is None                            # the writer ran through it all, undisturbed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from cifarlab.run import lock_folder, release_folders
    lock_folder(out)                                      # the OS dropped the dead process's lock: free now
    release_folders()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(cifar_mini, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = start(cifar_mini, out, "--checkpoint-every", "0.003")  # a checkpoint every ~0.2 s within epochs
    wait_for_epochs(out, proc, 1, extra_s=0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1 and not (out / "summary.json").exists()
    result = run_cli("train", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_run(uninterrupted, out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_sigint_and_sigterm_save_print_the_resume_command_and_resume_exactly(cifar_mini, uninterrupted, tmp_path, sig,
                                                                           code, name):
    out = tmp_path / "stopped"
    proc = start(cifar_mini, out)
    wait_for_epochs(out, proc, 1, extra_s=0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert f"stopped by {name} at epoch" in stderr and f"Resume with: cifarlab train --resume {out}" in stderr
    assert "Traceback" not in stderr
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1
    result = run_cli("train", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_run(uninterrupted, out)
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]            # no duplicate, no missing epoch


@pytest.mark.slow
def test_resume_keeps_the_saved_settings_and_refuses_changes(uninterrupted):
    result = run_cli("train", "--resume", str(uninterrupted), "--lr", "0.5")
    assert result.returncode == 2
    assert result.stderr.startswith("cifarlab: error: --resume continues the run with its saved settings; "
                                    "--lr cannot be changed")
    finished = run_cli("train", "--resume", str(uninterrupted))
    assert finished.returncode == 2 and "already finished its 3 epochs; nothing to resume" in finished.stderr


@pytest.mark.slow
def test_out_holding_a_run_points_to_resume_or_overwrite(cifar_mini, uninterrupted):
    result = run_cli("train", *RUN, "--data-dir", str(cifar_mini), "--out", str(uninterrupted))
    assert result.returncode == 2
    assert f"continue it with `cifarlab train --resume {uninterrupted}`" in result.stderr


def test_diverging_run_stops_with_one_line_naming_epoch_and_step(cifar_sample, tmp_path):
    result = run_cli("train", *RUN, "--data-dir", str(cifar_sample), "--out", str(tmp_path / "nan"),
                     "--optimizer", "sgd", "--lr", "1e30")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifarlab: error: non-finite training loss at epoch 1, step ")
    assert "--on-nan skip-step" in lines[0]


def _nan_at(monkeypatch, call):
    """Make the training loss NaN on the call-th cross-entropy of training (evaluation calls pass through)."""
    import cifarlab.training.trainer as trainer     # the training step computes its loss there
    real, calls = trainer.F.cross_entropy, {"n": 0}

    def cross_entropy(out, y, **kw):
        loss = real(out, y, **kw)
        if kw.get("reduction") != "sum":
            calls["n"] += 1
            if calls["n"] == call:
                return loss * float("nan")
        return loss
    monkeypatch.setattr(trainer.F, "cross_entropy", cross_entropy)


def sample_config(data_dir, tmp_path, **kw):
    """Two epochs of 10 steps: the sample's 200 train images in batches of 20."""
    return build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(data_dir), "epochs": 2,
                         "batch_size": 20, "quiet": True, "out": str(tmp_path / "run"), **kw})


def test_nan_in_epoch_two_keeps_the_epoch_one_checkpoint(cifar_sample, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 13)                                             # 10 steps per epoch: epoch 2, step 3
    with pytest.raises(Diverged, match="non-finite training loss at epoch 2, step 3"):
        fit(sample_config(cifar_sample, tmp_path))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_on_nan_skip_step_skips_the_bad_batch_and_finishes(cifar_sample, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 13)
    summary = fit(sample_config(cifar_sample, tmp_path, on_nan="skip-step"))
    assert summary["epochs"] == 2 and math.isfinite(summary["final_train_loss"])
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_without_running_it(tmp_path, uninterrupted):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text((uninterrupted / "config.json").read_text())
    torch.save({"model": _Evil(), "config": {}}, run / "checkpoints" / "last.pt")
    for args in (["evaluate", str(run / "checkpoints" / "last.pt")], ["train", "--resume", str(run)]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "refused: it holds objects that could run code when loaded" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_checkpoint_saved_from_a_wrapped_model_loads_without_prefixes(tmp_path, uninterrupted):
    saved = torch.load(uninterrupted / "checkpoints" / "best.pt", weights_only=True)
    saved["model"] = {f"module._orig_mod.{k}": v for k, v in saved["model"].items()}
    torch.save(saved, tmp_path / "wrapped.pt")
    result = run_cli("evaluate", str(tmp_path / "wrapped.pt"), "--json", "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["final_test_acc"], abs=0.101)


def test_full_disk_during_a_save_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    ckpt.save_checkpoint(target, {"epoch": 1})

    def full_disk(fd):      # the new file's blocks are allocated (and refused) when it is flushed to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CifarlabError, match="could not write \\(No space left on device\\); the previous file is kept"):
        ckpt.save_checkpoint(target, {"epoch": 2})
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]          # no temporary file left behind


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(-3, 3), batch=st.integers(-3, 3), lr=st.floats(allow_nan=True, allow_infinity=True),
       smoothing=st.floats(-1, 2), every=st.floats(-2, 2))
def test_config_validation_accepts_exactly_the_sane_values(epochs, batch, lr, smoothing, every):
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, label_smoothing=smoothing, checkpoint_every=every)
    sane = epochs >= 1 and batch >= 1 and math.isfinite(lr) and lr > 0 and 0 <= smoothing < 1 and every >= 0
    if sane:
        validate(cfg)
    else:
        with pytest.raises(UsageError) as e:
            validate(cfg)
        assert "\n" not in str(e.value)
