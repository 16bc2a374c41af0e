"""Studies: lists of configs -> run folders -> tables, blocks and reports.

compare (here), `--seeds` (here), ablate (ablate.py), reproduce (reproduce.py).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import torch

from cifarlab.config import TrainConfig
from cifarlab.errors import UsageError
from cifarlab.report.document import text_table
from cifarlab.report.stats import mean_std
from cifarlab.run import LAST, Run, load_run
from cifarlab.report.summary import RULE, comparison_block, summary_title, write_summary

# summary.json keys that get a mean and a std over seeds.
SEED_KEYS = ("final_train_acc", "final_test_acc", "best_test_acc", "overfit_gap", "train_time_s", "images_per_s")


def run_or_reuse(cfg: TrainConfig, model=None) -> Run:
    """Train `cfg` into cfg.out unless a finished run is already there (studies resume by skipping).

    model: the Python class or factory behind cfg.model, when it is one.
    """
    import copy

    from cifarlab.training.engine import fit

    out = Path(cfg.out)
    if Run(out).finished:
        run = load_run(out, model)
        if run.config.get("model") == cfg.model and run.config.get("dataset") == cfg.dataset \
                and run.config.get("epochs") == cfg.epochs:
            if not cfg.quiet:
                print(f"cifarlab: {out} already finished, reusing it", flush=True)
            return run
        raise UsageError(f"{out} holds a different run ({run.config.get('model')} on {run.config.get('dataset')}, "
                         f"{run.config.get('epochs')} epochs); choose another --out")
    # A module instance is copied: every run of a study starts from the same weights.
    fresh = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model
    if Run(out).checkpoint_path(LAST).is_file() and Run(out).config_path.is_file():
        fit(cfg, resume=True, model=fresh)  # an unfinished run: continue it exactly where it stopped
    else:
        fit(dataclasses.replace(cfg, overwrite=True), model=fresh)
    return load_run(out, model)


def default_out(prefix: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"


class Seeds(dict):
    """OUT/summary.json of `train --seeds K`; str() is its mean +- std block, plot() every seed's curves."""

    def __init__(self, summary: dict, runs: list[Run]):
        super().__init__(summary)
        self.runs = runs

    def __str__(self) -> str:
        return seeds_block(self)

    def plot(self):
        from cifarlab.report.plots import curves_figure, shown

        return shown(curves_figure({r.name: r.metrics for r in self.runs}, f"{self['model']} over seeds"))


def train_seeds(cfg: TrainConfig, seeds: int, model=None) -> Seeds:
    """Train seeds cfg.seed .. cfg.seed+K-1 into OUT/seed-S and write OUT/summary.json with mean +- std."""
    base = Path(cfg.out) if cfg.out else default_out(f"{cfg.model}-{cfg.dataset}".replace(":", "-").replace("/", "-"))
    runs = [run_or_reuse(dataclasses.replace(cfg, seed=cfg.seed + i, out=str(base / f"seed-{cfg.seed + i}")), model)
            for i in range(seeds)]
    summary = seeds_summary([r.summary for r in runs])
    summary["runs"] = [str(r.path) for r in runs]
    return Seeds(write_summary(base, summary, seeds_block(summary), cfg.quiet), runs)


def seeds_summary(summaries: list[dict]) -> dict:
    """The contract's summary keys (means over seeds) plus KEY_mean / KEY_std and the per-seed values."""
    first = summaries[0]
    out = {k: first[k] for k in ("model", "dataset", "recipe", "params", "epochs", "device", "precision")}
    out["seeds"] = [s["seed"] for s in summaries]
    for key in SEED_KEYS:
        mean, std = mean_std([s[key] for s in summaries])
        out[key], out[f"{key}_mean"], out[f"{key}_std"] = mean, mean, std
        out[f"{key}_per_seed"] = [s[key] for s in summaries]
    best_epochs = [s["best_test_epoch"] for s in summaries]
    out["best_test_epoch"] = round(sum(best_epochs) / len(best_epochs))
    return out


def seeds_block(summary: dict) -> str:
    n = len(summary["seeds"])

    def line(label, key, unit="%"):
        return f"{label}: {summary[key + '_mean']:.2f}{unit} \u00b1 {summary[key + '_std']:.2f}{unit}"

    lines = [RULE, f"{summary_title(summary)} (mean \u00b1 std over {n} seeds)", RULE,
             line("Final Train Accuracy", "final_train_acc"), line("Final Test Accuracy", "final_test_acc"),
             line("Best Test Accuracy", "best_test_acc"),
             f"Per-seed Test Accuracy: {', '.join(f'{v:.2f}%' for v in summary['final_test_acc_per_seed'])}",
             f"Total Parameters: {summary['params']:,}", f"Total Epochs: {summary['epochs']}",
             line("Training Time", "train_time_s", " s"), line("Overfitting Gap", "overfit_gap")]
    return "\n".join(lines) + "\n"


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
        from cifarlab.report.plots import shown

        return shown(comparison_figure(self.runs))


def compare(runs: list, plot: str | Path | None = None) -> Comparison:
    """The article's COMPARISON block for two runs, a table for more; `plot` also writes the figure there."""
    if len(runs) < 2:
        raise UsageError("compare needs at least two run folders")
    result = Comparison([r if isinstance(r, Run) else load_run(r) for r in runs])
    for r in result.runs:
        r.summary  # noqa: B018 - an unfinished run is refused here, in one line
    if plot:
        from cifarlab.report.plots import _save
        _save(comparison_figure(result.runs), Path(plot))
    return result


def comparison_table(runs: list[Run]) -> str:
    first = runs[0].summary["final_test_acc"]
    headers = ["run", "model", "dataset", "epochs", "train %", "test %", "best test %", "params", "time s", "vs first"]
    rows = [[r.name, r.summary["model"], r.summary["dataset"], r.summary["epochs"], r.summary["final_train_acc"],
             r.summary["final_test_acc"], r.summary["best_test_acc"], f"{r.summary['params']:,}",
             r.summary["train_time_s"], f"{r.summary['final_test_acc'] - first:+.2f}"] for r in runs]
    return text_table(headers, rows)


def comparison_figure(runs: list[Run]):
    """Final test accuracy bars on the left, test-accuracy curves on the right."""
    from cifarlab.report.plots import plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [r.name for r in runs]
    values = [r.summary["final_test_acc"] for r in runs]
    drawn = bars.bar(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
    for bar, v in zip(drawn, values):
        bars.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    bars.set_xticks(range(len(runs)), names, rotation=20, ha="right", fontsize=8)
    bars.set(ylabel="final test accuracy (%)", ylim=(0, 105), title="Final test accuracy")
    for i, r in enumerate(runs):
        rows = r.rows
        lines.plot([x["epoch"] for x in rows], [x["test_acc"] for x in rows], color=f"C{i % 10}", marker="o",
                   ms=3, label=r.name)
    lines.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per epoch")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=7)
    return fig
