"""The one launcher of a study's worker processes: how many threads each gets, which cores and GPU, where its
output goes, and the signals it is sent. study/runs.py (--jobs), study/cluster.py (--ray) and study/tune.py
(tune --jobs) start their processes here.

Threads. A CPU run's numbers depend on its thread count (a convolution's gradient is summed in another order),
so the count is part of its config. With --jobs N each run gets cores/N threads (at least 1) and says so: its
numbers equal a sequential study run with that --threads, not one with torch's default. --threads T is kept
as given, so --jobs N --threads T equals --jobs 1 --threads T bit for bit; more threads than cores in all is
said in one line (the runs then wait for each other's cores: slower, the same numbers).

Cores and GPUs. On Linux each worker is pinned to its own share of this process's cores as soon as it starts,
before torch is imported, so every thread it ever starts stays there. Worker k gets the k-th GPU of those this
process may use (its CUDA_VISIBLE_DEVICES, else every GPU), round robin.

Workers. A run worker (`python -m cifarlab.study.worker`) trains the configs it is sent one after another, one
JSON line each on its stdin, and answers each with a line {"code": EXIT} on its stdout: torch is imported once
per worker, not once per run. Each run's output goes to RUN/train.log. A worker lives in a session of its own:
a terminal's Ctrl-C reaches the study alone, which forwards SIGINT/SIGTERM to its workers once and waits for
them to save; the study then stops with 130/143 and no worker outlives it holding a run folder's lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from cifarlab.errors import Interrupted
from cifarlab.runfolder import STUDY_LOG as LOG     # a parallel run's output, in its own folder
from cifarlab.signals import SignalCatcher

WORKER = [sys.executable, "-m", "cifarlab.study.worker"]     # see worker.py
STOPPED = ("study stopped by a signal; every run saved its state: run the same command again to resume")


# ---------------------------------------------------------------- placement: threads, cores, GPUs

def cores() -> list[int]:
    """The CPUs this process may run on (its affinity: a `taskset` or a container's cpuset counts)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def threads_per_run(jobs: int) -> int:
    """cores/N, at least 1: N runs at once fill the cores without sharing one."""
    return max(1, len(cores()) // jobs)


def core_shares(jobs: int) -> list[list[int]] | None:
    """This process's CPUs in `jobs` disjoint shares, as even as the count allows (sizes differ by one at
    most); one CPU each, round robin, when there are more jobs than CPUs; None where the system cannot pin
    a process (macOS, Windows)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = cores()
    if jobs >= len(cpus):
        return [[cpus[k % len(cpus)]] for k in range(jobs)]
    return [cpus[k * len(cpus) // jobs:(k + 1) * len(cpus) // jobs] for k in range(jobs)]


def gpu_choices(count: int | None = None) -> list[str]:
    """The GPUs workers may use, as CUDA_VISIBLE_DEVICES values: those this process is allowed (its own
    CUDA_VISIBLE_DEVICES, e.g. 2,3: a worker's "0" would escape it), else 0 .. count-1."""
    if count is None:
        import torch
        count = torch.cuda.device_count()
    if not count:
        return []
    allowed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if allowed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in allowed.split(",") if d.strip()][:count]


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where worker k runs: its CPUs (None: unpinned) and its GPU (None: no GPU)."""
    cpus: list[int] | None
    gpu: str | None


def slots(jobs: int, gpus: int | None = None) -> list[Slot]:
    """One Slot per worker: its own share of the cores, and the GPUs round robin."""
    shares, choices = core_shares(jobs), gpu_choices(gpus)
    return [Slot(shares[k] if shares else None, choices[k % len(choices)] if choices else None)
            for k in range(jobs)]


def environment(slot: Slot, threads: int | None, base: dict | None = None) -> dict:
    """A worker's environment: its GPU, and OpenMP sized to its threads."""
    env = dict(os.environ if base is None else base)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        if slot.cpus and threads > len(slot.cpus):
            # more threads than cores: a waiting thread sleeps instead of spinning on its sibling's core
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def with_threads(cfg, launch):
    """A parallel run's CPU threads, recorded in its config: --threads as given; else --ray-cpus on Ray, and
    cores/N with --jobs N here. A GPU run keeps None (its worker's default: one thread per core of its share)."""
    if cfg.threads:
        return cfg
    if cfg.device != "cpu":
        import torch
        if torch.cuda.is_available():
            return cfg
    return dataclasses.replace(cfg, threads=launch.ray_cpus if launch.ray else threads_per_run(launch.jobs))


def policy_lines(launch, given: int | None, threads: int | None, runs: int) -> tuple[str | None, str | None]:
    """(what --jobs chose, a warning when the runs at once have more threads than there are cores)."""
    if launch.ray or not threads:
        return None, None
    unit = f"thread{'s' if threads > 1 else ''}"
    note = None if given else (f"cifarlab: --jobs {launch.jobs}: {threads} {unit} per run; the numbers equal a "
                               f"sequential study with --threads {threads}")
    at_once, count = min(launch.jobs, runs), len(cores())
    if at_once * threads <= count:
        return note, None
    return note, (f"cifarlab: warning: {at_once} runs at once x {threads} {unit} = {at_once * threads} threads on "
                  f"{count} cores: they wait for each other's cores and take longer (the numbers do not change)")


def load_note(used: int) -> str | None:
    """One line when other work already keeps more cores busy (the 1-minute load average) than this study
    leaves free: its timings will be slower than on an idle machine. CIFARLAB_LOAD_NOTE=0 silences it (the
    test suite does: its own processes are the load)."""
    if os.environ.get("CIFARLAB_LOAD_NOTE") == "0":
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    count = len(cores())
    if load <= max(0, count - used) + 0.5:
        return None
    return (f"cifarlab: note: load average {load:.1f} on {count} core{'s' if count > 1 else ''}: other work is "
            "running; timings will be slower")


def say_if_busy(cfg) -> None:
    """load_note for a run, or runs one after another, that use cfg.threads (default: every core)."""
    note = None if cfg.quiet else load_note(cfg.threads or len(cores()))
    if note:
        say(note)


# ---------------------------------------------------------------- before launching

def plan(cfgs: list, launch, model=None) -> list:
    """The configs still to train, their threads set, after every folder was checked: finished runs are
    reused, and a folder holding another run stops the study (UsageError) before any work starts (--overwrite:
    every run is trained again)."""
    from cifarlab.fingerprint import reuse_state

    placed = [with_threads(cfg, launch) for cfg in cfgs]
    todo = []
    for cfg in placed:
        if not cfg.overwrite and reuse_state(cfg, model, resolve=not launch.ray) == "finished":
            if not cfg.quiet:
                say(f"cifarlab: {cfg.out} already finished, reusing it")
        else:
            todo.append(cfg)
    if todo and not todo[0].quiet:
        note, warning = policy_lines(launch, cfgs[0].threads, todo[0].threads, len(todo))
        for line in (note, load_note(min(launch.jobs, len(todo)) * (todo[0].threads or 1))):
            if line and not launch.ray:
                say(line)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    return todo


def fetch_data_once(cfgs: list) -> None:
    """Download each missing dataset here, once, before the workers start (each would otherwise download it
    at the same time, into the same file)."""
    from cifarlab.data.sources import data_root, dataset_info, download, is_custom, missing_files

    seen = set()
    for cfg in cfgs:
        if is_custom(cfg.dataset):
            continue
        root = data_root(cfg.data_dir)        # a --data-dir that does not exist: one line, as in a lone run
        if not cfg.download or (cfg.dataset, root) in seen:
            continue
        seen.add((cfg.dataset, root))
        info = dataset_info(cfg.dataset)
        if missing_files(info, root):
            root.mkdir(parents=True, exist_ok=True)
            download(info, root)


def train_here(cfgs: list, jobs: int) -> list[int]:
    """Every config trained by up to `jobs` persistent workers on this machine; their exit codes, in order."""
    if not cfgs:
        return []
    fetch_data_once(cfgs)
    places = slots(jobs)[:min(jobs, len(cfgs))]
    codes, signum = train_all(cfgs, [(slot, environment(slot, cfgs[0].threads)) for slot in places])
    if signum is not None:
        raise Interrupted(STOPPED, signum)
    return codes


# ---------------------------------------------------------------- processes and signals

def exit_code(returncode: int) -> int:
    """A process's exit status as a shell gives it: 128 + N for one ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def start_process(command: list[str], env: dict, cpus: list[int] | None = None, own_session: bool = True,
                  **streams) -> subprocess.Popen:
    """`command` started with `env`, pinned to `cpus` at once: Python has started no thread yet, so every
    thread it starts later (torch's, OpenMP's) inherits the pinning. own_session: a terminal's Ctrl-C reaches
    the parent alone, which forwards it (Forwarding); a pinning the system refuses is said once, unpinned."""
    process = subprocess.Popen(command, env=env, text=True, start_new_session=own_session, **streams)
    if cpus:
        try:
            os.sched_setaffinity(process.pid, cpus)
        except OSError as e:
            print(f"cifarlab: warning: could not pin worker {process.pid} to CPUs {','.join(map(str, cpus))} ({e}); "
                  "it runs unpinned: slower, the same numbers", file=sys.stderr, flush=True)
    return process


class Forwarding(SignalCatcher):
    """Within the block, SIGINT and SIGTERM to this process are passed on to `processes` (which live in sessions
    of their own, so nothing else sends them these signals), and `signum` records the first. Outside the main
    thread, where Python cannot handle signals, it does nothing."""

    def __init__(self):
        super().__init__()
        self.processes: list[subprocess.Popen] = []

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        for process in list(self.processes):
            if process.poll() is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass          # ended since poll()


_console = threading.Lock()


def say(line: str) -> None:
    """One whole line on the console, never interleaved with another job's."""
    with _console:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def finished_line(cfg, number: int, total: int, code: int) -> str:
    from cifarlab.runfolder import RunFolder

    done = RunFolder(cfg.out)
    accuracy = done.summary.get("final_test_acc") if done.finished else None
    result = f"{accuracy:.2f}% test" if accuracy is not None else "done" if done.finished else f"exit {code}"
    return f"cifarlab: [{number}/{total}] {cfg.out} {'finished' if code == 0 else 'stopped'}: {result}"


# ---------------------------------------------------------------- the study's side of its run workers

class RunWorker:
    """A persistent run worker: configs in as JSON lines on its stdin, one answer line each on its stdout. A
    worker that died (a crash, the OOM killer) is started again for the next run, unless a signal came."""

    def __init__(self, slot: Slot, env: dict, forwarding: Forwarding):
        self.slot, self.env, self.forwarding = slot, env, forwarding
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_process(WORKER, self.env, self.slot.cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.forwarding.processes.append(self.process)

    def train(self, settings: dict) -> int:
        if self.process is None or self.process.poll() is not None:
            if self.forwarding.signum is not None:
                return 128 + self.forwarding.signum
            self.start()
        try:
            self.process.stdin.write(json.dumps(settings) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            answer = ""
        if answer.strip():
            return json.loads(answer)["code"]
        return exit_code(self.process.wait())       # it ended without answering

    def close(self) -> None:
        if self.process is not None:
            try:
                self.process.stdin.close()          # end of input: the worker leaves its loop
            except OSError:
                pass
            self.process.wait()


def train_all(cfgs: list, places: list[tuple[Slot, dict]]) -> tuple[list[int | None], int | None]:
    """Each config trained by one of the workers (a Slot and an environment each), the next config going to
    the first worker free; a console line per run as it starts and finishes. Returns the exit codes (None:
    never started) and the signal that stopped the study, if one did."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(cfgs)):
        pending.put(i)
    codes: list[int | None] = [None] * len(cfgs)

    def feed(worker: RunWorker) -> None:
        try:
            while forwarding.signum is None:
                try:
                    i = pending.get_nowait()
                except queue.Empty:
                    return
                cfg = cfgs[i]
                if not cfg.quiet:
                    say(f"cifarlab: [{i + 1}/{len(cfgs)}] {cfg.out} started (log: {Path(cfg.out) / LOG})")
                codes[i] = worker.train(cfg.to_dict())
                if not cfg.quiet:
                    say(finished_line(cfg, i + 1, len(cfgs), codes[i]))
        finally:
            worker.close()

    with Forwarding() as forwarding:
        workers = [RunWorker(slot, env, forwarding) for slot, env in places]
        for worker in workers:
            worker.start()      # here, in the main thread, before any signal can be missed by a feeder
        feeders = [threading.Thread(target=feed, args=(w,), daemon=True) for w in workers]
        for t in feeders:
            t.start()
        for t in feeders:
            while t.is_alive():
                t.join(0.2)     # short waits: the signal handler runs in this thread between them
    return codes, forwarding.signum


def run_one(settings: dict, env: dict) -> int:
    """One config in a fresh worker, waited for (a Ray task's run: Ray places it, so it is not pinned here)."""
    process = start_process(WORKER, env, own_session=False, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    answer, _ = process.communicate(json.dumps(settings) + "\n")
    lines = answer.strip().splitlines()
    return json.loads(lines[0])["code"] if lines else exit_code(process.returncode)
