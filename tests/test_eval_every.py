"""--eval-every: which epochs are scored, what best.pt is chosen from, and what the clocks count."""

from __future__ import annotations

import json

import pytest
import torch

from cifarlab.errors import UsageError
from cifarlab.recipes import build_config, train_config
from cifarlab.report.plots import scored
from cifarlab.training.engine import fit
from conftest import run_cli, write_cifar10


def config(tmp_path, **settings):
    write_cifar10(tmp_path / "data", per_batch=40, test=40)
    return build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(tmp_path / "data"),
                         "epochs": 5, "batch_size": 50, "download": False, "quiet": True, "precision": "fp32",
                         "out": str(tmp_path / "run"), **settings})


def rows_of(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_every_second_epoch_and_the_last_are_scored_and_best_pt_is_chosen_among_them(tmp_path):
    summary = fit(config(tmp_path, eval_every=2, val_size=50))
    rows = rows_of(tmp_path)
    assert [r["epoch"] for r in rows if r["test_acc"] is not None] == [2, 4, 5]
    assert [r["epoch"] for r in rows if r["val_acc"] is not None] == [2, 4, 5]
    assert all(r["test_loss"] is None and r["val_loss"] is None for r in rows if r["epoch"] in (1, 3))
    best = max((r for r in rows if r["val_acc"] is not None), key=lambda r: r["val_acc"])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["epoch"] == best["epoch"] == summary["best_val_epoch"]
    assert summary["best_test_epoch"] in (2, 4, 5) and summary["final_test_acc"] == rows[-1]["test_acc"]
    # the clocks: each row's training seconds are part of its epoch's; the summary adds them up
    assert all(0 < r["train_only_time_s"] <= r["epoch_time_s"] for r in rows)
    assert summary["train_only_time_s"] == pytest.approx(sum(r["train_only_time_s"] for r in rows), rel=1e-6)
    assert summary["train_only_time_s"] < summary["train_and_eval_time_s"]


def test_zero_scores_only_after_the_last_epoch(tmp_path, capsys):
    cfg = config(tmp_path, eval_every=0, epochs=3)
    fit(build_config({**cfg.to_dict(), "quiet": False}))
    rows = rows_of(tmp_path)
    assert [r["test_acc"] is not None for r in rows] == [False, False, True]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert ["test " in line for line in printed] == [False, False, True]
    assert scored(rows, "test_acc") == ([3], [rows[-1]["test_acc"]])       # what the curves draw


def test_fast94_scores_once_and_ordinary_recipes_every_epoch():
    assert train_config({"dataset": "cifar10"}, "fast94").eval_every == 0
    assert train_config({"model": "basic-cnn", "dataset": "cifar10"}, "tuned-basic-cnn").eval_every == 1


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_a_bad_value_is_refused_in_one_line(value):
    with pytest.raises(UsageError, match=r"^--eval-every must be an integer >= 0, got"):
        build_config({"model": "basic-cnn", "dataset": "cifar10", "eval_every": value})


def test_the_flag_is_one_line_exit_2_from_the_cli():
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--eval-every", "-2")
    assert result.returncode == 2
    assert result.stderr.strip() == "cifarlab: error: --eval-every must be an integer >= 0, got -2"
