"""cifarlab evaluate: reload a trained model and measure it on test (or val) in depth.

Accuracy, per-class accuracy, the confusion matrix (JSON + PNG), the most-confused class pairs, the ECE (15 bins)
and the logits themselves (logits.npy, labels.npy). --calibration: calibrate.py; --dataset cifar10.1: shift.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import UsageError
from cifarlab.runfolder import RunFolder, atomic_write_json, open_source
from cifarlab.storage import atomic_file
from cifarlab.training.calibration import calibration_figures
from cifarlab.training.device import Precision, resolve_device, resolve_precision
from cifarlab.training.evaluation import evaluate
from cifarlab.training.splits import prepare_data

TTA_CHOICES = ("none", "flip", "flip-shift")


class Evaluation(dict):
    """What `cifarlab evaluate` measured; str() is what it prints, plot() draws the confusion matrix."""

    def __str__(self) -> str:
        r = self
        views = (", flip TTA" if r["tta"] else "") + (" + shifts" if r["tta_shift"] else "")
        lines = [f"{r['model']} on {r['dataset']} {r['split']} ({r['images']:,} images{views}): "
                 f"accuracy {r['accuracy']:.2f}%" + (f", ECE {r['ece']:.2f}%" if r.get("ece") is not None else "")]
        width = max(len(c) for c in r["classes"][:20])
        lines += [f"  {name:<{width}}  {acc:6.2f}%" for name, acc in list(r["per_class"].items())[:20]]
        if len(r["classes"]) > 20:
            lines.append(f"  ... {len(r['classes']) - 20} more classes in evaluation.json")
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in r["most_confused"])
        lines.append(f"most confused: {pairs or 'none'}")
        return "\n".join(lines) + "\n"

    def plot(self):
        """The confusion matrix as a matplotlib Figure."""
        from cifarlab.report.plots import confusion_figure

        return confusion_figure(self["confusion"], self["classes"],
                                f"Confusion matrix: {self['model']} on {self['dataset']} {self['split']}")


def write_array(path: Path, array) -> Path:
    """One .npy file, written atomically (np.save through a handle: given a name it would add ".npy")."""
    import numpy as np

    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))
    return path


def write_logits(folder: Path, logits: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> None:
    """PREFIXlogits.npy (float32 N x classes, in the split's order) and PREFIXlabels.npy (int64 N)."""
    write_array(folder / f"{prefix}logits.npy", logits.float().numpy())
    write_array(folder / f"{prefix}labels.npy", labels.long().numpy())


def tta_views(tta: str | bool | None) -> tuple[bool, int]:
    """'none' | 'flip' | 'flip-shift' (or a bool for flip) -> (mirror, shift in pixels); a (mirror, pixels) pair
    as it is (a run's own views: its recipe's tta and tta_shift)."""
    if isinstance(tta, tuple) and len(tta) == 2:
        return bool(tta[0]), int(tta[1])
    if tta in (None, False, "none"):
        return False, 0
    if tta in (True, "flip"):
        return True, 0
    if tta == "flip-shift":
        return True, 1
    raise UsageError(f"unknown tta '{tta}' (choose from {', '.join(TTA_CHOICES)})")


def confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(labels.long() * n + preds.long(), minlength=n * n).reshape(n, n)


def most_confused(matrix: torch.Tensor, classes: list[str], k: int = 5) -> list[dict]:
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, index = off.flatten().topk(min(k, off.numel()))
    n = matrix.shape[0]
    return [{"true": classes[int(i) // n], "predicted": classes[int(i) % n], "count": int(v)}
            for v, i in zip(values, index) if v > 0]


def evaluate_run(source: str | Path | RunFolder, split: str = "test", tta: str | bool | None = None,
                 data_dir: str | None = None, out: str | Path | None = None, device: str = "auto",
                 model=None) -> Evaluation:
    """Evaluate and write evaluation.json, confusion.png, per_class.png; returns the result."""
    from cifarlab.report import plots

    flip, shift = tta_views(tta)
    run, weights = open_source(source, model)
    cfg = run.train_config()
    if data_dir is not None:
        cfg.data_dir = data_dir
    if split not in ("test", "val"):
        raise UsageError(f"unknown split '{split}' (choose from test, val)")
    if split == "val" and not cfg.val_size and not cfg.dataset.startswith("folder:"):
        raise UsageError("--split val: this run was trained without --val-size, so it has no val split")
    data = prepare_data(cfg)
    chosen = data.val if split == "val" else data.test
    if chosen is None:
        raise UsageError(f"--split val: {cfg.dataset} has no val split")
    dev = resolve_device(device)
    precision = Precision(resolve_precision("auto", dev))
    model = run.model(weights, device=dev)
    loader = DeviceLoader(chosen, 1000, data.info.mean, data.info.std, dev, channels_last=dev.type != "mps")
    scored = evaluate(model, loader, precision, flip, shift, predictions=True, logits=True)
    preds, labels = scored.predictions, chosen.labels.cpu()
    n = data.info.num_classes
    matrix = confusion(labels, preds, n)
    per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1).float() * 100).tolist()
    result = Evaluation({
        "source": str(source.path if isinstance(source, RunFolder) else source), "model": cfg.model,
        "dataset": cfg.dataset, "split": split, "tta": flip, "tta_shift": shift,
        "images": len(labels), "accuracy": 100.0 * (preds == labels).float().mean().item(),
        "per_class": dict(zip(data.classes, per_class)), "classes": data.classes,
        "confusion": matrix.tolist(), "most_confused": most_confused(matrix, data.classes),
        "ece": calibration_figures(scored.logits, labels)["ece"],
    })
    views = ("-tta" if flip else "") + (f"-shift{shift}" if shift else "")
    folder = Path(out) if out else run.path / f"evaluation-{split}{views}"
    atomic_write_json(folder / "evaluation.json", dict(result))
    write_logits(folder, scored.logits, labels)   # so anyone can recompute ECE or fit their own calibration
    title = f"{cfg.model} on {cfg.dataset} {split}"
    plots.confusion_matrix(result["confusion"], data.classes, folder / "confusion.png", f"Confusion matrix: {title}")
    plots.per_class_bars(data.classes, per_class, folder / "per_class.png", f"Per-class accuracy: {title}")
    result["folder"] = str(folder)
    return result
