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
from cifarlab.report.stats import confidence_interval, difference_interval, interval_text, mean_rows
from cifarlab.report.summary import comparison_block
from cifarlab.run import SUMMARY, Run, load_run


class SeedsFolder:
    """A finished `train --seeds K` folder as compare sees it: the mean summary, per-seed test accuracies,
    and the per-epoch mean of the seeds' curves."""

    def __init__(self, path: Path, summary: dict):
        self.path, self.summary, self.name = path, summary, path.name
        self.per_seed = summary["final_test_acc_per_seed"]

    @property
    def rows(self) -> list[dict]:
        return mean_rows([load_run(self.path / f"seed-{s}").metrics for s in self.summary["seeds"]])


def open_result(source) -> Run | SeedsFolder:
    """A Run, a run folder, or a `train --seeds` folder (summary.json with per-seed values, no config.json)."""
    if isinstance(source, (Run, SeedsFolder)):
        return source
    path = Path(source)
    summary_file = path / SUMMARY
    if summary_file.is_file() and not (path / "config.json").is_file():
        summary = json.loads(summary_file.read_text())
        if "final_test_acc_per_seed" in summary:
            return SeedsFolder(path, summary)
    return load_run(path)


def per_seed(result) -> list[float]:
    return result.per_seed if isinstance(result, SeedsFolder) else [result.summary["final_test_acc"]]


def difference_line(a, b) -> str:
    """The 95% interval of B's test accuracy minus A's, and whether it is clear."""
    paired = isinstance(a, SeedsFolder) and isinstance(b, SeedsFolder) and a.summary["seeds"] == b.summary["seeds"]
    interval = difference_interval(per_seed(a), per_seed(b), paired)
    if interval is None:
        return "Difference: no interval (a single run on one side); run --seeds 2 or more on both sides"
    how = f"paired over {len(per_seed(a))} seeds" if paired else "Welch, independent seeds"
    clear = "clear" if interval[0] > 0 or interval[1] < 0 else "no clear difference at this budget"
    return f"Difference: {interval_text(interval, signed=True)} ({how}): {clear}"


class Comparison:
    """Finished runs side by side; str() is what `cifarlab compare` prints, plot() its figure."""

    def __init__(self, runs: list):
        self.runs = runs
        text = ""
        if len(runs) == 2:
            text = comparison_block(runs[0].summary, runs[1].summary, runs[0].name, runs[1].name)
            if any(isinstance(r, SeedsFolder) for r in runs):
                text += difference_line(*runs) + "\n"
        self.text = text + "\n" + comparison_table(runs)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def plot(self):
        from cifarlab.report.plots import comparison_figure, shown

        return shown(comparison_figure(self.runs))


def compare(runs: list, plot: str | Path | None = None) -> Comparison:
    """The article's COMPARISON block for two runs, a table for more; `plot` also writes the figure there."""
    if len(runs) < 2:
        raise UsageError("compare needs at least two run folders")
    result = Comparison([open_result(r) for r in runs])
    for r in result.runs:
        r.summary  # noqa: B018 - an unfinished run is refused here, in one line
    if plot:
        from cifarlab.report.plots import comparison_figure, save

        save(comparison_figure(result.runs), Path(plot))
    return result


def comparison_table(runs: list[Run]) -> str:
    """One row per run: its accuracies, parameters, time, and the test accuracy change from the first run."""
    first = runs[0].summary["final_test_acc"]
    headers = ["run", "model", "dataset", "epochs", "train %", "test %", "test 95% CI", "best test %", "params",
               "time s", "vs first"]
    rows = [[r.name, r.summary["model"], r.summary["dataset"], r.summary["epochs"], r.summary["final_train_acc"],
             r.summary["final_test_acc"], _interval_cell(r), r.summary["best_test_acc"], f"{r.summary['params']:,}",
             r.summary["train_time_s"], f"{r.summary['final_test_acc'] - first:+.2f}"] for r in runs]
    return text_table(headers, rows)


def _interval_cell(result) -> str:
    interval = confidence_interval(per_seed(result))
    return "-" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"
