"""`cifarlab compare`: finished runs side by side, as the article's COMPARISON block or a table.

A `train --seeds K` folder compares as its mean over seeds, with the 95% interval of the difference
(paired when both have the same seeds, Welch's otherwise); a difference is called clear only when that
interval excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.document import text_table
from cifarlab.report.stats import confidence_interval, difference_interval, interval_text, mean_rows, scored_split
from cifarlab.report.summary import comparison_block
from cifarlab.runfolder import SUMMARY, RunFolder, open_run
from cifarlab.storage import current_summary
from cifarlab.study.robustness import compare_cells, compare_figures


class SeedsFolder:
    """A finished `train --seeds K` folder as compare sees it: the mean summary, per-seed test accuracies,
    and the per-epoch mean of the seeds' curves."""

    def __init__(self, path: Path, summary: dict):
        self.path, self.summary, self.name = path, summary, path.name

    @property
    def metrics(self) -> list[dict]:
        return mean_rows([open_run(self.path / f"seed-{s}").metrics for s in self.summary["seeds"]])

    @property
    def folders(self) -> list[Path]:
        return [self.path / f"seed-{s}" for s in self.summary["seeds"]]


def open_result(source) -> RunFolder | SeedsFolder:
    """A Run, a run folder, or a `train --seeds` folder (summary.json with per-seed values, no config.json)."""
    if isinstance(source, (RunFolder, SeedsFolder)):
        return source
    path = Path(source)
    summary_file = path / SUMMARY
    if summary_file.is_file() and not (path / "config.json").is_file():
        summary = current_summary(json.loads(summary_file.read_text()))
        if "final_test_acc_per_seed" in summary:
            return SeedsFolder(path, summary)
    return open_run(path)


def per_seed(result, split: str = "test") -> list[float]:
    """The final accuracy on `split` of each seed of a seeds folder, or of the one run."""
    key = f"final_{split}_acc"
    return result.summary[f"{key}_per_seed"] if isinstance(result, SeedsFolder) else [result.summary[key]]


def difference_line(a, b, split: str = "test") -> str:
    """The 95% interval of B's final accuracy minus A's, and whether it is clear."""
    paired = isinstance(a, SeedsFolder) and isinstance(b, SeedsFolder) and a.summary["seeds"] == b.summary["seeds"]
    interval = difference_interval(per_seed(a, split), per_seed(b, split), paired)
    if interval is None:
        return "Difference: no interval (a single run on one side); run --seeds 2 or more on both sides"
    how = f"paired over {len(per_seed(a, split))} seeds" if paired else "Welch, independent seeds"
    clear = "clear" if interval[0] > 0 or interval[1] < 0 else "no clear difference at this budget"
    return f"Difference: {interval_text(interval, signed=True)} ({how}): {clear}"


class Comparison:
    """Finished runs side by side; str() is what `cifarlab compare` prints, plot() its figure."""

    def __init__(self, runs: list, split: str = "test"):
        self.runs, self.split = runs, split
        # beyond the test split, where measured: {"corruption_accuracy", "images_per_set", "ece_calibrated"}
        self.robustness = [compare_figures(r.folders if isinstance(r, SeedsFolder) else [r.path]) for r in runs]
        text = ""
        if len(runs) == 2:
            text = comparison_block(runs[0].summary, runs[1].summary, runs[0].name, runs[1].name, split=split)
            if any(isinstance(r, SeedsFolder) for r in runs):
                text += difference_line(*runs, split) + "\n"
        self.text = text + "\n" + comparison_table(runs, split, self.robustness)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def plot(self):
        from cifarlab.report.plots import comparison_figure, shown

        return shown(comparison_figure(self.runs, self.split))


def compare(runs: list, plot: str | Path | None = None) -> Comparison:
    """The article's COMPARISON block for two runs, a table for more; `plot` also writes the figure there.

    Runs on different datasets are refused (their accuracies measure different tasks). They are compared on
    test accuracy, or on val accuracy, said so, where any of them never scored test (--no-test)."""
    if len(runs) < 2:
        raise UsageError("compare needs at least two run folders")
    results = [open_result(r) for r in runs]
    summaries = [r.summary for r in results]     # an unfinished run is refused here, in one line
    other = next((r for r in results if r.summary["dataset"] != summaries[0]["dataset"]), None)
    if other is not None:
        raise UsageError(f"{results[0].path} was trained on {summaries[0]['dataset']} and {other.path} on "
                         f"{other.summary['dataset']}: their accuracies are not comparable; compare runs on one "
                         "dataset")
    split = scored_split(summaries)
    if split is None:
        unscored = next((r for r in results if scored_split([r.summary]) is None), None)
        if unscored is not None:
            raise UsageError(f"{unscored.path} scored neither test nor val (--no-test without --val-size): nothing "
                             "to compare")
        scored = ", ".join(f"{r.path} {scored_split([r.summary])} only" for r in results)
        raise UsageError(f"no split was scored by every run ({scored}): nothing to compare")
    result = Comparison(results, split)
    if plot:
        from cifarlab.report.plots import comparison_figure, save

        save(comparison_figure(result.runs, split), Path(plot))
    return result


def comparison_table(runs: list[RunFolder], split: str = "test", robustness: list | None = None) -> str:
    """One row per run: its accuracies, parameters, time, and the final accuracy's change from the first run
    (on test; on val, said in the header, where test was never scored); and where any run was measured beyond
    its test split (`evaluate --corruptions all`, `--calibration`, `--robustness`), its mean corruption accuracy
    (images per set) and its test ECE after temperature scaling, averaged over a seeds folder's seeds."""
    key = f"final_{split}_acc"
    first = runs[0].summary[key]
    name = "test" if split == "test" else f"{split} (test not scored)"
    headers = ["run", "model", "dataset", "epochs", "train %", f"{name} %", f"{split} 95% CI", "best test %",
               "params", "time s", "vs first"]
    rows = [[r.name, r.summary["model"], r.summary["dataset"], r.summary["epochs"], r.summary["final_train_acc"],
             r.summary[key], _interval_cell(r, split), r.summary["best_test_acc"], f"{r.summary['params']:,}",
             r.summary["train_and_eval_time_s"], f"{r.summary[key] - first:+.2f}"] for r in runs]
    if robustness and any(robustness):
        headers += ["corrupted % (images)", "ECE after T %"]
        rows = [row + compare_cells(figures) for row, figures in zip(rows, robustness)]
    return text_table(headers, rows)


def _interval_cell(result, split: str = "test") -> str:
    interval = confidence_interval(per_seed(result, split))
    return "-" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"
