"""`train --seeds K`: one run folder per seed and their mean +- std in OUT/summary.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cifarlab.config import TrainConfig
from cifarlab.report.stats import confidence_interval, interval_text, mean_std, plus_minus
from cifarlab.report.summary import results_block, summary_title, write_summary
from cifarlab.run import Run
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out, run_all

# summary.json keys that get a mean and a std over seeds.
SEED_KEYS = ("final_train_acc", "final_test_acc", "best_test_acc", "overfit_gap", "train_time_s", "images_per_s")


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


def train_seeds(cfg: TrainConfig, seeds: int, model=None, launch: Launch = SEQUENTIAL) -> Seeds:
    """Train seeds cfg.seed .. cfg.seed+K-1 into OUT/seed-S (spread as `launch` says) and write
    OUT/summary.json with mean +- std."""
    base = Path(cfg.out) if cfg.out else default_out(f"{cfg.model}-{cfg.dataset}".replace(":", "-").replace("/", "-"))
    runs = run_all([dataclasses.replace(cfg, seed=cfg.seed + i, out=str(base / f"seed-{cfg.seed + i}"))
                    for i in range(seeds)], launch, model)
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
    out["final_test_acc_ci95"] = confidence_interval(out["final_test_acc_per_seed"])
    best_epochs = [s["best_test_epoch"] for s in summaries]
    out["best_test_epoch"] = round(sum(best_epochs) / len(best_epochs))
    return out


def seeds_block(summary: dict) -> str:
    """The article's Results Summary block with mean +- std over seeds, and each seed's test accuracy."""
    def number(key: str) -> str:
        return plus_minus(summary, key, unit=" s" if key == "train_time_s" else "%")

    per_seed = ", ".join(f"{v:.2f}%" for v in summary["final_test_acc_per_seed"])
    title = f"{summary_title(summary)} (mean \u00b1 std over {len(summary['seeds'])} seeds)"
    interval = interval_text(summary.get("final_test_acc_ci95"))
    return results_block(title, summary, number, [f"Per-seed Test Accuracy: {per_seed}",
                                                  f"Mean Test Accuracy: {interval}"])
