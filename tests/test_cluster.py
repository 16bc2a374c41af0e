"""Studies on a Ray cluster: a real local cluster on loopback, the same results as one after another."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import cifarlab
from cifarlab.run import load_run
from conftest import run_cli, without_timing

pytestmark = pytest.mark.slow          # a Ray head node starts (~10 s) and trains 2 small runs


@pytest.fixture
def local_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_seeds_study_on_ray_equals_the_same_seeds_one_after_another(cifar_mini, tmp_path, local_cluster):
    settings = {"data_dir": str(cifar_mini), "epochs": 1, "limit_train": 600, "precision": "fp32",
                "recipe": "article-basic-cnn"}
    # each Ray task gets 1 CPU, so 1 thread: the sequential study is given the same
    sequential = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                         "--epochs", "1", "--limit-train", "600", "--precision", "fp32", "--recipe",
                         "article-basic-cnn", "--seeds", "2", "--out", str(tmp_path / "seq"), "--threads", "1")
    assert sequential.returncode == 0, sequential.stderr
    seeds = cifarlab.train("basic-cnn", "cifar10", seeds=2, ray="auto", ray_cpus=1, out=tmp_path / "ray",
                           **{k: v for k, v in settings.items() if k != "recipe"}, recipe=settings["recipe"])
    assert seeds["final_test_acc_per_seed"] == json.loads((tmp_path / "seq" / "summary.json").read_text())[
        "final_test_acc_per_seed"]
    for seed in (0, 1):
        a, b = tmp_path / "seq" / f"seed-{seed}", tmp_path / "ray" / f"seed-{seed}"
        assert without_timing(load_run(a).metrics) == without_timing(load_run(b).metrics)
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert "cifarlab: basic-cnn on cifar10" in (b / "train.log").read_text()
    assert not list((tmp_path / "ray" / "seed-0").parent.glob(".ray-probe-*"))      # the probe cleans up


def test_without_ray_installed_the_flag_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from cifarlab.study.cluster import connect
    with pytest.raises(cifarlab.UsageError, match=r'^--ray needs Ray: pip install "cifarlab\[ray\]"$'):
        connect("auto")


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head node on loopback, started as a user would (`ray start --head`), stopped after the test."""
    import shutil
    import socket
    import subprocess
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the `ray` command is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


def test_tune_workers_as_ray_tasks_share_the_study(cifar_mini, tmp_path, ray_head):
    pytest.importorskip("optuna")
    from test_tune import assert_shared_study
    out = tmp_path / "tune-ray"
    result = run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                     "--epochs", "1", "--limit-train", "600", "--val-size", "200", "--precision", "fp32",
                     "--trials", "3", "--confirm-seeds", "0", "--jobs", "2", "--ray", ray_head, "--out", str(out),
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "workers").iterdir()) == ["ray-0.log", "ray-1.log"]
    assert_shared_study(f"sqlite:///{(out / 'tune.db').resolve()}", "basic-cnn-cifar10", 3, 2)
    trials = json.loads((out / "tune.json").read_text())["trials"]
    assert len({t["worker"] for t in trials}) >= 1 and all(t["worker"] for t in trials)
