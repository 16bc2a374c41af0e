"""Studies on a Ray cluster: a real local cluster on loopback, the same results as one after another."""

from __future__ import annotations

import json
import os

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
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}          # each Ray task gets 1 CPU, so 1 thread
    sequential = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                         "--epochs", "1", "--limit-train", "600", "--precision", "fp32", "--recipe",
                         "article-basic-cnn", "--seeds", "2", "--out", str(tmp_path / "seq"), env=one_thread)
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
