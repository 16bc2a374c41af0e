"""engine.fit: load data, build the model, train, evaluate each epoch, write the run folder."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import cifarlab
from cifarlab.config import TrainConfig
from cifarlab.data.formats import Split
from cifarlab.data.loader import AugmentSettings, DeviceLoader
from cifarlab.data.sources import DatasetInfo, class_balanced_split, load_dataset
from cifarlab.errors import UsageError
from cifarlab.models import build_model, count_params
from cifarlab.report.summary import article_summary, write_summary
from cifarlab.train.checkpoint import atomic_write_json, save_checkpoint
from cifarlab.train.optim import build_optimizer, build_scheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no MPS device is available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


@dataclass
class Precision:
    name: str

    @property
    def dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)


@dataclass
class Data:
    info: DatasetInfo
    classes: list[str]
    train: Split
    val: Split | None
    test: Split


def prepare_data(cfg: TrainConfig) -> Data:
    """Load the dataset, carve the seeded class-balanced val split, apply --limit-train."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download)
    train, val = ds.train, None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise UsageError(f"--val-size {cfg.val_size} must be smaller than the train split ({len(train)} images)")
        train_idx, val_idx = class_balanced_split(train.labels, cfg.val_size, cfg.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if cfg.limit_train and cfg.limit_train < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.limit_train]
        train = train.subset(keep.sort().values)
    return Data(ds.info, ds.classes, train, val, ds.test)


def make_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        out = Path(cfg.out)
        if (out / "config.json").exists() and not cfg.overwrite:
            raise UsageError(f"--out {out} already holds a run; pass --overwrite to replace it "
                             f"or choose another folder")
    else:
        out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}-{cfg.dataset}"
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    return out


def evaluate(model, loader: DeviceLoader, precision: Precision, device: torch.device,
             tta: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy %) over a loader, in large batches, with one sync at the end.

    tta: average the logits of each image and its left-right mirror.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode(), precision.autocast(device):
        for x, y in loader:
            out = model(x).float()
            if tta:
                out = (out + model(x.flip(3)).float()) / 2
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    n = len(loader.labels)
    return loss_sum.item() / n, 100.0 * correct.item() / n


class Progress:
    """A tqdm bar per epoch on a terminal; one plain line per epoch otherwise; nothing when quiet."""

    def __init__(self, quiet: bool, epochs: int):
        self.quiet, self.epochs = quiet, epochs
        self.tty = sys.stderr.isatty() and not quiet
        self.bar = None

    def start_epoch(self, epoch: int, steps: int):
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False,
                            dynamic_ncols=True)

    def step(self, loss: torch.Tensor | None = None):
        if self.bar is not None:
            self.bar.update()
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss.item():.3f}")

    def end_epoch(self, row: dict):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.quiet:
            return
        val = f"  val {row['val_acc']:.2f}%" if row["val_acc"] is not None else ""
        print(f"epoch {row['epoch']:>3}/{self.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%"
              f"{val}  test {row['test_acc']:.2f}%  lr {row['lr']:.3g}  {row['epoch_time_s']:.1f}s  "
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


def train_epoch(model, loader, optimizer, scheduler, scaler, precision, cfg, device, progress):
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i, (x, y) in enumerate(loader):
        with precision.autocast(device):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        # Accumulate on the device: no .item() (a host sync) inside the step.
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        progress.step(loss if progress.tty and i % 25 == 0 else None)
    return loss_sum.item() / seen, 100.0 * correct.item() / seen, seen


def fit(cfg: TrainConfig) -> dict:
    """Train `cfg` end to end and write its run folder; returns the summary dict."""
    device = resolve_device(cfg.device)
    precision = Precision(resolve_precision(cfg.precision, device))
    if precision.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
    t_load = time.perf_counter()
    data = prepare_data(cfg)
    load_time = time.perf_counter() - t_load
    out = make_run_dir(cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)
    info = data.info
    model = build_model(cfg.model, info.num_classes, info.channels, info.size,
                        batchnorm=cfg.batchnorm, init=cfg.init, dropout=cfg.dropout).to(device)
    channels_last = cfg.channels_last and device.type != "mps"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)

    aug = AugmentSettings(tuple(cfg.augment), cfg.crop_padding, cfg.jitter, cfg.cutout_size)
    train_loader = DeviceLoader(data.train, cfg.batch_size, info.mean, info.std, device, shuffle=True, augment=aug,
                                seed=cfg.seed, drop_last=len(data.train) > cfg.batch_size,
                                channels_last=channels_last)
    def eval_loader(split):
        return DeviceLoader(split, cfg.eval_batch_size, info.mean, info.std, device, channels_last=channels_last)
    val_loader = eval_loader(data.val) if data.val is not None else None
    test_loader = eval_loader(data.test)

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if precision.name == "fp16" else None

    config = {**cfg.to_dict(), "resolved": {"device": str(device), "precision": precision.name,
                                             "channels_last": channels_last},
              "params": params, "train_size": len(data.train), "val_size_actual": len(data.val) if data.val else 0,
              "test_size": len(data.test), "classes": data.classes,
              "versions": {"cifarlab": cifarlab.__version__, "torch": torch.__version__,
                           "python": platform.python_version()}}
    atomic_write_json(out / "config.json", config)

    progress = Progress(cfg.quiet, cfg.epochs)
    writer = tensorboard_writer(out, cfg.tensorboard)
    if not cfg.quiet:
        print(f"cifarlab: {cfg.model} on {cfg.dataset} ({len(data.train):,} train"
              f"{f', {len(data.val):,} val' if data.val else ''}, {len(data.test):,} test), {params:,} parameters, "
              f"{device} {precision.name}; run folder {out}", flush=True)

    rows, best, train_time, train_phase, images = [], None, 0.0, 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        progress.start_epoch(epoch, len(train_loader))
        train_loss, train_acc, seen = train_epoch(model, train_loader, optimizer, scheduler, scaler, precision,
                                                  cfg, device, progress)
        t_train = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, val_loader, precision, device, cfg.tta) if val_loader else (None, None)
        test_loss, test_acc = evaluate(model, test_loader, precision, device, cfg.tta)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        train_phase += t_train
        images += seen
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
               "epoch_time_s": epoch_time, "images_per_s": seen / t_train}
        rows.append(row)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        progress.end_epoch(row)
        log_tensorboard(writer, row)
        # best.pt is chosen by val accuracy when there is a val split, else it is the last epoch.
        improved = best is None or (val_acc is not None and val_acc > best["val_acc"]) or val_acc is None
        if improved:
            best = {"epoch": epoch, "val_acc": val_acc, "test_acc": test_acc}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "epoch": epoch, "best": best, "config": cfg.to_dict(),
                 "rng": {"torch": torch.get_rng_state(), "loader": train_loader.generator.get_state()}}
        save_checkpoint(out / "checkpoints" / "last.pt", state)
        if improved:
            save_checkpoint(out / "checkpoints" / "best.pt", state)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(out / "model.safetensors"))

    if writer is not None:
        writer.close()
    summary = make_summary(cfg, rows, params, train_time, images / train_phase, load_time, device,
                           precision.name)
    return write_summary(out, summary, article_summary(summary), cfg.quiet)


def make_summary(cfg, rows, params, train_time, images_per_s, load_time, device, precision) -> dict:
    final = rows[-1]
    best_test = max(rows, key=lambda r: r["test_acc"])
    with_val = [r for r in rows if r["val_acc"] is not None]
    best_val = max(with_val, key=lambda r: r["val_acc"]) if with_val else None
    return {
        "model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "params": params, "epochs": cfg.epochs,
        "final_train_acc": final["train_acc"], "final_test_acc": final["test_acc"],
        "best_test_acc": best_test["test_acc"], "best_test_epoch": best_test["epoch"],
        "best_val_acc": best_val["val_acc"] if best_val else None,
        "best_val_epoch": best_val["epoch"] if best_val else None,
        "test_acc_at_best_val": best_val["test_acc"] if best_val else None,
        "overfit_gap": final["train_acc"] - final["test_acc"],
        "train_time_s": train_time, "load_time_s": load_time,
        "images_per_s": images_per_s,
        "device": str(device), "precision": precision, "seed": cfg.seed,
        "final_train_loss": final["train_loss"], "final_test_loss": final["test_loss"],
    }
