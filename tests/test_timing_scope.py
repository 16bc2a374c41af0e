"""summary.json's time_to_result_s is airbench's clock: the data-dependent init + the training steps + the final
(TTA) test evaluation, without data loading, compile warm-up, other evaluations or saving; resume keeps it."""

import json
import time

import pytest
import torch

from cifarlab.errors import Interrupted
from cifarlab.models.fast94 import Fast94
from cifarlab.recipes import build_config
from cifarlab.study.runs import train_run
from cifarlab.training import engine
from cifarlab.training.engine import fit

from conftest import StopAtStep

PAUSE = 0.3   # seconds added to a part of the run, far above what the sample's steps take


def sample_fast94(data_dir, tmp_path, name, **extra):
    # fast94 as shipped (eval_every 0, flip-shift TTA), on the sample: 4 steps of 32 images per epoch
    return build_config({"model": "fast94", "dataset": "cifar10", "data_dir": str(data_dir), "epochs": 2,
                         "limit_train": 128, "batch_size": 32, "quiet": True, "tensorboard": False,
                         "out": str(tmp_path / name), **extra}, "fast94")


def slowed(monkeypatch, owner, name, pause, record):
    """owner.name, `pause` seconds slower, its durations (measured here, apart from the engine) in `record`."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        time.sleep(pause)
        result = original(*args, **kwargs)
        record.append((time.perf_counter() - start, args))
        return result
    monkeypatch.setattr(owner, name, timed)


def test_time_to_result_is_the_whitening_init_training_and_the_final_tta_test_evaluation(
        cifar_sample, tmp_path, monkeypatch):
    inits, evaluations = [], []
    slowed(monkeypatch, Fast94, "init_from_data", PAUSE, inits)
    slowed(monkeypatch, engine, "evaluate", PAUSE, evaluations)
    summary = fit(sample_fast94(cifar_sample, tmp_path, "run", val_size=40))
    assert len(inits) == 1 and len(evaluations) == 2         # val and test, after the last epoch only
    val_seconds, test_seconds = (seconds for seconds, args in evaluations)
    assert [len(args[1].images) for _, args in evaluations] == [40, 100]   # val, then test
    # each part as the engine clocked it agrees with the clock kept here, around the same call
    assert summary["data_init_time_s"] == pytest.approx(inits[0][0], abs=0.05)
    assert summary["final_eval_time_s"] == pytest.approx(test_seconds, abs=0.05)
    assert summary["time_to_result_s"] == pytest.approx(
        summary["data_init_time_s"] + summary["train_only_time_s"] + summary["final_eval_time_s"], abs=1e-9)
    # training alone holds neither pause; the val evaluation is outside the scope but inside train_and_eval
    assert summary["train_only_time_s"] < summary["time_to_result_s"] - 2 * PAUSE
    assert summary["time_to_result_s"] <= summary["train_and_eval_time_s"] - val_seconds + 0.05
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["train_only_time_s"] == pytest.approx(sum(r["train_only_time_s"] for r in rows), rel=1e-9)
    assert summary["compile_warmup_s"] == 0.0


def test_summary_txt_states_the_scope_and_training_alone(cifar_sample, tmp_path):
    summary = train_run(sample_fast94(cifar_sample, tmp_path, "run", epochs=1))
    text = (tmp_path / "run" / "summary.txt").read_text()
    assert (f"Time to Result: {summary['time_to_result_s']:.2f} seconds (training alone "
            f"{summary['train_only_time_s']:.2f} seconds)") in text
    assert f"Time Scope: {engine.TIME_SCOPE}" in text and summary["time_scope"] == engine.TIME_SCOPE
    assert "airbench's: data-dependent init" in text and "not data loading, compile warm-up" in text


class SlowFirstCompile(torch.nn.Module):
    """Stands in for torch.compile's wrapper: its first forward takes `pause` seconds more, as compiling does."""

    def __init__(self, model, pause):
        super().__init__()
        self._orig_mod, self.pause, self.calls = model, pause, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.pause)
        return self._orig_mod(x)


def test_a_resumed_run_keeps_the_init_time_of_the_first_and_adds_its_parts_up_the_same_way(
        cifar_sample, tmp_path, monkeypatch):
    inits = []
    slowed(monkeypatch, Fast94, "init_from_data", PAUSE, inits)
    cfg = sample_fast94(cifar_sample, tmp_path, "cut")
    with monkeypatch.context() as stop:          # stop at epoch 1, step 2
        stop.setattr(engine, "StopSignals", StopAtStep(2))
        with pytest.raises(Interrupted):
            fit(cfg)
    summary = fit(cfg, resume=True)
    assert len(inits) == 1                        # measured once, in the first process, and carried over
    assert summary["data_init_time_s"] == pytest.approx(inits[0][0], abs=0.05)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert summary["train_only_time_s"] == pytest.approx(sum(r["train_only_time_s"] for r in rows), rel=1e-9)
    assert summary["time_to_result_s"] == pytest.approx(
        summary["data_init_time_s"] + summary["train_only_time_s"] + summary["final_eval_time_s"], abs=1e-9)
    assert rows[0]["epoch_time_s"] >= rows[0]["train_only_time_s"] + PAUSE   # epoch 1's whole time holds the init


def test_compile_warm_up_is_left_out_and_a_resumed_run_carries_it(cifar_sample, tmp_path, monkeypatch):
    # basic-cnn's steps on 32 sample images are short beside the pauses, even on a busy CPU
    pause = 1.0
    monkeypatch.setattr(torch, "compile", lambda model: SlowFirstCompile(model, pause))
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_sample), "epochs": 2,
                        "limit_train": 128, "batch_size": 32, "compile": True, "quiet": True,
                        "tensorboard": False, "out": str(tmp_path / "cut")})
    with monkeypatch.context() as stop:          # stop at epoch 1, step 2; each process compiles once
        stop.setattr(engine, "StopSignals", StopAtStep(2))
        with pytest.raises(Interrupted):
            fit(cfg)
    summary = fit(cfg, resume=True)
    # two warm-ups (one per process, the first carried over the save), each a pause beyond an ordinary step
    assert summary["compile_warmup_s"] >= 2 * pause - 0.5
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    # epoch 1 (both warm-ups) trains as long as epoch 2 (none) once they are left out; 2 pauses more if not
    assert rows[0]["train_only_time_s"] < rows[1]["train_only_time_s"] + pause
    assert summary["train_only_time_s"] == pytest.approx(sum(r["train_only_time_s"] for r in rows), rel=1e-9)
    assert summary["time_to_result_s"] == pytest.approx(summary["train_only_time_s"] + summary["final_eval_time_s"],
                                                        abs=1e-9) and summary["data_init_time_s"] == 0.0
    assert summary["train_and_eval_time_s"] >= summary["time_to_result_s"] + summary["compile_warmup_s"] - 1e-6
