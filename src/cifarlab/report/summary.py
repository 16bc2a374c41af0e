"""The article's "Results Summary" block, built from a run's summary.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence

RULE = "=" * 60


def write_summary(folder, summary: dict, block: str, quiet: bool) -> dict:
    """summary.json + summary.txt (atomically), the block printed unless quiet; returns summary + run_dir."""
    from cifarlab.runfolder import RunFolder

    RunFolder(folder).write_summary(summary)
    return _write_block({**summary, "run_dir": str(folder)}, block, quiet)


def publish_run(summary: dict, quiet: bool) -> dict:
    """A run that fit() finished: the article's block beside its summary.json in summary.txt, printed unless quiet;
    returns `summary`. Under torchrun only rank 0's summary names its run_dir: the other ranks write and print
    nothing."""
    if "run_dir" not in summary:
        return summary
    return _write_block(summary, article_summary(summary), quiet)


def _write_block(summary: dict, block: str, quiet: bool) -> dict:
    from cifarlab.runfolder import RunFolder

    RunFolder(summary["run_dir"]).write_summary_text(block)
    if not quiet:
        print(block, end="", flush=True)
    return summary


def model_title(name: str) -> str:
    """A registered model's title as the article prints it ("Deeper CNN"); any other model's own name."""
    from cifarlab.models import MODELS

    return MODELS[name].title if name in MODELS else name


def summary_title(summary: dict) -> str:
    from cifarlab.data.sources import DATASETS

    dataset = DATASETS[summary["dataset"]].title if summary["dataset"] in DATASETS else summary["dataset"]
    return f"{dataset} {model_title(summary['model'])} Results Summary"


def article_summary(summary: dict) -> str:
    """The block the article prints after each run, with our numbers."""
    def number(key: str) -> str:
        if summary.get(key) is None:
            return "not scored (--no-test)"
        return f"{summary[key]:.2f}" + (" seconds" if key == "train_and_eval_time_s" else "%")

    extra = []
    if summary.get("best_val_acc") is not None:
        extra = [f"Best Val Accuracy: {summary['best_val_acc']:.2f}% (epoch {summary['best_val_epoch']}), "
                 f"Test Accuracy There: {number('test_acc_at_best_val')}"]
    if summary.get("final_test_ece") is not None:   # runs from before calibration was measured have none
        extra.append(f"Final Test ECE: {summary['final_test_ece']:.2f}% (15 bins; `cifarlab evaluate RUN "
                     "--calibration` fits a temperature)")
    if summary.get("time_to_result_s") is not None:   # runs from before it was measured have none
        extra += [f"Time to Result: {summary['time_to_result_s']:.2f} seconds (training alone "
                  f"{summary['train_only_time_s']:.2f} seconds)", f"Time Scope: {summary['time_scope']}"]
    return results_block(summary_title(summary), summary, number, extra)


def results_block(title: str, summary: dict, number: Callable[[str], str], extra: Sequence[str] = ()) -> str:
    """The layout of the article's Results Summary block, shared by one run and a seeds summary.

    number(key) writes one measured value (accuracies, training time, gap); `extra` lines follow
    the best test accuracy.
    """
    lines = [
        RULE, title, RULE,
        f"Final Train Accuracy: {number('final_train_acc')}",
        f"Final Test Accuracy: {number('final_test_acc')}",
        f"Best Test Accuracy: {number('best_test_acc')}",
        *extra,
        f"Total Parameters: {summary['params']:,}",
        f"Total Epochs: {summary['epochs']}",
        f"Training Time: {number('train_and_eval_time_s')}",
        f"Overfitting Gap: {number('overfit_gap')}",
    ]
    return "\n".join(lines) + "\n"


def _label(summary: dict, fallback: str) -> str:
    from cifarlab.models import MODELS

    spec = MODELS.get(summary["model"])
    return spec.title if spec else fallback


def comparison_labels(a: dict, b: dict, name_a: str, name_b: str) -> tuple[str, str]:
    """Model titles as the article prints them; run names where both runs use the same model."""
    la, lb = _label(a, name_a), _label(b, name_b)
    if la == lb:
        return f"{la} ({name_a})", f"{lb} ({name_b})"
    return la, lb


def comparison_block(a: dict, b: dict, name_a: str = "A", name_b: str = "B", title: str | None = None,
                     split: str = "test") -> str:
    """The article's COMPARISON block: final accuracies (test's; val's, said so, where test was never scored),
    improvement (points), parameters and their ratio."""
    la, lb = comparison_labels(a, b, name_a, name_b)
    dataset_note = ""
    if a["dataset"] == b["dataset"]:
        from cifarlab.data.sources import DATASETS
        info = DATASETS.get(a["dataset"])
        dataset_note = f" on {info.title if info else a['dataset']}"
    key = f"final_{split}_acc"
    name = "Test Accuracy" if split == "test" else f"{split.capitalize()} Accuracy (test not scored)"
    lines = [
        RULE, title or f"COMPARISON: {la} vs {lb}{dataset_note}", RULE,
        f"{la} {name}: {a[key]:.2f}%",
        f"{lb} {name}: {b[key]:.2f}%",
        f"Improvement: {b[key] - a[key]:+.2f}%",
        f"{la} Parameters: {a['params']:,}",
        f"{lb} Parameters: {b['params']:,}",
        f"Parameter Increase: {_ratio(b['params'] / a['params'])}\u00d7",
    ]
    return "\n".join(lines) + "\n"


def _ratio(r: float) -> str:
    # As the article prints them: 13.4x, 1.53x.
    return f"{r:.1f}" if r >= 10 else f"{r:.2f}"
