"""The run folders of a study: train each config once, reuse it when it is already there; with --jobs N,
up to N runs at once, each in a worker process of its own (one GPU each, or an even share of the CPU cores);
with --ray ADDRESS, each run as a Ray task on a cluster (study/cluster.py).

launch.py starts and places the workers: with --jobs N each CPU run gets cores/N threads (recorded in its
config; its numbers equal a sequential study with that --threads), or exactly --threads when given. Before
anything is launched every folder is checked (cifarlab.fingerprint.reuse_state): finished runs are reused,
and a folder that holds a run with other settings stops the study with one line naming the setting.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
from datetime import datetime
from pathlib import Path

import torch

from cifarlab.errors import CifarlabError, Interrupted, UsageError
from cifarlab.fingerprint import reuse_state
from cifarlab.runfolder import RunFolder, open_run
from cifarlab.settings import TrainConfig
from cifarlab.study.launch import LOG, STOPPED, say_if_busy


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


def train_run(cfg: TrainConfig, resume: bool = False, model=None, on_epoch=None) -> dict:
    """fit(), then its summary through report/: the article's block in summary.txt, printed unless cfg.quiet.
    Every path that trains comes through here (train, --resume, studies, their workers, tune trials, torchrun
    ranks), so each run folder gets the same summary.txt; returns fit's summary."""
    from cifarlab.report.summary import publish_run
    from cifarlab.training.engine import fit

    return publish_run(fit(cfg, resume, model, on_epoch), cfg.quiet)


def run_or_reuse(cfg: TrainConfig, model=None) -> RunFolder:
    """Train `cfg` into cfg.out, reuse the finished run of exactly these settings already there, or resume the
    unfinished one (studies resume by skipping); a run of other settings there is refused (fingerprint.py).

    model: the Python class or factory behind cfg.model, when it is one.
    """
    state = reuse_state(cfg, model)
    if state == "finished":
        if not cfg.quiet:
            print(f"cifarlab: {cfg.out} already finished, reusing it", flush=True)
        return open_run(cfg.out, model)
    # A module instance is copied: every run of a study starts from the same weights.
    fresh = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model
    if state == "resume":
        train_run(cfg, resume=True, model=fresh)  # an unfinished run of these settings: continue it where it stopped
    else:   # nothing trained there; a run that died before its first save leaves its config.json to replace
        train_run(dataclasses.replace(cfg, overwrite=True), model=fresh)
    return open_run(cfg.out, model)


def check_folders(cfgs: list[TrainConfig], model=None) -> None:
    """Every folder of a sequential study checked before its first run trains, as the parallel paths do
    (launch.plan): a folder holding a run of other settings stops the study in one line, not half-way."""
    for cfg in cfgs:
        reuse_state(cfg, model)


def run_groups(groups: dict[str, list[TrainConfig]], launch: Launch, model=None,
               command: str = "study") -> dict[str, list[RunFolder]]:
    """A study's runs in named groups (ablate's variants, depth's nets), each group's runs back in its order.

    In parallel every run of every group is launched at once; one after another, every folder is checked
    first and each run announced by a line `cifarlab COMMAND: GROUP, seed S` (the parallel launcher has its
    own lines)."""
    every = [cfg for group in groups.values() for cfg in group]
    if launch.parallel:
        runs = iter(run_all(every, launch, model))
        return {name: [next(runs) for _ in group] for name, group in groups.items()}
    check_folders(every, model)
    return {name: [_announced(cfg, f"cifarlab {command}: {name}", model) for cfg in group]
            for name, group in groups.items()}


def _announced(cfg: TrainConfig, label: str, model) -> RunFolder:
    if not cfg.quiet:
        print(f"{label}, seed {cfg.seed}", flush=True)
    return run_all([cfg], SEQUENTIAL, model)[0]


def default_out(prefix: str) -> Path:
    """runs/YYYYmmdd-HHMMSS-PREFIX: a study's folder when no --out is given."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"


def run_all(cfgs: list[TrainConfig], launch: Launch = SEQUENTIAL, model=None) -> list[RunFolder]:
    """Every config's run (reused where finished), in order: one after another, or spread as `launch` says
    (worker processes here, or Ray tasks), with one line per run on the console and its output in RUN/train.log.
    On the parallel paths every folder is checked before anything starts."""
    if not launch.parallel:
        check_folders(cfgs, model)
        if cfgs:
            say_if_busy(cfgs[0])
        return [run_or_reuse(cfg, model) for cfg in cfgs]
    if model is not None and not isinstance(model, str):
        raise UsageError(f"{'--ray' if launch.ray else '--jobs'} runs each run in a process of its own: the model must be "
                         "one Python can import there (a registered name or module:factory), not an object defined "
                         "in this session")
    from cifarlab.study.launch import plan, train_here

    todo = plan(cfgs, launch, model)
    if launch.ray:
        from cifarlab.study.cluster import run_on_ray
        codes = run_on_ray(todo, launch.ray, launch.ray_cpus)
        if any(code in (130, 143) for code in codes):
            raise Interrupted(STOPPED, signal.SIGINT)
    else:
        codes = train_here(todo, launch.jobs)
    failed = [cfg for cfg, code in zip(todo, codes) if code != 0]
    if failed:
        raise CifarlabError(f"{len(failed)} of {len(todo)} runs failed; the first: {failed[0].out} "
                            f"(see {Path(failed[0].out) / LOG})")
    return [open_run(cfg.out, model) for cfg in cfgs]
