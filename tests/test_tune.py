"""cifarlab tune: a real Optuna study on cifar-mini, selected on val, test scored only to confirm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarlab.config import build_config
from cifarlab.errors import UsageError
from cifarlab.study.tune import load_space
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
                                     "(for example 5000)")


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
    confirm = json.loads((out / "confirm" / "summary.json").read_text())
    assert confirm["final_test_acc"] == result["confirm"]["final_test_acc_mean"] > 10.0
    assert json.loads((out / "confirm" / "config.json").read_text())["val_size"] == 0
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
