"""Training images/s: cifarlab's engine vs a tutorial-style loop, side by side in one process.

The tutorial loop is what a reader of the article writes: torchvision's CIFAR10
dataset, per-image PIL transforms, a DataLoader, fp32, batch 64, Adam. cifarlab
runs its own `fit` (DeviceLoader, batched on-device augmentation, channels_last,
--precision auto) on the same images. Both train the same model from the
registry; the first batches of each are warm-up and not timed.

    python benchmarks/throughput.py --data-dir DIR [--model basic-cnn] [--images 10000]
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
import torchvision
import torchvision.transforms as T

from cifarlab.config import build_config
from cifarlab.data.sources import DATASETS
from cifarlab.models import build_model
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


def tutorial_loop(data_dir: str, model_name: str, images: int, batch_size: int, workers: int, augment: bool) -> float:
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
    warmup, seen, start = 5, 0, None
    while True:
        for i, (x, y) in enumerate(loader):
            if start is None and i == warmup:
                start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if start is not None:
                seen += len(y)
                if seen >= images:
                    return seen / (time.perf_counter() - start)


def cifarlab_fit(data_dir: str, model_name: str, images: int, batch_size: int, augment: bool) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config({"model": model_name, "dataset": "cifar10", "data_dir": data_dir, "epochs": 2,
                            "batch_size": batch_size, "limit_train": images, "quiet": True,
                            "augment": ["crop", "flip"] if augment else [], "out": out,
                            "optimizer": "adam", "lr": 1e-3})
        summary = fit(cfg)
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["images_per_s"], summary["precision"]  # epoch 2: past the warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="root holding cifar-10-batches-py/")
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--images", type=int, default=10000, help="images timed per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="cifarlab's batch size (tutorial: 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="tutorial DataLoader workers to try")
    parser.add_argument("--no-augment", action="store_true", help="time both without crop/flip")
    args = parser.parse_args()
    augment = not args.no_augment

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {args.model}; {args.images} images timed; augment={augment}")
    tutorial = {}
    for w in args.workers:
        tutorial[w] = tutorial_loop(args.data_dir, args.model, args.images, 64, w, augment)
        print(f"tutorial loop (torchvision CIFAR10 + PIL transforms + DataLoader, fp32, batch 64, "
              f"{w} workers): {tutorial[w]:,.0f} images/s", flush=True)
    ours, precision = cifarlab_fit(args.data_dir, args.model, args.images, args.batch_size, augment)
    best_w = max(tutorial, key=tutorial.get)
    print(f"cifarlab fit (DeviceLoader, {precision}, channels_last, batch {args.batch_size}): {ours:,.0f} images/s")
    print(f"speed-up vs the fastest tutorial loop ({best_w} workers): {ours / tutorial[best_w]:.2f}x")
    print(json.dumps({"model": args.model, "augment": augment, "tutorial_images_per_s": tutorial,
                      "cifarlab_images_per_s": ours, "precision": precision,
                      "ratio": ours / tutorial[best_w]}))


if __name__ == "__main__":
    main()
