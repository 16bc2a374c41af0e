"""A study's runs one after another against --jobs N on this machine: wall times, their ratio, and whether
the numbers are the same (they must be).

    python benchmarks/parallel_study.py --data-dir CIFAR_ROOT [--model basic-cnn] [--epochs 1] [--seeds 2]
                                        [--jobs 2] [--placement]

It runs `cifarlab ablate --model M --dataset cifar10 --epochs E --seeds S` with --jobs 1, then with
--jobs N, and prints each wall time, the ratio, and the ablation table's numbers side by side.

--placement also times two runs at once (whatever --jobs says) under the ways one could place them on
the cores, each against the same two runs one after another in one process (a seeds study, --jobs 1),
with the test accuracies that show which placements keep the sequential numbers:
  threads/2, unpinned         each worker half the threads (numbers differ from --jobs 1)
  all threads, unpinned       oversubscribed: 2 x the threads share all cores
  all threads, pinned         what --jobs does: each worker's threads on its own share of the cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cifarlab(*args: str, env: dict | None = None, pin: list[int] | None = None) -> subprocess.Popen:
    def preexec():
        if pin is not None:
            os.sched_setaffinity(0, pin)
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=preexec if pin is not None else None)


def timed(*processes: subprocess.Popen) -> tuple[float, list[str]]:
    start = time.perf_counter()
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - start
    for p, out in zip(processes, outputs):
        if p.returncode != 0:
            sys.exit(f"parallel_study: a run failed:\n{out[-2000:]}")
    return wall, outputs


def table(output: str) -> list[str]:
    """The ablation table's rows, without the time column."""
    rows = output[output.index("variant"):].split("\n\n")[0].splitlines()[2:]
    return [" ".join(row.split()[:-3]) for row in rows]


def ablate(args, out: Path) -> None:
    common = ["ablate", "--model", args.model, "--dataset", "cifar10", "--data-dir", args.data_dir,
              "--epochs", str(args.epochs), "--seeds", str(args.seeds)]
    one, first = timed(cifarlab(*common, "--jobs", "1", "--out", str(out / "jobs-1")))
    many, second = timed(cifarlab(*common, "--jobs", str(args.jobs), "--out", str(out / f"jobs-{args.jobs}")))
    same = table(first[0]) == table(second[0])
    print(f"ablate {args.model}, {args.epochs} epoch(s), {args.seeds} seeds: --jobs 1 {one:.1f} s, "
          f"--jobs {args.jobs} {many:.1f} s ({one / many:.2f}x); numbers {'identical' if same else 'DIFFER'}")
    for row in table(second[0]):
        print(f"  {row}")
    if not same:
        sys.exit(1)


def placement(args, out: Path) -> None:
    import torch

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("parallel_study: --placement needs 2 CPUs or more")
    threads = torch.get_num_threads()       # what a sequential run uses (torch's default)
    half = [cores[: len(cores) // 2], cores[len(cores) // 2:]]
    run = ["train", "--model", args.model, "--dataset", "cifar10", "--data-dir", args.data_dir, "--epochs",
           str(args.epochs), "--quiet", "--no-tensorboard", "--overwrite"]

    def accuracy(folder: Path) -> float:
        return json.loads((folder / "summary.json").read_text())["final_test_acc"]

    base, _ = timed(cifarlab(*run, "--seeds", "2", "--out", str(out / "seq")))
    reference = [accuracy(out / "seq" / f"seed-{s}") for s in (0, 1)]
    print(f"2 runs of {args.model}, {args.epochs} epoch(s), one after another in one process "
          f"({threads} threads): {base:.1f} s, test {reference[0]:.2f} / {reference[1]:.2f}%")
    cases = [("threads/2, unpinned", max(1, threads // 2), [None, None], {}),
             ("all threads, unpinned", threads, [None, None], {}),
             ("all threads, pinned", threads, half, {"OMP_WAIT_POLICY": "PASSIVE"})]
    for name, count, pins, env in cases:
        folders = [out / re.sub(r"\W+", "-", name) / f"seed-{s}" for s in (0, 1)]
        wall, _ = timed(*(cifarlab(*run, "--seed", str(s), "--threads", str(count), "--out", str(folders[s]),
                                   env=env, pin=pins[s]) for s in (0, 1)))
        got = [accuracy(f) for f in folders]
        print(f"  {name:28} {wall:6.1f} s ({base / wall:.2f}x)  test {got[0]:.2f} / {got[1]:.2f}%  "
              f"{'= sequential' if got == reference else 'differs'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="root holding cifar-10-batches-py/")
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--placement", action="store_true", help="also time the ways of placing 2 runs on the cores")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        ablate(args, Path(tmp))
        if args.placement:
            placement(args, Path(tmp))


if __name__ == "__main__":
    main()
