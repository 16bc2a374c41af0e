"""The one evaluation loop: training scores val and test with it each epoch, `cifarlab evaluate` scores
a saved run with it. Logits may be averaged over test-time views (tta_logits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cifarlab.data.loader import DeviceLoader
from cifarlab.training.calibration import bin_sums, ece_from_bins, sum_dtype
from cifarlab.training.device import Precision
from cifarlab.training.distributed import SINGLE, Dist


@dataclass
class EvalSums:
    """What one pass over a split added up (over every rank): summed loss, correct answers, images."""

    loss_sum: float
    correct: float
    count: float
    predictions: torch.Tensor | None = None   # this rank's predicted labels, in loader order, on request
    logits: torch.Tensor | None = None        # this rank's logits (float32, CPU), in loader order, on request
    ece: float | None = None                  # expected calibration error in %, when bins were asked for

    @property
    def loss(self) -> float:
        """Mean cross-entropy."""
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> float:
        """Accuracy in %."""
        return 100.0 * self.correct / self.count


def evaluate(model, loader: DeviceLoader, precision: Precision, flip: bool = False, shift: int = 0,
             dist: Dist = SINGLE, predictions: bool = False, logits: bool = False, bins: int = 0) -> EvalSums:
    """Sums over a loader, in large batches, with one host sync at the end.

    flip: average the logits of each image and its left-right mirror (shift: and shifted copies).
    dist: under torchrun each rank holds a slice of the split; the sums are added over ranks.
    predictions / logits: also return the predicted labels / the logits (on the CPU).
    bins: also the expected calibration error over that many confidence bins (training.calibration), from
    per-bin sums kept on the device: no logits are gathered for it.
    """
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    predicted, outputs = [], []
    binned = torch.zeros(3, bins, device=device, dtype=sum_dtype(device)) if bins else None
    with torch.inference_mode(), precision.autocast(device):
        for x, y in loader:
            out = tta_logits(model, x, flip, shift)
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            guess = out.argmax(1)
            correct += (guess == y).sum()
            if predictions:
                predicted.append(guess)
            if logits:
                outputs.append(out)
            if bins:
                binned += bin_sums(out, y, bins, binned.dtype)
    sums = EvalSums(*global_sums(dist, loss_sum, correct, len(loader.labels)))
    if predictions:
        sums.predictions = torch.cat(predicted).cpu()
    if logits:
        sums.logits = torch.cat(outputs).float().cpu()
    if bins:
        totals = dist.all_sum(list(binned.flatten())) if dist.enabled else binned.flatten().tolist()
        sums.ece = 100.0 * ece_from_bins([totals[i * bins:(i + 1) * bins] for i in range(3)])
    return sums


def tta_logits(model, x: torch.Tensor, flip: bool = True, shift: int = 0) -> torch.Tensor:
    """Logits averaged over test-time views: the image and its mirror (flip), and with shift > 0
    also copies moved `shift` pixels up-left and down-right (reflect-padded), weighted 1/4 each.
    With neither, just the model's logits."""
    def both(v):
        out = model(v).float()
        return (out + model(v.flip(3)).float()) / 2 if flip else out
    out = both(x)
    if shift:
        h, w = x.shape[2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        moved = [padded[:, :, :h, :w], padded[:, :, 2 * shift:, 2 * shift:]]
        out = out / 2 + sum(both(v.contiguous(memory_format=torch.channels_last)
                                 if x.is_contiguous(memory_format=torch.channels_last) else v)
                            for v in moved) / 4
    return out


def global_sums(dist: Dist, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> list[float]:
    """(loss sum, correct, images) added over every rank (just read back in a single process)."""
    return dist.all_sum([loss_sum, correct, count])
