"""A study's runs as Ray tasks (`--ray auto|ADDRESS`): one task per run, scheduled by Ray on its cluster.

Ray is optional (`pip install "cifarlab[ray]"`). Each task starts the study's run worker (launch.run_one:
`python -m cifarlab.study.worker`) on its node with the run's settings, exactly as `--jobs` does on one
machine, so the run folder, its log and its results are the same; Ray, not the launcher, places the task.
Before any run, a probe task writes a file into --out and the driver looks for it: a folder that the nodes
do not share would otherwise scatter the runs.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.settings import TrainConfig

RETRIES = 3     # a task whose node is lost runs again, resuming its run from the last checkpoint


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError('--ray needs Ray: pip install "cifarlab[ray]"') from None
    return ray


def connect(address: str):
    """Join the cluster at `address` ("auto": the one this machine belongs to), unless this process already
    has (a notebook, or a test's local cluster)."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise UsageError(f"--ray {address}: no Ray cluster there ({str(e).splitlines()[0][:160]})") from None
    return ray


def check_shared_folder(ray, out: Path) -> None:
    """A task writes a file into `out`; the driver must see it, or the nodes do not share the folder."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".ray-probe-{uuid.uuid4().hex}"

    @ray.remote(num_cpus=0)
    def write(path: str) -> str:
        Path(path).write_text("seen")
        return os.uname().nodename

    node = ray.get(write.remote(str(probe.resolve())))
    try:
        if not probe.is_file():
            raise UsageError(f"--out {out} is not shared with the cluster: a task on node {node} wrote a file there "
                             "that this machine cannot see; put --out on a filesystem every node mounts")
    finally:
        probe.unlink(missing_ok=True)


def prepare(address: str, out: Path):
    """Ray joined at `address`, `out` checked as shared with every node, and the GPUs a task takes (1 on a GPU
    cluster, else 0)."""
    ray = connect(address)
    check_shared_folder(ray, out)
    return ray, 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def run_commands_on_ray(commands: list[list[str]], address: str, cpus: int, out: Path):
    """Each command as a Ray task (`cpus` CPUs, a GPU each on a GPU cluster), started now; returns a function that
    waits for them and gives their exit codes. Their output goes to OUT/workers/ray-K.log on their node."""
    ray, gpus = prepare(address, out)
    (out / "workers").mkdir(parents=True, exist_ok=True)

    @ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)
    def run(command: list[str], log: str, threads: int) -> int:
        import subprocess

        from cifarlab.study.launch import Slot, environment, exit_code, start_process
        with open(log, "a") as sink:
            process = start_process(command, environment(Slot(None, None), threads), own_session=False,
                                    stdout=sink, stderr=subprocess.STDOUT)
            return exit_code(process.wait())

    tasks = [run.remote(command, str(out / "workers" / f"ray-{k}.log"), cpus) for k, command in enumerate(commands)]
    return lambda: ray.get(tasks)


def run_on_ray(cfgs: list[TrainConfig], address: str, cpus: int) -> list[int]:
    """Every config as a Ray task (one GPU each on a GPU cluster, `cpus` CPUs each); their exit codes, in order."""
    if not cfgs:
        return []
    ray, gpus = prepare(address, Path(cfgs[0].out).parent)

    @ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)
    def train(settings: dict) -> int:
        from cifarlab.study.launch import Slot, environment, run_one

        # Ray placed the task (its GPU too): no local pinning; threads as with_threads recorded them
        return run_one(settings, environment(Slot(None, None), settings["threads"]))

    from cifarlab.study.launch import LOG, finished_line

    pending = {train.remote(cfg.to_dict()): (i, cfg) for i, cfg in enumerate(cfgs)}
    codes = [0] * len(cfgs)
    for i, cfg in enumerate(cfgs):
        if not cfg.quiet:
            print(f"cifarlab: [{i + 1}/{len(cfgs)}] {cfg.out} submitted to Ray (log: {Path(cfg.out) / LOG})",
                  flush=True)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i, cfg = pending.pop(done[0])
        codes[i] = ray.get(done[0])
        if not cfg.quiet:
            print(finished_line(cfg, i + 1, len(cfgs), codes[i]), flush=True)
    return codes
