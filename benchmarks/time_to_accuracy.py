"""Wall time to a target test accuracy for a recipe, with the per-epoch curve, over one or more seeds.

    python benchmarks/time_to_accuracy.py --model basic-cnn --recipe tuned-basic-cnn --target 78 \
        --data-dir DIR [--seeds 2] [--device cuda] [--json-out FILE] [any `cifarlab train` flag: --epochs 5 ...]

Four clocks, reported apart:
- time to result (summary.json's time_to_result_s, the whole run): airbench's scope, the figure to set beside
  airbench's own clock: the data-dependent init (fast94's whitening), the training steps and the final test
  evaluation with its TTA views; not data loading, compile warm-up, other evaluations or saving;
- training only: the training steps, summed over epochs up to the first scored epoch whose test accuracy
  reaches the target (without the data-dependent init or the compile warm-up);
- training + evaluation: every epoch's whole time (the init, warm-up and the evaluations the recipe runs,
  `--eval-every`) up to that epoch;
- wall: the whole `fit()` call, loading the data into memory included, what a user waits for.
The first epoch includes any cuDNN autotuning (airbench leaves it out by a warm-up run: compare warm seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifarlab.cli_flags import add_train_flags, given_settings
from cifarlab.recipes import train_config
from cifarlab.storage import atomic_write_text
from cifarlab.training.engine import fit


def one_run(args, seed: int, extra: dict) -> dict:
    """One seed of the recipe; `extra`: more settings, as `cifarlab train` flags give them (augment="crop,flip")."""
    with tempfile.TemporaryDirectory() as out:
        cfg = train_config({"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
                            "device": args.device, "seed": seed, "out": out, "quiet": True,
                            "tensorboard": False, **extra}, args.recipe, note=lambda m: print(m, file=sys.stderr))
        start = time.perf_counter()
        summary = fit(cfg)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    with_eval, training, curve, reached = 0.0, 0.0, [], None
    for r in rows:
        with_eval += r["epoch_time_s"]
        training += r["train_only_time_s"]
        if r["test_acc"] is None:          # an epoch --eval-every did not score
            continue
        curve.append({"epoch": r["epoch"], "seconds": round(with_eval, 2), "test_acc": r["test_acc"]})
        if reached is None and r["test_acc"] >= args.target:
            reached = {"train_only_s": training, "train_and_eval_s": with_eval}
    return {"seed": seed, "final_test_acc": summary["final_test_acc"],
            "time_to_target_s": reached["train_and_eval_s"] if reached else None,
            "train_only_to_target_s": reached["train_only_s"] if reached else None,
            "train_and_eval_time_s": summary["train_and_eval_time_s"],
            "train_only_time_s": summary["train_only_time_s"],
            "time_to_result_s": summary["time_to_result_s"], "time_scope": summary["time_scope"],
            "wall_time_s": wall, "curve": curve,
            # every clock of summary.json as it is, so that a reader can pick the scope it needs
            "times": {k: v for k, v in summary.items() if k.endswith("_s") and isinstance(v, (int, float))}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(parser)   # the `cifarlab train` flags, as the CLI reads them (--no-tensorboard, --tta/--no-tta)
    parser.set_defaults(model="basic-cnn", dataset="cifar10", device="auto")
    parser.add_argument("--recipe", default="tuned-basic-cnn")
    parser.add_argument("--target", type=float, required=True, help="test accuracy to reach, percent")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json-out", help="also write the results here")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args([t for t in sys.argv[1:] if t != "--"])   # `-- --epochs 5` as before still works
    if args.data_dir is None:
        parser.error("the following arguments are required: --data-dir")
    extra = {k: v for k, v in given_settings(args).items() if v is not None}
    runs = [one_run(args, seed, extra) for seed in range(args.seeds)]
    finals = [r["final_test_acc"] for r in runs]
    times = [r["time_to_target_s"] for r in runs if r["time_to_target_s"] is not None]
    train_only = [r["train_only_to_target_s"] for r in runs if r["train_only_to_target_s"] is not None]
    walls = [r["wall_time_s"] for r in runs]
    to_result = [r["time_to_result_s"] for r in runs]
    result = {"model": args.model, "recipe": args.recipe, "dataset": args.dataset, "target": args.target,
              "device": str(args.device), "torch": torch.__version__, "machine": platform.machine(),
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "final_test_acc_mean": statistics.mean(finals),
              "final_test_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
              "reached": f"{len(times)}/{len(runs)}",
              "time_to_target_mean_s": statistics.mean(times) if times else None,
              "train_only_to_target_mean_s": statistics.mean(train_only) if train_only else None,
              "time_to_result_mean_s": statistics.mean(to_result), "time_scope": runs[0]["time_scope"],
              "wall_time_mean_s": statistics.mean(walls), "runs": runs}
    for r in runs:
        reached = "not reached" if r["time_to_target_s"] is None else (
            f"{r['train_only_to_target_s']:.1f} s training, {r['time_to_target_s']:.1f} s with evaluation")
        print(f"seed {r['seed']}: final {r['final_test_acc']:.2f}%, time to {args.target}%: {reached}; "
              "curve " + ", ".join(f"{c['seconds']:.0f}s:{c['test_acc']:.1f}" for c in r["curve"]))
    print(f"{args.recipe} ({args.model}, {args.dataset}): final {result['final_test_acc_mean']:.2f} "
          f"\u00b1 {result['final_test_acc_std']:.2f}% over {len(runs)} seed(s); reached {args.target}% in "
          f"{result['reached']} runs" + (f", mean {result['train_only_to_target_mean_s']:.1f} s training, "
                                         f"{result['time_to_target_mean_s']:.1f} s with evaluation" if times else "")
          + f"; whole run in airbench's scope {result['time_to_result_mean_s']:.2f} s"
          + f"; wall (fit, data loading included) {result['wall_time_mean_s']:.1f} s")
    print(f"airbench's scope: {result['time_scope']}")
    if args.json_out:
        atomic_write_text(Path(args.json_out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
