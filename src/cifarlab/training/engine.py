"""engine.fit: load data, build the model, train, evaluate each epoch, write the run folder."""

from __future__ import annotations

import dataclasses
import platform
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import cifarlab
from cifarlab.config import TrainConfig
from cifarlab.data.formats import Split
from cifarlab.data.augment import normalize
from cifarlab.data.loader import AugmentSettings, DeviceLoader
from cifarlab.data.sources import DatasetInfo, class_balanced_split, load_dataset
from cifarlab.errors import Diverged, Interrupted, UsageError
from cifarlab.models import build_model, count_params, model_spec
from cifarlab.report.summary import article_summary
from cifarlab.run import BEST, LAST, Run, strip_prefixes
from cifarlab.training import distributed
from cifarlab.training.distributed import SINGLE, Dist, unwrap
from cifarlab.training.lookahead import Lookahead
from cifarlab.training.optim import build_optimizer, build_scheduler
from cifarlab.training.progress import Progress, log_tensorboard, tensorboard_writer
from cifarlab.training.state import RunState, StopSignals, rng_state, set_rng_state


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
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download, image_size=cfg.image_size,
                      channels=cfg.channels, quiet=cfg.quiet)
    train, val = ds.train, ds.val
    if val is not None and cfg.val_size:
        raise UsageError(f"{cfg.dataset} has its own val/ folder; --val-size {cfg.val_size} would carve a second one")
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise UsageError(f"--val-size {cfg.val_size} must be smaller than the train split ({len(train)} images)")
        train_idx, val_idx = class_balanced_split(train.labels, cfg.val_size, cfg.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if cfg.limit_train and cfg.limit_train < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.limit_train]
        train = train.subset(keep.sort().values)
    return Data(ds.info, ds.classes, train, val, ds.test)


def make_run(cfg: TrainConfig, resume: bool = False) -> Run:
    if resume:
        return Run(cfg.out)
    return Run.create(cfg.out, cfg.overwrite, f"{_short(cfg.model)}-{_short(cfg.dataset)}")


def _short(name: str) -> str:
    """A folder-name-safe part of a model or dataset name (mynet:TinyNet -> TinyNet, folder:/x/pets -> pets)."""
    tail = name.replace("\\", "/").rstrip("/").split("/")[-1].split(":")[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in tail) or "run"


def global_sums(d: Dist, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> list[float]:
    """(loss sum, correct, images) added over every rank (just read back in a single process)."""
    local = torch.stack([loss_sum.double(), correct.double(),
                         torch.tensor(float(count), device=loss_sum.device, dtype=torch.float64)])
    return d.all_sum(local).tolist()


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


def evaluate(model, loader: DeviceLoader, precision: Precision, device: torch.device,
             tta: bool = False, d: Dist = SINGLE, shift: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy %) over a loader, in large batches, with one sync at the end.

    tta: average the logits of each image and its left-right mirror (shift: and shifted copies).
    d: under torchrun each rank holds a slice of the split; the sums are added over ranks.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode(), precision.autocast(device):
        for x, y in loader:
            out = tta_logits(model, x, tta, shift)
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    loss, right, n = global_sums(d, loss_sum, correct, len(loader.labels))
    return loss / n, 100.0 * right / n


@dataclass
class Trainer:
    """The objects of one run, and how to save them."""

    cfg: TrainConfig
    run: Run
    device: torch.device
    precision: Precision
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    loader: DeviceLoader
    state: RunState
    dist: Dist = SINGLE
    eager: torch.nn.Module | None = None     # the uncompiled model, the fallback when --compile fails
    lookahead: Lookahead | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward; a compiled model that cannot compile here falls back to eager, once."""
        if self.eager is None or self.model is self.eager:
            return self.model(x)
        try:
            out = self.model(x)
        except Exception as e:  # noqa: BLE001 - no C compiler, unsupported op, old GPU: all mean "run eager"
            if not self.cfg.quiet:
                print(f"cifarlab: --compile is not available here ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); training without it",
                      file=sys.stderr, flush=True)
            self.model = self.eager
            return self.model(x)
        self.eager = None
        return out

    @property
    def out(self) -> Path:
        return self.run.path

    @property
    def net(self) -> torch.nn.Module:
        """The model itself, without the DDP wrapper (for evaluation and state dicts)."""
        return unwrap(self.model)

    def save(self, name: str = LAST) -> None:
        if not self.dist.is_main:
            return
        checkpoint = {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(),
                      "scaler": self.scaler.state_dict() if self.scaler else None,
                      "config": self.run.config, "run": self.state.to_dict(),
                      "epoch": self.state.epoch, "step": self.state.step,
                      "rng": rng_state(self.device), "cifarlab": cifarlab.__version__,
                      "lookahead": self.lookahead.state_dict() if self.lookahead else None}
        self.run.save_checkpoint(checkpoint, name)

    def restore(self, checkpoint: dict) -> None:
        self.net.load_state_dict(strip_prefixes(checkpoint["model"]))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = RunState.from_dict(checkpoint["run"])
        if self.lookahead is not None and checkpoint.get("lookahead"):
            self.lookahead.load_state_dict(checkpoint["lookahead"])
        if not self.dist.is_main:   # the saved partial sums are global: count them once, on rank 0
            self.state.partial.update(loss_sum=0.0, correct=0, seen=0)
        set_rng_state(checkpoint["rng"], self.device)
        if self.dist.enabled:       # dropout masks: a stream per rank
            torch.manual_seed(self.cfg.seed + 1_000_003 * (self.dist.rank + 1) + self.state.epoch)


def compile_model(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """torch.compile(model) with --compile; it compiles lazily, so failures surface in Trainer.forward."""
    if not cfg.compile:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - e.g. an unsupported Python for dynamo
        if not cfg.quiet:
            print(f"cifarlab: --compile is not available here ({type(e).__name__}); training without it",
                  file=sys.stderr, flush=True)
        return model


def train_epoch(t: Trainer, epoch: int, progress: Progress, stop: StopSignals) -> tuple[float, float, int, float]:
    """Train epoch `epoch` (1-based) from t.state.step; returns (loss, accuracy %, images, seconds)."""
    cfg, device, model = t.cfg, t.device, t.model
    model.train()
    part = t.state.partial
    loss_sum = torch.tensor(part["loss_sum"], device=device)
    correct = torch.tensor(part["correct"], device=device, dtype=torch.long)
    seen, start = part["seen"], time.perf_counter() - part["seconds"]
    bad = torch.zeros((), device=device, dtype=torch.bool)
    # On a GPU, checking the loss costs a host sync: do it every 50 steps there, every step on the CPU.
    check_every = 1 if device.type == "cpu" else 50
    last_save = time.monotonic()
    t.loader.set_position(epoch - 1, t.state.step)
    progress.start_epoch(epoch, len(t.loader), t.state.step)
    for x, y in t.loader:
        step = t.state.step + 1
        with t.precision.autocast(device):
            out = t.forward(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        t.optimizer.zero_grad(set_to_none=True)
        if cfg.on_nan == "skip-step" and not torch.isfinite(loss):
            t.scheduler.step()      # the schedule keeps its length; the batch is dropped
        else:
            if t.scaler is not None:
                t.scaler.scale(loss).backward()
                t.scaler.step(t.optimizer)
                t.scaler.update()
            else:
                loss.backward()
                t.optimizer.step()
            t.scheduler.step()
            # Accumulate on the device: no .item() (a host sync) inside the step.
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bad |= ~torch.isfinite(loss.detach())
        if t.lookahead is not None:   # skipped batches count too: the syncs stay on their schedule
            t.lookahead.step((epoch - 1) * len(t.loader) + step)
        due = bool(cfg.checkpoint_every) and time.monotonic() - last_save >= cfg.checkpoint_every * 60
        signum = stop.signum
        if t.dist.enabled:  # every rank must take the same decision at the same step
            flags = t.dist.all_max(torch.tensor([float(signum or 0), float(due), bad.float().item()]))
            signum, due, bad = int(flags[0]) or None, bool(flags[1]), flags[2] > 0
        if (step % check_every == 0 or due or signum is not None) and bad:
            progress.close()
            raise Diverged(f"non-finite training loss at epoch {epoch}, step {step} or the {check_every - 1} "
                           f"before it: training stopped. The last good checkpoint is kept in "
                           f"{t.run.checkpoint_path(LAST)}. Lower --lr, or pass --on-nan skip-step to skip "
                           "such batches" if check_every > 1 else
                           f"non-finite training loss at epoch {epoch}, step {step}: training stopped. The last good "
                           f"checkpoint is kept in {t.run.checkpoint_path(LAST)}. Lower --lr, or pass "
                           "--on-nan skip-step to skip such batches")
        t.state.step = step
        progress.step(loss if progress.tty and step % 25 == 0 else None)
        if signum is not None or due:
            total_loss, total_correct, total_seen = global_sums(t.dist, loss_sum, correct, seen)
            t.state.partial = {**t.state.partial, "loss_sum": total_loss, "correct": int(total_correct),
                               "seen": int(total_seen), "seconds": time.perf_counter() - start}
            t.save()
            last_save = time.monotonic()
            if signum is not None:
                progress.close()
                name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
                raise Interrupted(f"stopped by {name} at epoch {epoch}, step {step}; state saved to "
                                  f"{t.run.checkpoint_path(LAST)}. Resume with: cifarlab train --resume {t.out}",
                                  signum)
    if bad:
        progress.close()
        raise Diverged(f"non-finite training loss in the last steps of epoch {epoch}: training stopped. The last "
                       f"good checkpoint is kept in {t.run.checkpoint_path(LAST)}. Lower --lr, or pass "
                       "--on-nan skip-step to skip such batches")
    seconds = time.perf_counter() - start
    total_loss, total_correct, total_seen = global_sums(t.dist, loss_sum, correct, seen)
    return total_loss / max(total_seen, 1), 100.0 * total_correct / max(total_seen, 1), int(total_seen), seconds


def fit(cfg: TrainConfig, resume: bool = False, model=None) -> dict:
    """Train `cfg` end to end and write its run folder; returns the summary dict.

    resume: continue the run in cfg.out from checkpoints/last.pt, exactly where it stopped.
    model: the class, factory or nn.Module behind cfg.model when it is a Python object.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a DistributedDataParallel run.
    """
    d = distributed.from_environment()
    device = distributed.setup(d, resolve_device(cfg.device), cfg.batch_size)
    try:
        return _fit(cfg, resume, d, device, model)
    finally:
        distributed.teardown(d)


def _fit(cfg: TrainConfig, resume: bool, d: Dist, device: torch.device, supplied=None) -> dict:
    if not d.is_main:
        cfg = dataclasses.replace(cfg, quiet=True, tensorboard=False)
    precision = Precision(resolve_precision(cfg.precision, device))
    if precision.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
    checkpoint = Run(cfg.out).load_checkpoint(LAST) if resume else None
    t_load = time.perf_counter()
    data = prepare_data(cfg)
    load_time = time.perf_counter() - t_load
    run = Run(distributed.broadcast_object(make_run(cfg, resume).path if d.is_main else None, d))
    out = run.path
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)
    info = data.info
    spec = model_spec(cfg.model, supplied)
    model = build_model(cfg.model, info.num_classes, info.channels, info.size, batchnorm=cfg.batchnorm,
                        init=cfg.init, dropout=cfg.dropout, model_args=cfg.model_args, supplied=supplied).to(device)
    if spec.pretrained is not None and not resume:
        spec.pretrained(model, cfg.download)
    setup_time = 0.0
    if spec.data_init and not resume:  # fast94's whitening stem: from 5,000 train images
        t_setup = time.perf_counter()
        sample = data.train.images[:5000].float().div_(255)
        model.init_from_data(normalize(sample, torch.tensor(info.mean), torch.tensor(info.std)))
        setup_time = time.perf_counter() - t_setup   # part of training: counted in epoch 1's time
    channels_last = cfg.channels_last and device.type != "mps"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)
    model = distributed.wrap(model, d, device)
    eager, model = model, compile_model(model, cfg)
    if d.enabled:  # dropout masks: a stream per rank (init above used the same seed everywhere)
        torch.manual_seed(cfg.seed + 1_000_003 * (d.rank + 1))

    aug = AugmentSettings(tuple(cfg.augment), cfg.crop_padding, cfg.jitter, cfg.cutout_size)
    train_loader = DeviceLoader(data.train, cfg.batch_size, info.mean, info.std, device, shuffle=True, augment=aug,
                                seed=cfg.seed, drop_last=len(data.train) > cfg.batch_size,
                                channels_last=channels_last, shard=(d.rank, d.world))

    def eval_loader(split):
        # under torchrun each rank evaluates a contiguous slice; evaluate() adds the sums up
        part = split.subset(torch.arange(len(split)).tensor_split(d.world)[d.rank]) if d.enabled else split
        return DeviceLoader(part, cfg.eval_batch_size, info.mean, info.std, device, channels_last=channels_last)
    val_loader = eval_loader(data.val) if data.val is not None else None
    test_loader = eval_loader(data.test)

    optimizer = build_optimizer(distributed.unwrap(eager), cfg)
    t = Trainer(cfg, run, device, precision, model, optimizer, build_scheduler(optimizer, cfg, len(train_loader)),
                torch.amp.GradScaler(device.type) if precision.name == "fp16" else None, train_loader, RunState(), d,
                eager=eager, lookahead=Lookahead(unwrap(eager), cfg.epochs * len(train_loader))
                if cfg.lookahead else None)
    t.state.partial["seconds"] = setup_time
    if checkpoint is not None:
        t.restore(checkpoint)
        if t.state.epoch >= cfg.epochs:
            raise UsageError(f"{out} already finished its {cfg.epochs} epochs; nothing to resume")
        if d.is_main:  # metrics.jsonl continues from the checkpoint: no duplicate or lost epochs.
            run.write_metrics(t.state.rows)
    elif d.is_main:
        config = {**cfg.to_dict(), "resolved": {"device": str(device), "precision": precision.name,
                                                 "channels_last": channels_last},
                  "params": params, "train_size": len(data.train),
                  "val_size_actual": len(data.val) if data.val else 0, "test_size": len(data.test),
                  "classes": data.classes, "model_origin": spec.origin,
                  "data_info": {"name": info.name, "title": info.title, "num_classes": info.num_classes,
                                "channels": info.channels, "size": info.size, "mean": list(info.mean),
                                "std": list(info.std)},
                  "versions": {"cifarlab": cifarlab.__version__, "torch": str(torch.__version__),
                               "python": platform.python_version()}}
        run.write_config(config)

    progress = Progress(cfg.quiet, cfg.epochs)
    writer = tensorboard_writer(out, cfg.tensorboard)
    if not cfg.quiet:
        where = f"; resuming after epoch {t.state.epoch}, step {t.state.step}" if resume else ""
        print(f"cifarlab: {cfg.model} on {cfg.dataset} ({len(data.train):,} train"
              f"{f', {len(data.val):,} val' if data.val else ''}, {len(data.test):,} test), {params:,} parameters, "
              f"{device} {precision.name}; run folder {out}{where}", flush=True)

    with StopSignals() as stop:
        for epoch in range(t.state.epoch + 1, cfg.epochs + 1):
            run_epoch(t, epoch, val_loader, test_loader, progress, stop, writer)
    if writer is not None:
        writer.close()
    s = t.state
    summary = make_summary(cfg, s.rows, params, s.train_time, s.images / max(s.train_phase, 1e-9), load_time,
                           device, precision.name)
    summary["world_size"] = d.world
    if not d.is_main:
        return summary
    block = article_summary(summary)
    run.write_summary(summary, block)
    if not cfg.quiet:
        print(block, end="", flush=True)
    return {**summary, "run_dir": str(out)}


def run_epoch(t: Trainer, epoch: int, val_loader, test_loader, progress, stop, writer) -> None:
    """One epoch: train, evaluate, append metrics, save last.pt (and best.pt / model.safetensors)."""
    lr = t.optimizer.param_groups[0]["lr"] if t.state.step == 0 else t.state.partial.get("lr", 0.0)
    t.state.partial["lr"] = lr
    t0 = time.perf_counter() - t.state.partial["seconds"]
    train_loss, train_acc, seen, t_train = train_epoch(t, epoch, progress, stop)
    final = epoch == t.cfg.epochs
    if final and t.lookahead is not None:
        t.lookahead.finish()
    # shifted test-time views cost 2x more passes: only the final evaluation uses them
    tta, shift = t.cfg.tta, t.cfg.tta_shift if final else 0
    val_loss, val_acc = (evaluate(t.net, val_loader, t.precision, t.device, tta, t.dist, shift) if val_loader
                         else (None, None))
    test_loss, test_acc = evaluate(t.net, test_loader, t.precision, t.device, tta, t.dist, shift)
    epoch_time = time.perf_counter() - t0
    row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
           "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
           "epoch_time_s": epoch_time, "images_per_s": seen / t_train}
    s = t.state
    s.rows.append(row)
    s.train_time += epoch_time
    s.train_phase += t_train
    s.images += seen
    s.epoch, s.step = epoch, 0
    s.partial = RunState().partial
    if t.dist.is_main:
        t.run.append_metrics(row)
    progress.end_epoch(row)
    log_tensorboard(writer, row)
    # best.pt is chosen by val accuracy when there is a val split, else it is the last epoch.
    improved = s.best is None or val_acc is None or val_acc > s.best["val_acc"]
    if improved:
        s.best = {"epoch": epoch, "val_acc": val_acc, "test_acc": test_acc}
    t.save()
    if improved and t.dist.is_main:
        t.save(BEST)
        t.run.save_weights(t.net.state_dict())


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
