"""Everything a run needs to continue exactly: progress counters, RNG states, checkpoint loading,
and the signal handler that turns Ctrl-C / SIGTERM into "save, then stop"."""

from __future__ import annotations

import dataclasses
import random
import signal
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cifarlab.signals import SignalCatcher


@dataclass
class RunState:
    """Where training stands. `epoch` epochs are complete; `step` batches of the next one are done."""

    epoch: int = 0
    step: int = 0
    # sums over the batches done so far in the current epoch (loss * images, correct, images), the seconds of
    # its steps before a mid-epoch save, and the steps that proved a compiled model there (their seconds, count)
    partial: dict = field(default_factory=lambda: {"loss_sum": 0.0, "correct": 0, "seen": 0, "earlier_s": 0.0,
                                                   "warmup_s": 0.0, "warmup_steps": 0})
    rows: list = field(default_factory=list)         # metrics.jsonl rows of the completed epochs
    best: dict | None = None
    train_and_eval_time: float = 0.0                 # all of it but loading and saving, completed epochs
    train_phase: float = 0.0                         # training steps only, without the compile warm-up
    images: int = 0
    # The parts of the airbench-scope clock that are not training steps (engine.TIME_SCOPE)
    data_init_time: float = 0.0                      # a new run's data-dependent init (fast94's whitening)
    final_eval_time: float = 0.0                     # the last epoch's test evaluation (val's under --no-test)
    compile_warmup: float = 0.0                      # what --compile's first steps cost beyond an ordinary step

    def to_dict(self) -> dict:
        return asdict(self)

    def position(self) -> str:
        """Where training stands, as a stop by signal names it: "epoch 2, step 2" (steps done in that epoch)."""
        return f"epoch {self.epoch + 1}, step {self.step}" if self.step else f"the end of epoch {self.epoch}"

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        """The state a checkpoint saved (checked by checkpoint_differences first)."""
        return cls(**d)


# The entries of a checkpoint this version writes (Trainer.save) and reads back.
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "config", "run", "epoch", "step", "rng_ranks",
                   "cifarlab", "lookahead"}


def checkpoint_differences(checkpoint: dict) -> list[str]:
    """How a checkpoint's training state differs from the one this version saves ([] if it does not): what a
    resume from another version names before it refuses."""
    run = checkpoint.get("run") if isinstance(checkpoint.get("run"), dict) else {}
    partial = run.get("partial") if isinstance(run.get("partial"), dict) else {}
    fields = {f.name for f in dataclasses.fields(RunState)}
    compared = (("", set(checkpoint), CHECKPOINT_KEYS), ("run state: ", set(run), fields),
                ("partial epoch: ", set(partial) - {"lr"}, set(RunState().partial)))   # lr: once the epoch began
    differences = []
    for where, saved, expected in compared:
        extra, missing = sorted(saved - expected), sorted(expected - saved)
        if extra or missing:
            differences.append(where + ", ".join([*(f"has {k}" for k in extra), *(f"lacks {k}" for k in missing)]))
    return differences


def rng_state(device: torch.device) -> dict:
    """Every generator a run could draw from (the loader derives its own from seed, epoch and step)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value):
    # random.setstate wants tuples; a checkpoint may hand lists back.
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class StopSignals(SignalCatcher):
    """Within the block, SIGINT and SIGTERM only set `signum`; the loop saves and stops at a step's end."""

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
