"""Generating the 75 corrupted sets (15 corruptions x 5 severities) against evaluating basic-cnn on them.

    python benchmarks/corruptions_speed.py (--sample | --data-dir CIFAR_ROOT) [--images N] [--threads 2]
                                           [--model basic-cnn] [--names all]

Takes the first N CIFAR-10 test images, generates every set asked with data/corruptions.py (no cache: the
work itself), timing each corruption, then evaluates the model (its weights do not change the time) on each
set with the evaluation loop and precision `cifarlab evaluate` uses. Prints a table per corruption, the two
totals, their ratio (the goal: generation <= evaluation), and both scaled linearly to CIFAR-10's 10,000 test
images (750,000 images): an extrapolation, labelled as one. The last line is the figures as JSON. Time it on an
otherwise idle machine; --threads sets torch's threads (the issue's goal is stated for 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cifarlab.data.corruptions import SEVERITIES, corrupt, parse_corruptions
from cifarlab.data.formats import Split
from cifarlab.data.loader import DeviceLoader
from cifarlab.data.sources import load_dataset
from cifarlab.models.registry import build_model
from cifarlab.sample import DATA_DIR as SAMPLE
from cifarlab.training.device import Precision, resolve_precision
from cifarlab.training.evaluation import evaluate

FULL_TEST = 10_000


def measure(images: torch.Tensor, labels: torch.Tensor, names: list[str], model, info) -> dict[str, list[float]]:
    """name -> [generation seconds, evaluation seconds], summed over the five severities."""
    cpu = torch.device("cpu")
    precision = Precision(resolve_precision("auto", cpu))   # what `cifarlab evaluate` uses on this machine
    times = {}
    for name in names:
        made = evaluated = 0.0
        for severity in SEVERITIES:
            start = time.perf_counter()
            corrupted = corrupt(images, name, severity, seed=0)
            made += time.perf_counter() - start
            start = time.perf_counter()
            loader = DeviceLoader(Split(corrupted, labels), 1000, info.mean, info.std, cpu)
            evaluate(model, loader, precision)
            evaluated += time.perf_counter() - start
        times[name] = [made, evaluated]
        print(f"{name:<18} generate {made:7.2f} s   evaluate {evaluated:7.2f} s", flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path)
    source.add_argument("--sample", action="store_true", help="the shipped sample (100 test images)")
    parser.add_argument("--images", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--names", default="all", help="corruptions: all, or NAME,NAME")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("cifar10", SAMPLE if args.sample else args.data_dir, download_missing=False)
    images, labels = data.test.images[:args.images].contiguous(), data.test.labels[:args.images]
    model = build_model(args.model, num_classes=10, in_channels=3).eval()
    names = parse_corruptions(args.names)
    print(f"{len(names) * 5} sets of {len(images):,} CIFAR-10 test images, {args.model}, "
          f"{torch.get_num_threads()} threads, {resolve_precision('auto', torch.device('cpu'))}, "
          f"torch {torch.__version__}")
    times = measure(images, labels, names, model, data.info)
    made = sum(t[0] for t in times.values())
    evaluated = sum(t[1] for t in times.values())
    scale = FULL_TEST / len(images)
    print(f"total: generate {made:.1f} s, evaluate {evaluated:.1f} s, ratio generate/evaluate {made / evaluated:.2f}")
    if len(images) != FULL_TEST:
        print(f"extrapolated linearly to {FULL_TEST:,} test images x {len(names) * 5} sets (not measured): generate "
              f"{made * scale / 60:.1f} min, evaluate {evaluated * scale / 60:.1f} min")
    else:
        print(f"measured on all {FULL_TEST:,} test images x {len(names) * 5} sets: generate {made / 60:.1f} min, "
              f"evaluate {evaluated / 60:.1f} min")
    print(json.dumps({"images": len(images), "threads": torch.get_num_threads(), "model": args.model,
                      "per_corruption_s": times, "generate_s": made, "evaluate_s": evaluated,
                      "ratio": made / evaluated, "extrapolated_full_generate_s": made * scale,
                      "extrapolated_full_evaluate_s": evaluated * scale}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
