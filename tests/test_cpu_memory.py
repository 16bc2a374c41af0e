"""The CPU allocator setting (training/cpu_memory.py): freed step-sized buffers are reused without page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Training steps of a small conv net at a batch whose activations (67 MB each) are above glibc's largest mmap
# threshold: the minor page faults of steps 11-40, and the peak memory after steps 10 and 40. The reused heap
# grows a little while it settles (measured: once by 128-192 MB, somewhere in steps 15-50, then flat for 100
# more steps), so its bound is 1.25x; without reuse, or with a leak, a step's buffers would be lost each time.
FAULTS = """
import resource, torch
from torch import nn
from cifarlab.training.cpu_memory import reuse_freed_memory
state = reuse_freed_memory()
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
for step in range(40):
    if step == 10:
        before, peak = usage().ru_minflt, usage().ru_maxrss
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(state, usage().ru_minflt - before, peak, usage().ru_maxrss)
"""


def faults(setting: str) -> tuple[str, int, int, int]:
    env = {**os.environ, "CIFARLAB_CPU_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    state, count, peak_early, peak_late = out.stdout.split()[-4:]
    return state, int(count), int(peak_early), int(peak_late)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_reused_memory_spares_the_page_faults_of_every_step_and_does_not_grow():
    system_state, system, _, _ = faults("system")
    reuse_state, reuse, peak_early, peak_late = faults("reuse")
    assert (system_state, reuse_state) == ("system", "reuse")
    activation_pages = 256 * 64 * 32 * 32 * 4 // 4096
    assert system >= 30 * activation_pages      # 30 steps, each mapping fresh pages for its activations
    assert reuse * 10 < system
    assert peak_late <= peak_early * 1.25       # freed buffers are reused, not left behind


@pytest.mark.skipif(not GLIBC or os.environ.get("CIFARLAB_CPU_MALLOC", "reuse") != "reuse",
                    reason="mallopt is glibc's, and the setting is on by default")
def test_a_cpu_run_records_its_allocator_setting(tmp_path, cifar_sample):
    from cifarlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                 "--epochs", "1", "--no-tensorboard", "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["resolved"]["cpu_malloc"] == "reuse"
