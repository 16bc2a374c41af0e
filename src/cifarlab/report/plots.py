"""Figures for reports: training curves, accuracy bars, confusion matrices, per-class bars.

Each `*_figure` function returns a matplotlib Figure (what `Run.plot()` and the study objects
show inline in Jupyter); the others write one PNG and return its path. Outside a notebook the
Agg backend is used, so no screen is needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:   # a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cifarlab.storage import atomic_file  # noqa: E402

DPI = 110


def save(fig, path: Path) -> Path:
    """Write `fig` to `path` (folders created; a PNG, or the format its suffix names, e.g. compare --plot x.svg)
    and close it; atomically, so a report or a browser reading the folder never sees half a picture, and a failed
    draw leaves the old one."""
    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:   # the temporary name ends in .tmp: the format comes from `path`
            fig.savefig(tmp, dpi=DPI, format=path.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return path


def shown(fig):
    """A figure for a notebook to show once: closed for pyplot (no second copy at the cell's end)."""
    fig.tight_layout()
    plt.close(fig)
    return fig


def curves(series: dict[str, list[dict]], path: Path, title: str = "Training curves") -> Path:
    """Test accuracy (and train accuracy, dashed) per epoch, one colour per run; written to `path`."""
    return save(curves_figure(series, title), path)


def run_figure(name: str, rows: list[dict]):
    """One run's curves as a Figure."""
    return shown(curves_figure({name: rows}, name))


def scored(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the rows that have `key` (a run with --eval-every N scores only some epochs)."""
    kept = [r for r in rows if r.get(key) is not None]
    return [r["epoch"] for r in kept], [r[key] for r in kept]


def curves_figure(series: dict[str, list[dict]], title: str = "Training curves"):
    """series: label -> metrics.jsonl rows (or rows averaged over seeds)."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, rows) in enumerate(series.items()):
        colour = f"C{i % 10}"
        ax_acc.plot(*scored(rows, "test_acc"), color=colour, marker="o", ms=3, label=f"{label} test")
        ax_acc.plot(*scored(rows, "train_acc"), color=colour, ls="--", alpha=0.6)
        ax_loss.plot(*scored(rows, "test_loss"), color=colour, marker="o", ms=3, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy (dashed = train)")
    # log scale: an early diverging epoch (loss 1e5) would otherwise flatten every other curve
    ax_loss.set(xlabel="epoch", ylabel="test loss (log scale)", title="test loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
    ax_acc.legend(fontsize=7, loc="lower right")
    return fig


def accuracy_bars(labels: list[str], groups: dict[str, list[float | None]], path: Path,
                  errors: dict[str, list[float]] | None = None, title: str = "Test accuracy") -> Path:
    """Grouped bars (see bars_figure), written to `path`."""
    return save(bars_figure(labels, groups, errors, title), path)


def bars_figure(labels: list[str], groups: dict[str, list[float | None]],
                errors: dict[str, list[float]] | None = None, title: str = "Test accuracy"):
    """Grouped bars: one group per label, one bar per key of `groups` (e.g. ours / article).

    A None value draws no bar; `errors` adds +- whiskers (std over seeds).
    """
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4.2))
    width = 0.8 / max(1, len(groups))
    for j, (name, values) in enumerate(groups.items()):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(labels))]
        heights = [v if v is not None else 0 for v in values]
        err = errors.get(name) if errors else None
        bars = ax.bar(xs, heights, width, label=name, color=f"C{j}", yerr=err, capsize=3 if err else 0)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="accuracy (%)", title=title, ylim=(0, 105))
    ax.grid(axis="y", alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return fig


def comparison_figure(runs: list, split: str = "test"):
    """Runs side by side (`cifarlab compare --plot`): final accuracy bars on the left, accuracy curves on the
    right, on test (or on val, where test was never scored). runs: finished `Run`s (cifarlab.run)."""
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [r.name for r in runs]
    values = [r.summary[f"final_{split}_acc"] for r in runs]
    what = "test" if split == "test" else f"{split} (test not scored)"
    drawn = bars.bar(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
    for bar, v in zip(drawn, values):
        bars.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    bars.set_xticks(range(len(runs)), names, rotation=20, ha="right", fontsize=8)
    bars.set(ylabel=f"final {split} accuracy (%)", ylim=(0, 105), title=f"Final {what} accuracy")
    for i, r in enumerate(runs):
        lines.plot(*scored(r.metrics, f"{split}_acc"), color=f"C{i % 10}", marker="o", ms=3, label=r.name)
    lines.set(xlabel="epoch", ylabel=f"{split} accuracy (%)", title=f"{what.capitalize()} accuracy per epoch")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=7)
    return fig


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows = true class), written to `path`."""
    return save(_confusion(matrix, classes, title), path)


def confusion_figure(matrix: list[list[int]], classes: list[str], title: str = "Confusion matrix"):
    return shown(_confusion(matrix, classes, title))


def _confusion(matrix: list[list[int]], classes: list[str], title: str):
    """Counts are printed in the cells when there are few classes."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    side = 5.5 if n <= 10 else 9
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 10:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def per_class_bars(classes: list[str], accuracies: list[float], path: Path, title: str = "Per-class accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(classes) + 5), 3.8))
    ax.bar(range(len(classes)), accuracies, color="C0")
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    else:
        ax.set_xlabel("class index")
    ax.set(ylabel="accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


# ---------------------------------------------------------------- a recipe search (cifarlab tune)

def history_figure(trials: list[dict]):
    """Each trial's best validation accuracy in order (pruned trials hollow) and the running best."""
    fig, ax = plt.subplots(figsize=(7, 4))
    best, running = None, []
    for t in trials:
        if t["value"] is not None and t["state"] == "complete":
            best = t["value"] if best is None else max(best, t["value"])
        running.append(best)
    done = [t for t in trials if t["value"] is not None]
    ax.scatter([t["number"] for t in done if t["state"] == "complete"],
               [t["value"] for t in done if t["state"] == "complete"], color="C0", label="complete")
    ax.scatter([t["number"] for t in done if t["state"] == "pruned"],
               [t["value"] for t in done if t["state"] == "pruned"], facecolors="none", edgecolors="C1",
               label="pruned (its last val accuracy)")
    ax.plot([t["number"] for t in trials], running, color="C2", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy (%)", title="Optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def importance_figure(importances: dict[str, float]):
    """Horizontal bars: each setting's share of the validation accuracy's variation."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set(xlabel="importance", title="Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


def parallel_figure(trials: list[dict]):
    """Parallel coordinates: one line per scored trial across its settings (each scaled to 0..1, categories
    in order of appearance), coloured by validation accuracy."""
    scored = [t for t in trials if t["value"] is not None and t["params"]]
    names = sorted({k for t in scored for k in t["params"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) + 2), 4.2))
    if not scored:
        ax.set(title="Parallel coordinates: no scored trial")
        return fig
    axes = {name: _axis([t["params"].get(name) for t in scored]) for name in names}
    values = [t["value"] for t in scored]
    low, high = min(values), max(values)
    cmap = plt.get_cmap("viridis")
    for t in scored:
        ys = [axes[name](t["params"].get(name)) for name in names]
        ax.plot(range(len(names)), ys, color=cmap((t["value"] - low) / ((high - low) or 1)), alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="scaled setting", title=f"Parallel coordinates (colour: val accuracy {low:.1f}..{high:.1f}%)")
    return fig


def _axis(values: list):
    """A function mapping one setting's values to 0..1: numbers linearly (log when all positive and spread
    over 10x or more), anything else by its order of appearance."""
    import math
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len([v for v in values if v is not None]) and numbers:
        log = min(numbers) > 0 and max(numbers) / min(numbers) >= 10
        f = math.log if log else float
        lo, hi = f(min(numbers)), f(max(numbers))
        return lambda v: 0.5 if v is None or hi == lo else (f(v) - lo) / (hi - lo)
    order = list(dict.fromkeys(str(v) for v in values))
    return lambda v: order.index(str(v)) / max(1, len(order) - 1)
