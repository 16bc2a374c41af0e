"""--jobs N: the launcher's threads, cores and GPUs, persistent workers, one download, forwarded signals, and
every run folder checked before anything starts."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.run import load_run
from cifarlab.settings import TrainConfig
from conftest import run_cli, without_timing, write_cifar10

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning is Linux's")
QUICK = ["--model", "basic-cnn", "--dataset", "cifar10", "--recipe", "article-basic-cnn", "--epochs", "1",
         "--limit-train", "200", "--precision", "fp32"]


def same_runs(a, b) -> None:
    """Every metric (but the clock) and every weight of two run folders, bit for bit."""
    assert without_timing(load_run(a).metrics) == without_timing(load_run(b).metrics)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@linux_only
def test_jobs_give_each_run_cores_over_n_threads_on_its_own_share(monkeypatch):
    from cifarlab.study.launch import core_shares, with_threads
    from cifarlab.study.runs import Launch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7, 8, 9})
    assert core_shares(2) == [[4, 5, 6], [7, 8, 9]]
    assert core_shares(4) == [[4], [5, 6], [7], [8, 9]]
    assert core_shares(8) == [[4], [5], [6], [7], [8], [9], [4], [5]]          # more jobs than CPUs: round robin
    cfg = TrainConfig(model="basic-cnn", dataset="cifar10", device="cpu")
    assert with_threads(cfg, Launch(jobs=2)).threads == 3                       # 6 cores / 2 jobs
    assert with_threads(cfg, Launch(jobs=4)).threads == 1
    assert with_threads(cfg, Launch(jobs=8)).threads == 1                       # at least 1
    assert with_threads(cfg, Launch(ray="auto", ray_cpus=4)).threads == 4
    assert with_threads(dataclasses.replace(cfg, threads=5), Launch(jobs=2)).threads == 5   # --threads is kept


def test_workers_take_their_gpus_from_the_allowed_list(monkeypatch):
    from cifarlab.study.launch import environment, slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    chosen = [environment(slot, None)["CUDA_VISIBLE_DEVICES"] for slot in slots(3, gpus=2)]
    assert chosen == ["2", "3", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f1c, GPU-77ab")                # UUIDs, as nvidia-smi -L
    assert [s.gpu for s in slots(2, gpus=2)] == ["GPU-5f1c", "GPU-77ab"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [s.gpu for s in slots(3, gpus=2)] == ["0", "1", "0"]
    assert [s.gpu for s in slots(2, gpus=0)] == [None, None]
    assert "CUDA_VISIBLE_DEVICES" not in environment(slots(1, gpus=0)[0], 1)


def test_threads_beyond_the_cores_are_warned_in_one_line(monkeypatch):
    from cifarlab.study.launch import policy_lines
    from cifarlab.study.runs import Launch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert policy_lines(Launch(jobs=2), None, 1, 4) == (
        "cifarlab: --jobs 2: 1 thread per run; the numbers equal a sequential study with --threads 1", None)
    note, warning = policy_lines(Launch(jobs=2), 2, 2, 4)
    assert note is None and warning == ("cifarlab: warning: 2 runs at once x 2 threads = 4 threads on 2 cores: they "
                                        "wait for each other's cores and take longer (the numbers do not change)")
    assert policy_lines(Launch(jobs=2), 2, 2, 1) == (None, None)                # one run left: no sharing


def test_a_busy_machine_is_noted_at_the_start(monkeypatch):
    from cifarlab.study.launch import load_note

    monkeypatch.delenv("CIFARLAB_LOAD_NOTE")
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert load_note(2) is not None
    monkeypatch.setenv("CIFARLAB_LOAD_NOTE", "0")
    assert load_note(2) is None                                                # silenced
    monkeypatch.delenv("CIFARLAB_LOAD_NOTE")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 1.0, 0.5))
    assert load_note(2) == ("cifarlab: note: load average 2.1 on 2 cores: other work is running; "
                            "timings will be slower")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 1.0, 0.5))
    assert load_note(2) is None


@pytest.mark.slow
@linux_only
def test_jobs_2_equals_a_sequential_study_with_the_thread_count_it_announces(cifar_sample, tmp_path):
    """3 seeds on 2 workers: one worker trains two runs (torch imported once); each run's numbers equal the
    sequential study's run with --threads cores/2, which the first line names."""
    par = run_cli("train", *QUICK, "--data-dir", str(cifar_sample), "--seeds", "3", "--jobs", "2",
                  "--out", str(tmp_path / "par"))
    assert par.returncode == 0, par.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    unit = "thread" if threads == 1 else "threads"
    assert par.stdout.splitlines()[0] == (f"cifarlab: --jobs 2: {threads} {unit} per run; the numbers equal a "
                                          f"sequential study with --threads {threads}")
    seq = run_cli("train", *QUICK, "--data-dir", str(cifar_sample), "--seeds", "3", "--threads", str(threads),
                  "--out", str(tmp_path / "seq"), "--quiet")
    assert seq.returncode == 0, seq.stderr
    workers, shares = [], {}
    for seed in (0, 1, 2):
        a, b = tmp_path / "seq" / f"seed-{seed}", tmp_path / "par" / f"seed-{seed}"
        same_runs(a, b)
        assert load_run(b).config["threads"] == threads                               # recorded in its config
        log = (b / "train.log").read_text()
        assert "cifarlab: basic-cnn on cifar10" in log                                 # its output, in its folder
        worker = re.search(r"cifarlab: worker (\d+) on CPUs? ([\d,]+), (\d+) threads?", log)
        assert worker and int(worker.group(3)) == threads
        workers.append(worker.group(1))
        shares[worker.group(1)] = set(worker.group(2).split(","))
    assert len(set(workers)) == 2                                                      # 3 runs, 2 processes
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set.intersection(*shares.values())                                  # each its own cores
    lines = [line for line in par.stdout.splitlines() if line.startswith("cifarlab: [")]
    assert len(lines) == 6 and sum("finished: " in line for line in lines) == 3       # started, finished x 3


@pytest.mark.slow
def test_jobs_with_threads_equals_jobs_1_with_the_same_threads(cifar_sample, tmp_path):
    runs = {}
    for jobs in ("1", "2"):
        result = run_cli("train", *QUICK, "--data-dir", str(cifar_sample), "--seeds", "2", "--threads", "2",
                         "--jobs", jobs, "--out", str(tmp_path / f"jobs-{jobs}"))
        assert result.returncode == 0, result.stderr
        runs[jobs] = result
    for seed in (0, 1):
        same_runs(tmp_path / "jobs-1" / f"seed-{seed}", tmp_path / "jobs-2" / f"seed-{seed}")
        assert load_run(tmp_path / "jobs-2" / f"seed-{seed}").config["threads"] == 2
    assert "--jobs 2:" not in runs["2"].stdout                                         # nothing chosen for the user
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if 2 * 2 > cores:
        assert (f"cifarlab: warning: 2 runs at once x 2 threads = 4 threads on {cores} cores" in runs["2"].stderr)


@pytest.mark.slow
def test_a_stale_folder_stops_a_parallel_study_before_any_work(cifar_sample, tmp_path):
    out = tmp_path / "study"
    first = run_cli("train", *QUICK, "--data-dir", str(cifar_sample), "--threads", "1", "--lr", "0.001",
                    "--out", str(out / "seed-0"), "--quiet")
    assert first.returncode == 0, first.stderr
    again = run_cli("train", *QUICK, "--data-dir", str(cifar_sample), "--seeds", "2", "--jobs", "2", "--lr", "0.05",
                    "--out", str(out))
    assert again.returncode == 2
    [line] = again.stderr.strip().splitlines()
    assert line.startswith(f"cifarlab: error: {out / 'seed-0'}")
    assert all(word in line for word in ("lr", "0.001", "0.05"))                       # the setting, both values
    assert not (out / "seed-1").exists()                                               # nothing was started


@pytest.fixture
def counting_server(tmp_path):
    """A loopback HTTP server for tmp_path/www; yields (base URL, the paths requested)."""
    www = tmp_path / "www"
    www.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()


@pytest.mark.slow
def test_a_parallel_study_downloads_the_dataset_once_before_its_workers_start(tmp_path, counting_server,
                                                                              monkeypatch):
    from cifarlab.data import sources
    from cifarlab.study.runs import Launch, run_all

    www, base, requested = counting_server
    write_cifar10(tmp_path / "src", per_batch=20, test=20)
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    info = dataclasses.replace(sources.DATASETS["cifar10"],
                               archives=((f"{base}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()),))
    monkeypatch.setitem(sources.DATASETS, "cifar10", info)
    calls = []
    real_download = sources.download
    monkeypatch.setattr(sources, "download", lambda *a: calls.append(a) or real_download(*a))
    (tmp_path / "data").mkdir()    # a --data-dir must exist (a missing one is refused, not created)
    cfgs = [TrainConfig(model="basic-cnn", dataset="cifar10", data_dir=str(tmp_path / "data"), epochs=1, seed=s,
                        out=str(tmp_path / "runs" / f"seed-{s}"), quiet=True, tensorboard=False, precision="fp32")
            for s in (0, 1)]
    runs = run_all(cfgs, Launch(jobs=2))
    # once, here: the workers (which see the real URL, not this server) found the files in place
    assert len(calls) == 1 and set(requested) == {"/cifar-10-python.tar.gz"}
    assert [r.summary["seed"] for r in runs] == [0, 1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and locks")
def test_sigterm_to_a_parallel_study_stops_its_workers_and_frees_their_folders(cifar_sample, tmp_path):
    import fcntl

    out = tmp_path / "study"
    study = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", *QUICK, "--epochs", "400", "--data-dir",
                              str(cifar_sample), "--seeds", "2", "--jobs", "2", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [out / f"seed-{s}" / "train.log" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(log.is_file() and re.search(r"epoch +1/400", log.read_text()) for log in logs):   # both are training
        assert study.poll() is None and time.monotonic() < deadline, study.communicate()
        time.sleep(0.2)
    study.send_signal(signal.SIGTERM)
    _, stderr = study.communicate(timeout=120)
    assert study.returncode == 143, stderr
    assert "study stopped by a signal" in stderr
    pids = [int(re.search(r"cifarlab: worker (\d+)", log.read_text()).group(1)) for log in logs]
    assert not any(alive(pid) for pid in pids)
    for s in (0, 1):
        assert (out / f"seed-{s}" / "checkpoints" / "last.pt").is_file()             # each saved its state
        with open(out / f"seed-{s}" / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)                           # free: no BlockingIOError


def test_a_lone_train_on_a_busy_machine_says_so_first(cifar_sample, tmp_path, monkeypatch, capsys):
    from cifarlab.cli import main

    monkeypatch.delenv("CIFARLAB_LOAD_NOTE")
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    args = ["train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample), "--epochs", "1",
            "--limit-train", "100", "--no-tensorboard", "--out", str(tmp_path / "lone")]
    assert main(args) == 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert capsys.readouterr().out.splitlines()[0] == (
        f"cifarlab: note: load average 9.0 on {cores} core{'s' if cores > 1 else ''}: other work is running; "
        "timings will be slower")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert main([*args, "--overwrite"]) == 0
    assert "load average" not in capsys.readouterr().out


def test_the_wait_policy_switch_sets_openmp_before_torch_loads_and_never_after(monkeypatch):
    import cifarlab

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cifarlab, "OMP_WAIT_POLICY", "PASSIVE")
    cifarlab._set_wait_policy()                         # torch already loaded (this process): too late, left alone
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")           # as on `import cifarlab` in a fresh process
    cifarlab._set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")     # the user's own setting wins
    cifarlab._set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
