"""Training images/s: cifarlab's engine vs a tutorial-style loop, side by side in one process.

The tutorial loop is what a reader of the article writes: torchvision's CIFAR10
dataset, per-image PIL transforms, a DataLoader, fp32, batch 64, Adam. cifarlab
runs its own `fit` (DeviceLoader, batched on-device augmentation, channels_last,
--precision auto) on the same images. Both train the same model from the
registry.

Two figures for each, and the ratio of each pair:
- cold: the first pass over the images from the start of the loop, what a user waits for in a
  1-epoch run (DataLoader workers starting, first-call kernel set-up, every one-off cost);
- warm: a pass once running (the tutorial loop after 5 batches; cifarlab's second epoch).

--profile (cifarlab only): torch.profiler over epochs 1 and 3 of a 3-epoch run, and the operators
whose self time grew most in epoch 1: where a one-off cost of the first epoch goes.

    python benchmarks/throughput.py --data-dir DIR [--model basic-cnn] [--images 10000] [--profile]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
import torchvision
import torchvision.transforms as T

from cifarlab.data.sources import DATASETS
from cifarlab.models import build_model
from cifarlab.recipes import build_config
from cifarlab.training import engine
from cifarlab.training.engine import fit


class LocalCIFAR10(torchvision.datasets.CIFAR10):
    # Rebuilt copies of CIFAR have other bytes than the official archive; skip torchvision's md5 gates.
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        return True


def tutorial_model(model_name: str) -> torch.nn.Module:
    """What the article's reader writes: for basic-cnn, conv -> ReLU -> pool as printed there."""
    if model_name != "basic-cnn":
        return build_model(model_name, 10, init="default")
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Dropout(0.25),
        torch.nn.Linear(128, 10),
    )


def tutorial_loop(data_dir: str, model_name: str, images: int, batch_size: int, workers: int,
                  augment: bool) -> dict:
    """{"cold": images/s over the first `images` from the loop's start, "warm": over `images` after 5 batches}."""
    info = DATASETS["cifar10"]
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(info.mean, info.std)])
    dataset = LocalCIFAR10(data_dir, train=True, transform=transform, download=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = tutorial_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    warmup, seen, warm_seen, cold, warm_start = 5, 0, 0, None, None
    start = time.perf_counter()
    while True:
        for i, (x, y) in enumerate(loader):
            if warm_start is None and i == warmup:
                warm_start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
            if cold is None and seen >= images:
                cold = seen / (time.perf_counter() - start)
            if warm_start is not None:
                warm_seen += len(y)
                if warm_seen >= images:
                    return {"cold": cold, "warm": warm_seen / (time.perf_counter() - warm_start)}


def cifarlab_fit(data_dir: str, model_name: str, images: int, batch_size: int, augment: bool,
                 epochs: int = 2) -> tuple[list[dict], str]:
    """A cifarlab run of `epochs` epochs on `images` images: (its metrics rows, the precision it chose).
    A row's images_per_s counts its training steps only, not the evaluation."""
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config({"model": model_name, "dataset": "cifar10", "data_dir": data_dir, "epochs": epochs,
                            "batch_size": batch_size, "limit_train": images, "quiet": True,
                            "augment": ["crop", "flip"] if augment else [], "out": out,
                            "optimizer": "adam", "lr": 1e-3, "tensorboard": False})
        summary = fit(cfg)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return rows, summary["precision"]


def profile_first_epoch(data_dir: str, model_name: str, images: int, batch_size: int, augment: bool,
                        top: int = 12) -> str:
    """Profile epochs 1 and 3 of a cifarlab run: a table of the operators whose self CPU time grew most
    in epoch 1 (ms, largest growth first), with their call counts."""
    measured, train_epoch = {}, engine.train_epoch

    def profiled(trainer, epoch):
        if epoch not in (1, 3):
            return train_epoch(trainer, epoch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = train_epoch(trainer, epoch)
        measured[epoch] = {e.key: (e.self_cpu_time_total / 1000, e.count) for e in prof.key_averages()}
        return result

    engine.train_epoch = profiled          # run_epoch calls it by this name
    try:
        rows, precision = cifarlab_fit(data_dir, model_name, images, batch_size, augment, epochs=3)
    finally:
        engine.train_epoch = train_epoch
    first, third = measured[1], measured[3]
    grown = sorted(first, key=lambda k: first[k][0] - third.get(k, (0.0, 0))[0], reverse=True)[:top]
    lines = [f"{model_name}, {precision}: epoch 1 {rows[0]['images_per_s']:,.0f} img/s training, "
             f"epoch 3 {rows[2]['images_per_s']:,.0f} (both under the profiler)",
             f"{'operator':48} {'grew ms':>9} {'epoch 1 ms':>11} {'epoch 3 ms':>11} {'calls 1':>8} {'calls 3':>8}"]
    for key in grown:
        (ms1, n1), (ms3, n3) = first[key], third.get(key, (0.0, 0))
        lines.append(f"{key[:48]:48} {ms1 - ms3:9.1f} {ms1:11.1f} {ms3:11.1f} {n1:8d} {n3:8d}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="root holding cifar-10-batches-py/")
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--images", type=int, default=10000, help="images timed per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="cifarlab's batch size (tutorial: 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="tutorial DataLoader workers to try")
    parser.add_argument("--no-augment", action="store_true", help="time both without crop/flip")
    parser.add_argument("--profile", action="store_true", help="profile cifarlab's epoch 1 against its epoch 3")
    args = parser.parse_args()
    augment = not args.no_augment
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {args.model}; {args.images} images timed; augment={augment}")
    if args.profile:
        print(profile_first_epoch(args.data_dir, args.model, args.images, args.batch_size, augment))
        return
    tutorial = {}
    for w in args.workers:
        tutorial[w] = tutorial_loop(args.data_dir, args.model, args.images, 64, w, augment)
        print(f"tutorial loop (torchvision CIFAR10 + PIL transforms + DataLoader, fp32, batch 64, {w} workers): "
              f"cold {tutorial[w]['cold']:,.0f}, warm {tutorial[w]['warm']:,.0f} images/s", flush=True)
    rows, precision = cifarlab_fit(args.data_dir, args.model, args.images, args.batch_size, augment)
    ours = {"cold": rows[0]["images_per_s"], "warm": rows[1]["images_per_s"]}
    print(f"cifarlab fit (DeviceLoader, {precision}, channels_last, batch {args.batch_size}): "
          f"cold (epoch 1) {ours['cold']:,.0f}, warm (epoch 2) {ours['warm']:,.0f} images/s")
    ratios = {}
    for kind in ("cold", "warm"):
        best = max(tutorial, key=lambda w: tutorial[w][kind])
        ratios[kind] = ours[kind] / tutorial[best][kind]
        print(f"{kind}: {ratios[kind]:.2f}x the fastest tutorial loop ({best} workers)")
    print(json.dumps({"model": args.model, "augment": augment, "tutorial_images_per_s": tutorial,
                      "cifarlab_images_per_s": ours, "precision": precision, "ratio": ratios}))


if __name__ == "__main__":
    main()
