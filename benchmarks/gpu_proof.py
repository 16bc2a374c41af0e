"""The GPU proof's command line: one subcommand per part; benchmarks/gpu_proof.sh runs them in order.

Each part is a module beside this file, in the order the driver runs them: gpu_env.py, gpu_data.py,
gpu_compare.py (the GPU goal: airbench94_muon against fast94, first), gpu_budgets.py (the article's budgets),
gpu_correctness.py, gpu_throughput.py, gpu_fast94.py and gpu_airbench.py (optional), gpu_reproduce.py,
gpu_depth.py (optional), and gpu_report.py for `report`; gpu_part.py holds what they share (the JSON file, the
budget). `plan` prints the comparison's budget arithmetic before anything runs and refuses a budget too small.

Every part writes one JSON file (--json) as it goes, rewritten atomically after each model, seed or
run, with "status": "running" until the part ends by itself ("done", "failed" or "skipped"): a part
stopped by its time limit still leaves what it finished. The driver runs each part in its own
process under `timeout` and passes it --budget-s, the seconds it may spend, a little under that
limit; loops stop starting models or seeds that would not fit. `report` reads the files back into
report.html and summary.txt.

    gpu_proof.py env         --device cuda --json OUT/env.json
    gpu_proof.py data        --pack /tmp/pack --data-dir /tmp/cifar --json OUT/data.json
    gpu_proof.py data        --copy-from DIR --images 100 --data-dir WORK/data --json ...       (dry run)
    gpu_proof.py plan        --mode device --seeds 20 --budget-s 555 --margin-s 25   (exit status 2: no fit)
    gpu_proof.py compare     --airbench CHECKOUT --data-dir D --work DIR --log F [--seeds 20] --budget-s S --json ...
    gpu_proof.py budgets     --data-dir D --study DIR --figures F --log F [--extra=--epochs=1] --budget-s S --json ...
    gpu_proof.py correctness --data-dir D --device cuda [--images 64] [--compile-backend inductor] --json ...
    gpu_proof.py throughput  --data-dir D --device cuda --precision bf16 [--models a,b] [--no-compile] ...
    gpu_proof.py fast94      --data-dir D --device cuda [--seeds 5] [--compile] --budget-s S --json ...
    gpu_proof.py airbench    --airbench CHECKOUT --data-dir D --work DIR --log F --budget-s S --json ...
    gpu_proof.py reproduce   --data-dir D --study DIR --device cuda [--scale 1] --log F --budget-s S --json ...
    gpu_proof.py depth       --data-dir D --study DIR --device cuda [--depths 20,32,44,56] [--seeds 2] --log F ...
    gpu_proof.py report      --out OUT

torch is imported inside the parts that train, so that `report` runs wherever Python does.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))    # the parts, pack_data and time_to_accuracy: the modules beside this file

from gpu_airbench import AIRBENCH_SCRIPTS, part_airbench  # noqa: E402
from gpu_budgets import part_budgets  # noqa: E402
from gpu_compare import GOAL_SEEDS, part_compare, plan, plan_lines  # noqa: E402
from gpu_correctness import part_correctness  # noqa: E402
from gpu_data import part_data  # noqa: E402
from gpu_depth import part_depth  # noqa: E402
from gpu_env import part_env  # noqa: E402
from gpu_fast94 import part_fast94  # noqa: E402
from gpu_part import START, PartFile, tail  # noqa: E402
from gpu_report import write_report  # noqa: E402
from gpu_reproduce import part_reproduce  # noqa: E402
from gpu_throughput import part_throughput  # noqa: E402

PARTS = {"env": part_env, "data": part_data, "compare": part_compare, "budgets": part_budgets,
         "correctness": part_correctness, "throughput": part_throughput,
         "fast94": part_fast94, "airbench": part_airbench, "reproduce": part_reproduce, "depth": part_depth}


def help_of(function) -> str:
    """A part's docstring as its --help line; argparse reads % as a format, and the docstrings say "94%"."""
    return function.__doc__.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", required=True, help="this part's results file")
    common.add_argument("--budget-s", type=float, default=math.inf, help="seconds the part may spend")
    common.add_argument("--device", default="cuda", help="cuda, or cpu for the dry run")
    data = argparse.ArgumentParser(add_help=False, parents=[common])
    data.add_argument("--data-dir", required=True, help="CIFAR root in the official layout")
    sub.add_parser("env", parents=[common], help=help_of(part_env))
    p = sub.add_parser("data", parents=[data], help=help_of(part_data))
    p.add_argument("--pack", help="chunk folders to unpack into --data-dir")
    p.add_argument("--copy-from", help="a CIFAR root to copy a few images of every file from (dry run)")
    p.add_argument("--images", type=int, default=100, help="with --copy-from: images per file (default 100)")
    p = sub.add_parser("plan", help="the fast94 comparison's budget arithmetic; exit status 2 when it does not fit")
    p.add_argument("--mode", choices=("device", "dry"), default="device")
    p.add_argument("--seeds", type=int, default=GOAL_SEEDS)
    p.add_argument("--budget-s", type=float, required=True, help="the call's wall seconds")
    p.add_argument("--margin-s", type=float, default=0.0, help="of those, kept by the driver (report, exits)")
    p = sub.add_parser("compare", parents=[data], help=help_of(part_compare))
    p.add_argument("--airbench", help="a checkout of KellerJordan/cifar10-airbench (its airbench94_muon.py runs)")
    p.add_argument("--seeds", type=int, default=GOAL_SEEDS, help=f"runs of each (default {GOAL_SEEDS})")
    p.add_argument("--work", required=True, help="airbench's working folder (cifar10/*.pt are written there)")
    p.add_argument("--log", required=True, help="airbench's output")
    p.add_argument("--grace-s", type=float, default=10.0, help="from SIGTERM to SIGKILL")
    p.add_argument("--epochs", type=int, help="fast94's epochs instead of the recipe's (dry run)")
    p.add_argument("--limit-train", type=int, help="fast94 trains on N images (dry run)")
    p = sub.add_parser("budgets", parents=[data], help=help_of(part_budgets))
    p.add_argument("--study", required=True, help="the campaign folder (kept between calls)")
    p.add_argument("--figures", required=True, help="where finished figures are appended (under OUT)")
    p.add_argument("--log", required=True)
    p.add_argument("--extra", action="append", default=[], metavar="FLAG",
                   help="a `cifarlab train` flag for every run, e.g. --extra=--epochs=1 (dry run)")
    p.add_argument("--grace-s", type=float, default=20.0, help="from SIGTERM (checkpoint, exit) to SIGKILL")
    p = sub.add_parser("correctness", parents=[data], help=help_of(part_correctness))
    p.add_argument("--images", type=int, default=64, help="test images in the batch (default 64)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (dry run: eager)")
    p.add_argument("--autocast", default="bf16,fp16", help="autocast dtypes to check (default bf16,fp16)")
    p = sub.add_parser("throughput", parents=[data], help=help_of(part_throughput))
    p.add_argument("--precision", default="bf16")
    p.add_argument("--models", default="", help="comma list (default: every model that needs no download)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager only")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p = sub.add_parser("fast94", parents=[data], help=help_of(part_fast94))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default eager)")
    p.add_argument("--epochs", type=int, help="instead of the recipe's 10 (dry run)")
    p.add_argument("--limit-train", type=int, help="train on N images (dry run)")
    p = sub.add_parser("airbench", parents=[data], help=help_of(part_airbench))
    p.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--script", help=f"its file to run (default: the first of {', '.join(AIRBENCH_SCRIPTS)})")
    p.add_argument("--work", required=True, help="its working folder (cifar10/*.pt are written there)")
    p.add_argument("--log", required=True)
    p.add_argument("--grace-s", type=float, default=10.0, help="from SIGTERM to SIGKILL")
    p = sub.add_parser("reproduce", parents=[data], help=help_of(part_reproduce))
    p.add_argument("--study", required=True, help="the study folder (kept between calls)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--log", required=True)
    p.add_argument("--grace-s", type=float, default=20.0, help="from SIGTERM (checkpoint, exit) to SIGKILL")
    p = sub.add_parser("depth", parents=[data], help=help_of(part_depth))
    p.add_argument("--study", required=True, help="the study folder (kept between calls)")
    p.add_argument("--depths", default="20,32,44,56")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, help="instead of the recipe's (dry run)")
    p.add_argument("--limit-train", type=int, help="train on N images (dry run)")
    p.add_argument("--val-size", type=int, help="instead of the recipe's 5,000 (dry run)")
    p.add_argument("--log", required=True)
    p.add_argument("--grace-s", type=float, default=20.0, help="from SIGTERM (checkpoint, exit) to SIGKILL")
    p = sub.add_parser("report", help=help_of(write_report))
    p.add_argument("--out", required=True, help="the results folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.part == "report":
        write_report(Path(args.out))
        return 0
    if args.part == "plan":
        p = plan(args.mode, args.seeds, args.budget_s, args.margin_s)
        for line in plan_lines(p)[:-1]:
            print(line)
        print(plan_lines(p)[-1], file=sys.stdout if p["fits"] else sys.stderr)
        return 0 if p["fits"] else 2
    out = PartFile(args.json, args.part)
    try:
        PARTS[args.part](args, out)
    except Exception:  # noqa: BLE001 - the JSON says what broke; the driver goes on with the next part
        out.update(status="failed", error=tail(traceback.format_exc()))
        print(out.data["error"], file=sys.stderr)
    status = "done" if out.data["status"] == "running" else out.data["status"]
    if status == "failed" and out.data.get("reason"):
        print(f"gpu_proof.py {args.part}: {out.data['reason']}", file=sys.stderr)
    out.update(status=status, wall_s=time.perf_counter() - START)
    return 0 if status in ("done", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
