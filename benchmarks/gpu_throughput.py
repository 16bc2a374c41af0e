"""Part 4, throughput: training images/s of every model, eager then compiled."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import traceback
from pathlib import Path

from gpu_part import Budget, PartFile, tail


def default_models() -> list[str]:
    """Every registered model that trains from scratch (resnet18-imagenet needs downloaded weights)."""
    from cifarlab.models import MODELS

    return [name for name, spec in MODELS.items() if spec.pretrained is None]


def measure_throughput(args, name: str, compiled: bool) -> dict:
    """`name` trained for args.epochs epochs of args.limit_train images: the first epoch is cold (start-up,
    cuDNN autotuning, compilation), the last warm. Only the final epoch is scored (eval_every 0)."""
    from cifarlab.recipes import build_config
    from cifarlab.training.engine import fit

    said = io.StringIO()   # cifarlab's messages, to see whether --compile fell back to eager
    with tempfile.TemporaryDirectory() as run, contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        cfg = build_config({"model": name, "dataset": "cifar10", "data_dir": args.data_dir, "device": args.device,
                            "precision": args.precision, "channels_last": True, "compile": compiled,
                            "epochs": args.epochs, "limit_train": args.limit_train, "batch_size": args.batch_size,
                            "augment": ["crop", "flip"], "eval_every": 0, "out": run, "tensorboard": False})
        summary = fit(cfg)
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {"warm_images_per_s": rows[-1]["images_per_s"], "warm_epoch_s": rows[-1]["train_only_time_s"],
            "cold_epoch_s": rows[0]["train_only_time_s"], "cold_images_per_s": rows[0]["images_per_s"],
            "epochs": len(rows), "precision": summary["precision"], "compiled": compiled,
            "fell_back_to_eager": compiled and "--compile is not available" in said.getvalue()}


def part_throughput(args, out: PartFile) -> None:
    """Training images/s of every model, all eager first, then all compiled, until the budget is spent."""
    models = args.models.split(",") if args.models else default_models()
    variants = [(m, False) for m in models] + ([(m, True) for m in models] if args.compile else [])
    out.update(device=args.device, precision=args.precision, channels_last=True, epochs=args.epochs,
               images=args.limit_train, batch_size=args.batch_size, augment="crop,flip", models={})
    budget = Budget(args.budget_s)
    for name, compiled in variants:
        key, kind = (f"{name} compiled", "compiled") if compiled else (name, "eager")
        why = budget.refuses(kind)
        if why:
            out.data["models"][key] = {"skipped": why}
            continue
        start = time.perf_counter()
        with budget.item(kind):
            try:
                result = measure_throughput(args, name, compiled)
            except Exception as e:  # noqa: BLE001 - one model that cannot train here must not hide the others
                result = {"error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc())}
        out.data["models"][key] = {**result, "wall_s": time.perf_counter() - start}
        out.update()
        print(f"throughput {key}: " + (f"{result['warm_images_per_s']:,.0f} img/s warm, first epoch "
                                       f"{result['cold_epoch_s']:.2f} s" if "error" not in result
                                       else f"ERROR {result['error'][:300]}"), flush=True)
    out.update()
