"""`cifarlab compare`: finished runs side by side, as the article's COMPARISON block or a table."""

from __future__ import annotations

from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.document import text_table
from cifarlab.report.summary import comparison_block
from cifarlab.run import Run, load_run


class Comparison:
    """Finished runs side by side; str() is what `cifarlab compare` prints, plot() its figure."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        text = ""
        if len(runs) == 2:
            text = comparison_block(runs[0].summary, runs[1].summary, runs[0].name, runs[1].name)
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
    result = Comparison([r if isinstance(r, Run) else load_run(r) for r in runs])
    for r in result.runs:
        r.summary  # noqa: B018 - an unfinished run is refused here, in one line
    if plot:
        from cifarlab.report.plots import comparison_figure, save

        save(comparison_figure(result.runs), Path(plot))
    return result


def comparison_table(runs: list[Run]) -> str:
    """One row per run: its accuracies, parameters, time, and the test accuracy change from the first run."""
    first = runs[0].summary["final_test_acc"]
    headers = ["run", "model", "dataset", "epochs", "train %", "test %", "best test %", "params", "time s", "vs first"]
    rows = [[r.name, r.summary["model"], r.summary["dataset"], r.summary["epochs"], r.summary["final_train_acc"],
             r.summary["final_test_acc"], r.summary["best_test_acc"], f"{r.summary['params']:,}",
             r.summary["train_time_s"], f"{r.summary['final_test_acc'] - first:+.2f}"] for r in runs]
    return text_table(headers, rows)
