"""What every part of the GPU proof shares: its JSON file, its time budget, its clock, and the way
airbench and reproduce run a program until a deadline."""

from __future__ import annotations

import contextlib
import os
import signal as signal_module
import subprocess
import time
from pathlib import Path

from cifarlab.report import stats
from cifarlab.run import atomic_write_json

START = time.perf_counter()      # budgets count from the start of the process
# the order the driver runs them: the fast94 comparison first, then the article's budgets
PART_NAMES = ("env", "data", "compare", "budgets", "correctness", "throughput", "fast94", "airbench", "reproduce",
              "depth")


class PartFile:
    """One part's JSON file: rewritten atomically (temporary file, fsync, rename) at every update."""

    def __init__(self, path: str, part: str):
        self.path = Path(path)
        self.data = {"part": part, "status": "running"}
        self.update()

    def update(self, **fields) -> None:
        self.data.update(fields)
        atomic_write_json(self.path, self.data)


class Budget:
    """The seconds a part may spend: an item (a model, a seed) starts only if the longest item of its
    kind so far would still end in time."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.longest: dict[str, float] = {}

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - START)

    def refuses(self, kind: str) -> str | None:
        """Why the next item of `kind` must not start, or None when it fits."""
        longest = self.longest.get(kind, 0.0)
        if longest <= self.left():
            return None
        return f"not started: {self.left():.0f} s left of {self.seconds:.0f}, the longest {kind} took {longest:.0f} s"

    @contextlib.contextmanager
    def item(self, kind: str):
        start = time.perf_counter()
        yield
        self.longest[kind] = max(self.longest.get(kind, 0.0), time.perf_counter() - start)


def mean_std(values) -> tuple[float | None, float | None]:
    """cifarlab's mean and sample standard deviation (0 for one value) of the values present; None, None for none."""
    values = [v for v in values if v is not None]
    return stats.mean_std(values) if values else (None, None)


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


def run_with_deadline(cmd: list[str], log: Path, seconds: float, grace: float, cwd: Path | None = None,
                      group: bool = False) -> dict:
    """Run `cmd`, its output appended to `log`; after `seconds`, SIGTERM (cifarlab saves a checkpoint and
    exits), and SIGKILL if it is still there `grace` seconds later. `group`: the program starts programs of
    its own (campaign.py): it gets a process group of its own and the signals go to the whole group."""
    start, stopped = time.perf_counter(), False
    with open(log, "ab") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=group)

        def signal(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

        try:
            proc.wait(timeout=max(seconds, 1.0))
        except subprocess.TimeoutExpired:
            stopped = True
            signal(signal_module.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                signal(signal_module.SIGKILL)
                proc.wait()
        if group:    # a training run the campaign left behind must not go on using the GPU
            signal(signal_module.SIGKILL)
    return {"command": " ".join(cmd), "rc": proc.returncode, "stopped_at_deadline": stopped,
            "seconds": time.perf_counter() - start}
