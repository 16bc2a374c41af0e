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


# Two-sided 95% critical values of Student's t by degrees of freedom (a statistics table; the normal's, the
# limit, is 1.960).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
       29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    """The 95% two-sided critical value of t with `df` degrees of freedom; between table rows (and past 120),
    the value of the row below: a slightly wider, conservative interval."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    return T95[max(k for k in T95 if k <= df)]


def confidence_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% confidence interval of the mean from Student's t distribution; None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, std = mean_std(values)
    half = t95(len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def half_width(values: list[float]) -> float:
    """Half the width of the 95% interval of the mean (0 for one value: no whisker)."""
    interval = confidence_interval(values)
    return 0.0 if interval is None else (interval[1] - interval[0]) / 2


def difference_interval(a: list[float], b: list[float], paired: bool) -> tuple[float, float] | None:
    """95% interval of mean(b) - mean(a): over the paired differences (the same seeds), or Welch's for two
    independent groups (its degrees of freedom rounded down: conservative); None with fewer than 2 per side."""
    if paired:
        return confidence_interval([y - x for x, y in zip(a, b)])
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return mb - ma, mb - ma
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t95(max(1, math.floor(df))) * se
    return mb - ma - half, mb - ma + half


def proportion_difference_interval(correct_a: int, n_a: int, correct_b: int, n_b: int) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), in points, for two independent test sets: the normal
    approximation to the binomial, 1.96 x sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b)."""
    p_a, p_b = correct_a / n_a, correct_b / n_b
    half = 1.960 * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return 100 * (p_a - p_b - half), 100 * (p_a - p_b + half)


def interval_text(interval: tuple[float, float] | None, signed: bool = False) -> str:
    """'95% CI [+0.12, +1.80]', or 'no interval (1 seed)'."""
    if interval is None:
        return "no interval (1 seed)"
    sign = "+" if signed else ""
    return f"95% CI [{interval[0]:{sign}.2f}, {interval[1]:{sign}.2f}]"


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


def scored_split(summaries: list[dict]) -> str | None:
    """The split every summary has a final accuracy on: "test"; "val" where test was never scored (--no-test
    with --val-size); None where neither was (--no-test alone)."""
    for split in ("test", "val"):
        if all(s.get(f"final_{split}_acc") is not None for s in summaries):
            return split
    return None


def mean_std_or_none(values: list) -> tuple[float | None, float | None]:
    """mean_std, or (None, None) where a value is missing (a split that was never scored)."""
    return (None, None) if any(v is None for v in values) else mean_std([float(v) for v in values])


def plural(count: int, noun: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
