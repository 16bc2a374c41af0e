"""cifarlab evaluate RUN --dataset cifar10.1: a CIFAR-10 run on CIFAR-10.1 (Recht et al. 2018), 2,000 new test
images collected years later the way CIFAR-10's were, and the drop from its CIFAR-10 test accuracy.

Both test sets are scored here with the same weights and the same test-time views, so the drop compares like with
like. Its 95% interval is the normal approximation for the difference of two independent proportions; with
2,000 CIFAR-10.1 images that interval is about +-2 points on its own (10,000 CIFAR-10 test images add little), so
a drop smaller than about 2 points is no clear drop. Writes RUN/evaluation-cifar10.1/shift.json and the
CIFAR-10.1 logits (logits.npy, labels.npy).
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.data.cifar101 import NAME, TRAINED_ON, load_cifar101
from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import UsageError
from cifarlab.evaluate import tta_views, write_logits
from cifarlab.runfolder import RunFolder, atomic_write_json, open_source
from cifarlab.training.calibration import calibration_figures
from cifarlab.training.device import Precision, resolve_device, resolve_precision
from cifarlab.training.evaluation import evaluate
from cifarlab.training.splits import prepare_data

# Recht et al. (2018), "Do CIFAR-10 Classifiers Generalize to CIFAR-10?": the models they tested lost 4 to 10
# points of accuracy from CIFAR-10 test to CIFAR-10.1 (v6).
PAPER_DROP = "Recht et al. (2018) measured drops of 4 to 10 points for the models they tested"


class ShiftEvaluation(dict):
    """What `evaluate --dataset cifar10.1` measured; str() is what it prints."""

    def __str__(self) -> str:
        r, (low, high) = self, self["drop_interval"]
        views = " (flip TTA)" if r["tta"] else ""
        lines = [f"{r['model']} trained on {r['trained_on']}, weights {r['weights']}{views}"]
        for key, title in (("cifar10", "CIFAR-10 test"), ("cifar10.1", "CIFAR-10.1 (v6)")):
            lines.append(f"  {title:<16} {r[key]['images']:>6,} images  accuracy {r[key]['accuracy']:6.2f}%  "
                         f"ECE {r[key]['ece']:5.2f}%")
        verdict = "a clear drop" if low > 0 else "no clear drop" if high > 0 else "a clear gain"
        lines += [f"drop: {r['drop']:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}] (normal approximation for two "
                  f"independent proportions; with 2,000 CIFAR-10.1 images the interval is about +-2 points)",
                  f"{verdict}; {PAPER_DROP}"]
        return "\n".join(lines) + "\n"


def evaluate_shift(source: str | Path | RunFolder, dataset: str = NAME, tta: str | bool | None = None,
                   data_dir: str | None = None, out: str | Path | None = None, device: str = "auto",
                   model=None) -> ShiftEvaluation:
    """Score a CIFAR-10 run on CIFAR-10 test and on CIFAR-10.1 (from DATA_DIR/cifar10.1, downloaded if missing and
    the run allows downloads); returns the accuracies, the drop and its interval, and writes shift.json."""
    from cifarlab.report.stats import proportion_difference_interval

    if dataset != NAME:
        raise UsageError(f"--dataset {dataset}: evaluate measures a run on its own dataset or on {NAME}")
    run, weights = open_source(source, model)
    cfg = run.train_config()
    if cfg.dataset != TRAINED_ON:
        raise UsageError(f"--dataset {NAME} tests CIFAR-10 models; this run was trained on {cfg.dataset}")
    if data_dir is not None:
        cfg.data_dir = data_dir
    flip, shift = tta_views(tta)
    splits = {TRAINED_ON: prepare_data(cfg).test, NAME: load_cifar101(cfg.data_dir, cfg.download)}
    dev = resolve_device(device)
    precision = Precision(resolve_precision("auto", dev))
    net, info = run.model(weights, device=dev), run.dataset_info()
    scores = {}
    for name, split in splits.items():
        loader = DeviceLoader(split, 1000, info.mean, info.std, dev, channels_last=dev.type != "mps")
        sums = evaluate(net, loader, precision, flip, shift, logits=True)
        scores[name] = {"images": len(split), "correct": int(sums.correct), "accuracy": sums.accuracy,
                        "ece": calibration_figures(sums.logits, split.labels)["ece"], "logits": sums.logits}
    a, b = scores[TRAINED_ON], scores[NAME]
    result = ShiftEvaluation({
        "source": str(run.path), "model": cfg.model, "trained_on": cfg.dataset, "weights": weights.name,
        "tta": flip, "tta_shift": shift,
        **{key: {f: v for f, v in score.items() if f != "logits"} for key, score in scores.items()},
        "drop": a["accuracy"] - b["accuracy"],
        "drop_interval": proportion_difference_interval(a["correct"], a["images"], b["correct"], b["images"]),
        "interval_method": "normal approximation, difference of two independent proportions, 95%",
        "paper": PAPER_DROP})
    folder = Path(out) if out else run.path / f"evaluation-{NAME}"
    atomic_write_json(folder / "shift.json", dict(result))
    write_logits(folder, b["logits"], splits[NAME].labels)
    result["folder"] = str(folder)
    return result
