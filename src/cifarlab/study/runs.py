"""The run folders of a study: train each config once, reuse it when it is already there; with --jobs N,
up to N runs at once, each in a process of its own (one GPU each, or an even share of the CPU cores).

On a CPU a run's numbers depend on its thread count (a convolution's gradient is summed in another order),
so a parallel run keeps the count the sequential study uses (torch's default, or --threads) and the cores
are split by pinning each worker to its own share of them (Linux; elsewhere each run gets cores/N threads
and the numbers differ). Two threads time-sharing one core cost ~5% against one thread (BENCHMARKS.md, the
only oversubscription measured); in exchange, --jobs N gives exactly --jobs 1's numbers. --threads cores/N
avoids the oversubscription, and its numbers equal --jobs 1 --threads cores/N.

With --ray ADDRESS each run is a Ray task on a cluster instead (one GPU per task on a GPU cluster,
--ray-cpus CPUs otherwise); the task starts the same worker on its node, so --out must be on a filesystem
every node sees (a probe task checks it first). A task whose node is lost is retried, and the retry resumes
the run from its last checkpoint.

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
from cifarlab.fingerprint import reuse_state
from cifarlab.run import Run, load_run

LOG = "train.log"      # a parallel run's output, in its own folder


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a study's runs are spread: one after another (the default), `jobs` at once on this machine, or as
    tasks on the Ray cluster at `ray` ("auto" or an address) with `ray_cpus` CPUs each."""
    jobs: int = 1
    ray: str | None = None
    ray_cpus: int = 1

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or bool(self.ray)

    def check(self) -> "Launch":
        for name, value in (("jobs", self.jobs), ("ray-cpus", self.ray_cpus)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"--{name} must be >= 1, got {value}")
        return self


SEQUENTIAL = Launch()


def run_or_reuse(cfg: TrainConfig, model=None) -> Run:
    """Train `cfg` into cfg.out, reuse the finished run of exactly these settings already there, or resume the
    unfinished one (studies resume by skipping); a run of other settings there is refused (fingerprint.py).

    model: the Python class or factory behind cfg.model, when it is one.
    """
    from cifarlab.training.engine import fit

    state = reuse_state(cfg, model)
    if state == "finished":
        if not cfg.quiet:
            print(f"cifarlab: {cfg.out} already finished, reusing it", flush=True)
        return load_run(cfg.out, model)
    # A module instance is copied: every run of a study starts from the same weights.
    fresh = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model
    if state == "resume":
        fit(cfg, resume=True, model=fresh)  # an unfinished run of these settings: continue it where it stopped
    else:   # nothing trained there; a run that died before its first save leaves its config.json to replace
        fit(dataclasses.replace(cfg, overwrite=True), model=fresh)
    return load_run(cfg.out, model)


def default_out(prefix: str) -> Path:
    """runs/YYYYmmdd-HHMMSS-PREFIX: a study's folder when no --out is given."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"


def run_all(cfgs: list[TrainConfig], launch: Launch = SEQUENTIAL, model=None) -> list[Run]:
    """Every config's run (reused where finished), in order: one after another, or spread as `launch` says
    (worker processes here, or Ray tasks), with one line per run on the console and its output in RUN/train.log."""
    if not launch.parallel:
        return [run_or_reuse(cfg, model) for cfg in cfgs]
    if model is not None and not isinstance(model, str):
        raise UsageError(f"{'--ray' if launch.ray else '--jobs'} runs each run in a process of its own: the model must be "
                         "one Python can import there (a registered name or module:factory), not an object defined "
                         "in this session")
    todo = [with_threads(cfg, launch) for cfg in cfgs if not Run(cfg.out).finished]
    if launch.ray:
        from cifarlab.study.cluster import run_on_ray
        codes = run_on_ray(todo, launch.ray, launch.ray_cpus)
    else:
        slots = _Slots(launch.jobs)
        with ThreadPoolExecutor(launch.jobs) as pool:
            codes = list(pool.map(lambda item: _work(item[1], item[0] + 1, len(todo), slots), enumerate(todo)))
    if any(code in (130, 143) for code in codes):
        raise Interrupted("study stopped by a signal; every run saved its state: run the same command again to "
                          "resume", signal.SIGINT)
    failed = [cfg for cfg, code in zip(todo, codes) if code != 0]
    if failed:
        raise CifarlabError(f"{len(failed)} of {len(todo)} runs failed; the first: {failed[0].out} "
                            f"(see {Path(failed[0].out) / LOG})")
    return [load_run(cfg.out, model) for cfg in cfgs]


def with_threads(cfg: TrainConfig, launch: Launch) -> TrainConfig:
    """A parallel run's CPU threads, recorded in its config: --ray-cpus on Ray; with --jobs N here, the count a
    sequential study uses (its numbers depend on it), the cores being split by pinning (core_shares). Where
    the system cannot pin a process, cores/N. --threads, when given, is kept."""
    if cfg.threads or (cfg.device != "cpu" and torch.cuda.is_available()):
        return cfg
    if launch.ray:
        threads = launch.ray_cpus
    elif hasattr(os, "sched_setaffinity"):
        threads = torch.get_num_threads()
    else:
        threads = max(1, (os.cpu_count() or 1) // launch.jobs)
    return dataclasses.replace(cfg, threads=threads)


def core_shares(jobs: int) -> list[list[int]] | None:
    """This process's CPUs in `jobs` disjoint shares, as even as the count allows (sizes differ by one at
    most); one CPU each, round robin, when there are more jobs than CPUs; None where the system cannot pin
    a process (macOS, Windows)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if jobs >= len(cpus):
        return [[cpus[k % len(cpus)]] for k in range(jobs)]
    return [cpus[k * len(cpus) // jobs:(k + 1) * len(cpus) // jobs] for k in range(jobs)]


CPUS = "CIFARLAB_WORKER_CPUS"      # the CPUs a worker pins itself to, e.g. "0,1"


class _Slots:
    """Which worker slots are free: slot k runs on GPU k mod (GPUs), on its own share of the CPU cores."""

    def __init__(self, jobs: int):
        self.free, self.lock = list(range(jobs)), threading.Lock()
        self.gpus = torch.cuda.device_count()
        self.shares = core_shares(jobs)

    def take(self) -> int:
        with self.lock:
            return self.free.pop(0)

    def give(self, slot: int) -> None:
        with self.lock:
            self.free.append(slot)

    def environment(self, slot: int) -> dict:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        if self.shares:
            env[CPUS] = ",".join(map(str, self.shares[slot]))
        return env


def _work(cfg: TrainConfig, number: int, total: int, slots: _Slots) -> int:
    """Run one config in a worker process; returns its exit code."""
    slot = slots.take()
    if not cfg.quiet:
        say(f"cifarlab: [{number}/{total}] {cfg.out} started (log: {Path(cfg.out) / LOG})")
    try:
        code = start_worker(cfg, slots.environment(slot))
    finally:
        slots.give(slot)
    if not cfg.quiet:
        say(finished_line(cfg, number, total, code))
    return code


_console = threading.Lock()


def say(line: str) -> None:
    """One whole line on the console, never interleaved with another job's."""
    with _console:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def start_worker(cfg: TrainConfig, env: dict) -> int:
    """`python -m cifarlab.study.runs` for one config, its output appended to RUN/train.log; its exit code.
    The config's threads also cap OpenMP in the worker (torch itself is set from the config by fit)."""
    if cfg.threads:
        env = {**env, "OMP_NUM_THREADS": str(cfg.threads)}
        share = env.get(CPUS)
        if share and cfg.threads > len(share.split(",")):
            # more threads than cores: a waiting thread sleeps instead of spinning on its sibling's core
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG, "a") as log:
        return subprocess.run([sys.executable, "-m", "cifarlab.study.runs"], input=json.dumps(cfg.to_dict()),
                              stdout=log, stderr=subprocess.STDOUT, text=True, env=env).returncode


def finished_line(cfg: TrainConfig, number: int, total: int, code: int) -> str:
    done = Run(cfg.out)
    result = f"{done.summary['final_test_acc']:.2f}% test" if done.finished else f"exit {code}"
    return f"cifarlab: [{number}/{total}] {cfg.out} {'finished' if code == 0 else 'stopped'}: {result}"


def pin(cfg: TrainConfig) -> None:
    """Keep this worker (and the threads it starts from now on) on the CPUs its slot was given; a GPU run, which
    has no recorded thread count, uses one thread per CPU of its share. Where the system refuses (a container's
    seccomp, a changed cpuset), the worker says so and runs unpinned: slower, the numbers the same."""
    if not os.environ.get(CPUS):
        return
    cpus = [int(c) for c in os.environ[CPUS].split(",")]
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    try:
        for thread in threads:       # those torch's import started too, not only this one
            try:
                os.sched_setaffinity(int(thread), cpus)
            except ProcessLookupError:
                pass                 # a thread that has ended since the listing
    except OSError as e:
        print(f"cifarlab: warning: could not pin worker {os.getpid()} to CPUs {os.environ[CPUS]} ({e}); "
              "it runs unpinned", flush=True)
        return
    if not cfg.threads:
        torch.set_num_threads(len(cpus))
    if not cfg.quiet:
        print(f"cifarlab: worker {os.getpid()} on CPU{'s' if len(cpus) > 1 else ''} {os.environ[CPUS]}, "
              f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}", flush=True)


def _worker() -> int:
    """One run of a study, its settings as JSON on stdin (what run_all starts)."""
    cfg = TrainConfig(**json.loads(sys.stdin.read()))
    validate(cfg)
    pin(cfg)
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
