"""The run folders of a study: train each config once, reuse it when it is already there; with --jobs N,
up to N runs at once, each in a process of its own (one GPU each, or an even share of the CPU cores).

A worker is `python -m cifarlab.study.runs` reading one run's settings as JSON on stdin: it trains exactly
what the sequential study would (the same seeds, the same code path), so the results are the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import torch

from cifarlab.config import TrainConfig, validate
from cifarlab.errors import CifarlabError, Interrupted, UsageError
from cifarlab.run import LAST, Run, load_run

LOG = "train.log"      # a parallel run's output, in its own folder


def run_or_reuse(cfg: TrainConfig, model=None) -> Run:
    """Train `cfg` into cfg.out unless a finished run is already there (studies resume by skipping).

    model: the Python class or factory behind cfg.model, when it is one.
    """
    from cifarlab.training.engine import fit

    out = Path(cfg.out)
    if Run(out).finished:
        run = load_run(out, model)
        if run.config.get("model") == cfg.model and run.config.get("dataset") == cfg.dataset \
                and run.config.get("epochs") == cfg.epochs:
            if not cfg.quiet:
                print(f"cifarlab: {out} already finished, reusing it", flush=True)
            return run
        raise UsageError(f"{out} holds a different run ({run.config.get('model')} on {run.config.get('dataset')}, "
                         f"{run.config.get('epochs')} epochs); choose another --out")
    # A module instance is copied: every run of a study starts from the same weights.
    fresh = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model
    if Run(out).checkpoint_path(LAST).is_file() and Run(out).config_path.is_file():
        fit(cfg, resume=True, model=fresh)  # an unfinished run: continue it exactly where it stopped
    else:
        fit(dataclasses.replace(cfg, overwrite=True), model=fresh)
    return load_run(out, model)


def default_out(prefix: str) -> Path:
    """runs/YYYYmmdd-HHMMSS-PREFIX: a study's folder when no --out is given."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"


def run_all(cfgs: list[TrainConfig], jobs: int = 1, model=None) -> list[Run]:
    """Every config's run (reused where finished), in order; with jobs > 1, up to `jobs` at once in worker
    processes, one line per run on the console and each run's output in RUN/train.log."""
    if jobs <= 1:
        return [run_or_reuse(cfg, model) for cfg in cfgs]
    if model is not None and not isinstance(model, str):
        raise UsageError("--jobs runs each run in a process of its own: the model must be one Python can import "
                         "there (a registered name or module:factory), not an object defined in this session")
    todo = [cfg for cfg in cfgs if not Run(cfg.out).finished]
    slots = _Slots(jobs)
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(lambda item: _work(item[1], item[0] + 1, len(todo), slots), enumerate(todo)))
    if any(code in (130, 143) for code in codes):
        raise Interrupted("study stopped by a signal; every run saved its state: run the same command again to "
                          "resume", signal.SIGINT)
    failed = [cfg for cfg, code in zip(todo, codes) if code != 0]
    if failed:
        raise CifarlabError(f"{len(failed)} of {len(todo)} runs failed; the first: {failed[0].out} "
                            f"(see {Path(failed[0].out) / LOG})")
    return [load_run(cfg.out, model) for cfg in cfgs]


class _Slots:
    """Which worker slots are free: slot k runs on GPU k mod (GPUs), or on its share of the CPU cores."""

    def __init__(self, jobs: int):
        self.free, self.lock = list(range(jobs)), threading.Lock()
        self.jobs, self.gpus = jobs, torch.cuda.device_count()

    def take(self) -> int:
        with self.lock:
            return self.free.pop(0)

    def give(self, slot: int) -> None:
        with self.lock:
            self.free.append(slot)

    def environment(self, slot: int) -> dict:
        if self.gpus:
            return {**os.environ, "CUDA_VISIBLE_DEVICES": str(slot % self.gpus)}
        return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.jobs))}


def _work(cfg: TrainConfig, number: int, total: int, slots: _Slots) -> int:
    """Run one config in a worker process; returns its exit code."""
    slot = slots.take()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not cfg.quiet:
            print(f"cifarlab: [{number}/{total}] {out} started (log: {out / LOG})", flush=True)
        with open(out / LOG, "a") as log:
            code = subprocess.run([sys.executable, "-m", "cifarlab.study.runs"], input=json.dumps(cfg.to_dict()),
                                  stdout=log, stderr=subprocess.STDOUT, text=True, env=slots.environment(slot)).returncode
    finally:
        slots.give(slot)
    if not cfg.quiet:
        done = Run(out)
        result = f"{done.summary['final_test_acc']:.2f}% test" if done.finished else f"exit {code}"
        print(f"cifarlab: [{number}/{total}] {out} {'finished' if code == 0 else 'stopped'}: {result}", flush=True)
    return code


def _worker() -> int:
    """One run of a study, its settings as JSON on stdin (what run_all starts)."""
    cfg = TrainConfig(**json.loads(sys.stdin.read()))
    validate(cfg)
    try:
        run_or_reuse(cfg)
    except Interrupted as e:
        print(f"cifarlab: {e}", file=sys.stderr)
        return e.exit_code
    except CifarlabError as e:
        print(f"cifarlab: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
