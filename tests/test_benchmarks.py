"""The benchmark scripts run and print what their docs promise (their figures go to BENCHMARKS.md, not here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_cifar10

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow          # each trains a few hundred real images, twice: ~15-30 s on 2 cores


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600)


def test_throughput_reports_cold_and_warm_figures_for_both_loops(cifar_mini):
    result = script("throughput.py", "--data-dir", str(cifar_mini), "--images", "640", "--workers", "0")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    tutorial, ours = figures["tutorial_images_per_s"]["0"], figures["cifarlab_images_per_s"]
    for kind in ("cold", "warm"):
        assert tutorial[kind] > 0 and ours[kind] > 0
        assert figures["ratio"][kind] == pytest.approx(ours[kind] / tutorial[kind])
        assert f"{kind}: {figures['ratio'][kind]:.2f}x the fastest tutorial loop (0 workers)" in result.stdout


def test_throughput_profile_compares_epoch_one_with_epoch_three(cifar_mini):
    result = script("throughput.py", "--data-dir", str(cifar_mini), "--images", "640", "--profile")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("operator"))
    table = [line.split() for line in lines[header + 1:]]
    assert len(table) == 12
    # each row: the operator, its growth, epoch-1 ms, epoch-3 ms and the call counts; largest growth first
    growth = [float(row[-5]) for row in table]
    assert growth == sorted(growth, reverse=True)
    for row, grew in zip(table, growth):
        assert grew == pytest.approx(float(row[-4]) - float(row[-3]), abs=0.151)  # three figures, each rounded by up to 0.05
    assert all(int(row[-2]) >= 0 and int(row[-1]) >= 0 for row in table)


def test_fast94_variants_run_paired_seeds_and_report_the_difference(tmp_path):
    # the plumbing only (the figures are a GPU job): small CIFAR-10 files in the official format
    write_cifar10(tmp_path / "data", per_batch=60, test=100)
    result = script("fast94_variants.py", "--data-dir", str(tmp_path / "data"), "--seeds", "1", "--limit-train", "256",
                    "--epochs", "1", "--variants", "baseline,decay-norms", "--json", str(tmp_path / "v.json"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "v.json").read_text())["results"]
    base, other = saved["baseline"][0]["final_test_acc"], saved["decay-norms"][0]["final_test_acc"]
    assert 0 <= base <= 100 and 0 <= other <= 100
    assert f"{other - base:+.2f} pt (1 seed)" in result.stdout.splitlines()[-1]


def test_fast94_variants_refuse_an_unknown_one():
    result = script("fast94_variants.py", "--data-dir", "x", "--variants", "baseline,nope")
    assert result.returncode == 2 and "unknown variant 'nope'" in result.stderr.strip().splitlines()[-1]


def test_parallel_study_times_jobs_1_against_jobs_2_and_compares_the_numbers_it_can(cifar_mini):
    result = script("parallel_study.py", "--data-dir", str(cifar_mini), "--seeds", "2", "--without", "dropout",
                    "--limit-train", "200")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    out = result.stdout
    one = float(re.search(r"--jobs 1 +([\d.]+) s\n", out).group(1))
    two, ratio = re.search(r"--jobs 2 +([\d.]+) s +([\d.]+)x the wall time of --jobs 1", out).groups()
    # the times are printed to 0.01 s and the ratio to 0.001: allow exactly that rounding, no more
    rounding = 0.0005 + 0.005 / one + 0.005 * float(two) / one ** 2
    assert float(ratio) == pytest.approx(float(two) / one, abs=rounding)
    threads = max(1, len(os.sched_getaffinity(0)) // 2) if hasattr(os, "sched_getaffinity") else 1
    assert f"--jobs 2 ({threads} thread(s) per run) against --jobs 1 --threads {threads}: numbers identical" in out
    tables = re.findall(r"^--jobs [^\n]*:\n((?:    [^\n]*\n)+)", out, re.M)
    assert len(tables) == 3 and tables[1] == tables[2]
    assert tables[1].count("\n") == 2                                                  # full, no-dropout


def test_parallel_study_wait_policy_times_a_lone_run_with_each_policy(cifar_mini):
    result = script("parallel_study.py", "--data-dir", str(cifar_mini), "--limit-train", "200", "--wait-policy",
                    "--repeat", "1")
    assert result.returncode == 0, result.stderr
    default = float(re.search(r"OMP_WAIT_POLICY default +([\d.]+) s", result.stdout).group(1))
    passive = float(re.search(r"OMP_WAIT_POLICY PASSIVE +([\d.]+) s", result.stdout).group(1))
    cost = float(re.search(r"PASSIVE costs ([+-][\d.]+)% against the default", result.stdout).group(1))
    assert cost == pytest.approx(100 * (passive / default - 1), abs=0.1 + 100 * 0.01 / default)


def test_diagnostics_cost_times_the_run_with_and_without_and_finds_the_same_numbers():
    # the shipped sample: 200 images in batches of 32 = 6 steps; --every 3 records steps 1 and 4, 4 layers each
    result = script("diagnostics_cost.py", "--sample", "--every", "3", "--repeats", "1", "--batch-size", "32")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    out = result.stdout
    off = float(re.search(r"without --diagnostics +([\d.]+) s +\(each: [\d.]+\)\n", out).group(1))
    on, ratio = re.search(r"with --diagnostics 3 +([\d.]+) s +([\d.]+)x the time without", out).groups()
    # the times are printed to 0.01 s and the ratio to 0.001: allow exactly that rounding
    assert float(ratio) == pytest.approx(float(on) / off, abs=0.0005 + 0.005 / off + 0.005 * float(on) / off ** 2)
    assert "8 diagnostics rows per run" in out and "numbers identical: yes" in out
