"""cifarlab reproduce: the article's six runs with its recipes, its figures beside ours, one report.

Resumable: each run has its own folder under OUT, and a second invocation reuses finished ones.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from cifarlab.recipes import build_config, list_recipes
from cifarlab.settings import TrainConfig
from cifarlab.data.sources import DATASETS, default_data_dir, load_dataset, missing_files
from cifarlab.errors import UsageError
from cifarlab.report.document import Report, text_table
from cifarlab.report.summary import article_summary, comparison_block
from cifarlab.runfolder import RunFolder, atomic_write_json
from cifarlab.report import robustness as robustness_report
from cifarlab.study import robustness as beyond
from cifarlab.study.questions import (Questions, answer_questions, question_bases, questions_section,
                                      summary_lines, with_diagnostics)
from cifarlab.study.runs import SEQUENTIAL, Launch, check_folders, run_all


@dataclass(frozen=True)
class ArticleRun:
    key: str
    model: str
    dataset: str
    epochs: int
    recipe: str
    # The article's own figures (design.md); hardware not stated there.
    train_acc: float
    test_acc: float
    best_test_acc: float | None
    params: int
    time_s: float


ARTICLE_RUNS = [
    ArticleRun("basic-cnn-cifar10", "basic-cnn", "cifar10", 10, "article-basic-cnn",
               85.09, 74.75, None, 545_098, 185.73),
    ArticleRun("deeper-cnn-cifar10", "deeper-cnn", "cifar10", 15, "article-deeper-cnn",
               83.24, 86.45, 86.45, 7_320_394, 457.63),
    ArticleRun("deeper-cnn-cifar100-20ep", "deeper-cnn", "cifar100", 20, "article-deeper-cnn",
               46.62, 53.57, 53.57, 7_366_564, 600.31),
    ArticleRun("deeper-cnn-cifar100-35ep", "deeper-cnn", "cifar100", 35, "article-deeper-cnn",
               51.25, 57.29, 57.29, 7_366_564, 1093.35),
    ArticleRun("resnet18-cifar10", "resnet18", "cifar10", 15, "article-resnet18",
               91.77, 88.75, 88.84, 11_173_962, 545.73),
    ArticleRun("resnet18-cifar100", "resnet18", "cifar100", 25, "article-resnet18",
               84.64, 71.53, 71.75, 11_220_132, 893.19),
]

# The article's three COMPARISON blocks: (title, run A, run B).
COMPARISONS = [
    ("COMPARISON: Basic CNN vs Deeper CNN", "basic-cnn-cifar10", "deeper-cnn-cifar10"),
    ("COMPARISON: Previous CNN vs ResNet-18 on CIFAR10", "deeper-cnn-cifar10", "resnet18-cifar10"),
    ("COMPARISON: Previous CNN vs ResNet-18 on CIFAR100", "deeper-cnn-cifar100-20ep", "resnet18-cifar100"),
]


@dataclass(frozen=True)
class Job:
    """One run of the study: its folder name under OUT, the article run it repeats, and its config."""
    key: str
    article: ArticleRun
    cfg: TrainConfig


def article_summary_dict(a: ArticleRun) -> dict:
    return {"model": a.model, "dataset": a.dataset, "params": a.params, "epochs": a.epochs,
            "final_train_acc": a.train_acc, "final_test_acc": a.test_acc,
            "best_test_acc": a.best_test_acc if a.best_test_acc is not None else a.test_acc,
            "train_and_eval_time_s": a.time_s, "overfit_gap": a.train_acc - a.test_acc}


def article_comparison_dict(a: ArticleRun) -> dict:
    # The article's COMPARISON blocks quote the best test accuracy (88.84, not the final 88.75).
    return {**article_summary_dict(a), "final_test_acc": a.best_test_acc or a.test_acc}


def tuned_recipe(model: str, dataset: str) -> str | None:
    recipes = list_recipes()
    for name in (f"tuned-{model}-{dataset}", f"tuned-{model}"):
        if name in recipes:
            return name
    return None


def scaled(epochs: int, train_size: int | None, scale: float) -> tuple[int, int | None]:
    """--scale F: F x the epochs (at least 1) and F x the train images (None = all)."""
    if scale >= 1:
        return epochs, None
    return max(1, round(epochs * scale)), max(64, round(train_size * scale))


def train_images(dataset: str, data_dir, scale: float, download: bool) -> int | None:
    """The number of train images that --scale F takes a share of; None at full scale, which limits nothing.

    Counted in the files, not taken from the registry: a smaller copy of a dataset (the tests'
    cifar-mini holds 5,000 CIFAR-10 images) is scaled by its own size. At full scale nothing is read,
    but missing files are still downloaded (or refused in one line) before the first run starts.
    """
    if scale < 1:
        return len(load_dataset(dataset, data_dir, download_missing=download).train)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if missing_files(DATASETS[dataset], root):
        load_dataset(dataset, data_dir, download_missing=download)
    return None


def plan(data_dir, scale: float, tuned: bool, out: Path, overrides: dict, diagnostics: bool = False,
         val_split: bool = False) -> list[Job]:
    """Every run of the study; tuned runs follow their article run. diagnostics: the article runs the questions
    share record their gradients. val_split (--robustness): each run holds out a val split to fit its
    temperature on, a tenth of the train images up to 5,000."""
    sizes, val_sizes = {}, {}
    jobs = []
    for a in ARTICLE_RUNS:
        if a.dataset not in sizes:
            sizes[a.dataset] = train_images(a.dataset, data_dir, scale, overrides.get("download", True))
            val_sizes[a.dataset] = (val_size(a.dataset, data_dir, overrides.get("download", True))
                                    if val_split else 0)
        pool = sizes[a.dataset] - val_sizes[a.dataset] if sizes[a.dataset] is not None else None
        epochs, limit = scaled(a.epochs, pool, scale)        # a share of what is left after the val split
        recipes = [("article", a.recipe)]
        if tuned and tuned_recipe(a.model, a.dataset):
            recipes.append(("tuned", tuned_recipe(a.model, a.dataset)))
        for kind, recipe in recipes:
            key = a.key if kind == "article" else f"{a.key}-tuned"
            cfg = build_config({**overrides, "model": a.model, "dataset": a.dataset, "epochs": epochs,
                                "limit_train": limit, "data_dir": data_dir, "out": str(out / key),
                                **({"val_size": val_sizes[a.dataset]} if val_split else {})}, recipe)
            if diagnostics and kind == "article" and key in question_bases():
                cfg = with_diagnostics(cfg, sizes[a.dataset])
            jobs.append(Job(key, a, cfg))
    return jobs


def val_size(dataset: str, data_dir, download: bool) -> int:
    """A tenth of the train images in the files, at most the 5,000 CIFAR papers hold out (cifar-mini: 500)."""
    return min(5000, len(load_dataset(dataset, data_dir, download_missing=download).train) // 10)


# He et al.'s budget in the he2015-cifar recipe, scaled like the article's runs by --with-depth
DEPTH_EPOCHS = 182


def depth_config(data_dir, scale: float, out: Path, overrides: dict) -> TrainConfig:
    """The depth study of --with-depth: he2015-cifar on CIFAR-10, its epochs and images scaled like the rest, its
    validation split a tenth of the train images up to the paper's 5,000."""
    # counted in the files at every scale: the validation split must fit a smaller copy (cifar-mini, the sample)
    total = len(load_dataset("cifar10", data_dir, download_missing=overrides.get("download", True)).train)
    epochs, limit = scaled(DEPTH_EPOCHS, total, scale)
    return build_config({**overrides, "model": "resnet20", "dataset": "cifar10", "epochs": epochs,
                         "limit_train": limit, "val_size": min(5000, total // 10), "data_dir": data_dir,
                         "out": str(out / "depth")}, "he2015-cifar")


class Reproduction(dict):
    """reproduce.json's content; str() is the table `cifarlab reproduce` prints (and the answers to the article's
    open questions), plot() ours vs the article."""

    def __str__(self) -> str:
        lines = self.get("question_lines") or []
        table = self["table"]
        if self.get("robustness"):
            table = held_out_text(self["robustness"]["runs"]) + "\n" + table
            records = self["robustness"]["runs"]
            headers, rows = robustness_report.run_table(list(records), list(records.values()))
            table += "\nBeyond the test split (--robustness):\n" + text_table(headers, rows)
        return table + "".join(f"{line}\n" for line in ["", "What the article could not tell:", *lines]
                                       if lines)

    def plot(self):
        from cifarlab.report.plots import bars_figure, shown

        labels = [r["key"] for r in self["runs"]]
        return shown(bars_figure(labels, {"ours": [r["final_test_acc"] for r in self["runs"]],
                                          "article": [r["article"]["final_test_acc"] for r in self["runs"]]},
                                 title="Final test accuracy: ours vs the article"))


def reproduce(data_dir=None, scale: float = 1.0, tuned: bool = False, out: str | None = None,
              overrides: dict | None = None, launch: Launch = SEQUENTIAL,
              questions: Questions = Questions(), robustness: beyond.Robustness = beyond.Robustness()) -> Reproduction:
    from cifarlab.evaluate import evaluate_run

    if not 0 < scale <= 1:
        raise UsageError(f"--scale must be in (0, 1], got {scale}")
    questions, robustness = questions.check(), robustness.check()
    out = Path(out or "runs/reproduce")
    overrides = dict(overrides or {})
    jobs = plan(data_dir, scale, tuned, out, overrides, diagnostics=questions.seeds > 0,
                val_split=robustness.enabled)
    depth_cfg = depth_config(data_dir, scale, out, overrides) if questions.with_depth else None
    start = time.perf_counter()
    runs, evaluations = {}, {}
    if launch.parallel:
        runs = dict(zip([job.key for job in jobs], run_all([job.cfg for job in jobs], launch)))
    else:
        check_folders([job.cfg for job in jobs])
    for i, job in enumerate(jobs, 1):
        if job.key not in runs:
            if not job.cfg.quiet:
                print(f"cifarlab reproduce: run {i}/{len(jobs)}: {job.key} ({job.cfg.epochs} epochs, "
                      f"recipe {job.cfg.recipe})", flush=True)
            runs[job.key] = run_all([job.cfg])[0]
        run = runs[job.key]
        evaluations[job.key] = reuse_evaluation(run.path) or evaluate_run(run.path, data_dir=data_dir,
                                                                          device=job.cfg.device)
    records = (dict(zip([job.key for job in jobs], beyond.measure_all(
        [runs[job.key] for job in jobs], robustness, data_dir, overrides.get("device", "auto"),
        overrides.get("quiet", False)))) if robustness.enabled else None)
    answered = answer_questions(questions, {j.key: j.cfg for j in jobs if j.key == j.article.key},
                                {j.cfg.out: runs[j.key] for j in jobs}, out, launch, depth_cfg)
    result = Reproduction({"scale": scale, "tuned": tuned, "data_dir": str(data_dir) if data_dir else None,
              "wall_time_s": time.perf_counter() - start, "machine": platform.machine(),
              "runs": [{"key": job.key, "recipe": job.cfg.recipe, "folder": str(runs[job.key].path),
                        **runs[job.key].summary, "article": article_summary_dict(job.article)} for job in jobs],
              "questions": {"answers": answered["answers"], "depth": answered["depth"],
                            "gradients": [{k: v for k, v in g.items() if k != "flows"}
                                          for g in answered["gradients"] if g is not None]}})
    if records is not None:
        result["robustness"] = {"limit": robustness.limit, "corruption_seed": robustness.seed,
                                "method": robustness_report.method_text(list(records.values())), "runs": records}
    atomic_write_json(out / "reproduce.json", dict(result))
    write_report(out, jobs, runs, evaluations, result, answered)
    result["table"] = results_table(jobs, runs)
    result["question_lines"] = summary_lines(answered["answers"], answered["gradients"], answered["depth"])
    result["folder"] = str(out)
    return result


def reuse_evaluation(run_dir: Path) -> dict | None:
    """A finished run's evaluation-test/ from an earlier pass, if it is newer than the run's weights."""
    import json

    folder = run_dir / "evaluation-test"
    weights = RunFolder(run_dir).weights_path
    result = folder / "evaluation.json"
    if not (result.is_file() and weights.is_file() and result.stat().st_mtime >= weights.stat().st_mtime
            and (folder / "confusion.png").is_file() and (folder / "per_class.png").is_file()):
        return None
    return {**json.loads(result.read_text()), "folder": str(folder)}


def results_table(jobs: list[Job], runs: dict[str, RunFolder]) -> str:
    """Ours with the article's figure in brackets, one row per run."""
    headers = ["run", "recipe", "epochs", "train % (art.)", "test % (art.)", "best % (art.)", "params", "time s (art.)"]
    rows = []
    for job in jobs:
        s, a = runs[job.key].summary, job.article
        best_article = f"{a.best_test_acc:.2f}" if a.best_test_acc is not None else "-"
        rows.append([job.key, job.cfg.recipe, f"{s['epochs']} ({a.epochs})",
                     f"{s['final_train_acc']:.2f} ({a.train_acc:.2f})", f"{s['final_test_acc']:.2f} ({a.test_acc:.2f})",
                     f"{s['best_test_acc']:.2f} ({best_article})", f"{s['params']:,}",
                     f"{s['train_and_eval_time_s']:.0f} ({a.time_s:.0f})"])
    return text_table(headers, rows)


def write_report(out: Path, jobs: list[Job], runs: dict[str, RunFolder], evaluations: dict[str, dict], result,
                 answered: dict | None = None) -> None:
    """OUT/report.md and report.html: setup, every run beside the article, the article's comparisons, each run."""
    from cifarlab.report import plots

    figures = out / "figures"
    labels = [job.key for job in jobs]
    bars = plots.accuracy_bars(labels, {"ours": [runs[k].summary["final_test_acc"] for k in labels],
                                        "article": [job.article.test_acc for job in jobs]},
                               figures / "test_accuracy.png", title="Final test accuracy: ours vs the article")
    report = Report("cifarlab reproduce: Going deeper \u2014 CIFAR, BatchNorm, ResNet")
    scale = result["scale"]
    report.section("Setup").text(
        f"Six runs of the article with its recipes{', plus our tuned recipes' if result['tuned'] else ''}. "
        f"Scale {scale:g}: " + ("full epochs and train set." if scale >= 1 else
                               f"{scale:g} x the epochs and train images (a quick pass; not comparable in "
                               "absolute terms with the article's full runs).")
        + f" Data: {data_text(result['data_dir'])}. Wall time {result['wall_time_s']:.0f} s."
        + (" " + held_out_text(result["robustness"]["runs"]) if result.get("robustness") else ""))
    curves = plots.curves({key: runs[key].metrics for key in labels}, figures / "all_curves.png", "All runs")
    report.section("Results beside the article").pre(results_table(jobs, runs)).image(
        bars, "Final test accuracy per run, ours beside the article's figures").image(
        curves, "Test accuracy (solid) and train accuracy (dashed) per epoch, every run")
    comparisons_section(report, jobs, runs)
    if result.get("robustness"):
        robustness_section(report, result["robustness"], figures)
    if answered and (answered["answers"] or answered["depth"]):
        questions_section(report, answered["answers"], answered["gradients"], answered["depth"], figures)
    for job in jobs:
        run_section(report, job, runs[job.key], evaluations[job.key], figures)
    report.write(out)


FULL_STUDY = "cifarlab reproduce --out runs/reproduce"


def data_text(data_dir: str | None) -> str:
    """Where the data came from, in the report's words: the shipped sample is named as what it is."""
    from cifarlab import sample

    if data_dir and Path(data_dir).resolve() == sample.DATA_DIR:
        return (f"the sample shipped with cifarlab ({sample.TRAIN_IMAGES} train and {sample.TEST_IMAGES} test images "
                f"per dataset: a first look, far too few for the article's accuracies; `{FULL_STUDY}` runs the full "
                "study)")
    return data_dir or "default data folder"


def held_out_text(records: dict) -> str:
    """What --robustness changes in the article's runs, said above the results."""
    sizes = "/".join(f"{n:,}" for n in sorted({r["val_images"] for r in records.values()}))
    return (f"--robustness: every run held out {sizes} of its train images as a val split (the temperature is "
            "fitted there, and best.pt is chosen on it), so it trained on fewer images than the article's run.")


def robustness_section(report: Report, robustness: dict, figures: Path) -> None:
    """--robustness: each run's clean and corrupted accuracy, ECE before and after T, CIFAR-10.1."""
    from cifarlab.report import plots

    records = robustness["runs"]
    headers, rows = robustness_report.run_table(list(records), list(records.values()))
    bars = plots.accuracy_bars(list(records), {"clean": [r["clean_accuracy"] for r in records.values()],
                                               "corrupted": [r["corruption_accuracy"] for r in records.values()]},
                               figures / "robustness.png", title="Clean and mean corrupted test accuracy")
    report.section("Beyond the test split").text(robustness["method"]).table(headers, rows).image(
        bars, "Clean and mean corrupted test accuracy per run")


def comparisons_section(report: Report, jobs: list[Job], runs: dict[str, RunFolder]) -> None:
    """The article's three COMPARISON blocks: ours beside the article's."""
    articles = {job.key: job.article for job in jobs}
    section = report.section("Comparisons")
    for title, ka, kb in COMPARISONS:
        if ka in runs and kb in runs:
            section.text(f"{title}: ours (left, final test accuracy: nothing is selected on test), "
                         "the article's as it printed them (right, best test accuracy where it had one).")
            section.side_by_side(
                ("pre", comparison_block(runs[ka].summary, runs[kb].summary, ka, kb, title=title)),
                ("pre", comparison_block(article_comparison_dict(articles[ka]), article_comparison_dict(articles[kb]),
                                         ka, kb, title=f"{title} (article)")))


def run_section(report: Report, job: Job, run: RunFolder, evaluation: dict, figures: Path) -> None:
    """One run: its summary beside the article's, its curves, confusion matrix and per-class accuracy."""
    from cifarlab.report import plots

    key = job.key
    section = report.section(f"{key} ({job.cfg.recipe})")
    section.side_by_side(("pre", article_summary(run.summary)),
                         ("pre", article_summary(article_summary_dict(job.article)).replace("Summary",
                                                                                            "Summary (article)")))
    curve = plots.curves({key: run.metrics}, figures / f"{key}-curves.png", key)
    section.image(curve, f"{key}: accuracy and test loss per epoch")
    folder = Path(evaluation["folder"])
    section.side_by_side(("image", folder / "confusion.png", f"{key}: confusion matrix on test"),
                         ("image", folder / "per_class.png", f"{key}: per-class test accuracy"))
    pairs = ", ".join(f"{p['true']} \u2192 {p['predicted']} ({p['count']})" for p in evaluation["most_confused"][:3])
    section.text(f"Most confused: {pairs or 'none'}.")
