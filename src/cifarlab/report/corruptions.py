"""Corruption robustness, drawn: accuracy against severity per corruption, and example images (a strip at one
severity, or a sheet of severities), from corruptions.json's content and uint8 images."""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.report.plots import plt, save, shown

# the four families of Hendrycks & Dietterich's tables, one line style each
FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression")}
_STYLE = {"noise": "-", "blur": "--", "weather": "-.", "digital": ":"}


def _family(name: str) -> str:
    return next((f for f, names in FAMILIES.items() if name in names), "digital")


def severity_figure(result: dict):
    """Accuracy (%) against severity, one line per corruption, the clean accuracy at severity 0 and as a line,
    the mean over corruptions in black."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    clean = result["clean_accuracy"]
    cmap = plt.get_cmap("tab20")
    for i, (name, by_severity) in enumerate(result["accuracy"].items()):
        levels = sorted(int(s) for s in by_severity)
        ax.plot([0] + levels, [clean] + [by_severity[str(s)] for s in levels], _STYLE[_family(name)],
                marker="o", ms=3, color=cmap(i % 20), label=name)
    means = result["mean_by_severity"]
    levels = sorted(int(s) for s in means)
    ax.plot([0] + levels, [clean] + [means[str(s)] for s in levels], "-", color="black", lw=2.5,
            label=f"mean ({result['mean_accuracy']:.1f}%)")
    ax.axhline(clean, color="grey", lw=0.8)
    ax.set_xticks(range(0, 6))
    ax.set_xticklabels(["clean", "1", "2", "3", "4", "5"])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['model']} on {result['source_of_corruptions']}: "
                 f"accuracy {clean:.1f}% clean, {result['mean_accuracy']:.1f}% corrupted")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def _as_hwc(image: torch.Tensor):
    return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()


def sheet_figure(clean: torch.Tensor, examples: dict[str, dict[int, torch.Tensor]], title: str = ""):
    """One row per severity (the clean image first), one column per corruption: examples[name][severity] is a
    uint8 (3, H, W) image."""
    names = list(examples)
    severities = sorted({s for by in examples.values() for s in by})
    rows = len(severities) + 1
    fig, axes = plt.subplots(rows, len(names), figsize=(1.15 * len(names), 1.3 * rows), squeeze=False)
    for col, name in enumerate(names):
        for row in range(rows):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            image = clean if row == 0 else examples[name].get(severities[row - 1])
            if image is not None:
                ax.imshow(_as_hwc(image), interpolation="nearest")
            if row == 0:
                ax.set_title(name.replace("_", "\n"), fontsize=7)
            if col == 0:
                ax.set_ylabel("clean" if row == 0 else f"severity {severities[row - 1]}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def severity_plot(result: dict, path: Path) -> Path:
    return save(severity_figure(result), path)


def sheet(clean: torch.Tensor, examples: dict[str, dict[int, torch.Tensor]], path: Path, title: str = "") -> Path:
    return save(sheet_figure(clean, examples, title), path)


def severity_shown(result: dict):
    return shown(severity_figure(result))
