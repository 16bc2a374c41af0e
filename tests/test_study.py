"""compare, train --seeds, ablate, evaluate, and TensorBoard logging on the real cifar-mini images."""

import json
import statistics

import pytest
import torch

from cifarlab.run import load_run
from cifarlab.training.device import Precision, resolve_precision
from conftest import run_cli


def train(data, out, *extra):
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(data),
                     "--limit-train", "1000", "--epochs", "2", "--quiet", "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_runs(cifar_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    plain = train(cifar_mini, root / "plain", "--recipe", "article-basic-cnn")
    tuned = train(cifar_mini, root / "tuned", "--recipe", "tuned-basic-cnn", "--epochs", "3")
    return root, plain, tuned


@pytest.mark.slow
def test_compare_two_runs_prints_the_article_block_with_the_run_folders_numbers(two_runs, tmp_path):
    root, plain, tuned = two_runs
    plot = tmp_path / "cmp.png"
    result = run_cli("compare", str(root / "plain"), str(root / "tuned"), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "COMPARISON: Basic CNN (plain) vs Basic CNN (tuned) on CIFAR-10" in out
    assert f"Basic CNN (plain) Test Accuracy: {plain['final_test_acc']:.2f}%" in out
    assert f"Basic CNN (tuned) Test Accuracy: {tuned['final_test_acc']:.2f}%" in out
    assert f"Improvement: {tuned['final_test_acc'] - plain['final_test_acc']:+.2f}%" in out
    assert "Parameter Increase: 1.00\u00d7" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


@pytest.mark.slow
def test_compare_json_lists_each_runs_summary(two_runs):
    root, plain, tuned = two_runs
    result = run_cli("compare", str(root / "plain"), str(root / "tuned"), str(root / "plain"), "--json")
    rows = json.loads(result.stdout)
    assert [r["final_test_acc"] for r in rows] == [plain["final_test_acc"], tuned["final_test_acc"],
                                                   plain["final_test_acc"]]


@pytest.mark.parametrize("args, message", [
    (["only-one"], "compare needs at least two run folders"),
    (["missing-a", "missing-b"], "missing-a: no such run folder"),
])
def test_compare_bad_input_is_one_line_exit_2(args, message, tmp_path):
    result = run_cli("compare", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: {message}"


@pytest.mark.slow
def test_compare_refuses_an_unfinished_run(two_runs, tmp_path):
    root, _, _ = two_runs
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    result = run_cli("compare", str(root / "plain"), str(tmp_path / "half"))
    assert result.returncode == 2
    assert "no summary.json (the run has not finished)" in result.stderr


@pytest.mark.slow
def test_evaluate_matches_the_runs_final_test_accuracy_and_writes_the_confusion_matrix(two_runs):
    root, plain, _ = two_runs
    result = run_cli("evaluate", str(root / "plain"), "--json")
    assert result.returncode == 0, result.stderr
    ev = json.loads(result.stdout)
    # No val split: best.pt is the last epoch, so evaluation repeats the final test pass.
    assert ev["accuracy"] == pytest.approx(plain["final_test_acc"], abs=0.101)
    matrix = ev["confusion"]
    assert sum(map(sum, matrix)) == ev["images"] == 1000
    assert sum(matrix[i][i] for i in range(10)) / 10 == pytest.approx(ev["accuracy"])
    cat = ev["classes"].index("cat")
    assert ev["per_class"]["cat"] == pytest.approx(100 * matrix[cat][cat] / sum(matrix[cat]))
    top = ev["most_confused"][0]
    off = max(matrix[i][j] for i in range(10) for j in range(10) if i != j)
    assert top["count"] == off
    folder = root / "plain" / "evaluation-test"
    assert json.loads((folder / "evaluation.json").read_text())["confusion"] == matrix
    assert (folder / "confusion.png").stat().st_size > 10_000 and (folder / "per_class.png").is_file()


def confusion(labels, predicted, n=10):
    return torch.bincount(labels * n + predicted, minlength=n * n).reshape(n, n).tolist()


@pytest.mark.slow
def test_evaluate_a_checkpoint_file_with_flip_tta_scores_each_image_with_its_mirror(two_runs, tmp_path,
                                                                                   real_batch_mini):
    root, _, _ = two_runs
    checkpoint = root / "plain" / "checkpoints" / "last.pt"
    result = run_cli("evaluate", str(checkpoint), "--tta", "flip", "--json", "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    ev = json.loads(result.stdout)
    assert ev["tta"] is True and json.loads((tmp_path / "ev" / "evaluation.json").read_text())["tta"] is True

    # The same weights, here: logits of each test image averaged with those of its mirror image.
    x, y = real_batch_mini(1000)
    x = x.contiguous(memory_format=torch.channels_last)                # as cifarlab evaluates
    model = load_run(root / "plain").model(checkpoint)
    cpu = torch.device("cpu")
    with torch.inference_mode(), Precision(resolve_precision("auto", cpu)).autocast(cpu):   # bf16 where native
        plain = model(x).float()
        tta = (plain + model(x.flip(3)).float()) / 2
    assert ev["accuracy"] == pytest.approx(100 * (tta.argmax(1) == y).float().mean().item(), abs=0.101)
    assert ev["confusion"] == confusion(y, tta.argmax(1)) != confusion(y, plain.argmax(1))   # TTA changed answers


@pytest.mark.slow
def test_evaluate_val_split_of_a_run_without_one_is_refused(two_runs):
    root, _, _ = two_runs
    result = run_cli("evaluate", str(root / "plain"), "--split", "val")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: --split val: this run was trained without --val-size, "
                                     "so it has no val split")


@pytest.mark.slow
def test_train_seeds_writes_mean_and_std_of_the_seed_runs(cifar_sample, tmp_path):
    out = tmp_path / "seeds"
    summary = train(cifar_sample, out, "--recipe", "article-basic-cnn", "--epochs", "1", "--seeds", "2", "--seed", "3")
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["final_test_acc"] for s in (3, 4)]
    assert summary["seeds"] == [3, 4]
    assert summary["final_test_acc_per_seed"] == per_seed
    assert summary["final_test_acc_mean"] == pytest.approx(statistics.mean(per_seed))
    assert summary["final_test_acc_std"] == pytest.approx(statistics.stdev(per_seed))
    assert f"\u00b1 {summary['final_test_acc_std']:.2f}%" in (out / "summary.txt").read_text()
    low, high = summary["final_test_acc_ci95"]
    assert f"Mean Test Accuracy: 95% CI [{low:.2f}, {high:.2f}]" in (out / "summary.txt").read_text()
    eces = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["final_test_ece"] for s in (3, 4)]
    assert summary["final_test_ece_per_seed"] == eces
    assert summary["final_test_ece_mean"] == pytest.approx(statistics.mean(eces))
    assert (f"Final Test ECE: {statistics.mean(eces):.2f}% \u00b1 {statistics.stdev(eces):.2f}% (15 bins)"
            in (out / "summary.txt").read_text())


@pytest.mark.slow
def test_ablate_measures_each_removed_technique_as_a_paired_difference(cifar_mini, tmp_path):
    out = tmp_path / "ablate"
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe", "tuned-basic-cnn",
                     "--data-dir", str(cifar_mini), "--epochs", "1", "--limit-train", "1000", "--seeds", "2",
                     "--without", "all", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    ab = json.loads((out / "ablation.json").read_text())
    # basic-cnn has no BatchNorm and uses PyTorch's default init: those two are skipped, not faked.
    assert [v["variant"] for v in ab["variants"]] == ["full", "no-dropout", "no-augment", "none"]
    assert ab["skipped"] == ["batchnorm", "kaiming"] and ab["recipe"] == "tuned-basic-cnn" and ab["seeds"] == 2
    full = [json.loads((out / "full" / f"seed-{s}" / "summary.json").read_text())["final_test_acc"] for s in (0, 1)]
    no_aug = [json.loads((out / "no-augment" / f"seed-{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert json.loads((out / "no-augment" / "seed-0" / "config.json").read_text())["augment"] == []
    assert json.loads((out / "none" / "seed-1" / "config.json").read_text())["dropout"] is False
    row = ab["variants"][2]
    diffs = [b["final_test_acc"] - f for b, f in zip(no_aug, full)]
    assert row["effect_mean"] == pytest.approx(statistics.mean(diffs))
    assert row["effect_std"] == pytest.approx(statistics.stdev(diffs))
    assert row["final_test_acc_mean"] == pytest.approx(statistics.mean(b["final_test_acc"] for b in no_aug))
    half = 12.706 * statistics.stdev(diffs) / 2 ** 0.5                  # Student's t, 1 degree of freedom
    assert row["effect_ci95"] == pytest.approx([statistics.mean(diffs) - half, statistics.mean(diffs) + half])
    assert "Removing augment: test accuracy" in result.stdout and "Removing everything" in result.stdout
    assert "1 epoch x 1,000 train images = 1,000 image-epochs" in result.stdout
    assert "Warning: below a tenth of the article's budget" in result.stdout
    md = (out / "ablation.md").read_text()
    low, high = row["effect_ci95"]
    assert "| no-augment |" in md and f"{row['effect_mean']:+.2f} [{low:+.2f}, {high:+.2f}]" in md
    assert (out / "ablation.png").stat().st_size > 10_000 and (out / "report.html").is_file()
    again = run_cli("ablate", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe", "tuned-basic-cnn",
                    "--data-dir", str(cifar_mini), "--epochs", "1", "--limit-train", "1000", "--seeds", "2",
                    "--without", "all", "--out", str(out))
    assert again.returncode == 0 and again.stdout.count("already finished, reusing it") == 8
    assert json.loads((out / "ablation.json").read_text())["variants"] == ab["variants"]


@pytest.mark.slow
def test_ablate_basic_cnn_skips_techniques_the_recipe_does_not_use(cifar_mini, tmp_path):
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini),
                     "--without", "batchnorm,kaiming,augment", "--out", str(tmp_path / "a"))
    assert result.returncode == 2
    assert "nothing to ablate" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ablate_unknown_technique_lists_the_valid_ones(tmp_path):
    result = run_cli("ablate", "--model", "deeper-cnn", "--dataset", "cifar10", "--without", "magic")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: unknown technique 'magic' for --without "
                                     "(choose from batchnorm, kaiming, dropout, augment, skip, or all)")


@pytest.mark.slow
def test_tensorboard_event_files_are_written_when_installed(cifar_sample, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    summary = train(cifar_sample, out, "--epochs", "2", "--limit-train", "100")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    test_acc = [e.value for e in events.Scalars("accuracy/test_acc")]
    assert len(test_acc) == 2 and test_acc[-1] == pytest.approx(summary["final_test_acc"], rel=1e-6)


def test_t_critical_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    from cifarlab.report.stats import t95
    for df in (1, 2, 3, 4, 9, 29, 30):
        assert t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
    for df in (31, 45, 100, 500):     # between table rows: never narrower than the exact interval
        assert stats.t.ppf(0.975, df) <= t95(df) <= stats.t.ppf(0.975, df) + 0.05


@pytest.mark.parametrize("diffs, words", [
    ([18.25], "no verdict from one seed"),
    ([30.0, 6.5], "no clear effect at this budget"),           # +18.25 +- 16.6: the interval spans 0
    ([2.1, 2.3, 1.9, 2.2], "removing it helps"),
    ([-1.0, -1.2, -0.8], "removing it hurts"),
])
def test_a_verdict_is_said_only_where_the_interval_excludes_zero(diffs, words):
    from cifarlab.report.stats import confidence_interval
    from cifarlab.study.ablate import verdict
    assert verdict(confidence_interval(diffs)) == words


def test_the_budget_note_warns_below_a_tenth_of_the_articles():
    from cifarlab.study.ablate import budget_note
    assert "Warning" in budget_note(1, 5_000) and "0.7% of it" in budget_note(1, 5_000)
    assert "Warning" not in budget_note(15, 45_000)


def seeds_folder(path, seeds, accs, model="basic-cnn"):
    path.mkdir(parents=True)
    summary = {"model": model, "dataset": "cifar10", "epochs": 1, "params": 545_098, "final_train_acc": 50.0,
               "final_test_acc": statistics.mean(accs), "best_test_acc": max(accs), "train_and_eval_time_s": 1.0,
               "seeds": seeds, "final_test_acc_per_seed": accs}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_compare_of_seeds_folders_gives_the_interval_of_the_difference(tmp_path):
    from cifarlab.study.compare import compare
    scipy_stats = pytest.importorskip("scipy.stats")
    a = seeds_folder(tmp_path / "a", [0, 1, 2], [70.1, 71.0, 70.4])
    b = seeds_folder(tmp_path / "b", [0, 1, 2], [72.0, 72.6, 72.1])
    c = seeds_folder(tmp_path / "c", [5, 6, 7, 8], [70.0, 73.5, 69.0, 74.0])
    older = json.loads((c / "summary.json").read_text())      # as cifarlab 0.1 named the time: still read
    older["train_time_s"] = 2.5 + older.pop("train_and_eval_time_s")
    (c / "summary.json").write_text(json.dumps(older))
    paired = str(compare([a, b]))
    diffs = [72.0 - 70.1, 72.6 - 71.0, 72.1 - 70.4]
    low, high = scipy_stats.t.interval(0.95, 2, loc=statistics.mean(diffs), scale=scipy_stats.sem(diffs))
    assert f"Difference: 95% CI [{low:+.2f}, {high:+.2f}] (paired over 3 seeds): clear" in paired
    welch = str(compare([a, c]))
    assert "(Welch, independent seeds): no clear difference at this budget" in welch
    assert "test 95% CI" in welch and "[" in welch.splitlines()[-1] and "3.50" in welch.splitlines()[-1]
