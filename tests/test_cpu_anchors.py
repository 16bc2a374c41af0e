"""benchmarks/cpu_anchors.py: airbench's scripts on a CPU with counted edits, against fakes in their layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_cifar10

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cpu_anchors.py"

# Stands in for airbench94_muon.py: every line the CPU edits, as upstream writes it and as often, around a
# run loop that prints airbench's table. Each timed stretch sleeps 0.05 s; run i scores 0.9400 + i / 1000.
# Its "facts" line shows what the edits changed: weight and logit dtypes, steps, whether compile is on.
FAKE_MUON = '''
import os
import sys
import time
from math import ceil
import torch
import torch.nn.functional as F

@torch.compile
def zeropower(G):
    return G

class CifarNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 2).half()
    def forward(self, x):
        return self.head(x)

class CifarLoader:
    def __init__(self, path):
        data = torch.load(os.path.join(path, "test.pt"), map_location=torch.device("cuda"))
        self.images = data["images"]
        self.images = (self.images.half() / 255)
    def __len__(self):
        return len(self.images)

def main(run, model):
    train_loader = CifarLoader("cifar10")
    total_train_steps = ceil(8 * len(train_loader))
    starter = torch.cuda.Event(enable_timing=True)
    ender = torch.cuda.Event(enable_timing=True)
    starter.record()
    time.sleep(0.05)
    out = model(train_loader.images[:2, 0, 0, :].repeat(1, 2)[:, :4])
    ender.record()
    torch.cuda.synchronize()
    seconds = 1e-3 * starter.elapsed_time(ender)
    print(f"facts: weights {next(model.parameters()).dtype} logits {out.dtype} images {train_loader.images.dtype} "
          f"steps {total_train_steps} compiled {hasattr(zeropower, '_torchdynamo_orig_callable')}")
    acc = 0.1 if run == "warmup" else 0.94 + run / 1000
    print(f"|  {run:>6}  |      0  |     0.3000  |   0.3100  |               |  {seconds / 2:12.4f}  |")
    print(f"|          |   eval  |     0.6000  |   0.6100  |       {acc:.4f}  |  {seconds:12.4f}  |")
    return acc

if __name__ == "__main__":
    model = CifarNet().cuda().to(memory_format=torch.channels_last)
    model.compile(mode="max-autotune")
    print("|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |")
    main("warmup", model)
    accs = torch.tensor([main(run, model) for run in range(200)])
'''

# Stands in for legacy/airbench94.py: its patterns, as often as upstream has them (checked by a dry run).
FAKE_LEGACY = '''
import torch
import torch.nn.functional as F
hyp = {'opt': {'train_epochs': 9.9,}}
data = torch.load(data_path, map_location=torch.device(gpu))
self.images = (self.images.half() / 255)
net = net.half().cuda()
starter = torch.cuda.Event(enable_timing=True)
ender = torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize()
torch.cuda.synchronize()
torch.cuda.synchronize()
accs = torch.tensor([main(run) for run in range(25)])
'''


def checkout(tmp_path: Path, muon: str = FAKE_MUON) -> Path:
    folder = tmp_path / "airbench"
    (folder / "legacy").mkdir(parents=True)
    (folder / "airbench94_muon.py").write_text(muon)
    (folder / "legacy" / "airbench94.py").write_text(FAKE_LEGACY)
    return folder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def result_json(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"benchmark"')))


def test_the_edits_are_applied_counted_and_the_table_is_read(tmp_path):
    """Two runs of the fake on 2,000 images (airbench94_muon's batch): the edits listed with their counts, the copy
    run on the CPU in fp32 with bf16 logits, no compile, no warm-up run, the wall clock timing it, and the figures
    parsed."""
    write_cifar10(tmp_path / "data", per_batch=400, test=100)
    result = run("--airbench", str(checkout(tmp_path)), "--data-dir", str(tmp_path / "data"), "--scripts",
                 "airbench94_muon", "--runs", "2", "--epochs", "0.5", "--precision", "bf16", "--work",
                 str(tmp_path / "work"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for line in ("  1 x no compile (Newton-Schulz)", "  1 x no compile (model)", "  1 x data on the cpu",
                 "  2 x wall-clock timers for CUDA events", "  1 x no cuda synchronize", "  1 x no compile warm-up run",
                 "  1 x runs: 2", "  1 x epochs: 0.5", "11 edits:"):
        assert line in result.stdout
    facts = [line for line in result.stdout.splitlines() if "facts:" in line]
    # 100 test images x 0.5 epochs; fp32 weights and images, bf16 logits under autocast, compile gone.
    assert len(facts) == 2 and all(f.endswith("facts: weights torch.float32 logits torch.bfloat16 images "
                                              "torch.float32 steps 50 compiled False") for f in facts)
    assert "warmup" not in result.stdout.split("11 edits:")[1].split('{"benchmark"')[0]
    muon = result_json(result.stdout)["scripts"]["airbench94_muon"]
    assert [r["run"] for r in muon["runs"]] == ["0", "1"] and [r["tta_val_acc"] for r in muon["runs"]] == [0.94, 0.941]
    assert muon["acc_mean"] == pytest.approx(94.05) and muon["acc_std"] == pytest.approx(0.0707, abs=1e-4)
    assert all(0.05 <= r["time_s"] < 5 for r in muon["runs"])     # the wall clock saw the 0.05 s sleep
    assert all(r["s_per_epoch"] == pytest.approx(r["epoch_clock_s"][-1] / 0.5) for r in muon["runs"])
    assert "airbench94_muon run 1: TTA 94.10%" in result.stdout


def test_fp32_turns_autocast_off(tmp_path):
    result = run("--airbench", str(checkout(tmp_path)), "--dry-run", "--precision", "fp32", "--work", str(tmp_path))
    assert result.returncode == 0, result.stderr
    copy = (tmp_path / "airbench94_muon.py").read_text()
    assert "_CPU_ANCHORS_BF16 = False" in copy and ".cuda()" not in copy and "torch.compile" not in copy


def test_a_dry_run_edits_the_legacy_script_in_the_repository_layout(tmp_path):
    result = run("--airbench", str(checkout(tmp_path)), "--dry-run", "--scripts", "airbench94", "--runs", "3",
                 "--epochs", "2", "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr
    assert "legacy/airbench94.py" in result.stdout and "8 edits:" in result.stdout
    assert "  3 x no cuda synchronize" in result.stdout and "  2 x wall-clock timers for CUDA events" in result.stdout
    copy = (tmp_path / "work" / "airbench94.py").read_text()
    assert "'train_epochs': 2," in copy and "for run in range(3)]" in copy and "torch.cuda" not in copy
    assert "net = _cpu_anchors_model(net)" in copy and 'map_location=torch.device("cpu")' in copy


def test_a_pattern_the_script_lacks_is_refused_in_one_line_and_nothing_runs(tmp_path):
    result = run("--airbench", str(checkout(tmp_path, FAKE_MUON.replace("@torch.compile\n", ""))), "--scripts",
                 "airbench94_muon", "--dry-run", "--work", str(tmp_path / "work"))
    assert result.returncode == 2 and result.stdout.count("\n") == 1     # only the heading line
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert ("edit 'no compile (Newton-Schulz)' expects 1 x '@torch.compile' but the script has 0; has the "
            "upstream script changed? (nothing was run)") in result.stderr
    assert not (tmp_path / "work" / "airbench94_muon.py").exists()


def test_too_few_images_for_one_batch_are_refused(tmp_path, cifar_sample):
    result = run("--airbench", str(checkout(tmp_path)), "--data-dir", str(cifar_sample), "--work", str(tmp_path / "w"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert ("--data-dir: 200 training images, fewer than airbench94's batch of 1024: it would train no step"
            in result.stderr)


@pytest.mark.parametrize("args, message", [
    (["--scripts", "airbench95"], "--scripts airbench95: unknown airbench95; choose from airbench94, airbench94_muon"),
    (["--epochs", "0"], "--epochs 0: give a positive number"),
    (["--runs", "0"], "--runs 0: give at least 1"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, message):
    result = run("--airbench", str(checkout(tmp_path)), "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_real_rehearsal_of_airbench94_muon(tmp_path, cifar_mini):
    """The real script (CIFARLAB_AIRBENCH: a cifar10-airbench checkout), one run of one epoch on cifar-mini."""
    real = os.environ.get("CIFARLAB_AIRBENCH")
    if not real:
        pytest.skip("set CIFARLAB_AIRBENCH to a checkout of KellerJordan/cifar10-airbench")
    result = run("--airbench", real, "--data-dir", str(cifar_mini), "--scripts", "airbench94_muon", "--runs", "1",
                 "--epochs", "1", "--work", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    muon = result_json(result.stdout)["scripts"]["airbench94_muon"]
    assert len(muon["runs"]) == 1 and muon["runs"][0]["tta_val_acc"] > 0.15    # 2 Muon steps beat chance (10%)
    assert muon["runs"][0]["time_s"] > 0 and len(muon["runs"][0]["epoch_clock_s"]) == 1


@pytest.mark.slow
def test_step_profile_puts_both_steps_side_by_side(tmp_path):
    """benchmarks/step_profile.py on the real legacy script: both columns hold the convolutions' backward, the
    step cifarlab and airbench share, and each side's timing names its allocator, CPU time and page faults.
    Needs CIFARLAB_AIRBENCH; 1,100 synthetic images, 1 step each."""
    real = os.environ.get("CIFARLAB_AIRBENCH")
    if not real:
        pytest.skip("set CIFARLAB_AIRBENCH to a checkout of KellerJordan/cifar10-airbench")
    write_cifar10(tmp_path / "data", per_batch=220, test=50)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--airbench", real,
                             "--data-dir", str(tmp_path / "data"), "--steps", "1", "--top", "5"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line[:44].strip(): line[44:].split() for line in result.stdout.splitlines() if line.startswith("aten::")}
    assert len(rows) == 5 and all(float(v) > 0 for v in rows["aten::convolution_backward"])
    assert "fast94-sgd ms" in result.stdout and "airbench94 ms" in result.stdout
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["malloc"] == "reuse" and set(record["timed"]) == {"fast94", "airbench94"}
    assert all(t["steps"] == 1 and t["user_s"] > 0 and t["wall_ms_per_step"] > t["data_ms_per_step"] >= 0
               for t in record["timed"].values())
