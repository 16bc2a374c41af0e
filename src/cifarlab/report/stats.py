"""Statistics over runs: mean and spread over seeds, per-epoch means (run folders: cifarlab.run)."""

from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def plus_minus(record: dict, key: str, digits: int = 2, unit: str = "", signed: bool = False) -> str:
    """KEY_mean and KEY_std of a seeds summary or an ablation row as text: '91.20% \u00b1 0.31%'.

    signed: the mean with its sign (a change, '+1.20 \u00b1 0.40').
    """
    mean = f"{record[key + '_mean']:{'+' if signed else ''}.{digits}f}"
    return f"{mean}{unit} \u00b1 {record[key + '_std']:.{digits}f}{unit}"


def mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Per-epoch mean of several seeds' metrics rows (keys that are numbers in every row)."""
    epochs = min(len(r) for r in runs)
    out = []
    for i in range(epochs):
        row = {"epoch": runs[0][i]["epoch"]}
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "val_acc", "val_loss"):
            values = [r[i][key] for r in runs if r[i].get(key) is not None]
            row[key] = sum(values) / len(values) if len(values) == len(runs) else None
        out.append(row)
    return out
