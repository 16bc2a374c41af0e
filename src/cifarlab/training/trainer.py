"""Trainer: the objects of one run, the training forward (with its --compile fallback), and the
checkpoint that holds all of them: save and restore side by side."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cifarlab import __version__ as cifarlab_version   # the version only: cifarlab.* names the API above
from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import Diverged, Interrupted, UsageError
from cifarlab.models.renames import refuse_old_layer_names
from cifarlab.runfolder import LAST, RunFolder, strip_prefixes
from cifarlab.settings import TrainConfig
from cifarlab.training import distributed
from cifarlab.training.device import Precision
from cifarlab.training.diagnostics import Diagnostics
from cifarlab.training.distributed import Dist
from cifarlab.training.evaluation import global_sums
from cifarlab.training.lookahead import Lookahead
from cifarlab.training.progress import Progress
from cifarlab.training.state import RunState, StopSignals, checkpoint_differences, rng_state, set_rng_state


@dataclass
class Trainer:
    """The objects of one run: how a step runs, how it stops, how it is saved and restored."""

    cfg: TrainConfig
    run: RunFolder
    dist: Dist
    device: torch.device
    precision: Precision
    model: torch.nn.Module                   # what trains: maybe DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None      # fp16 only
    train_loader: DeviceLoader
    val_loader: DeviceLoader | None
    test_loader: DeviceLoader | None        # None with --no-test
    state: RunState
    progress: Progress
    stop: StopSignals                        # Ctrl-C / SIGTERM: save at the end of the step, then stop
    params: int                              # the model's parameter count, for config.json and the summary
    load_time: float                         # seconds spent loading the data, for the summary
    writer: object | None = None             # TensorBoard's SummaryWriter, when on and installed
    uncompiled: torch.nn.Module | None = None    # the model before torch.compile: the fallback if it fails
    lookahead: Lookahead | None = None
    on_epoch: Callable[[dict], None] | None = None    # fit()'s hook, called with each epoch's metrics row
    diagnostics: Diagnostics | None = None   # --diagnostics N (rank 0): reads the gradients around optimizer.step

    @property
    def bare_model(self) -> torch.nn.Module:
        """The model itself, without the DDP and torch.compile wrappers (for evaluation and state dicts)."""
        return distributed.bare_model(self.model)

    def announce(self, data, resume: bool) -> None:
        """The line a run starts with: what trains on what, where, and into which folder."""
        cfg, state = self.cfg, self.state
        where = f"; resuming from {state.position()}" if resume else ""
        print(f"cifarlab: {cfg.model} on {cfg.dataset} ({len(data.train):,} train"
              f"{f', {len(data.val):,} val' if data.val else ''}, {len(data.test):,} test), {self.params:,} "
              f"parameters, {self.device} {self.precision.name}; run folder {self.run.path}{where}", flush=True)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One training step: forward, loss, backward, optimizer step. Returns (logits, loss, stepped); stepped
        is False when --on-nan skip-step dropped a non-finite loss.

        A compiled model is proven by its first full step: torch.compile builds the backward graph only when
        the backward first runs, so a failure there (or in the forward) falls back to the uncompiled model,
        once, and the step is taken again from the same weights, buffers and random state."""
        if self.uncompiled is None or self.model is self.uncompiled:
            return self._step(x, y)
        before = self._step_state()
        try:
            result = self._step(x, y)
        except Exception as e:  # noqa: BLE001 - no C compiler, unsupported op, old GPU: all mean "run uncompiled"
            if not self.cfg.quiet:
                print(f"cifarlab: --compile is not available here ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); training without it",
                      file=sys.stderr, flush=True)
            self.model = self.uncompiled
            self._restore_step_state(before)
            return self._step(x, y)
        if result[2]:      # a batch dropped by --on-nan skip-step ran no backward: the next step proves it
            self.uncompiled = None
        return result

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        with self.precision.autocast(self.device):
            out = self.model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)
        return out, loss, self.optimizer_step(loss)

    def _step_state(self) -> dict:
        """What a failed first step may have changed: BatchNorm's running statistics, the random state (dropout
        masks drawn). The weights and the optimizer change only in its last call, after the backward."""
        return {"buffers": [b.detach().clone() for b in self.bare_model.buffers()], "rng": rng_state(self.device)}

    def _restore_step_state(self, before: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(self.bare_model.buffers(), before["buffers"]):
                buffer.copy_(saved)
        set_rng_state(before["rng"], self.device)

    def optimizer_step(self, loss: torch.Tensor) -> bool:
        """Backward, optimizer and schedule step; False when --on-nan skip-step dropped a non-finite loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.on_nan == "skip-step" and not torch.isfinite(loss):
            self.scheduler.step()      # the schedule keeps its length; the batch is dropped
            return False
        watch = self.diagnostics
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if watch is not None:
            watch.before_update(self.optimizer, self.scaler)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if watch is not None:
            watch.after_update()
        self.scheduler.step()
        return True

    def diverged(self, where: str) -> Diverged:
        """The error for a non-finite training loss `where` ("at epoch 2, step 3"); closes the progress bar."""
        self.progress.close()
        return Diverged(f"non-finite training loss {where}: training stopped. The last good checkpoint is kept in "
                        f"{self.run.checkpoint_path(LAST)}. Lower --lr, or pass --on-nan skip-step to skip such "
                        "batches")

    def interrupted(self, signum: int, epoch: int, step: int) -> Interrupted:
        """The error for a stop by signal, once last.pt is saved; closes the progress bar."""
        self.progress.close()
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        return Interrupted(f"stopped by {name} at epoch {epoch}, step {step}; state saved to "
                           f"{self.run.checkpoint_path(LAST)}. Resume with: cifarlab train --resume {self.run.path}",
                           signum)

    def save(self, *names: str) -> None:
        """The checkpoint, as checkpoints/last.pt (by default) and any other names given. Every rank calls it:
        each hands rank 0 its random state, so a resumed run draws the same dropout masks on every rank."""
        rng_ranks = self.dist.gather(rng_state(self.device))
        if not self.dist.is_main:
            return
        checkpoint = {"model": self.bare_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(),
                      "scaler": self.scaler.state_dict() if self.scaler else None,
                      "config": self.run.config, "run": self.state.to_dict(),
                      "epoch": self.state.epoch, "step": self.state.step,
                      "rng_ranks": rng_ranks, "cifarlab": cifarlab_version,
                      "lookahead": self.lookahead.state_dict() if self.lookahead else None}
        for name in names or (LAST,):
            self.run.save_checkpoint(checkpoint, name)

    def save_mid_epoch(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, start: float,
                       warmup: "CompileWarmUp") -> None:
        """last.pt in the middle of an epoch, with the epoch's sums so far (added over ranks), its seconds and
        its compile warm-up steps."""
        total_loss, total_correct, total_seen = global_sums(self.dist, loss_sum, correct, seen)
        self.state.partial = {**self.state.partial, "loss_sum": total_loss, "correct": int(total_correct),
                              "seen": int(total_seen), "earlier_s": time.perf_counter() - start,
                              "warmup_s": warmup.seconds, "warmup_steps": warmup.steps}
        self.save()

    def restore(self, checkpoint: dict) -> None:
        refuse_other_version(checkpoint, self.run.checkpoint_path(LAST))
        state = strip_prefixes(checkpoint["model"])
        refuse_old_layer_names(self.bare_model, state, self.run.checkpoint_path(LAST))
        self.bare_model.load_state_dict(state)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = RunState.from_dict(checkpoint["run"])
        if self.lookahead is not None and checkpoint.get("lookahead"):
            self.lookahead.load_state_dict(checkpoint["lookahead"])
        if not self.dist.is_main:   # the saved partial sums are global: count them once, on rank 0
            self.state.partial.update(loss_sum=0.0, correct=0, seen=0)
        ranks = checkpoint["rng_ranks"]
        if len(ranks) == self.dist.world:     # each rank continues its own stream
            set_rng_state(ranks[self.dist.rank], self.device)
        else:   # another world size: rank 0's state, reseeded per rank
            set_rng_state(ranks[0], self.device)
            distributed.seed_per_rank(self.dist, self.cfg.seed + self.state.epoch)


class CompileWarmUp:
    """The clock of the steps that compile a --compile model (torch.compile builds lazily, in its first full
    step), so the airbench-scope time can leave compilation out as airbench does (it compiles on dummy runs
    before its clock starts). Each such step is timed between device syncs; the warm-up is their time beyond
    that of an ordinary step of the same epoch, so the step's own work stays counted."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.seconds = trainer.state.partial["warmup_s"]      # a mid-epoch resume carries the earlier ones
        self.steps = trainer.state.partial["warmup_steps"]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        trainer = self.trainer
        if trainer.uncompiled is None or trainer.model is trainer.uncompiled:   # eager, or compiled and proven
            return trainer.train_step(x, y)
        synchronize(trainer.device)
        start = time.perf_counter()
        result = trainer.train_step(x, y)
        synchronize(trainer.device)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return result

    def excess(self, epoch_seconds: float, epoch_steps: int) -> float:
        """The warm-up within an epoch of `epoch_steps` steps that took `epoch_seconds` (its warm steps included):
        their time beyond the mean of the epoch's other steps (all of it when there are none)."""
        if not self.steps:
            return 0.0
        others = epoch_steps - self.steps
        ordinary = (epoch_seconds - self.seconds) / others if others > 0 else 0.0
        return max(self.seconds - self.steps * ordinary, 0.0)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a clock read after this times the work, not its launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def refuse_other_version(checkpoint: dict, source) -> None:
    """A checkpoint whose training state this version would misread is refused in one line naming the keys."""
    differences = checkpoint_differences(checkpoint)
    if differences:
        saved = checkpoint.get("cifarlab", "unknown")
        raise UsageError(f"{source}: a checkpoint of another version of cifarlab ({saved}; this is "
                         f"{cifarlab_version}), which this one cannot resume: {'; '.join(differences)}")


def compile_model(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """torch.compile(model) with --compile; it compiles lazily, so failures surface in Trainer.train_step."""
    if not cfg.compile:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - e.g. an unsupported Python for dynamo
        if not cfg.quiet:
            print(f"cifarlab: --compile is not available here ({type(e).__name__}); training without it",
                  file=sys.stderr, flush=True)
        return model
