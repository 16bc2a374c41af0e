"""cifarlab reproduce on the real sample shipped with cifarlab at a small scale, and its HTML report in headless
Chromium."""

import json
import re
from pathlib import Path

import pytest

import cifarlab
from cifarlab.study.reproduce import ARTICLE_RUNS

from conftest import headless, render_in_chromium, run_cli
from test_depth import synthetic  # noqa: F401 - a fixture: the depth tests' synthetic study, written as depth writes it

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
    # + the questions' two gradient figures (deeper CNN +- BatchNorm, ResNet-18 +- skips)
    assert len(images) == 2 + 3 * len(RUNS) + 2 and all((out / p).is_file() for p in images)


@pytest.mark.slow
def test_reproduce_again_reuses_finished_runs(study):
    out, _ = study
    before = json.loads((out / "reproduce.json").read_text())
    evaluated = {key: (out / key / "evaluation-test" / "evaluation.json").stat().st_mtime_ns for key in RUNS}
    result = run_cli("reproduce", "--sample", "--scale", "0.02", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already finished, reusing it") == 6 + 3 * 3     # + the questions' three pairs
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
    assert check["images"] == page.count("<img ") == 2 + 3 * len(RUNS) + 2
    assert check["sections"][:4] == ["Setup", "Results beside the article", "Comparisons",
                                     "What the article could not tell"]
    assert [s.split(" (")[0] for s in check["sections"][4:]] == RUNS

    shot = tmp_path / "report.png"
    result = headless("--window-size=1280,4000", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert "CONSOLE" not in result.stderr, result.stderr                 # no console message at all
    from matplotlib.image import imread
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    non_white = (pixels.min(axis=2) < 0.9).mean()
    assert non_white > 0.05 and pixels.std() > 0.1                      # text, tables and plots, not a blank page


# ---------------------------------------------------------------- what the article could not tell

PAIRS = {"skip-cifar10": ("resnet18-cifar10", "skip"), "skip-cifar100": ("resnet18-cifar100", "skip"),
         "batchnorm-deeper-cnn": ("deeper-cnn-cifar10", "batchnorm")}


@pytest.mark.slow
def test_the_questions_are_answered_from_their_run_folders_paired_over_seeds(study):
    """Each answer's accuracies are its runs' summaries; seed 0 with the switch on is the article's own run; the
    interval is Student's t over the two paired differences (t = 12.706 at one degree of freedom)."""
    out, stdout = study
    answers = {a["key"]: a for a in json.loads((out / "reproduce.json").read_text())["questions"]["answers"]}
    assert set(answers) == set(PAIRS)
    for key, (base, switch) in PAIRS.items():
        a = answers[key]
        assert a["with_runs"][0] == str(out / base)
        for arm, on in (("with", True), ("without", False)):
            configs = [json.loads((Path(p) / "config.json").read_text()) for p in a[f"{arm}_runs"]]
            assert [c["seed"] for c in configs] == [0, 1] and all(c[switch] is on for c in configs)
            assert a[f"{arm}_test_acc_per_seed"] == [
                json.loads((Path(p) / "summary.json").read_text())["final_test_acc"] for p in a[f"{arm}_runs"]]
        diffs = [b - w for w, b in zip(a["with_test_acc_per_seed"], a["without_test_acc_per_seed"])]
        mean, half = sum(diffs) / 2, 12.706 * abs(diffs[0] - diffs[1]) / 2 ** 0.5 / 2 ** 0.5
        assert a["difference_mean"] == pytest.approx(mean)
        assert a["difference_ci95"] == pytest.approx([mean - half, mean + half])
        expected = ("removing it hurts" if mean + half < 0 else "removing it helps" if mean - half > 0
                    else "no clear effect at this budget")
        assert a["verdict"] == expected and f"; {expected}." in a["text"]
    assert "What the article could not tell:" in stdout


@pytest.mark.slow
def test_the_gradient_ratios_are_the_first_over_the_last_layer_of_the_recorded_rows(study):
    out, _ = study
    gradients = {g["key"]: g for g in json.loads((out / "reproduce.json").read_text())["questions"]["gradients"]}
    assert set(gradients) == {"batchnorm-deeper-cnn", "skip-cifar10"}
    answers = {a["key"]: a for a in json.loads((out / "reproduce.json").read_text())["questions"]["answers"]}
    for key, g in gradients.items():
        for arm in ("with", "without"):
            late = []
            for run in answers[key][f"{arm}_runs"]:
                rows = [json.loads(line) for line in (Path(run) / "diagnostics.jsonl").read_text().splitlines()]
                last = [r for r in rows if r["step"] == max(r["step"] for r in rows)]
                last.sort(key=lambda r: r["depth"])
                late.append(last[0]["grad_norm"] / last[-1]["grad_norm"])
            assert g["arms"][arm]["late_per_seed"] == pytest.approx(late)


def test_a_question_run_records_about_twenty_gradient_steps_whatever_its_length():
    from cifarlab.recipes import train_config
    from cifarlab.study.questions import diagnostics_every

    one_step = train_config({"model": "resnet18", "dataset": "cifar10", "epochs": 1, "limit_train": 64,
                             "batch_size": 128})
    article = train_config({"model": "resnet18", "dataset": "cifar10"}, "article-resnet18")
    assert diagnostics_every(one_step) == 1
    assert diagnostics_every(article, 50_000) == 50                      # 15 x 391 steps / 20 = 293: at most 50
    mid = train_config({"model": "resnet18", "dataset": "cifar10", "epochs": 4, "limit_train": 1280,
                        "batch_size": 128})
    assert diagnostics_every(mid) == 2                                   # 40 steps / 20


@pytest.mark.parametrize("args, line", [
    (["--depth-study", "nowhere"], "--depth-study nowhere: no depth.json there; run `cifarlab depth --out nowhere` "
                                   "first"),
    (["--depth-study", "nowhere", "--with-depth"], "--depth-study DIR and --with-depth both given: show a finished "
                                                   "study or run one, not both"),
    (["--question-seeds", "-1"], "--question-seeds must be an integer >= 0, got -1"),
])
def test_the_questions_options_are_refused_before_any_run_in_one_line(args, line, tmp_path):
    result = run_cli("reproduce", "--sample", "--out", str(tmp_path / "r"), *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"cifarlab: error: {line}\n"
    assert not (tmp_path / "r").exists()


def test_a_finished_depth_study_joins_the_section_with_its_verdicts_and_figure(synthetic, tmp_path):
    from cifarlab.report.document import Report
    from cifarlab.study.questions import DEPTH_QUOTE, Questions, questions_section

    folder, _ = synthetic
    assert Questions(depth_study=str(folder)).check().depth_study == str(folder)
    report = Report("t")
    depth = json.loads((folder / "depth.json").read_text())
    questions_section(report, [], [], depth, tmp_path / "figures")
    md = report.markdown(tmp_path)
    assert DEPTH_QUOTE in md and depth["findings"][0] in md and depth["findings"][1] in md
    assert (tmp_path / "figures" / "depth-figure6.png").stat().st_size > 20_000
    assert "vanishing-gradient" not in md               # no pair was trained (--question-seeds 0): no flow to show


@pytest.mark.slow
def test_with_depth_runs_the_depth_study_inside_the_study_on_a_small_copy(tmp_path, monkeypatch):
    """--with-depth's study on the sample: its validation split is a tenth of the 200 train images, not the
    paper's 5,000, and the section carries the study's verdicts (two depths here, to keep the test short)."""
    from cifarlab.study import questions
    from cifarlab.study.reproduce import depth_config
    from cifarlab.study.runs import SEQUENTIAL

    out = tmp_path / "r"
    cfg = depth_config(str(cifarlab.sample_dir()), 0.005, out, {"quiet": True})
    assert (cfg.model, cfg.recipe, cfg.epochs, cfg.limit_train, cfg.val_size) == ("resnet20", "he2015-cifar", 1, 64,
                                                                                    20)   # 182 x 0.005, at least 1
    monkeypatch.setattr(questions, "DEPTH_DEPTHS", (20, 32))
    answered = questions.answer_questions(questions.Questions(seeds=0, with_depth=True), {}, {}, out, SEQUENTIAL,
                                          cfg)
    depth = json.loads((out / "depth" / "depth.json").read_text())
    assert depth["depths"] == [20, 32] and depth["seeds"] == 2                  # at least 2 seeds
    config = json.loads((out / "depth" / "plain-32" / "seed-1" / "config.json").read_text())
    assert (config["val_size"], config["limit_train"], config["skip"], config["seed"]) == (20, 64, False, 1)
    assert answered["answers"] == [] and answered["depth"]["findings"] == depth["findings"]
