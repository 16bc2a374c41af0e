"""Part 3, correctness: the device's loss and gradients against the CPU's, per precision and compiled."""

from __future__ import annotations

import contextlib
import math
import time

from gpu_part import Budget, PartFile


CORRECTNESS_MODELS = ("basic-cnn", "deeper-cnn", "resnet18")
# The largest relative loss difference each path may show against its reference (fp32, bf16, fp16:
# the CPU's fp32; compiled: the device's eager fp32), and the largest relative L2 gradient error in fp32.
LIMITS = {"fp32": 1e-3, "fp32_grad": 1e-2, "bf16": 0.02, "fp16": 0.02, "compiled": 1e-3}


def real_batch(data_dir: str, n: int):
    """The first n CIFAR-10 test images, normalised as cifarlab's loader does, and their labels."""
    import torch

    from cifarlab.data.sources import load_dataset

    data = load_dataset("cifar10", data_dir, download_missing=False)
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    return (data.test.images[:n].float() / 255 - mean) / std, data.test.labels[:n].long()


def loss_and_grad(model, x, y, dtype=None) -> tuple:
    """Cross-entropy of one batch and the flat gradient (float64, on the CPU); under autocast to `dtype`."""
    import torch
    import torch.nn.functional as F

    model.zero_grad()
    with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().double().cpu() for p in model.parameters() if p.grad is not None])


def agreement(ref_loss: float, ref_grad, loss: float, grad) -> dict:
    """One path against its reference: the loss, its relative difference, and the gradients' cosine and
    relative L2 error, in float64 (float32 sums over 11 M entries cannot resolve cosines below ~1e-3)."""
    import torch.nn.functional as F

    return {"loss": loss, "loss_rel_diff": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
            "grad_cos": F.cosine_similarity(ref_grad, grad, dim=0).item(),
            "grad_rel_err": ((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-300)).item()}


def path_or_reason(measure, what: str, errors=(RuntimeError, NotImplementedError), outcome: str = "skipped") -> dict:
    """measure()'s agreement, or {outcome: why} where it raised one of `errors` (by default: what this torch
    cannot run on this device, e.g. fp16 autocast on an old CPU build)."""
    try:
        return measure()
    except errors as e:
        return {outcome: f"{what}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}


def verdict(row: dict) -> bool:
    """Every path that ran is finite and within its limit, and none failed; a path skipped on the CPU (an
    autocast dtype left out or not built there) proves nothing either way."""
    ok = row["fp32"]["grad_rel_err"] <= LIMITS["fp32_grad"]
    for label in ("fp32", "bf16", "fp16", "compiled"):
        if "loss" in row[label]:
            ok &= math.isfinite(row[label]["loss"]) and row[label]["loss_rel_diff"] <= LIMITS[label]
        ok &= "failed" not in row[label]
    return bool(ok and "loss" in row["compiled"])


def tf32_as_training(precision: str) -> bool:
    """TF32 switched as cifarlab's training switches it for `precision` (off for fp32, on for bf16 and fp16):
    each path is measured as training runs it. Returns the setting, for the record."""
    import torch

    from cifarlab.training.device import use_tf32

    use_tf32(precision)
    return bool(torch.backends.cuda.matmul.allow_tf32)


def check_model(name: str, x, y, device: str, backend: str, autocast: list[str]) -> dict:
    """One model (eval mode, seed 0): the device's fp32 and its autocast dtypes (bf16, fp16) against the
    CPU's fp32, and torch.compile against eager fp32 on the device; each with TF32 as training sets it."""
    import torch

    from cifarlab.models import build_model

    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    cpu = loss_and_grad(model, x, y)
    model.to(device)
    xd, yd = x.to(device), y.to(device)
    tf32 = tf32_as_training("fp32")
    eager = loss_and_grad(model, xd, yd)
    row = {"cpu_loss": cpu[0], "fp32": {**agreement(*cpu, *eager), "tf32": tf32}}
    unsupported = "skipped" if device == "cpu" else "failed"   # a GPU is expected to run both dtypes
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if label not in autocast:
            row[label] = {"skipped": f"left out (--autocast {','.join(autocast)})"}
            continue
        tf32 = tf32_as_training(label)
        row[label] = {**path_or_reason(lambda: agreement(*cpu, *loss_and_grad(model, xd, yd, dtype)),
                                       f"{label} autocast on {device}", outcome=unsupported), "tf32": tf32}
    start = time.perf_counter()
    tf32 = tf32_as_training("fp32")
    compiled = torch.compile(model, backend=backend)
    row["compiled"] = path_or_reason(lambda: agreement(*eager, *loss_and_grad(compiled, xd, yd)),
                                     f"torch.compile(backend={backend!r})", Exception, "failed")
    row["compiled"].update(backend=backend, compile_s=time.perf_counter() - start, tf32=tf32)
    row["ok"] = verdict(row)
    return row


REHEARSAL = ("a rehearsal on the CPU: the device and the reference are the same CPU, so this shows that the part "
             "runs and writes its numbers, that identical paths compare as identical and that bf16 autocast "
             "moves the loss; it says nothing about a GPU")


def part_correctness(args, out: PartFile) -> None:
    """The device's numbers against the CPU's on one fixed batch of real test images, each path with TF32 as
    training sets it for that precision (off for fp32: fp32 means fp32 on both sides). On the CPU (the dry run)
    this is a rehearsal: both sides are the same CPU."""
    x, y = real_batch(args.data_dir, args.images)
    rehearsal = args.device == "cpu"
    out.update(device=args.device, images=len(y), limits=LIMITS, models={}, rehearsal=rehearsal,
               **({"note": REHEARSAL} if rehearsal else {}))
    budget = Budget(args.budget_s)
    for name in CORRECTNESS_MODELS:
        why = budget.refuses("model")
        if why:
            out.data["models"][name] = {"skipped": why}
            continue
        with budget.item("model"):
            out.data["models"][name] = check_model(name, x, y, args.device, args.compile_backend,
                                                   args.autocast.split(","))
        out.update()
        outcome = "ok" if out.data["models"][name]["ok"] else "NOT OK"
        print(f"correctness {name}: {f'rehearsed ({outcome} on the CPU against itself)' if rehearsal else outcome}",
              flush=True)
    out.update()
