"""Reading finished run folders back: summary.json, metrics.jsonl, config.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import UsageError


@dataclass
class Run:
    path: Path
    summary: dict
    rows: list[dict]        # metrics.jsonl, one dict per epoch
    config: dict

    @property
    def name(self) -> str:
        return self.path.name


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from None


def load_run(path: str | Path) -> Run:
    """A finished run folder; a one-line UsageError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such run folder")
    if not (path / "summary.json").is_file():
        hint = " (the run has not finished)" if (path / "config.json").is_file() else ""
        raise UsageError(f"{path}: not a finished cifarlab run folder, no summary.json{hint}")
    summary = _read_json(path / "summary.json")
    rows = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    return Run(path, summary, rows, config)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


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
