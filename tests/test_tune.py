"""cifarlab tune: real Optuna studies on the shipped sample (the longer ones on cifar-mini), selected on val, test
scored only to confirm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cifarlab.errors import UsageError
from cifarlab.recipes import build_config
from cifarlab.study.tune import load_space
from cifarlab.validation import config_from_dict
from conftest import render_in_chromium, run_cli


@pytest.mark.parametrize("text, message", [
    ('[lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01\n', "[lr] needs numbers low < high, got low=0.1, high=0.01"),
    ('[lr]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true\n', "[lr]: a log scale needs low > 0, got 0"),
    ('[seed]\ntype = "int"\nlow = 0\nhigh = 9\n', "[seed] is not a setting a trial may vary"),
    ('[batch_size]\ntype = "categorical"\nchoices = []\n', "[batch_size] needs a non-empty list of choices"),
    ('[lr]\nlow = 1\n', '[lr] needs type = "float", "int" or "categorical"'),
    ("[lr\n", "not valid TOML"),
])
def test_a_bad_space_file_is_one_line_naming_the_setting(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        load_space(path)
    assert str(error.value).startswith(f"--space {path}") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_tune_refuses_a_study_without_a_validation_split(tmp_path):
    result = run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--trials", "2", "--val-size", "0",
                     "--data-dir", str(tmp_path), "--out", str(tmp_path / "t"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: tune selects on a validation split: --val-size must be > 0 "
                                     "(default: 10% of the train split)")


def test_a_val_size_the_data_cannot_hold_is_one_line_before_any_trial(cifar_sample, tmp_path):
    # the sample's CIFAR-10 has 200 train images: a val split of all of them leaves nothing to train on
    result = run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                     "--trials", "2", "--val-size", "200", "--out", str(tmp_path / "t"))
    assert result.returncode == 2
    assert result.stderr == ("cifarlab: error: --val-size 200 must be smaller than the train split "
                             "(200 images)\n")                        # no Optuna traceback above it
    assert not (tmp_path / "t" / "tune.db").exists()                   # refused before Optuna started


def test_the_default_val_size_is_a_tenth_of_the_train_split_and_one_per_class(tmp_path):
    import numpy as np

    from cifarlab.api import _dataset_ref
    from cifarlab.study.tune import with_val_split
    rng = np.random.default_rng(0)
    for count, expected in ((40, 10), (400, 40)):        # 10 classes: never fewer than one image per class
        arrays = (rng.integers(0, 255, (count, 8, 8, 3), dtype=np.uint8), np.arange(count) % 10,
                  rng.integers(0, 255, (10, 8, 8, 3), dtype=np.uint8), np.arange(10) % 10)
        cfg = build_config({"model": "basic-cnn", "dataset": _dataset_ref(arrays)})
        chosen, images = with_val_split(cfg, given=False)
        assert chosen.val_size == images == expected
    help_text = run_cli("tune", "--help").stdout
    assert "default: 10% of the train split" in " ".join(help_text.split())


@pytest.mark.slow            # 5 short trials and one confirmation run of basic-cnn: ~40 s on 2 cores
def test_a_study_selects_on_val_writes_a_recipe_and_continues(cifar_mini, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    space = tmp_path / "space.toml"
    space.write_text('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 3e-2\nlog = true\n'
                     '[augment]\ntype = "categorical"\nchoices = ["none", "flip"]\n')
    common = ["tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini), "--epochs", "2",
              "--limit-train", "1000", "--val-size", "300", "--space", str(space), "--out", str(out),
              "--precision", "fp32", "--seed", "3", "--quiet"]
    first = run_cli(*common, "--trials", "4", "--confirm-seeds", "1")
    assert first.returncode == 0, first.stderr
    result = json.loads((out / "tune.json").read_text())
    assert len(result["trials"]) == 4 and result["val_size"] == 300
    complete = [t for t in result["trials"] if t["state"] == "complete"]
    assert result["best"]["val_acc"] == max(t["value"] for t in complete)
    for t in result["trials"]:                   # the trials never scored the test split
        rows = [json.loads(line) for line in (out / "trials" / f"trial-{t['number']:04d}" / "metrics.jsonl")
                .read_text().splitlines()]
        assert all(r["test_acc"] is None and r["val_acc"] is not None for r in rows)
    best = result["best"]
    assert f"best: trial {best['number']}, {best['val_acc']:.2f}% validation accuracy" in first.stdout
    # the recipe file is a recipe: the best settings, usable as --recipe, naming the trial it came from
    recipe = (out / "best-recipe.toml").read_text()
    assert f"trial {best['number']} of study basic-cnn-cifar10" in recipe
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10"}, str(out / "best-recipe.toml"))
    assert cfg.lr == pytest.approx(best["params"]["lr"]) and cfg.augment == best["params"]["augment"]
    # confirmed once on test: the whole train split (no val), one seed
    confirmed = out / "confirm" / f"trial-{best['number']:04d}"
    confirm = json.loads((confirmed / "summary.json").read_text())
    assert confirm["final_test_acc"] == result["confirm"]["final_test_acc_mean"] > 10.0
    assert json.loads((confirmed / "config.json").read_text())["val_size"] == 0
    check = render_in_chromium(out / "report.html", tmp_path)                 # as a browser shows it
    assert check["errors"] == [] and check["broken"] == 0 and check["images"] == 4
    assert check["sections"] == ["Search", "Trials", "Optimisation history", "Parameter importances",
                                 "Parallel coordinates", "The best trial", "Confirmation on test"]
    trained = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                      "--recipe", str(out / "best-recipe.toml"), "--epochs", "1", "--limit-train", "500",
                      "--out", str(tmp_path / "with-best"), "--quiet")                # the recipe trains
    assert trained.returncode == 0, trained.stderr

    again = run_cli(*common, "--trials", "5", "--confirm-seeds", "0")         # the same study, one more trial
    assert again.returncode == 0, again.stderr
    assert [t["number"] for t in json.loads((out / "tune.json").read_text())["trials"]] == [0, 1, 2, 3, 4]


# One small study from Python, shared by the tests below: sgd with a non-default momentum and Nesterov fixed,
# lr searched between a value that trains and one that diverges (the seeded sampler draws 0.01, 1e5, 0.01).
# Batches of 32: 150 images make 4 steps, enough for lr 1e5 to reach a non-finite loss (2 steps of 64 are not).
SETTINGS = {"epochs": 1, "limit_train": 150, "batch_size": 32, "optimizer": "sgd", "momentum": 0.8, "nesterov": True,
            "precision": "fp32", "eval_batch_size": 500, "seed": 0, "quiet": True}
SPACE = {"lr": {"type": "categorical", "choices": [1e5, 0.01]}}


@pytest.fixture(scope="module")
def tuned(cifar_sample, tmp_path_factory):
    pytest.importorskip("optuna")
    import cifarlab
    out = tmp_path_factory.mktemp("tuned") / "study"
    result = cifarlab.tune("basic-cnn", "cifar10", trials=3, space=SPACE, confirm_seeds=1, out=out,
                           data_dir=str(cifar_sample), **SETTINGS)
    return out, result


def test_a_diverging_trial_is_recorded_failed_and_the_study_goes_on(tuned):
    out, result = tuned
    saved = json.loads((out / "tune.json").read_text())
    assert [t["state"] for t in saved["trials"]] == ["complete", "failed", "complete"]
    assert saved["trials"][1]["params"] == {"lr": 1e5} and "non-finite" in saved["trials"][1]["failed"]
    # a failed trial is no trial of the search: counted apart, in tune.json, the printed lines and the report
    assert saved["counts"] == {"complete": 2, "pruned": 0, "failed": 1, "running": 0}
    assert str(result).splitlines()[0] == "study basic-cnn-cifar10: 2 trials (2 finished, 0 pruned); 1 failed"
    assert "Study basic-cnn-cifar10: 2 trials (2 finished, 0 pruned); 1 failed" in (out / "report.md").read_text()


def test_the_default_val_size_comes_from_the_data(tuned):
    out, result = tuned                     # no val_size given: 10% of the sample's 200 train images
    assert result["val_size"] == 20
    assert json.loads((Path(result["best"]["run"]) / "config.json").read_text())["val_size"] == 20


def test_the_best_recipe_holds_every_fixed_setting_and_the_confirmation_trains_from_it(tuned):
    from cifarlab.study.tune_results import RECIPE_FIELDS
    out, result = tuned
    recipe = (out / "best-recipe.toml").read_text()
    assert 'optimizer = "sgd"' in recipe and "momentum = 0.8" in recipe and "nesterov = true" in recipe
    recorded = json.loads((Path(result["best"]["run"]) / "config.json").read_text())
    best = config_from_dict(recorded).to_dict()    # what the trial trained with (a switch it lacks, null, as default)
    assert best["optimizer"] == "sgd" and best["lr"] == 0.01
    # training from the file gives the best trial's settings, every one a recipe holds
    from_file = build_config({"model": "basic-cnn", "dataset": "cifar10"}, str(result.recipe)).to_dict()
    assert {k: from_file[k] for k in RECIPE_FIELDS} == {k: best[k] for k in RECIPE_FIELDS}
    # and the confirmation was trained from that file: the same settings on the whole train split
    confirmed = json.loads((Path(result["confirm"]["folder"]) / "config.json").read_text())
    assert confirmed["recipe"] == str(result.recipe)
    confirmed = config_from_dict(confirmed).to_dict()
    assert confirmed["recipe"] == str(result.recipe)
    assert {k: confirmed[k] for k in RECIPE_FIELDS} == {**{k: best[k] for k in RECIPE_FIELDS}, "val_size": 0}
    assert confirmed["test"] is True and best["test"] is False


def tune_again(out, data_dir, *changes):
    """`cifarlab tune` on the tuned study's folder with the fixture's settings, then `changes`."""
    space = out.parent / "space.toml"
    space.write_text('[lr]\ntype = "categorical"\nchoices = [1e5, 0.01]\n')
    flags = ["--epochs", "1", "--limit-train", "150", "--batch-size", "32", "--optimizer", "sgd", "--momentum", "0.8",
             "--nesterov", "--precision", "fp32", "--eval-batch-size", "500", "--seed", "0", "--quiet"]
    return run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(data_dir),
                   "--trials", "3", "--space", str(space), "--confirm-seeds", "1", "--out", str(out), *flags,
                   *changes)


def test_the_command_prints_what_the_python_result_prints(tuned, cifar_sample):
    out, result = tuned
    again = tune_again(out, cifar_sample)          # the same settings: nothing left to train, the same confirmation
    assert again.returncode == 0, again.stderr
    assert again.stdout == str(result)


@pytest.mark.parametrize("change, message", [
    (["--optimizer", "adam"], "was tuned with optimizer sgd, this tune asks adam"),
    (["--epochs", "2"], "was tuned with epochs 1, this tune asks 2"),
])
def test_a_study_tuned_with_other_fixed_settings_is_refused(tuned, cifar_sample, change, message):
    optuna = pytest.importorskip("optuna")
    out, _ = tuned
    again = tune_again(out, cifar_sample, *change)
    assert again.returncode == 2
    assert again.stderr == (f"cifarlab: error: study basic-cnn-cifar10 in {(out / 'tune.db').resolve()} {message}: "
                            "use another --out or --study\n")
    study = optuna.load_study(study_name="basic-cnn-cifar10", storage=f"sqlite:///{(out / 'tune.db').resolve()}")
    assert len(study.trials) == 3                                  # no trial was added under the other settings


def test_a_study_searched_over_another_space_is_refused(tuned, cifar_sample):
    import cifarlab
    out, _ = tuned
    with pytest.raises(UsageError, match=r"was tuned with lr searched over \[100000.0, 0.01\], this tune asks "
                                         r"searched over 0.001..0.1 \(log\)"):
        cifarlab.tune("basic-cnn", "cifar10", trials=4, out=out, data_dir=str(cifar_sample),
                      space={"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}, **SETTINGS)


def start_worker(cifar_mini, out, *extra):
    """One `cifarlab tune` process of a shared study (no confirmation: the study's last command does that)."""
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "cifarlab", "tune", "--model", "basic-cnn", "--dataset", "cifar10",
                             "--data-dir", str(cifar_mini), "--epochs", "1", "--limit-train", "600", "--val-size",
                             "200", "--precision", "fp32", "--trials", "4", "--confirm-seeds", "0", "--quiet",
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_shared_study(storage: str, study: str, trials: int, workers: int):
    """No trial lost or duplicated: distinct numbers and run folders, each finished with its own summary."""
    optuna = pytest.importorskip("optuna")
    done = [t for t in optuna.load_study(study_name=study, storage=storage).trials
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    numbers = [t.number for t in done]
    folders = [t.user_attrs["run"] for t in done]
    assert len(set(numbers)) == len(numbers) and len(set(folders)) == len(folders)
    assert trials <= len(done) <= trials + workers - 1        # a worker may start one more near the end
    for t in done:
        if t.state == optuna.trial.TrialState.COMPLETE:
            summary = json.loads((Path(t.user_attrs["run"]) / "summary.json").read_text())
            assert summary["best_val_acc"] == pytest.approx(t.value)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(cifar_mini, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "shared"
    workers = [start_worker(cifar_mini, out), start_worker(cifar_mini, out)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    assert_shared_study(f"sqlite:///{(out / 'tune.db').resolve()}", "basic-cnn-cifar10", 4, 2)


@pytest.fixture
def postgres():
    """A PostgreSQL server from the system's packages, in a temporary folder on a loopback port, run as the
    `postgres` user when the tests run as root (it refuses root); skipped where the binaries are absent."""
    import os
    import shutil
    import socket
    import subprocess
    psycopg = pytest.importorskip("psycopg")
    bins = [Path(p) for p in ["/usr/lib/postgresql"] if Path(p).is_dir()]
    initdb = shutil.which("initdb") or next((str(b) for d in bins for b in sorted(d.glob("*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    import tempfile
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as another user.
    data = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))
    as_user = []
    if os.geteuid() == 0:
        import pwd
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute("CREATE DATABASE tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(cifar_mini, tmp_path, postgres):
    pytest.importorskip("optuna")
    workers = [start_worker(cifar_mini, tmp_path / f"machine-{i}", "--storage", postgres, "--study", "shared")
               for i in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    assert_shared_study(postgres, "shared", 4, 2)


def test_a_signal_between_trials_stops_the_study_and_leaves_no_trial_running():
    import os
    import signal

    optuna = pytest.importorskip("optuna")
    from cifarlab.errors import Interrupted
    from cifarlab.study.tune import optimize

    study = optuna.create_study(direction="maximize")
    before = signal.getsignal(signal.SIGINT)

    def objective(trial):            # stands in for a trial; the signal lands outside any training
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return float(trial.number)

    with pytest.raises(Interrupted) as stopped:
        optimize(study, objective, optuna.study.MaxTrialsCallback(10))
    assert stopped.value.exit_code == 130
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2            # the trial in hand finished; none after
    assert signal.getsignal(signal.SIGINT) is before                     # the handler is put back


@pytest.mark.slow
def test_an_interrupted_study_keeps_its_finished_trials(cifar_mini, tmp_path):
    import signal
    import time
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "stopped"
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    worker = start_worker(cifar_mini, out)
    deadline = time.time() + 300
    while not (out / "trials" / "trial-0001" / "summary.json").is_file():
        assert worker.poll() is None and time.time() < deadline, worker.communicate()
        time.sleep(0.1)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    before = {t.number: t.value for t in optuna.load_study(study_name="basic-cnn-cifar10", storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert {0, 1} <= set(before)
    again = start_worker(cifar_mini, out)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    after = {t.number: t.value for t in optuna.load_study(study_name="basic-cnn-cifar10", storage=storage).trials}
    assert all(after[n] == v for n, v in before.items())                       # kept, not rerun
    assert_shared_study(storage, "basic-cnn-cifar10", 4, 1)


@pytest.mark.slow
def test_tune_jobs_runs_trials_in_parallel_processes_of_one_study(cifar_mini, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "jobs"
    # trials of a few seconds each, so that the second process (which imports torch first) gets some
    result = run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                     "--epochs", "2", "--limit-train", "1500", "--val-size", "300", "--precision", "fp32",
                     "--trials", "6", "--confirm-seeds", "0", "--jobs", "2", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_shared_study(f"sqlite:///{(out / 'tune.db').resolve()}", "basic-cnn-cifar10", 6, 2)
    trials = json.loads((out / "tune.json").read_text())["trials"]              # the summary saw every worker's
    assert len(trials) >= 6 and len({t["worker"] for t in trials}) == 2          # two processes trained them


class SleepingWorker:
    """Stands in for a study's worker process: one that would run for minutes unless ended."""
    own_cpus = None

    def __init__(self):
        import subprocess
        import sys
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])

    def wait(self):
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


def test_a_failing_parent_ends_its_workers_and_starts_no_more_than_trials_left(cifar_sample, tmp_path,
                                                                               monkeypatch):
    pytest.importorskip("optuna")
    from cifarlab.study import tune as tune_module
    from cifarlab.study.runs import Launch
    started = []

    def start_workers(launch, args, out, threads=None):
        started.append((launch.jobs, SleepingWorker()))
        return started[-1][1]

    def run_trials(*args, **kwargs):
        raise UsageError("the parent's trial failed")

    monkeypatch.setattr(tune_module, "start_workers", start_workers)
    monkeypatch.setattr(tune_module, "run_trials", run_trials)
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_sample),
                        "out": str(tmp_path / "t"), "quiet": True})
    with pytest.raises(UsageError, match="the parent's trial failed"):
        tune_module.tune(cfg, 2, SPACE, launch=Launch(jobs=5), val_size_given=False)
    [(jobs, worker)] = started
    assert jobs == 2                                     # two trials left: this process and one more
    assert worker.process.poll() is not None             # ended, not left training unseen


def test_stopping_workers_ends_the_processes_still_running():
    import subprocess
    import sys
    from cifarlab.study.tune import Workers
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Workers([done, running]).stop()
    assert done.returncode == 0 and running.returncode is not None


@pytest.mark.slow            # a second process: cli.main's own argv reaches the worker, not pytest's
def test_main_with_jobs_from_python_runs_at_most_one_process_per_trial(cifar_sample, tmp_path):
    pytest.importorskip("optuna")
    import torch

    from cifarlab.cli import main
    out = tmp_path / "jobs"
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    code = main(["tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                 "--epochs", "1", "--limit-train", "150", "--eval-batch-size", "500", "--precision", "fp32",
                 "--trials", "2", "--jobs", "4", "--confirm-seeds", "0", "--out", str(out), "--quiet"])
    assert code == 0
    # this process is as it was (its trials trained with the recorded count, on its share, then let go)
    assert torch.get_num_threads() == threads
    assert cpus is None or os.sched_getaffinity(0) == cpus
    per_run = max(1, len(cpus or range(os.cpu_count())) // 4)        # cores / the --jobs asked for
    for trial in (out / "trials").iterdir():
        assert json.loads((trial / "config.json").read_text())["threads"] == per_run   # 2 trials, 2 processes
    saved = json.loads((out / "tune.json").read_text())
    assert saved["counts"]["complete"] + saved["counts"]["pruned"] >= 2
    assert [log.name for log in (out / "workers").glob("*.log")] == ["worker-1.log"]     # 2 trials: 2 processes
