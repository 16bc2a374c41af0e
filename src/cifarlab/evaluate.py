"""cifarlab evaluate: reload a trained model and measure it on test (or val) in depth.

Accuracy, per-class accuracy, the confusion matrix (JSON + PNG) and the most-confused class pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cifarlab.config import TrainConfig, config_from_dict
from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import UsageError
from cifarlab.models import build_model
from cifarlab.train.checkpoint import atomic_write_json
from cifarlab.train.engine import Precision, prepare_data, resolve_device, resolve_precision, tta_logits
from cifarlab.train.state import load_checkpoint, strip_prefixes


@dataclass
class Trained:
    model: torch.nn.Module
    cfg: TrainConfig
    run_dir: Path


def load_trained(source: str | Path) -> Trained:
    """A run folder (its best checkpoint, else model.safetensors), a .pt checkpoint, or a .safetensors file."""
    import json

    source = Path(source)
    if source.is_dir():
        run_dir = source
        weights = next((p for p in (source / "checkpoints" / "best.pt", source / "checkpoints" / "last.pt",
                                    source / "model.safetensors") if p.is_file()), None)
        if weights is None or not (source / "config.json").is_file():
            raise UsageError(f"{source}: not a cifarlab run folder (needs config.json and a checkpoint)")
    elif source.is_file():
        weights = source
        run_dir = source.parent.parent if source.parent.name == "checkpoints" else source.parent
    else:
        raise UsageError(f"{source}: no such run folder or checkpoint")

    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        if not (run_dir / "config.json").is_file():
            raise UsageError(f"{weights}: a .safetensors file needs the run's config.json beside it")
        state = load_file(str(weights))
        config = json.loads((run_dir / "config.json").read_text())
    else:
        checkpoint = load_checkpoint(weights)   # weights_only: a crafted file is refused, not executed
        state, config = checkpoint["model"], checkpoint["config"]
    cfg = config_from_dict(config)
    from cifarlab.data.sources import dataset_info
    info = dataset_info(cfg.dataset)
    model = build_model(cfg.model, info.num_classes, info.channels, info.size,
                        batchnorm=cfg.batchnorm, init=cfg.init, dropout=cfg.dropout)
    state = strip_prefixes(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{weights}: weights do not fit {cfg.model} ({str(e).splitlines()[0]})") from None
    return Trained(model, cfg, run_dir)


def predict_split(model, split, info, device, precision: Precision, tta: bool, batch_size: int = 1000,
                  shift: int = 0):
    """Predicted labels for every image of a split (tta: with the mirror; shift: and shifted copies)."""
    model = model.to(device).eval()
    loader = DeviceLoader(split, batch_size, info.mean, info.std, device, channels_last=device.type != "mps")
    preds = []
    with torch.inference_mode(), precision.autocast(device):
        for x, _ in loader:
            out = tta_logits(model, x, tta, shift)
            preds.append(out.argmax(1))
    return torch.cat(preds).cpu()


def confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(labels.long() * n + preds.long(), minlength=n * n).reshape(n, n)


def most_confused(matrix: torch.Tensor, classes: list[str], k: int = 5) -> list[dict]:
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, index = off.flatten().topk(min(k, off.numel()))
    n = matrix.shape[0]
    return [{"true": classes[int(i) // n], "predicted": classes[int(i) % n], "count": int(v)}
            for v, i in zip(values, index) if v > 0]


def evaluate_run(source: str | Path, split: str = "test", tta: bool = False, data_dir: str | None = None,
                 out: str | Path | None = None, device: str = "auto", shift: int = 0) -> dict:
    """Evaluate and write evaluation.json, confusion.png, per_class.png; returns the result dict."""
    from cifarlab.report import plots

    trained = load_trained(source)
    cfg = trained.cfg
    if data_dir is not None:
        cfg.data_dir = data_dir
    if split == "val" and not cfg.val_size:
        raise UsageError("--split val: this run was trained without --val-size, so it has no val split")
    data = prepare_data(cfg)
    chosen = data.val if split == "val" else data.test
    dev = resolve_device(device)
    precision = Precision(resolve_precision("auto", dev))
    preds = predict_split(trained.model, chosen, data.info, dev, precision, tta, shift=shift)
    labels = chosen.labels.cpu()
    n = data.info.num_classes
    matrix = confusion(labels, preds, n)
    per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1).float() * 100).tolist()
    result = {
        "source": str(source), "model": cfg.model, "dataset": cfg.dataset, "split": split, "tta": tta, "tta_shift": shift,
        "images": len(labels), "accuracy": 100.0 * (preds == labels).float().mean().item(),
        "per_class": dict(zip(data.classes, per_class)), "classes": data.classes,
        "confusion": matrix.tolist(), "most_confused": most_confused(matrix, data.classes),
    }
    views = ("-tta" if tta else "") + (f"-shift{shift}" if shift else "")
    folder = Path(out) if out else trained.run_dir / f"evaluation-{split}{views}"
    atomic_write_json(folder / "evaluation.json", result)
    title = f"{cfg.model} on {cfg.dataset} {split}"
    plots.confusion_matrix(result["confusion"], data.classes, folder / "confusion.png", f"Confusion matrix: {title}")
    plots.per_class_bars(data.classes, per_class, folder / "per_class.png", f"Per-class accuracy: {title}")
    result["folder"] = str(folder)
    return result
