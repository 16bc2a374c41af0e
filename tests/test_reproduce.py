"""cifarlab reproduce on the real sample shipped with cifarlab at a small scale, and its HTML report in headless
Chromium."""

import json
import re

import pytest

import cifarlab
from cifarlab.study.reproduce import ARTICLE_RUNS

from conftest import headless, render_in_chromium, run_cli

RUNS = ["basic-cnn-cifar10", "deeper-cnn-cifar10", "deeper-cnn-cifar100-20ep", "deeper-cnn-cifar100-35ep",
        "resnet18-cifar10", "resnet18-cifar100"]
ARTICLE = {a.key: a for a in ARTICLE_RUNS}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """`cifarlab reproduce --sample` at 2% scale (64 train images, 1 epoch), each run scored on the sample's 100
    test images: six trainings, ~30 s on 2 cores (the tests taking it are marked slow)."""
    out = tmp_path_factory.mktemp("study") / "reproduce"
    result = run_cli("reproduce", "--sample", "--scale", "0.02", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.slow
def test_reproduce_runs_the_articles_six_runs_with_its_recipes(study):
    out, stdout = study
    data = json.loads((out / "reproduce.json").read_text())
    assert [r["key"] for r in data["runs"]] == RUNS and data["data_dir"] == str(cifarlab.sample_dir())
    for row in data["runs"]:
        summary = json.loads((out / row["key"] / "summary.json").read_text())
        config = json.loads((out / row["key"] / "config.json").read_text())
        article = ARTICLE[row["key"]]
        assert row["final_test_acc"] == summary["final_test_acc"]            # ours: what the run measured
        assert config["recipe"] == article.recipe == f"article-{summary['model']}"
        assert config["limit_train"] == 64                                    # 2% of 200 images, at least 64
        # ours beside the article's in the printed table, and not the article's figure copied
        assert f"{summary['final_test_acc']:.2f} ({article.test_acc:.2f})" in stdout
        assert f"{summary['final_train_acc']:.2f} ({article.train_acc:.2f})" in stdout
        assert summary["final_test_acc"] != article.test_acc
    epochs = {r["key"]: r["epochs"] for r in data["runs"]}
    assert set(epochs.values()) == {1}                                        # round(0.02 x 10..35), at least 1
    # the sample ends with the way to the full study
    assert stdout.splitlines()[-1] == "  cifarlab reproduce --out runs/reproduce"


def block(md: str, title: str) -> str:
    """The comparison block under `title` in report.md, up to its closing fence."""
    return md[md.index(f"\n{title}\n"):].split("```", 1)[0]


@pytest.mark.slow
def test_reproduce_report_blocks_hold_the_run_folders_numbers(study):
    out, _ = study
    md = (out / "report.md").read_text()
    basic = json.loads((out / "basic-cnn-cifar10" / "summary.json").read_text())
    deeper = json.loads((out / "deeper-cnn-cifar10" / "summary.json").read_text())
    ours = block(md, "COMPARISON: Basic CNN vs Deeper CNN")
    assert f"Basic CNN Test Accuracy: {basic['final_test_acc']:.2f}%" in ours
    assert f"Improvement: {deeper['final_test_acc'] - basic['final_test_acc']:+.2f}%" in ours
    # the article's block follows ours, with the article's figures, not ours
    article = block(md, "COMPARISON: Basic CNN vs Deeper CNN (article)")
    assert md.index(ours) < md.index(article)
    assert f"Basic CNN Test Accuracy: {ARTICLE['basic-cnn-cifar10'].test_acc:.2f}%" in article
    assert f"Basic CNN Test Accuracy: {basic['final_test_acc']:.2f}%" not in article
    assert "COMPARISON: Previous CNN vs ResNet-18 on CIFAR100" in md
    assert "Data: the sample shipped with cifarlab (200 train and 100 test images per dataset" in md
    for key in RUNS:
        summary = json.loads((out / key / "summary.json").read_text())
        assert f"Final Train Accuracy: {summary['final_train_acc']:.2f}%" in md
        assert (out / key / "evaluation-test" / "confusion.png").is_file()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == 2 + 3 * len(RUNS) and all((out / p).is_file() for p in images)


@pytest.mark.slow
def test_reproduce_again_reuses_finished_runs(study):
    out, _ = study
    before = json.loads((out / "reproduce.json").read_text())
    evaluated = {key: (out / key / "evaluation-test" / "evaluation.json").stat().st_mtime_ns for key in RUNS}
    result = run_cli("reproduce", "--sample", "--scale", "0.02", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already finished, reusing it") == 6
    after = json.loads((out / "reproduce.json").read_text())
    assert [r["final_test_acc"] for r in after["runs"]] == [r["final_test_acc"] for r in before["runs"]]
    # finished runs' evaluations are reused too, not recomputed
    assert {key: (out / key / "evaluation-test" / "evaluation.json").stat().st_mtime_ns for key in RUNS} == evaluated


def test_reproduce_rejects_a_scale_outside_zero_to_one(tmp_path):
    result = run_cli("reproduce", "--data-dir", str(tmp_path), "--scale", "0", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip() == "cifarlab: error: --scale must be in (0, 1], got 0.0"


@pytest.mark.slow
def test_report_html_renders_every_section_and_image_in_chromium(study, tmp_path):
    out, _ = study
    page = (out / "report.html").read_text()
    check = render_in_chromium(out / "report.html", tmp_path)
    assert check["errors"] == [] and check["broken"] == 0
    assert check["images"] == page.count("<img ") == 2 + 3 * len(RUNS)
    assert check["sections"][:3] == ["Setup", "Results beside the article", "Comparisons"]
    assert [s.split(" (")[0] for s in check["sections"][3:]] == RUNS

    shot = tmp_path / "report.png"
    result = headless("--window-size=1280,4000", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert "CONSOLE" not in result.stderr, result.stderr                 # no console message at all
    from matplotlib.image import imread
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    non_white = (pixels.min(axis=2) < 0.9).mean()
    assert non_white > 0.05 and pixels.std() > 0.1                      # text, tables and plots, not a blank page
