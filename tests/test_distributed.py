"""torchrun with 2 CPU processes (gloo): same weights as one process with the same global batch,
rank 0 alone writes, and --resume works under torchrun."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.report.summary import article_summary

from conftest import run_cli

pytestmark = pytest.mark.slow          # each test trains under torchrun (2 processes): 20-50 s on 2 CPU cores

# No dropout and no BatchNorm: their masks / batch statistics are per rank, everything else is shared.
# fp32: where a CPU runs bf16 natively, `--precision auto` would pick it and round far above 1e-5.
ARGS = ["--model", "basic-cnn", "--dataset", "cifar10", "--batch-size", "64", "--no-dropout",
        "--augment", "crop,flip", "--optimizer", "sgd", "--lr", "0.05", "--precision", "fp32", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, popen=False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "cifarlab", "train", *args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def weights(run):
    return load_file(str(run / "model.safetensors"))


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(cifar_mini, tmp_path):
    common = [*ARGS, "--data-dir", str(cifar_mini), "--limit-train", "512", "--epochs", "1"]
    single = run_cli("train", *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp = torchrun(*common, "--out", str(tmp_path / "two"))
    assert ddp.returncode == 0, ddp.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    # 8 SGD steps; the two gradient halves are summed in another order: rounding-level differences.
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert sb["world_size"] == 2 and sa["world_size"] == 1
    assert sb["final_train_loss"] == pytest.approx(sa["final_train_loss"], rel=1e-5)
    assert abs(sb["final_test_acc"] - sa["final_test_acc"]) <= 0.1          # at most one of 1,000 images
    # rank 0 alone writes: one metrics line per epoch, one config, and the summary block its caller makes of fit's
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "two" / "summary.txt").read_text() == article_summary(sb)


def test_resume_under_torchrun_after_sigterm_equals_the_uninterrupted_run(cifar_mini, tmp_path):
    # With dropout: each rank draws its own masks, and last.pt holds every rank's random state.
    common = [*[a for a in ARGS if a != "--no-dropout"], "--data-dir", str(cifar_mini), "--limit-train", "2048",
              "--epochs", "3"]
    whole = torchrun(*common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "stopped"
    proc = torchrun(*common, "--out", str(out), popen=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)                   # torchrun forwards it to both ranks
    _, stderr = proc.communicate(timeout=120)
    assert stderr.count("stopped by SIGTERM at epoch") == 1                  # said once, by rank 0
    assert f"Resume with: cifarlab train --resume {out}" in stderr
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1 and len(saved["rng_ranks"]) == 2
    assert not torch.equal(saved["rng_ranks"][0]["torch"], saved["rng_ranks"][1]["torch"])   # two streams

    resumed = torchrun("--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "whole"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)                          # same world size: bit for bit
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
