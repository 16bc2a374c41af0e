"""benchmarks/gpu_proof.sh, gpu_proof.py and its parts (gpu_*.py): the whole device proof rehearsed on the CPU
(--dry-run), its flags, the airbench output it reads and the report of a run whose parts did not all end well."""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_proof.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_airbench  # noqa: E402
import gpu_compare  # noqa: E402
import gpu_correctness  # noqa: E402
import gpu_proof  # noqa: E402
import gpu_report  # noqa: E402

PARTS = ("env", "data", "compare", "budgets", "correctness", "throughput", "fast94", "airbench", "reproduce")

# Stands in for a checkout of KellerJordan/cifar10-airbench: reads the data where airbench94.py reads it
# and prints its table (columns and layout as airbench94.py prints them) for two runs.
FAKE_AIRBENCH = '''
import torch
train, test = torch.load("cifar10/train.pt"), torch.load("cifar10/test.pt")
assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (32, 32, 3)
assert len(train["labels"]) == len(train["images"]) and len(train["classes"]) == 10
print("|  run     |  epoch  |  train_loss  |  val_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |")
for run in range(2):
    print(f"|  {run:>6}  |      0  |      2.0000  |    1.9000  |     0.3000  |   0.3100  |               |              0.4000  |")
    print(f"|          |   eval  |      1.0000  |    1.1000  |     0.6000  |   0.6100  |       0.{6200 + run}  |"
          f"              {len(test['labels'])}.2500  |")
print("Mean: 0.6201    Std: 0.0001")
'''

# Stands in for airbench94_muon.py: its table (a warm-up run on dummy labels, then runs) for 30 runs, one every
# 0.2 s, so that the comparison must stop it after the runs it asked for. Run i scores 94.0 + 0.1 * (i % 3) %
# and takes a tenth of the test set's size in seconds (5.0 on the dry run's 50 test images).
FAKE_MUON = '''
import time, torch
train, test = torch.load("cifar10/train.pt"), torch.load("cifar10/test.pt")
assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (32, 32, 3)
print("|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |", flush=True)
for run in ["warmup", *range(30)]:
    print(f"|  {run:>6}  |      0  |     0.3000  |   0.3100  |               |        0.4000  |")
    acc = 0.1 if run == "warmup" else 0.94 + 0.001 * (run % 3)
    print(f"|          |   eval  |     0.6000  |   0.6100  |       {acc:.4f}  |"
          f"        {len(test['labels']) / 10:.4f}  |", flush=True)
    time.sleep(0.2)
'''


# The driver's settings from the environment: none of them may leak in from the shell running the tests.
SETTINGS = ("OUT", "SNAP", "WORK", "DATA", "GATHER", "COMPILE", "MARGIN", "AIRBENCH_SCRIPT", "DEPTHS", "DEPTH_SEEDS",
            "PLAN_BUDGET_S", "BUNDLE")


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("CAP_")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**clean, "PYTHON": sys.executable, **(env or {})})


@pytest.fixture(scope="module")
def dry_run(cifar_mini, tmp_path_factory):
    """One whole dry run (~2 min on 2 cores) of every part but depth, with the fake airbench scripts and the
    device's plan rehearsed at a budget too small for it: (OUT, the script's result)."""
    base = tmp_path_factory.mktemp("proof")
    (base / "airbench").mkdir()
    (base / "airbench" / "airbench94.py").write_text(FAKE_AIRBENCH)
    (base / "airbench" / "airbench94_muon.py").write_text(FAKE_MUON)
    out = base / "out"
    result = run_script("--dry-run", "--data-dir", str(cifar_mini), "--airbench", str(base / "airbench"),
                        "--parts", ",".join(PARTS[2:]), "--budget-s", "240",
                        env={"OUT": str(out), "PLAN_BUDGET_S": "200"})
    return out, result


def part(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_each_writes_what_it_measured(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = dict(line.split("\t")[:2] for line in (out / "parts.tsv").read_text().splitlines())
    assert states.pop("depth") == "skipped" and part(out, "depth")["reason"].startswith("not in --parts")  # optional
    assert states == {name: "ok" for name in PARTS}
    assert {part(out, name)["status"] for name in PARTS} == {"done"}
    env = part(out, "env")
    assert env["device"] == "cpu" and env["gpu"] == "none" and env["nvidia_smi"] == "none" and env["torch"]
    assert part(out, "data")["datasets"]["cifar10"] == {"train": 250, "test": 50, "classes": 10}


@pytest.mark.slow
def test_the_dry_run_puts_the_fast94_comparison_first_and_rehearses_the_device_plan(dry_run):
    """The issue's order: env and data, then the comparison, then the article's budgets, then the rest; the
    device's budget arithmetic rehearsed at 200 s, too little for 20 seeds of each: its refusal line."""
    out, result = dry_run
    order = [line.split("\t")[0] for line in (out / "parts.tsv").read_text().splitlines()]
    assert order == [*PARTS[:7], "airbench", "reproduce", "depth"][:len(order)] and order[2:4] == ["compare", "budgets"]
    log = (out / "run.log").read_text()
    starts = [line.split("] ")[1].split(":")[0] for line in log.splitlines() if ": start, limit" in line]
    assert starts[:4] == ["env", "data", "compare", "budgets"]
    assert "plan (dry): 1. env ~3 s, 2. data ~3 s, 3. compare: airbench94_muon x 3 runs" in result.stdout
    assert ("rehearsal: a device run would refuse: budget: the fast94 comparison with 20 seeds of each needs ~310 s "
            "(env, data and margin 50 s, airbench94_muon 135 s, fast94 125 s) but --budget-s is 200; 7 seeds would "
            "fit: give --budget-s >= 310 or --compare-seeds 7") in result.stdout
    assert log.index("rehearsal: a device run would refuse") < log.index("env: start")   # before anything runs


@pytest.mark.slow
def test_the_dry_run_compares_three_seeds_of_each_and_recomputes_to_the_same_figures(dry_run):
    out, _ = dry_run
    compare = part(out, "compare")
    assert compare["status"] == "done" and compare["seeds_asked"] == 3
    anchor = compare["airbench94_muon_process"]
    assert anchor["stopped_by"] == "3 runs done" and [r["run"] for r in anchor["runs"]] == ["0", "1", "2"]
    assert compare["airbench94_muon"]["seeds"] == 3 and compare["airbench94_muon"]["acc_mean"] == pytest.approx(94.1)
    # 95% interval of the mean of 94.0, 94.1, 94.2: t(0.975, 2 df) = 4.3027 times 0.1 / sqrt(3)
    assert compare["airbench94_muon"]["acc_half_width_95"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-3)
    fast = compare["fast94_runs"]
    assert [r["seed"] for r in fast] == [0, 1, 2, 3] and [r["warm_up"] for r in fast] == [True, False, False, False]
    measured = [r for r in fast if not r["warm_up"]]
    assert compare["fast94"]["seeds"] == 3
    assert compare["fast94"]["acc_mean"] == pytest.approx(sum(r["final_test_acc"] for r in measured) / 3)
    times = [r["times"].get(compare["fast94_scope_key"]) for r in measured]
    assert compare["ratio"] == pytest.approx(sum(times) / 3 / 5.0)       # the fake's runs take 5.0 s
    assert compare["goal_met"] is False and "fewer than 20 seeds (3 and 3)" in compare["not_judged"]
    summary = (out / "summary.txt").read_text()
    assert "compare airbench94_muon: 94.10 +/- 0.25% (95% interval of the mean, 3 seeds), 5.000 s per run" in summary
    assert f"fast94 / airbench94_muon time {compare['ratio']:.3f}x" in summary


@pytest.mark.slow
def test_the_dry_run_starts_the_article_budgets_with_tuned_deeper_cnn_over_three_seeds(dry_run):
    out, _ = dry_run
    budgets = part(out, "budgets")
    assert budgets["entries"][:2] == ["tuned-deeper-cnn-c10-3seeds", "tuned-resnet18-c10"]
    assert "--extra=--epochs=1" in budgets["command"] and budgets["study"] == str(out / "work" / "budgets")
    first = budgets["runs"][0]
    assert (first["entry"], first["seed"], first["state"]) == ("tuned-deeper-cnn-c10-3seeds", 0, "finished")
    assert 0 <= first["final_test_acc"] <= 100
    assert [r["seed"] for r in budgets["runs"][:3]] == [0, 1, 2]


def test_plan_refuses_a_budget_too_small_for_twenty_seeds_and_names_what_fits(tmp_path):
    ok = run_script("--plan")
    assert ok.returncode == 0 and "airbench94_muon x 20 runs" in ok.stdout and "fast94 x 20 seeds" in ok.stdout
    refused = run_script("--plan", "--budget-s", "200")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith("gpu_proof.sh: budget: the fast94 comparison with 20 seeds of each needs ~310 s")
    assert "7 seeds would fit" in refused.stderr
    # the arithmetic, recomputed: 25 s of margin, 25 of env and data, 90 fixed, 8.5 s per seed of both sides
    assert 25 + 25 + 75 + 15 + 7 * (3.0 + 5.5) <= 200 < 25 + 25 + 75 + 15 + 8 * (3.0 + 5.5)
    assert gpu_compare.plan("device", 7, 200, 25)["fits"] and not gpu_compare.plan("device", 8, 200, 25)["fits"]
    fewer = run_script("--plan", "--budget-s", "200", "--compare-seeds", "7")
    assert fewer.returncode == 0 and "fits" in fewer.stdout
    device = run_script("--pack", str(tmp_path), "--budget-s", "555", env={"OUT": str(tmp_path / "o")})
    assert device.returncode == 2 and "needs --airbench CHECKOUT" in device.stderr and not (tmp_path / "o").exists()


def test_the_verdict_needs_twenty_seeds_the_same_scope_the_accuracy_and_the_ratio():
    anchor = {"seeds": 20, "acc_mean": 94.01, "time_mean_s": 3.0}
    fast = {"seeds": 20, "acc_mean": 94.05, "time_mean_s": 2.4}
    assert gpu_compare.verdict(anchor, fast, gpu_compare.SCOPE_KEY) == {"ratio": pytest.approx(0.8), "goal_met": True,
                                                                        "not_judged": None}
    assert not gpu_compare.verdict(anchor, {**fast, "time_mean_s": 2.41}, gpu_compare.SCOPE_KEY)["goal_met"]
    assert not gpu_compare.verdict(anchor, {**fast, "acc_mean": 93.99}, gpu_compare.SCOPE_KEY)["goal_met"]
    other = gpu_compare.verdict(anchor, fast, gpu_compare.FALLBACK_KEY)
    assert not other["goal_met"] and "not airbench's scope" in other["not_judged"]
    few = gpu_compare.verdict(anchor, {**fast, "seeds": 19}, gpu_compare.SCOPE_KEY)
    assert not few["goal_met"] and "fewer than 20 seeds" in few["not_judged"]
    # fast94's time read defensively: the scope key, else the fallback, saying which
    both = {"times": {"time_to_result_s": 2.0, "train_and_eval_time_s": 3.0}}
    assert gpu_compare.scope_time(both) == (2.0, "time_to_result_s")
    assert gpu_compare.scope_time({"times": {"train_and_eval_time_s": 3.0}}) == (3.0, "train_and_eval_time_s")


def test_an_anchor_that_crashes_fails_the_comparison_and_keeps_its_output(cifar_sample, tmp_path, monkeypatch):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "airbench94_muon.py").write_text("raise SystemExit('no CUDA')\n")
    monkeypatch.setattr(gpu_compare, "run_fast94", lambda *a: {"runs": [], "stopped": None})
    args = ["compare", "--json", str(tmp_path / "compare.json"), "--device", "cpu", "--data-dir", str(cifar_sample),
            "--airbench", str(tmp_path / "ab"), "--work", str(tmp_path / "work"), "--log", str(tmp_path / "ab.log"),
            "--seeds", "2"]
    assert gpu_proof.main(args) == 1
    compare = json.loads((tmp_path / "compare.json").read_text())
    assert compare["status"] == "failed" and compare["reason"] == ("airbench94_muon.py exited with status 1 after 0 "
                                                                   "run(s); its output: ab.log")
    assert "no CUDA" in compare["airbench94_muon_process"]["log_tail"] and compare["airbench94_muon"] == {"seeds": 0}


def test_a_device_run_bundles_its_files_for_the_eight_file_limit(tmp_path):
    """The device returns at most 8 files: BUNDLE=1 keeps five and puts the rest into parts.tar.gz (a run
    whose data part fails at once, so that it takes seconds)."""
    import tarfile

    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    out = tmp_path / "out"
    result = run_script("--dry-run", "--data-dir", str(tmp_path / "data"), "--parts", "budgets",
                        env={"OUT": str(out), "BUNDLE": "1"})
    assert result.returncode != 0 and "bundled into parts.tar.gz" in result.stdout
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["compare.json", "parts.tar.gz", "report.html", "run.log", "summary.txt"] and len(files) <= 8
    with tarfile.open(out / "parts.tar.gz") as tar:
        assert {"env.json", "data.json", "budgets.json", "parts.tsv"} <= set(tar.getnames())


@pytest.mark.slow
def test_the_rehearsal_of_correctness_is_labelled_and_shows_what_one_cpu_can(dry_run):
    """On the CPU both sides of the comparison are the same CPU: a rehearsal. It can show that the part runs,
    that identical paths compare as identical (the comparison adds no error of its own), that bf16 autocast
    really changes the numbers, and that each path ran with TF32 as training sets it. Not that a GPU agrees."""
    out, result = dry_run
    correctness = part(out, "correctness")
    assert correctness["images"] == 8 and correctness["rehearsal"] is True and "rehearsal" in correctness["note"]
    for name, row in correctness["models"].items():
        assert math.isfinite(row["cpu_loss"]) and row["fp32"]["loss"] == row["cpu_loss"], name
        assert row["fp32"]["grad_rel_err"] == 0.0 and row["fp32"]["grad_cos"] == pytest.approx(1.0, abs=1e-12)
        assert 0 < row["bf16"]["loss_rel_diff"] < 0.02, name      # autocast took effect, within its limit
        assert "left out" in row["fp16"]["skipped"] and row["ok"], name
        assert row["compiled"]["backend"] == "eager" and row["compiled"]["loss_rel_diff"] < 1e-5
        assert (row["fp32"]["tf32"], row["bf16"]["tf32"], row["compiled"]["tf32"]) == (False, True, False), name
    assert "basic-cnn" in correctness["models"]
    assert "correctness basic-cnn: rehearsed (ok on the CPU against itself)" in result.stdout + result.stderr
    assert "Rehearsal: a rehearsal on the CPU" in (out / "summary.txt").read_text()


def test_the_correctness_verdict_fails_a_path_that_disagrees():
    """What the rehearsal cannot show on one CPU, shown on rows: a device whose numbers differ is NOT OK."""
    good = {"fp32": {"loss": 2.0, "loss_rel_diff": 0.0, "grad_rel_err": 0.0}, "bf16": {"loss": 2.01,
            "loss_rel_diff": 0.005}, "fp16": {"skipped": "left out"}, "compiled": {"loss": 2.0, "loss_rel_diff": 0.0}}
    assert gpu_correctness.verdict(good)
    for label, path in (("fp32", {**good["fp32"], "grad_rel_err": 0.05}),
                        ("fp32", {**good["fp32"], "loss_rel_diff": 0.01}),
                        ("bf16", {**good["bf16"], "loss_rel_diff": 0.05}), ("bf16", {**good["bf16"], "loss": math.nan}),
                        ("fp16", {"failed": "fp16 autocast on cuda: RuntimeError"}),
                        ("compiled", {"failed": "torch.compile(backend='inductor'): CppCompileError"})):
        assert not gpu_correctness.verdict({**good, label: path}), (label, path)


def test_each_correctness_path_is_measured_with_tf32_as_training_sets_it(real_batch, monkeypatch):
    """Training turns TF32 on for bf16 and fp16 and off for fp32: the proof measures those paths, not others."""
    seen = []
    measure = gpu_correctness.loss_and_grad

    def spy(model, x, y, dtype=None):
        seen.append((None if dtype is None else str(dtype).split(".")[-1], torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))
        return measure(model, x, y, dtype)

    monkeypatch.setattr(gpu_correctness, "loss_and_grad", spy)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)  # put back
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    x, y = real_batch(4)
    row = gpu_correctness.check_model("basic-cnn", x, y, "cpu", "eager", ["bf16", "fp16"])
    # the CPU reference, the device's fp32, bf16, fp16 (skipped or run), then compiled
    assert seen[1] == (None, False, False) and seen[2] == ("bfloat16", True, True)
    assert seen[3] == ("float16", True, True) and seen[-1] == (None, False, False)
    assert (row["fp32"]["tf32"], row["bf16"]["tf32"], row["fp16"]["tf32"]) == (False, True, True)


@pytest.mark.slow
def test_the_dry_run_times_two_models_and_two_fast94_seeds(dry_run):
    out, _ = dry_run
    throughput = part(out, "throughput")
    assert set(throughput["models"]) == {"basic-cnn", "fast94"}
    for row in throughput["models"].values():
        assert row["epochs"] == 2 and row["warm_images_per_s"] > 0 and row["cold_epoch_s"] > 0
        assert row["precision"] == "fp32" and not row["compiled"]
    fast94 = part(out, "fast94")
    assert fast94["epochs"] == 1 and [r["seed"] for r in fast94["runs"]] == [0, 1]
    for run in fast94["runs"]:
        assert 0 <= run["final_test_acc"] <= 100 and run["curve"][-1]["epoch"] == fast94["epochs"]
        assert 0 < run["train_only_time_s"] <= run["train_and_eval_time_s"] <= run["wall_time_s"]
    assert fast94["warm_seeds"] == 1 and fast94["warm_train_only_time_mean_s"] == fast94["runs"][1]["train_only_time_s"]
    # the figure set beside airbench's clock: its scope, stated
    assert fast94["warm_time_to_result_mean_s"] == fast94["runs"][1]["time_to_result_s"]
    assert fast94["time_scope"].startswith("airbench's: data-dependent init")
    assert all(r["train_only_time_s"] < r["time_to_result_s"] <= r["train_and_eval_time_s"] for r in fast94["runs"])


@pytest.mark.slow
def test_the_dry_run_reads_airbench_output_and_runs_reproduce_until_its_deadline(dry_run):
    out, _ = dry_run
    airbench = part(out, "airbench")
    assert airbench["runs_done"] == 2 and airbench["tta_acc_mean"] == pytest.approx(62.005)
    assert airbench["runs"][0]["time_s"] == 50.25                      # the fake prints the test-set size
    assert "Mean: 0.6201" in (out / "airbench.log").read_text()
    reproduce = part(out, "reproduce")
    assert reproduce["runs"] and reproduce["runs"][0]["key"] == "basic-cnn-cifar10"
    assert reproduce["process"]["stopped_at_deadline"] or reproduce["process"]["rc"] == 0
    for run in reproduce["runs"]:
        assert not run["finished"] or 0 <= run["final_test_acc"] <= 100


@pytest.mark.slow
def test_the_dry_run_report_shows_every_part_with_its_numbers(dry_run):
    out, _ = dry_run
    page, summary = (out / "report.html").read_text(), (out / "summary.txt").read_text()
    assert "<img" not in page and "http" not in page.replace("http-equiv", "")   # nothing to fetch
    numbers = {"env": part(out, "env")["torch"], "data": "250", "compare": "94.10 +/- 0.25%",
               "budgets": f"{part(out, 'budgets')['runs'][0]['final_test_acc']:.2f}",
               "correctness": f"{part(out, 'correctness')['models']['basic-cnn']['cpu_loss']:.6f}",
               "throughput": f"{part(out, 'throughput')['models']['basic-cnn']['warm_images_per_s']:,.0f}",
               "fast94": f"{part(out, 'fast94')['runs'][0]['final_test_acc']:.2f}", "airbench": "62.01",
               "reproduce": f"{part(out, 'reproduce')['runs'][0]['article_test_acc']:.2f}"}
    for name, number in numbers.items():
        assert html.escape(gpu_report.TITLES[name]) in page and number in page, name
        assert gpu_report.TITLES[name] in summary and number in summary, name


def test_a_bad_flag_is_one_line_on_stderr_and_exit_status_2(tmp_path):
    for args in (["--bogus"], ["--dry-run"], ["--budget-s", "soon", "--dry-run", "--data-dir", str(tmp_path)],
                 ["--pack", str(tmp_path), "--parts", "fast94,bogus"], ["--pack"], ["--plan", "--compare-seeds", "0"]):
        result = run_script(*args, env={"OUT": str(tmp_path / "out")})
        assert result.returncode == 2 and result.stdout == "", args
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("gpu_proof.sh: "), args
    assert not (tmp_path / "out").exists()
    help_text = run_script("--help")
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout and "--airbench" in help_text.stdout


def test_airbench_muon_output_gives_each_run_but_the_warmup():
    """The table as airbench94_muon.py prints it: a compile warm-up run on dummy labels, then the runs."""
    header = "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |"
    lines = ["-" * len(header), header, "-" * len(header),
             "|  warmup  |      0  |     0.1000  |   0.1000  |               |        9.0000  |",
             "|          |   eval  |     0.1000  |   0.1000  |       0.1000  |        9.5000  |", "-" * len(header),
             "|       0  |      0  |     0.5000  |   0.6000  |               |        0.3000  |",
             "|          |   eval  |     0.9000  |   0.9390  |       0.9412  |        2.6100  |", "-" * len(header),
             "|       1  |      0  |     0.5000  |   0.6000  |               |        0.3000  |"]   # cut off here
    assert gpu_airbench.parse_airbench("\n".join(lines)) == [{"run": "0", "tta_val_acc": 0.9412, "time_s": 2.61}]
    assert gpu_airbench.parse_airbench("Traceback (most recent call last):\n  ...") == []


def test_the_report_says_which_parts_did_not_run_timed_out_or_failed(tmp_path):
    (tmp_path / "parts.tsv").write_text("env\tok\t0\t4\t60\nfast94\ttimed out\t124\t120\t120\n"
                                        "correctness\tfailed\t1\t9\t150\n")
    (tmp_path / "env.json").write_text(json.dumps({"part": "env", "status": "done", "gpu": "NVIDIA H100"}))
    (tmp_path / "fast94.json").write_text(json.dumps({"part": "fast94", "status": "running", "runs": []}))
    (tmp_path / "correctness.json").write_text(json.dumps({"part": "correctness", "status": "failed",
                                                           "reason": "no CUDA device"}))
    (tmp_path / "airbench.json").write_text(json.dumps({"part": "airbench", "status": "skipped",
                                                        "reason": "no --airbench CHECKOUT given"}))
    assert gpu_proof.main(["report", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.txt").read_text()
    assert "cifarlab GPU proof: NVIDIA H100" in summary
    outcomes = dict(line.split(None, 1) for line in summary.split("\n\n")[1].splitlines()[4:])
    assert outcomes == {"env": "done in 4 s (limit 60 s)", "data": "not run", "compare": "not run", "budgets": "not run",
                        "correctness": "failed (exit status 1) after 9 s (limit 150 s): no CUDA device",
                        "throughput": "not run", "fast94": "timed out after 120 s (limit 120 s); what it finished is below",
                        "airbench": "skipped: no --airbench CHECKOUT given", "reproduce": "not run",
                        "depth": "not run"}
    assert "timed out after 120 s" in (tmp_path / "report.html").read_text()


def test_gpu_proof_py_help_lists_every_part():
    """argparse reads % in a help text as a format: a part whose docstring says "94%" broke --help."""
    text = gpu_proof.build_parser().format_help()
    assert all(name in text for name in (*PARTS, "depth", "report")) and "time to 94% on CIFAR-10" in text


@pytest.mark.slow
def test_the_optional_depth_part_rehearsed_runs_the_depth_study_and_reports_its_verdicts(cifar_mini, tmp_path):
    """`--parts depth` on the CPU (~25 s on 2 idle cores): plain and residual nets at depths 20 and 32, 1 epoch on 64
    images, 1 seed; the other optional parts are left out, as they are by default. The budget leaves room for a
    loaded machine: every run must finish here."""
    out = tmp_path / "out"
    result = run_script("--dry-run", "--data-dir", str(cifar_mini), "--parts", "depth", "--budget-s", "200",
                        env={"OUT": str(out), "CAP_DEPTH": "180"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = dict(line.split("\t")[:2] for line in (out / "parts.tsv").read_text().splitlines())
    assert states == {"env": "ok", "data": "ok", "compare": "skipped", "budgets": "skipped", "correctness": "skipped",
                      "throughput": "skipped", "fast94": "skipped", "airbench": "skipped", "reproduce": "skipped",
                      "depth": "ok"}
    depth = part(out, "depth")
    assert depth["status"] == "done" and depth["finished"] == 4 and depth["process"]["rc"] == 0
    assert sorted({r["net"] for r in depth["runs"]}) == ["plain-20", "plain-32", "resnet-20", "resnet-32"]
    study = json.loads((out / "depth-study.json").read_text())
    plain = [r for r in depth["runs"] if r["net"] == "plain-32"]
    assert [r["skip"] for r in plain] == [False] and plain[0]["model"] == "resnet32"
    net = next(n for n in study["nets"] if n["net"] == "plain-32")
    assert net["final_train_error_per_seed"] == pytest.approx([r["final_train_error"] for r in plain])
    assert (out / "depth.png").is_file() and (out / "depth-report.html").is_file()
    summary = (out / "summary.txt").read_text()
    assert gpu_report.TITLES["depth"] in summary and study["findings"][0] in summary
