"""What --diagnostics N costs: the same run with and without it, in one process, its training time and the ratio.

    python benchmarks/diagnostics_cost.py (--sample | --data-dir CIFAR_ROOT) [--model basic-cnn] [--every 50]
                                          [--epochs 1] [--limit-train N] [--batch-size B] [--repeats 2]

After one untimed warm-up run, each repeat trains the run without --diagnostics and with --diagnostics N
(the order alternates between repeats, so neither always runs on a warmer cache), TensorBoard on as by
default (so the histograms are counted), and reads each run's training time (summary.json's
train_only_time_s: the steps, not the evaluation). It prints the median of each (and every time) and their
ratio (the goal at N = 50: at most 1.05 on a CPU), and whether the two runs' numbers (metrics without their
timings, final weights) are identical, which they must be: the diagnostics only read. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from cifarlab.recipes import build_config
from cifarlab.sample import DATA_DIR as SAMPLE
from cifarlab.training.engine import fit

TIMINGS = {"epoch_time_s", "train_only_time_s", "images_per_s"}


def train(args, out: Path, every: int) -> tuple[float, list[dict], dict]:
    """(training seconds, metrics rows without timings, final weights) of one run."""
    settings = {"model": args.model, "dataset": "cifar10", "data_dir": str(args.data_dir), "epochs": args.epochs,
                "limit_train": args.limit_train, "quiet": True, "out": str(out), "diagnostics": every,
                "download": False}
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    summary = fit(build_config(settings))
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary["train_only_time_s"], rows, load_file(str(out / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path)
    source.add_argument("--sample", action="store_true", help="the real CIFAR-10 sample shipped with cifarlab")
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--every", type=int, default=50, help="--diagnostics N (default 50)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.data_dir = SAMPLE if args.sample else args.data_dir
    times: dict[int, list[float]] = {0: [], args.every: []}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        train(args, Path(tmp) / "warm-up", 0)   # untimed: the first run in a process pays for torch's warm-up
        for repeat in range(args.repeats):
            order = (0, args.every) if repeat % 2 == 0 else (args.every, 0)
            for every in order:
                seconds, rows, weights = train(args, Path(tmp) / f"run-{repeat}-{every}", every)
                times[every].append(seconds)
                results[every] = (rows, weights)
            recorded = sum(1 for _ in (Path(tmp) / f"run-{repeat}-{args.every}" / "diagnostics.jsonl").open())
    off, on = statistics.median(times[0]), statistics.median(times[args.every])
    (rows_off, w_off), (rows_on, w_on) = results[0], results[args.every]
    same = rows_off == rows_on and w_off.keys() == w_on.keys() and all(torch.equal(w_off[k], w_on[k]) for k in w_off)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {args.epochs} epoch(s), "
          f"--limit-train {args.limit_train}, {args.repeats} repeat(s), medians; {recorded} diagnostics rows per run")
    each = {every: ", ".join(f"{t:.2f}" for t in runs) for every, runs in times.items()}
    print(f"without --diagnostics      {off:8.2f} s   (each: {each[0]})")
    print(f"with --diagnostics {args.every:<7} {on:8.2f} s   {on / off:.3f}x the time without   "
          f"(each: {each[args.every]})")
    print(f"numbers identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
