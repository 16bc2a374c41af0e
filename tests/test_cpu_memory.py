"""A CPU run keeps the memory it frees for its next step (training/cpu_memory.py), and gives it back when it ends."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab.training import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# With transparent huge pages always on, a fresh mmap faults in 2 MB at a time: page faults no longer count steps.
HUGE_PAGES = THP.is_file() and "[always]" in THP.read_text()
needs_glibc = pytest.mark.skipif(not GLIBC or HUGE_PAGES, reason="glibc's mallopt, pages faulted in 4 KB at a time")

# Training steps of a small conv net at a batch whose activations (67 MB each) are above glibc's largest mmap
# threshold, inside keep_freed_memory() (or not): the minor page faults of steps 11-40, the peak memory after
# steps 10 and 40, then the resident memory in the block's last step and after it ends. The reused heap grows a
# little while it settles (measured: once by 128-192 MB, somewhere in steps 15-50, then flat for 100 more).
FAULTS = """
import contextlib, resource, sys, torch
from torch import nn
from cifarlab.training.cpu_memory import keep_freed_memory
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * 4
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
with (keep_freed_memory() if sys.argv[1] == "reuse" else contextlib.nullcontext("system")) as state:
    for step in range(40):
        if step == 10:
            before, peak = usage().ru_minflt, usage().ru_maxrss
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    inside = resident()
print(state, usage().ru_minflt - before, peak, usage().ru_maxrss, inside, resident())
"""
ACTIVATION_KB = 256 * 64 * 32 * 32 * 4 // 1024


def steps(setting: str) -> tuple[str, int, int, int, int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, setting], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "CIFARLAB_CPU_MALLOC"})
    state, *numbers = out.stdout.split()[-6:]
    return (state, *map(int, numbers))


@needs_glibc
def test_kept_memory_spares_every_steps_page_faults_settles_and_is_given_back_at_the_end():
    state, system, _, _, _, _ = steps("system")
    state_kept, kept, peak_early, peak_late, inside, after = steps("reuse")
    assert (state, state_kept) == ("system", "reuse")
    pages = ACTIVATION_KB // 4
    assert system >= 30 * pages               # 30 steps, each mapping fresh pages for its activations
    assert kept * 10 < system
    assert peak_late - peak_early < 5 * ACTIVATION_KB     # settled: a lost buffer a step would be 30 of them
    assert inside - after > 3 * ACTIVATION_KB             # the heap trimmed when the block ends


@needs_glibc
def test_nested_blocks_keep_memory_until_the_outer_one_ends_and_the_variable_opts_out(monkeypatch):
    monkeypatch.delenv("CIFARLAB_CPU_MALLOC", raising=False)
    with cpu_memory.keep_freed_memory() as outer:
        with cpu_memory.keep_freed_memory() as inner:
            assert outer == inner == cpu_memory.current() == "reuse"
        assert cpu_memory.current() == "reuse"
    assert cpu_memory.current() == "system"
    monkeypatch.setenv("CIFARLAB_CPU_MALLOC", "system")
    with cpu_memory.keep_freed_memory() as state:
        assert state == "system (CIFARLAB_CPU_MALLOC)"


@pytest.mark.skipif(not GLIBC or os.environ.get("CIFARLAB_CPU_MALLOC", "reuse") != "reuse",
                    reason="mallopt is glibc's, and the setting is on by default")
def test_a_cpu_run_records_its_allocator_setting_and_ends_with_the_systems(tmp_path, cifar_sample):
    from cifarlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                 "--epochs", "1", "--no-tensorboard", "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["resolved"]["cpu_malloc"] == "reuse"
    assert cpu_memory.current() == "system"
