"""The other processes of a parallel `cifarlab tune`: started through the launcher (study/launch.py) with the
trials' thread count and their own share of the cores, waited for before the summary, or ended when the study
fails; and this process pinned to the first share while its own trials train."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError, UsageError
from cifarlab.study.runs import Launch


def check_importable(model, launch: Launch) -> None:
    """Workers import the model themselves: a class defined in this session cannot reach them."""
    if model is not None and not isinstance(model, str):
        raise UsageError(f"tune {'--ray' if launch.ray else '--jobs'} runs trials in processes of their own: the "
                         "model must be one Python can import there (a registered name or module:factory), not an "
                         "object defined in this session")


@contextlib.contextmanager
def pinned(cpus: list[int] | None):
    """This process on `cpus` (its share beside the workers') while its own trials train, then as before."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        cpus = None          # refused (a container's seccomp): unpinned, slower, the same numbers
    try:
        yield
    finally:
        if cpus:
            os.sched_setaffinity(0, before)


class Workers:
    """The other processes of a parallel study: started with it, waited for before the summary, or ended."""

    def __init__(self, processes: list | None = None, ray_codes=None, logs: list[Path] | None = None):
        self.processes, self.ray_codes, self.logs = processes or [], ray_codes, logs or []
        self.own_cpus: list[int] | None = None     # this process's share of the cores beside its workers

    def wait(self) -> None:
        from cifarlab.study.launch import exit_code

        codes = [exit_code(p.wait()) for p in self.processes] + (self.ray_codes() if self.ray_codes else [])
        failed = [i for i, code in enumerate(codes) if code != 0]
        if failed:
            where = f"; see {self.logs[failed[0]]}" if failed[0] < len(self.logs) else ""
            raise CifarlabError(f"{len(failed)} of {len(codes)} tune workers failed{where}")

    def stop(self) -> None:
        """End the workers still running (the parent failed: they must not train on, unseen); SIGTERM lets a
        trial save and end as failed. Ray tasks are left to Ray."""
        running = [p for p in self.processes if p.poll() is None]
        for p in running:
            p.terminate()
        for p in running:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_workers(launch: Launch, args: list[str], out: Path, threads: int | None = None) -> Workers:
    """`cifarlab ARGS` in jobs-1 more processes here, or in `jobs` Ray tasks; each worker's output goes to
    OUT/workers/worker-K.log. Here the launcher places them: `threads` each (the trials' recorded count), worker
    K pinned to the K-th share of the cores and given the K-th GPU; the first share is this process's own
    (Workers.own_cpus), where its trials train."""
    if not launch.parallel:
        return Workers()
    command = [sys.executable, "-m", "cifarlab", *args]
    if launch.ray:
        from cifarlab.study.cluster import run_commands_on_ray
        return Workers(ray_codes=run_commands_on_ray([command] * launch.jobs, launch.ray, launch.ray_cpus, out))
    from cifarlab.study.launch import environment, slots, start_process

    (out / "workers").mkdir(parents=True, exist_ok=True)
    places = slots(launch.jobs)
    logs = [out / "workers" / f"worker-{k}.log" for k in range(1, launch.jobs)]
    processes = []
    for slot, log in zip(places[1:], logs):
        with open(log, "a") as sink:       # the worker holds its own copy of the descriptor
            # in this process group, as before: a terminal's Ctrl-C reaches every tune process at once
            processes.append(start_process(command, environment(slot, threads), slot.cpus, own_session=False,
                                           stdout=sink, stderr=subprocess.STDOUT))
    workers = Workers(processes, logs=logs)
    workers.own_cpus = places[0].cpus
    return workers
