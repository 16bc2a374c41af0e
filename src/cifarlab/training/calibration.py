"""How far a model's confidence can be trusted (Guo et al. 2017, "On Calibration of Modern Neural Networks").

NLL (mean cross-entropy, nats), Brier score (mean over images of sum over classes of (p - one_hot)^2) and the
expected calibration error: the images put in 15 equal-width bins of confidence (the top softmax probability,
bin m holding (m-1)/15 < confidence <= m/15), ECE = sum over bins of |accuracy - mean confidence| x images in
the bin / all images. Temperature scaling divides the logits by one number T fitted on the validation split by
minimising NLL; it leaves every argmax, hence accuracy, unchanged.

Plain torch on tensors: the training loop adds bin sums batch by batch (`bin_sums`), `cifarlab evaluate
--calibration` (calibrate.py) scores whole logit matrices (`calibration_figures`) and fits T (`fit_temperature`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cifarlab.errors import UsageError

ECE_BINS = 15
# The search range of T: far wider than any net needs (Guo et al.'s fitted values lie between 1 and 3).
T_RANGE = (0.05, 20.0)


class TemperatureBeyondRange(UsageError):
    """fit_temperature's refusal when the val NLL is lowest past an edge of T_RANGE (`edge`: 0.05 or 20): a study that
    calibrates many runs can catch this one refusal and record "no temperature" for the run instead of stopping."""

    def __init__(self, message: str, edge: float):
        super().__init__(message)
        self.edge = edge


def sum_dtype(device) -> torch.dtype:
    """float64 where `device` has it, so that 10,000 confidences add up to the last digit; float32 on Apple's MPS,
    which has no float64 (making one raises TypeError there)."""
    try:
        torch.zeros((), dtype=torch.float64, device=device)
        return torch.float64
    except (TypeError, RuntimeError):
        return torch.float32


def bin_edges(bins: int = ECE_BINS, dtype=torch.float64, device=None) -> torch.Tensor:
    return torch.linspace(0, 1, bins + 1, dtype=dtype, device=device)


def bin_sums(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS,
             dtype=torch.float64) -> torch.Tensor:
    """[3, bins]: per confidence bin, the images, their summed confidence, their correct answers, summed in `dtype`
    (sum_dtype(device))."""
    probs = logits.to(dtype).softmax(1)
    confidence, guess = probs.max(1)
    # bucketize(right=False) against the inner edges: edge[m-1] < confidence <= edge[m] lands in bin m
    index = torch.bucketize(confidence, bin_edges(bins, dtype, logits.device)[1:-1])
    out = torch.zeros(3, bins, dtype=dtype, device=logits.device)
    out[0].index_add_(0, index, torch.ones_like(confidence))
    out[1].index_add_(0, index, confidence)
    out[2].index_add_(0, index, (guess == labels).to(dtype))
    return out


def ece_from_bins(sums) -> float:
    """The expected calibration error (a fraction in [0, 1]) from bin_sums' [3, bins] totals."""
    counts, confidence, correct = (list(map(float, row)) for row in sums)
    total = sum(counts)
    return sum(abs(c - a) for c, a in zip(confidence, correct)) / total if total else float("nan")


def calibration_figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                        bins: int = ECE_BINS) -> dict:
    """NLL, Brier, ECE (%), accuracy (%) of logits / temperature, and each bin's images, confidence and accuracy
    (what the reliability diagram draws)."""
    dtype = sum_dtype(logits.device)
    scaled = logits.to(dtype) / temperature
    labels = labels.long()
    probs = scaled.softmax(1)
    one_hot = F.one_hot(labels, probs.shape[1]).to(dtype)
    sums = bin_sums(scaled, labels, bins, dtype)
    counts = sums[0].tolist()
    return {
        "temperature": temperature, "images": len(labels),
        "accuracy": 100.0 * (probs.argmax(1) == labels).to(dtype).mean().item(),
        "nll": F.cross_entropy(scaled, labels).item(),
        "brier": ((probs - one_hot) ** 2).sum(1).mean().item(),
        "ece": 100.0 * ece_from_bins(sums),
        "bins": [{"low": i / bins, "high": (i + 1) / bins, "images": int(n),
                  "confidence": conf / n if n else None, "accuracy": 100.0 * right / n if n else None}
                 for i, (n, conf, right) in enumerate(zip(counts, sums[1].tolist(), sums[2].tolist()))],
    }


def nll_at(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 80) -> float:
    """The T in T_RANGE that minimises NLL(logits / T): a golden-section search on log T. A minimum beyond
    T_RANGE (within 1% of an edge) is refused in one line naming the edge, never clipped to it.

    NLL is convex in 1/T (a log-sum-exp of a linear function minus a linear one), so it has one minimum
    along log T too and the search cannot stop in a wrong valley; 80 steps shrink the bracket by 0.618^80."""
    logits, labels = logits.double(), labels.long()
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll_at(logits, labels, math.exp(a)), nll_at(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll_at(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll_at(logits, labels, math.exp(b))
    return _inside_range(math.exp((lo + hi) / 2))


def _inside_range(temperature: float) -> float:
    """T itself, or a one-line refusal when the search ended at an edge of T_RANGE: the NLL still falls beyond it, so
    the edge is not the minimum, and a temperature that is not what was asked for is never stored."""
    low, high = T_RANGE
    if temperature >= high / 1.01:
        raise TemperatureBeyondRange(
            f"temperature scaling: the val NLL still falls past T = {high:g}, the largest temperature searched: the "
            "model's confidence on val says next to nothing about its answers (about as good as chance, or worse), so "
            "no temperature fits it; nothing was stored", high)
    if temperature <= low * 1.01:
        raise TemperatureBeyondRange(
            f"temperature scaling: the val NLL still falls below T = {low:g}, the smallest temperature searched: the "
            "model is right on (nearly) every val image with wide margins, so sharpening always helps and no "
            "temperature fits it; nothing was stored", low)
    return temperature
