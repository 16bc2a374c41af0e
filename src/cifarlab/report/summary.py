"""The article's "Results Summary" block, built from a run's summary.json."""

from __future__ import annotations

RULE = "=" * 60


def summary_title(summary: dict) -> str:
    from cifarlab.data.sources import DATASETS
    from cifarlab.models import MODELS

    dataset = DATASETS[summary["dataset"]].title if summary["dataset"] in DATASETS else summary["dataset"]
    model = MODELS[summary["model"]].title if summary["model"] in MODELS else summary["model"]
    return f"{dataset} {model} Results Summary"


def article_summary(summary: dict) -> str:
    """The block the article prints after each run, with our numbers."""
    lines = [
        RULE, summary_title(summary), RULE,
        f"Final Train Accuracy: {summary['final_train_acc']:.2f}%",
        f"Final Test Accuracy: {summary['final_test_acc']:.2f}%",
        f"Best Test Accuracy: {summary['best_test_acc']:.2f}%",
    ]
    if summary.get("best_val_acc") is not None:
        lines += [f"Best Val Accuracy: {summary['best_val_acc']:.2f}% (epoch {summary['best_val_epoch']}), "
                  f"Test Accuracy There: {summary['test_acc_at_best_val']:.2f}%"]
    lines += [
        f"Total Parameters: {summary['params']:,}",
        f"Total Epochs: {summary['epochs']}",
        f"Training Time: {summary['train_time_s']:.2f} seconds",
        f"Overfitting Gap: {summary['overfit_gap']:.2f}%",
    ]
    return "\n".join(lines) + "\n"
