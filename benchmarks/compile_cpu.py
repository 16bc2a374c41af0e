"""Does torch.compile pay on this machine? Eager vs compiled, training step and evaluation, same process.

    python benchmarks/compile_cpu.py [--models basic-cnn,deeper-cnn,fast94] [--steps 12] [--device cpu]

For each model: images/s of a full training step (forward, backward, fused optimizer step) at the
batch size its recipe uses, and of evaluation (inference mode, batch 1000), eager and compiled
(inductor, default mode), with the one-off compile time. Same weights, same random batches,
channels_last, fp32 (bf16 where the hardware runs it natively, as `--precision auto` would).
Ratios > 1 mean compile is faster. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from cifarlab.models import build_model
from cifarlab.training.device import Precision, resolve_precision
from cifarlab.training.optim import _fused

BATCH = {"basic-cnn": 64, "deeper-cnn": 128, "resnet18": 128, "fast94": 1024}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the warm-up calls, seconds per call afterwards)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return t1 - t0, (time.perf_counter() - t1) / steps


def measure(name: str, compiled: bool, steps: int, device: torch.device, precision: Precision) -> dict:
    torch.manual_seed(0)
    model = build_model(name, 10).to(device).to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, **_fused(model))
    net = torch.compile(model) if compiled else model
    batch = BATCH.get(name, 128)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def train_step():
        with precision.autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    warm_train, per_step = timed(train_step, steps, 2, device)
    xe = torch.randn(1000, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    model.eval()

    def eval_step():
        with torch.inference_mode(), precision.autocast(device):
            net(xe)
    warm_eval, per_eval = timed(eval_step, max(2, steps // 4), 1, device)
    return {"train_img_s": batch / per_step, "eval_img_s": 1000 / per_eval,
            "warmup_s": warm_train + warm_eval, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="basic-cnn,deeper-cnn,fast94")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per model and mode")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = Precision(resolve_precision("auto", device))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, {device} {precision.name}")
    print(f"{'model':<12} {'batch':>5}  {'train eager':>11} {'compiled':>9} {'ratio':>6}   "
          f"{'eval eager':>10} {'compiled':>9} {'ratio':>6}   compile s")
    for name in args.models.split(","):
        eager = measure(name, False, args.steps, device, precision)
        comp = measure(name, True, args.steps, device, precision)
        print(f"{name:<12} {eager['batch']:>5}  {eager['train_img_s']:>11.0f} {comp['train_img_s']:>9.0f} "
              f"{comp['train_img_s'] / eager['train_img_s']:>5.2f}x   {eager['eval_img_s']:>10.0f} "
              f"{comp['eval_img_s']:>9.0f} {comp['eval_img_s'] / eager['eval_img_s']:>5.2f}x   "
              f"{comp['warmup_s'] - eager['warmup_s']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
