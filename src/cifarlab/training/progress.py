"""What the user sees while training: a tqdm bar per epoch on a terminal, plain lines otherwise,
and TensorBoard event files when tensorboard is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


class Progress:
    """A tqdm bar per epoch on a terminal or in Jupyter (tqdm.auto: a widget there); one plain line per
    epoch otherwise; nothing when quiet."""

    def __init__(self, quiet: bool, epochs: int):
        self.quiet, self.epochs = quiet, epochs
        self.tty = not quiet and (sys.stderr.isatty() or "ipykernel" in sys.modules)
        self.bar = None

    def start_epoch(self, epoch: int, steps: int, done: int = 0):
        if self.tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{self.epochs}", unit="batch",
                            leave=False, dynamic_ncols=True)

    def step(self, loss: torch.Tensor | None = None):
        if self.bar is not None:
            self.bar.update()
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss.item():.3f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, row: dict):
        self.close()
        if self.quiet:
            return
        val = f"  val {row['val_acc']:.2f}%" if row["val_acc"] is not None else ""
        test = f"  test {row['test_acc']:.2f}%" if row["test_acc"] is not None else ""
        print(f"epoch {row['epoch']:>3}/{self.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%"
              f"{val}{test}  lr {row['lr']:.3g}  {row['epoch_time_s']:.1f}s  "
              f"{row['images_per_s']:.0f} img/s", flush=True)


def tensorboard_writer(out: Path, enabled: bool):
    """A SummaryWriter into RUN/tensorboard when the optional `tensorboard` package is installed."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # cifarlab[tensorboard] not installed: curves stay in metrics.jsonl only
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def log_tensorboard(writer, row: dict) -> None:
    if writer is None:
        return
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "images_per_s"):
        if row.get(key) is not None:
            group = "loss" if key.endswith("loss") else "accuracy" if key.endswith("acc") else "train"
            writer.add_scalar(f"{group}/{key}", row[key], row["epoch"])
    writer.flush()
