"""The reliability diagram (Guo et al. 2017, Fig. 1): accuracy against confidence in 15 equal-width bins, before
and after temperature scaling, from the figures `cifarlab evaluate RUN --calibration` measured (calibrate.py).

A perfectly calibrated model's bars reach the diagonal; bars below it are over-confidence. Under each panel, how
many images each bin holds: most land in the top bins, so a bar's height is only as sure as its count.
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.report.plots import plt, save, shown


def reliability_diagram(panels: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """Write the diagram of each (label, calibration_figures() dict) side by side to `path`."""
    return save(_reliability(panels, title), path)


def reliability_figure(panels: list[tuple[str, dict]], title: str):
    return shown(_reliability(panels, title))


def _reliability(panels: list[tuple[str, dict]], title: str):
    fig, axes = plt.subplots(2, len(panels), figsize=(4.4 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (label, figures) in enumerate(panels):
        bins = figures["bins"]
        width = bins[0]["high"] - bins[0]["low"]
        lefts = [b["low"] for b in bins]
        accuracy = [(b["accuracy"] or 0) / 100 for b in bins]
        confidence = [b["confidence"] if b["confidence"] is not None else b["low"] + width / 2 for b in bins]
        top, bottom = axes[0][column], axes[1][column]
        top.bar(lefts, accuracy, width=width, align="edge", color="#4C72B0", edgecolor="black", label="accuracy")
        # the gap: from each bin's accuracy to its mean confidence (red: over-confident where it is above)
        top.bar(lefts, [c - a if b["images"] else 0 for c, a, b in zip(confidence, accuracy, bins)], width=width,
                bottom=accuracy, align="edge", color="#C44E52", alpha=0.35, edgecolor="#C44E52", label="gap")
        top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
                title=f"{label}\nECE {figures['ece']:.2f}%, NLL {figures['nll']:.3f}")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(lefts, [b["images"] for b in bins], width=width, align="edge", color="grey")
        bottom.set(xlabel="confidence (top softmax probability)", ylabel="images")
    fig.suptitle(title)
    return fig
