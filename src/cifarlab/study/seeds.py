"""`train --seeds K`: one run folder per seed and their mean +- std in OUT/summary.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cifarlab.report.stats import confidence_interval, interval_text, mean_std_or_none, plus_minus, scored_split
from cifarlab.report.summary import results_block, summary_title, write_summary
from cifarlab.runfolder import RunFolder
from cifarlab.settings import TrainConfig
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out, run_all

# summary.json keys that get a mean and a std over seeds.
SEED_KEYS = ("final_train_acc", "final_test_acc", "final_val_acc", "best_test_acc", "overfit_gap",
             "train_and_eval_time_s", "images_per_s", "final_test_ece", "time_to_result_s")


class Seeds(dict):
    """OUT/summary.json of `train --seeds K`; str() is its mean +- std block, plot() every seed's curves."""

    def __init__(self, summary: dict, runs: list[RunFolder]):
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
    """The contract's summary keys (means over seeds) plus KEY_mean / KEY_std and the per-seed values.

    scored_on: the split the seeds are compared on, "test", or "val" where test was never scored (--no-test);
    its final accuracy gets the 95% interval (None: neither was scored)."""
    first = summaries[0]
    out = {k: first[k] for k in ("model", "dataset", "recipe", "params", "epochs", "device", "precision")}
    out["seeds"] = [s["seed"] for s in summaries]
    for key in SEED_KEYS:
        values = [s.get(key) for s in summaries]
        mean, std = mean_std_or_none(values)
        out[key], out[f"{key}_mean"], out[f"{key}_std"] = mean, mean, std
        out[f"{key}_per_seed"] = values
    split = out["scored_on"] = scored_split(summaries)
    if split is not None:
        out[f"final_{split}_acc_ci95"] = confidence_interval(out[f"final_{split}_acc_per_seed"])
    best_epochs = [s.get(f"best_{split or 'test'}_epoch") for s in summaries]
    out["best_test_epoch"] = None if None in best_epochs else round(sum(best_epochs) / len(best_epochs))
    return out


def seeds_block(summary: dict) -> str:
    """The article's Results Summary block with mean +- std over seeds, and each seed's final accuracy (val's,
    said so, where test was never scored)."""
    def number(key: str) -> str:
        if summary.get(f"{key}_mean") is None:
            return "not scored (--no-test)"
        return plus_minus(summary, key, unit=" s" if key == "train_and_eval_time_s" else "%")

    title = f"{summary_title(summary)} (mean \u00b1 std over {len(summary['seeds'])} seeds)"
    split = summary.get("scored_on", "test")
    if split is None:
        return results_block(title, summary, number, ["Per-seed accuracy: none scored (--no-test without "
                                                      "--val-size)"])
    name = "Test Accuracy" if split == "test" else f"{split.capitalize()} Accuracy (test not scored)"
    per_seed = ", ".join(f"{v:.2f}%" for v in summary[f"final_{split}_acc_per_seed"])
    extra = [] if split == "test" else [f"Final {name}: {number(f'final_{split}_acc')}"]
    interval = interval_text(summary.get(f"final_{split}_acc_ci95"))
    ece = ([f"Final Test ECE: {number('final_test_ece')} (15 bins)"] if summary.get("final_test_ece_mean") is not None
           else [])
    return results_block(title, summary, number, [*extra, f"Per-seed {name}: {per_seed}", f"Mean {name}: {interval}",
                                                  *ece])
