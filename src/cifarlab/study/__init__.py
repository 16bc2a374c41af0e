"""Studies: lists of configs -> run folders -> tables, blocks and reports.

compare (here), `--seeds` (here), ablate (ablate.py), reproduce (reproduce.py).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from cifarlab.config import TrainConfig
from cifarlab.errors import UsageError
from cifarlab.report.document import text_table
from cifarlab.report.runs import Run, load_run, mean_std
from cifarlab.report.summary import RULE, comparison_block, summary_title, write_summary

# summary.json keys that get a mean and a std over seeds.
SEED_KEYS = ("final_train_acc", "final_test_acc", "best_test_acc", "overfit_gap", "train_time_s", "images_per_s")


def run_or_reuse(cfg: TrainConfig) -> Run:
    """Train `cfg` into cfg.out unless a finished run is already there (studies resume by skipping)."""
    from cifarlab.train.engine import fit

    out = Path(cfg.out)
    if (out / "summary.json").is_file():
        run = load_run(out)
        if run.config.get("model") == cfg.model and run.config.get("dataset") == cfg.dataset \
                and run.config.get("epochs") == cfg.epochs:
            if not cfg.quiet:
                print(f"cifarlab: {out} already finished, reusing it", flush=True)
            return run
        raise UsageError(f"{out} holds a different run ({run.config.get('model')} on {run.config.get('dataset')}, "
                         f"{run.config.get('epochs')} epochs); choose another --out")
    if (out / "checkpoints" / "last.pt").is_file() and (out / "config.json").is_file():
        fit(cfg, resume=True)  # an unfinished run: continue it exactly where it stopped
    else:
        fit(dataclasses.replace(cfg, overwrite=True))
    return load_run(out)


def default_out(prefix: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"


def train_seeds(cfg: TrainConfig, seeds: int) -> dict:
    """Train seeds cfg.seed .. cfg.seed+K-1 into OUT/seed-S and write OUT/summary.json with mean +- std."""
    base = Path(cfg.out) if cfg.out else default_out(f"{cfg.model}-{cfg.dataset}")
    runs = [run_or_reuse(dataclasses.replace(cfg, seed=cfg.seed + i, out=str(base / f"seed-{cfg.seed + i}")))
            for i in range(seeds)]
    summary = seeds_summary([r.summary for r in runs])
    summary["runs"] = [str(r.path) for r in runs]
    return write_summary(base, summary, seeds_block(summary), cfg.quiet)


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


def compare(run_dirs: list[str], plot: str | None = None) -> tuple[str, list[Run]]:
    """The article's COMPARISON block for two runs, a table for more; optional bar + curves figure."""
    if len(run_dirs) < 2:
        raise UsageError("compare needs at least two run folders")
    runs = [load_run(p) for p in run_dirs]
    text = ""
    if len(runs) == 2:
        text = comparison_block(runs[0].summary, runs[1].summary, runs[0].name, runs[1].name)
    text += "\n" + comparison_table(runs)
    if plot:
        comparison_figure(runs, Path(plot))
    return text, runs


def comparison_table(runs: list[Run]) -> str:
    first = runs[0].summary["final_test_acc"]
    headers = ["run", "model", "dataset", "epochs", "train %", "test %", "best test %", "params", "time s", "vs first"]
    rows = [[r.name, r.summary["model"], r.summary["dataset"], r.summary["epochs"], r.summary["final_train_acc"],
             r.summary["final_test_acc"], r.summary["best_test_acc"], f"{r.summary['params']:,}",
             r.summary["train_time_s"], f"{r.summary['final_test_acc'] - first:+.2f}"] for r in runs]
    return text_table(headers, rows)


def comparison_figure(runs: list[Run], path: Path) -> Path:
    """One PNG: final test accuracy bars on the left, test-accuracy curves on the right."""
    from cifarlab.report.plots import plt, _save

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
    return _save(fig, path)
