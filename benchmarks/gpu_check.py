"""Everything a GPU session should check, in one run, written as JSON to $OUT/gpu_check.json.

    OUT=/tmp/out PYTHONPATH=src python3 benchmarks/gpu_check.py --data-dir cifar-mini [--full-data DIR]

1. the CUDA path is correct: fp32 loss and gradients on a fixed real batch equal the CPU's;
   bf16 / fp16 autocast stay within 2% of fp32; torch.compile equals eager;
2. training throughput (images/s from cifarlab's fit: wall time, one device sync per epoch) of every registered
   model, eager and compiled, at --precision auto;
3. an end-to-end `cifarlab train` on the GPU;
4. with --full-data (the full CIFAR-10), time to 94% of the fast94 recipe.
Each check records its own error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarlab.config import build_config, list_recipes
from cifarlab.data.sources import DATASETS, load_dataset
from cifarlab.models import MODELS, build_model
from cifarlab.training.engine import fit


def real_batch(data_dir: str, n: int = 64):
    test = load_dataset("cifar10", data_dir, download_missing=False).test
    info = DATASETS["cifar10"]
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    return (test.images[:n].float() / 255 - mean) / std, test.labels[:n].long()


def loss_grads(model, x, y, dtype=None):
    model.zero_grad()
    with torch.autocast(x.device.type, dtype=dtype or torch.float16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float().cpu() for p in model.parameters()])


def correctness(data_dir: str) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x, y = real_batch(data_dir)
    out = {}
    for name in ("basic-cnn", "deeper-cnn", "resnet18"):
        torch.manual_seed(0)
        model = build_model(name, 10).eval()
        cpu_loss, cpu_grad = loss_grads(model, x, y)
        model = model.cuda()
        xc, yc = x.cuda(), y.cuda()
        row = {"cpu_loss": cpu_loss}
        row["cuda_fp32_loss"], g = loss_grads(model, xc, yc)
        row["fp32_grad_cos"] = F.cosine_similarity(cpu_grad, g, dim=0).item()
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            row[f"{label}_loss"], g = loss_grads(model, xc, yc, dtype)
            row[f"{label}_grad_cos"] = F.cosine_similarity(cpu_grad, g, dim=0).item()
        t0 = time.perf_counter()
        row["compiled_loss"], g = loss_grads(torch.compile(model), xc, yc)
        row["compile_s"] = time.perf_counter() - t0
        row["compiled_grad_cos"] = F.cosine_similarity(cpu_grad, g, dim=0).item()
        row["ok"] = (abs(row["cuda_fp32_loss"] - cpu_loss) < 1e-3 * abs(cpu_loss)
                     and abs(row["bf16_loss"] - cpu_loss) < 0.02 * abs(cpu_loss)
                     and abs(row["compiled_loss"] - cpu_loss) < 1e-3 * abs(cpu_loss))
        out[name] = row
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return out


def throughput(data_dir: str, models: list[str]) -> dict:
    out = {}
    for name in models:
        for compiled in (False, True):
            with tempfile.TemporaryDirectory() as run:
                cfg = build_config({"model": name, "dataset": "cifar10", "data_dir": data_dir, "epochs": 3,
                                    "batch_size": 256, "augment": ["crop", "flip"], "quiet": True, "out": run,
                                    "compile": compiled, "tensorboard": False, "device": "cuda"})
                fit(cfg)
                rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
            out[f"{name}{' compiled' if compiled else ''}"] = {
                "images_per_s": rows[-1]["images_per_s"], "first_epoch_s": rows[0]["epoch_time_s"],
                "last_epoch_s": rows[-1]["epoch_time_s"]}
    return out


def end_to_end(data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "cifarlab", "train", "--model", "resnet18", "--dataset", "cifar10",
               "--recipe", "article-resnet18", "--epochs", "3", "--data-dir", data_dir, "--out", run, "--quiet"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        summary = json.loads((Path(run) / "summary.json").read_text()) if result.returncode == 0 else None
    return {"returncode": result.returncode, "stderr": result.stderr[-2000:], "summary": summary}


def fast94(full_data: str | None) -> dict:
    if "fast94" not in list_recipes():
        return {"skipped": "no fast94 recipe in this version"}
    if not full_data:
        return {"skipped": "needs the full CIFAR-10 (--full-data DIR)"}
    cmd = [sys.executable, "benchmarks/time_to_accuracy.py", "--model", "fast94", "--recipe", "fast94",
           "--target", "94", "--data-dir", full_data, "--device", "cuda", "--seeds", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return {"returncode": result.returncode, "stdout": result.stdout[-4000:], "stderr": result.stderr[-2000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="cifar-mini or any CIFAR-10 root")
    parser.add_argument("--full-data", help="the full CIFAR-10 root, for the fast94 time to 94%%")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list for the throughput table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
              "capability": torch.cuda.get_device_capability(0), "bf16": torch.cuda.is_bf16_supported()}
    checks = {"correctness": lambda: correctness(args.data_dir),
              "throughput": lambda: throughput(args.data_dir, [m for m in args.models.split(",")
                                                                if m != "resnet18-imagenet"]),
              "end_to_end": lambda: end_to_end(args.data_dir), "fast94": lambda: fast94(args.full_data)}
    out = Path(os.environ.get("OUT", "."))
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            report[name] = check()
        except Exception:  # noqa: BLE001 - record and go on: one broken check must not hide the others
            report[name] = {"error": traceback.format_exc()[-3000:]}
        report[f"{name}_wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"gpu_check: {name} done in {report[f'{name}_wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
