"""benchmarks/campaign.py: start, stop, resume, skip, and each figure recorded once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cifarlab.errors import Interrupted
from cifarlab.recipes import build_config
from cifarlab.training import engine
from conftest import StopAtStep, without_timing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import campaign  # noqa: E402

BASIC = next(e for e in campaign.ENTRIES if e.name == "article-basic-cnn-c10")
EXTRA = ["--extra=--epochs=2", "--extra=--limit-train=320", "--extra=--precision=fp32"]


def test_each_runs_state_decides_start_resume_or_skip(tmp_path):
    folder = tmp_path / BASIC.folder(0)
    assert campaign.state(folder) == "new"
    start = campaign.command(BASIC, 0, tmp_path, "/data", ["--epochs", "2"])
    assert start[3:] == ["train", *BASIC.args, "--seed", "0", "--data-dir", "/data", "--epochs", "2",
                         "--checkpoint-every", "5", "--out", str(folder), "--quiet"]
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    assert campaign.state(folder) == "interrupted"
    assert campaign.command(BASIC, 0, tmp_path, "/data", [])[3:] == ["train", "--resume", str(folder), "--quiet"]
    (folder / "summary.json").write_text("{}")
    assert campaign.state(folder) == "finished"


@pytest.mark.slow                  # trains twice in-process and resumes in a subprocess
def test_an_interrupted_run_is_resumed_and_its_figure_recorded_once(cifar_mini, tmp_path, monkeypatch):
    out, bench = tmp_path / "campaign", tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nearlier figures\n")
    settings = {"model": "basic-cnn", "dataset": "cifar10", "recipe": "article-basic-cnn",
                "data_dir": str(cifar_mini), "epochs": 2, "limit_train": 320, "precision": "fp32", "quiet": True}
    # the same run whole, for reference; then stopped by Ctrl-C in epoch 2, as a killed session leaves it
    engine.fit(build_config({**settings, "out": str(tmp_path / "whole")}))
    monkeypatch.setattr(engine, "StopSignals", StopAtStep(7))          # 5 steps per epoch: epoch 2, step 2
    with pytest.raises(Interrupted):
        engine.fit(build_config({**settings, "out": str(out / BASIC.folder(0))}))
    monkeypatch.undo()

    args = ["--out", str(out), "--data-dir", str(cifar_mini), "--only", BASIC.name, "--benchmarks", str(bench), *EXTRA]
    assert campaign.main(args) == 0
    log = (out / "logs" / f"{BASIC.folder(0)}.log").read_text()
    assert "train --resume" in log and log.count("== ") == 1
    rows = [json.loads(line) for line in (out / BASIC.folder(0) / "metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(rows) == without_timing(whole)

    summary = json.loads((out / BASIC.folder(0) / "summary.json").read_text())
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n\nearlier figures\n") and campaign.HEADING in text
    row = text.splitlines()[-1]
    assert f"| {BASIC.name} |" in row and f"{summary['final_test_acc']:.2f}% (1 seed)" in row
    assert "74.75% in 10 epochs" in row and "--limit-train 320" in row          # the article's figure, the budget

    assert campaign.main(args) == 0                                               # finished: skipped, not re-recorded
    assert bench.read_text() == text
    assert f"finished: {summary['final_test_acc']:.2f}%" in campaign.listing([BASIC], out)


def test_an_unknown_entry_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        campaign.main(["--out", "x", "--only", "nope"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("campaign.py: error: unknown entry 'nope'")


def test_only_runs_the_entries_named_in_the_order_named_and_the_three_seed_entry_only_when_named(tmp_path, capsys):
    """The GPU proof's budgets part names tuned-deeper-cnn x 3 seeds first; a plain campaign leaves it out."""
    assert campaign.main(["--out", str(tmp_path), "--list"]) == 0
    plain = capsys.readouterr().out
    assert "tuned-deeper-cnn-c10-3seeds" not in plain and plain.splitlines()[0].startswith("tuned-deeper-cnn-c10 ")
    assert campaign.main(["--out", str(tmp_path), "--list", "--only",
                          "tuned-resnet18-c10,tuned-deeper-cnn-c10-3seeds"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["tuned-resnet18-c10", *(f"tuned-deeper-cnn-c10-3seeds-seed{s}" for s in range(3))]
