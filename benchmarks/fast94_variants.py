"""fast94 against its variants, one change at a time, over several seeds, side by side in one process.

    python benchmarks/fast94_variants.py --data-dir DIR --seeds 5 [--variants baseline,airbench-schedule]
        [--device cuda] [--json FILE] [--budget-s 300]

The changes are the differences between fast94 and airbench94's published description (and its Muon
successor), each a setting of `cifarlab train`. Seeds run in the outer loop and variants in the inner
one, so a machine that slows down or warms up over time touches every variant alike; each variant is
reported as mean ± std and as a paired difference from the baseline (same seeds). On a GPU a fast94
run takes seconds; on a 2-core CPU an hour, so this is a GPU job (benchmarks/gpu_proof.sh).
Reading the two descriptions side by side ruled some candidates out without a run: the 6-view
flip + shift test-time augmentation weighs its views as airbench94 does (1/2 the image and its mirror,
1/4 each shifted pair).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cifarlab.storage import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy  # noqa: E402

VARIANTS = {
    "baseline": {},
    # airbench94's one-cycle rises from 0.2x and ends at 0.07x (ours: 0.04x to 0.001x)
    "airbench-schedule": {"onecycle_start": 0.2, "onecycle_end": 0.07},
    # airbench94 weight-decays its BN shifts and whitening bias; fast94 decays 4-d and 2-d weights only
    "decay-norms": {"decay_norms": True},
    "both": {"onecycle_start": 0.2, "onecycle_end": 0.07, "decay_norms": True},
    "no-lookahead": {"lookahead": False},
    # Muon on the conv filters, 8 epochs: an untuned first guess (lr as published for airbench94_muon's
    # filters; its weight normalisation and sum-reduced loss are not reproduced)
    "muon-8ep": {"optimizer": "muon", "muon_lr": 0.24, "muon_momentum": 0.6, "epochs": 8, "lookahead": False},
}


def paired(base: list[float], other: list[float]) -> str:
    diffs = [b - a for a, b in zip(base, other)]
    if len(diffs) < 2:
        return f"{diffs[0]:+.2f} pt (1 seed)" if diffs else "n/a"
    return f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} pt (paired, {len(diffs)} seeds)"


def run(args, names: list[str]) -> dict:
    """Every seed of every variant, until the budget is spent; the results so far after each run."""
    # each variant is one change to the SGD recipe (fast94 itself chooses fast94-muon on a GPU)
    tta_args = argparse.Namespace(model="fast94", dataset="cifar10", recipe="fast94-sgd", target=94.0,
                                  data_dir=args.data_dir, device=args.device)
    results = {name: [] for name in names}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for name in names:
            if time.perf_counter() - start > args.budget_s:
                return {"results": results, "stopped": f"budget of {args.budget_s:.0f} s spent at seed {seed}"}
            extra = {**VARIANTS[name], **({"limit_train": args.limit_train} if args.limit_train else {}),
                     **({"epochs": args.epochs} if args.epochs else {})}
            outcome = time_to_accuracy.one_run(tta_args, seed, extra)
            results[name].append(outcome)
            print(f"{name} seed {seed}: {outcome['final_test_acc']:.2f}%, training {outcome['train_only_time_s']:.1f} s",
                  flush=True)
            if args.json:
                # rewritten after every seed: atomic, so a run stopped mid-write keeps the seeds before
                atomic_write_text(Path(args.json), json.dumps({"variants": VARIANTS, "results": results}, indent=1)
                                  + "\n")
    return {"results": results}


def report(results: dict[str, list[dict]]) -> str:
    base = [r["final_test_acc"] for r in results.get("baseline", [])]
    lines = [f"{'variant':20} {'seeds':>5} {'test acc':>16} {'training s':>11}  vs baseline"]
    for name, runs in results.items():
        if not runs:
            continue
        accs = [r["final_test_acc"] for r in runs]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        seconds = statistics.mean(r["train_only_time_s"] for r in runs)
        versus = "" if name == "baseline" or not base else paired(base[:len(accs)], accs[:len(base)])
        lines.append(f"{name:20} {len(accs):5d} {statistics.mean(accs):9.2f}{spread:7}% {seconds:11.1f}  {versus}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fast94_variants.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a CIFAR-10 root (the full one for real figures)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no run after this many seconds")
    parser.add_argument("--limit-train", type=int, help="train on N images (rehearsals only)")
    parser.add_argument("--epochs", type=int, help="override every variant's epochs (rehearsals only)")
    parser.add_argument("--json", help="write the results here after every run")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})")
    outcome = run(args, names)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"variants": VARIANTS, **outcome}, indent=1) + "\n")
    print(report(outcome["results"]))
    if "stopped" in outcome:
        print(outcome["stopped"])


if __name__ == "__main__":
    main()
