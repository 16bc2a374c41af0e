"""The parts of the GPU proof, one subcommand each; benchmarks/gpu_proof.sh runs them in order.

Every part writes one JSON file (--json) as it goes, rewritten atomically after each model, seed or
run, with "status": "running" until the part ends by itself ("done", "failed" or "skipped"): a part
stopped by its time limit still leaves what it finished. The driver runs each part in its own
process under `timeout` and passes it --budget-s, the seconds it may spend, a little under that
limit; loops stop starting models or seeds that would not fit. `report` reads the files back into
report.html and summary.txt.

    gpu_proof.py env         --device cuda --json OUT/env.json
    gpu_proof.py data        --pack /tmp/pack --data-dir /tmp/cifar --json OUT/data.json
    gpu_proof.py data        --copy-from DIR --images 100 --data-dir WORK/data --json ...       (dry run)
    gpu_proof.py correctness --data-dir D --device cuda [--images 64] [--compile-backend inductor] --json ...
    gpu_proof.py throughput  --data-dir D --device cuda --precision bf16 [--models a,b] [--no-compile] ...
    gpu_proof.py fast94      --data-dir D --device cuda [--seeds 5] [--compile] --budget-s S --json ...
    gpu_proof.py airbench    --airbench CHECKOUT --data-dir D --work DIR --log F --budget-s S --json ...
    gpu_proof.py reproduce   --data-dir D --study DIR --device cuda [--scale 1] --log F --budget-s S --json ...
    gpu_proof.py report      --out OUT

torch is imported inside the parts that train, so that `report` runs wherever Python does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))    # pack_data and time_to_accuracy, the benchmarks beside this file

from cifarlab.report import stats  # noqa: E402  (no torch: cheap)
from cifarlab.run import atomic_write_json, atomic_write_text  # noqa: E402  (no torch: cheap)

START = time.perf_counter()      # budgets count from the start of the process
PART_NAMES = ("env", "data", "correctness", "throughput", "fast94", "airbench", "reproduce")


class PartFile:
    """One part's JSON file: rewritten atomically (temporary file, fsync, rename) at every update."""

    def __init__(self, path: str, part: str):
        self.path = Path(path)
        self.data = {"part": part, "status": "running"}
        self.update()

    def update(self, **fields) -> None:
        self.data.update(fields)
        atomic_write_json(self.path, self.data)


class Budget:
    """The seconds a part may spend: an item (a model, a seed) starts only if the longest item of its
    kind so far would still end in time."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.longest: dict[str, float] = {}

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - START)

    def refuses(self, kind: str) -> str | None:
        """Why the next item of `kind` must not start, or None when it fits."""
        longest = self.longest.get(kind, 0.0)
        if longest <= self.left():
            return None
        return f"not started: {self.left():.0f} s left of {self.seconds:.0f}, the longest {kind} took {longest:.0f} s"

    @contextlib.contextmanager
    def item(self, kind: str):
        start = time.perf_counter()
        yield
        self.longest[kind] = max(self.longest.get(kind, 0.0), time.perf_counter() - start)


def mean_std(values) -> tuple[float | None, float | None]:
    """cifarlab's mean and sample standard deviation (0 for one value) of the values present; None, None for none."""
    values = [v for v in values if v is not None]
    return stats.mean_std(values) if values else (None, None)


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


# ---------------------------------------------------------------- 1. environment

def git(*args: str) -> str | None:
    """git's answer about the tree this file is in, or None (no git, no repository)."""
    try:
        found = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def code_commit() -> str:
    """The commit of the code that runs: the COMMIT file of a snapshot folder (GPU.md), else git's when this
    tree is a checkout itself (a snapshot inside a checkout would otherwise report the checkout's HEAD)."""
    stamp = HERE.parent / "COMMIT"
    if stamp.is_file():
        return stamp.read_text().strip()
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != HERE.parent:
        return "unknown (a snapshot without a COMMIT file)"
    return git("describe", "--always", "--dirty", "--abbrev=12") or "unknown"


def nvidia_smi() -> str:
    """nvidia-smi's report, or "none" where there is no such program (a CPU machine, the dry run)."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    found = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    return (found.stdout + found.stderr).strip() or f"nvidia-smi: exit status {found.returncode}, no output"


def part_env(args, out: PartFile) -> None:
    """What every other figure was measured on: versions, the GPU, nvidia-smi, the code's commit."""
    import platform

    import torch

    from cifarlab.training.device import cuda_bf16_native

    cuda = torch.cuda.is_available()
    out.update(device=args.device, python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               gpu=torch.cuda.get_device_name(0) if cuda else "none",
               capability=list(torch.cuda.get_device_capability(0)) if cuda else None,
               bf16_supported=torch.cuda.is_bf16_supported() if cuda else None,
               bf16_native=cuda_bf16_native() if cuda else None,
               cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               commit=code_commit(), nvidia_smi=nvidia_smi())


# ---------------------------------------------------------------- 2. data

def small_copy(source: Path, dest: Path, images: int) -> None:
    """The first `images` images of every CIFAR file under `source`, in the official layout, into `dest`.

    The dry run trains on this copy: the same files and readers as the full data, at a size two CPU
    cores score in a second (cifar-mini's 1,000 test images take ~20 s under fast94's 6-view TTA)."""
    import pack_data

    for folder, batches, metas in pack_data.LAYOUT.values():
        if not (source / folder).is_dir():
            continue
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in batches:
            batch = pack_data.read_pickle(source / folder / name)
            n = len(batch[b"data"])    # every per-image field (data, labels, filenames) has n entries
            batch = {k: v[:images] if not isinstance(v, (bytes, int)) and len(v) == n else v
                     for k, v in batch.items()}
            pack_data.write_py2_pickle(batch, dest / folder / name)
        for name in metas:
            shutil.copyfile(source / folder / name, dest / folder / name)


def loadable(root: Path) -> dict:
    """What cifarlab loads from `root`, per dataset: its image counts, "absent", or why it failed."""
    from cifarlab.data.sources import DATASETS, load_dataset, missing_files
    from cifarlab.errors import CifarlabError

    found = {}
    for name in ("cifar10", "cifar100"):
        if missing_files(DATASETS[name], root):
            found[name] = "absent"
            continue
        try:
            data = load_dataset(name, root, download_missing=False)
        except (CifarlabError, OSError, ValueError) as e:
            found[name] = f"not loadable: {type(e).__name__}: {e}"
            continue
        found[name] = {"train": len(data.train), "test": len(data.test), "classes": len(data.classes)}
    return found


def part_data(args, out: PartFile) -> None:
    """The data the other parts use: the carried pack unpacked and checked (pack_data.py), or, in the dry
    run, a small copy; then what cifarlab loads from it. CIFAR-10 is required, CIFAR-100 optional."""
    import pack_data

    root, start = Path(args.data_dir), time.perf_counter()
    if args.pack:
        try:
            pack_data.unpack(Path(args.pack), root, min(8, os.cpu_count() or 1))
        except pack_data.PackError as e:
            return out.update(status="failed", reason=f"unpack: {e}")
        out.update(source=f"unpacked from {args.pack}")
    elif args.copy_from:
        small_copy(Path(args.copy_from), root, args.images)
        out.update(source=f"the first {args.images} images of every file of {args.copy_from}")
    else:
        out.update(source="used as found")
    out.update(data_dir=str(root), prepare_s=time.perf_counter() - start, datasets=loadable(root))
    if not isinstance(out.data["datasets"]["cifar10"], dict):
        out.update(status="failed", reason=f"cifarlab cannot load CIFAR-10 from {root}")


# ---------------------------------------------------------------- 3. correctness

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


# ---------------------------------------------------------------- 4. throughput

def default_models() -> list[str]:
    """Every registered model that trains from scratch (resnet18-imagenet needs downloaded weights)."""
    from cifarlab.models import MODELS

    return [name for name, spec in MODELS.items() if spec.pretrained is None]


def measure_throughput(args, name: str, compiled: bool) -> dict:
    """`name` trained for args.epochs epochs of args.limit_train images: the first epoch is cold (start-up,
    cuDNN autotuning, compilation), the last warm. Only the final epoch is scored (eval_every 0)."""
    from cifarlab.config import build_config
    from cifarlab.training.engine import fit

    said = io.StringIO()   # cifarlab's messages, to see whether --compile fell back to eager
    with tempfile.TemporaryDirectory() as run, contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        cfg = build_config({"model": name, "dataset": "cifar10", "data_dir": args.data_dir, "device": args.device,
                            "precision": args.precision, "channels_last": True, "compile": compiled,
                            "epochs": args.epochs, "limit_train": args.limit_train, "batch_size": args.batch_size,
                            "augment": ["crop", "flip"], "eval_every": 0, "out": run, "tensorboard": False})
        summary = fit(cfg)
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {"warm_images_per_s": rows[-1]["images_per_s"], "warm_epoch_s": rows[-1]["train_time_s"],
            "cold_epoch_s": rows[0]["train_time_s"], "cold_images_per_s": rows[0]["images_per_s"],
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


# ---------------------------------------------------------------- 5. fast94

def fast94_summary(runs: list[dict]) -> dict:
    """Mean ± std over the seeds so far. Times are over the warm seeds (1, 2, ...): seed 0 also pays the
    process's CUDA start-up and cuDNN autotuning. cifarlab's clocks read perf_counter after a device sync
    at each epoch end, so the training-only time is the GPU's time, not the queue's."""
    warm = [r for r in runs if r["seed"] > 0]
    reached = [r for r in runs if r["time_to_target_s"] is not None]
    acc, train_only = mean_std(r["final_test_acc"] for r in runs), mean_std(r["train_only_time_s"] for r in warm)
    return {"seeds_done": len(runs), "reached": f"{len(reached)}/{len(runs)}",
            "final_test_acc_mean": acc[0], "final_test_acc_std": acc[1],
            "final_test_acc_median": statistics.median(r["final_test_acc"] for r in runs), "warm_seeds": len(warm),
            "warm_train_only_time_mean_s": train_only[0], "warm_train_only_time_std_s": train_only[1],
            "warm_train_time_mean_s": mean_std(r["train_time_s"] for r in warm)[0],
            "warm_wall_time_mean_s": mean_std(r["wall_time_s"] for r in warm)[0],
            "train_only_to_target_mean_s": mean_std(r["train_only_to_target_s"] for r in reached)[0]}


def part_fast94(args, out: PartFile) -> None:
    """fast94's time to 94% on CIFAR-10 (time_to_accuracy.one_run), seeds 0, 1, ... in one process."""
    import time_to_accuracy

    from cifarlab.config import load_recipe

    settings = argparse.Namespace(model="fast94", dataset="cifar10", recipe="fast94", target=94.0,
                                  data_dir=args.data_dir, device=args.device)
    extra = {k: v for k, v in (("epochs", args.epochs), ("limit_train", args.limit_train)) if v is not None}
    extra.update({"compile": True} if args.compile else {})
    out.update(device=args.device, recipe="fast94", target=94.0, settings=extra, compiled=args.compile,
               epochs=extra.get("epochs", load_recipe("fast94")["epochs"]), runs=[])
    budget = Budget(args.budget_s)
    for seed in range(args.seeds):
        why = budget.refuses("seed")
        if why:
            out.update(stopped=f"seed {seed} {why}")
            break
        with budget.item("seed"):
            run = time_to_accuracy.one_run(settings, seed, dict(extra))
        out.data["runs"].append(run)
        out.update(**fast94_summary(out.data["runs"]))
        hit = run["time_to_target_s"]
        print(f"fast94 seed {seed}: final {run['final_test_acc']:.2f}%, 94% "
              f"{'not reached' if hit is None else f'after {hit:.2f} s'}, training {run['train_only_time_s']:.2f} s, "
              f"wall {run['wall_time_s']:.1f} s", flush=True)


# ---------------------------------------------------------------- 6. the airbench anchor

AIRBENCH_SCRIPTS = ("airbench94.py", "airbench94_muon.py")   # the first found runs: uncompiled first


def run_with_deadline(cmd: list[str], log: Path, seconds: float, grace: float, cwd: Path | None = None) -> dict:
    """Run `cmd`, its output appended to `log`; after `seconds`, SIGTERM (cifarlab saves a checkpoint and
    exits), and SIGKILL if it is still there `grace` seconds later."""
    start, stopped = time.perf_counter(), False
    with open(log, "ab") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(seconds, 1.0))
        except subprocess.TimeoutExpired:
            stopped = True
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"command": " ".join(cmd), "rc": proc.returncode, "stopped_at_deadline": stopped,
            "seconds": time.perf_counter() - start}


def airbench_data(data_dir: str, work: Path) -> None:
    """CIFAR-10 where the airbench scripts look first: WORK/cifar10/{train,test}.pt as they cache it
    (uint8 N x 32 x 32 x 3 images, labels, class names). Without these files they call torchvision's
    CIFAR10(download=True), which needs the network or md5-identical official archives."""
    import torch

    from cifarlab.data.sources import load_dataset

    data = load_dataset("cifar10", data_dir, download_missing=False)
    folder = work / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in ((data.train, "train.pt"), (data.test, "test.pt")):
        torch.save({"images": split.images.permute(0, 2, 3, 1).contiguous(), "labels": split.labels,
                    "classes": list(data.classes)}, folder / name)


def parse_airbench(text: str) -> list[dict]:
    """The runs in airbench's printed table (`|  run  |  epoch  | ... |  tta_val_acc  | ...time... |`): each
    run's "eval" row holds its accuracy and its time; the "warmup" run (dummy labels) is left out."""
    header, runs, current = None, [], None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells if {"run", "epoch", "tta_val_acc"} <= set(cells) else None
            continue
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        current = row["run"] or current
        clock = next((k for k in header if "time" in k), None)
        if row["epoch"] != "eval" or current == "warmup" or clock is None:
            continue
        with contextlib.suppress(ValueError):
            runs.append({"run": current, "tta_val_acc": float(row["tta_val_acc"]), "time_s": float(row[clock])})
    return runs


def part_airbench(args, out: PartFile) -> None:
    """The public anchor: KellerJordan/cifar10-airbench's airbench94 script, unchanged, on the same GPU
    and data, until the budget is spent (airbench94.py runs 25 runs, airbench94_muon.py a compile warm-up
    and 200 runs); the runs it finished are read from its output."""
    names = [args.script] if args.script else list(AIRBENCH_SCRIPTS)
    script = next((Path(args.airbench) / n for n in names if (Path(args.airbench) / n).is_file()), None)
    if script is None:
        return out.update(status="failed", reason=f"none of {', '.join(names)} in {args.airbench}")
    work, log = Path(args.work), Path(args.log)
    airbench_data(args.data_dir, work)
    out.update(script=str(script.resolve()), work=str(work), log=str(log))
    budget = Budget(args.budget_s)
    process = run_with_deadline([sys.executable, "-u", str(script.resolve())], log, budget.left() - args.grace_s,
                                args.grace_s, cwd=work)
    text = log.read_text(errors="replace")
    runs = parse_airbench(text)
    acc, clock = mean_std(100 * r["tta_val_acc"] for r in runs), mean_std(r["time_s"] for r in runs)
    out.update(process=process, runs=runs, runs_done=len(runs), tta_acc_mean=acc[0], tta_acc_std=acc[1],
               time_mean_s=clock[0], time_std_s=clock[1], log_tail=None if runs else tail(text))
    if process["rc"] != 0 and not process["stopped_at_deadline"]:
        out.update(status="failed", reason=f"{script.name} exited with status {process['rc']}", log_tail=tail(text))


# ---------------------------------------------------------------- 7. cifarlab reproduce --tuned

def study_runs(study: Path) -> list[dict]:
    """The study's run folders in the order they started: finished ones with their figures (and the
    article's), unfinished ones with the epochs they have done (the next call resumes them)."""
    from cifarlab.study.reproduce import ARTICLE_RUNS

    article = {a.key: a for a in ARTICLE_RUNS}
    rows = []
    for config_path in sorted(study.glob("*/config.json"), key=lambda p: p.stat().st_mtime):
        folder, config = config_path.parent, json.loads(config_path.read_text())
        paper = article.get(folder.name.removesuffix("-tuned"))
        row = {"key": folder.name, "recipe": config.get("recipe"), "epochs": config.get("epochs"),
               "article_test_acc": paper.test_acc if paper else None, "article_time_s": paper.time_s if paper else None}
        if (folder / "summary.json").is_file():
            s = json.loads((folder / "summary.json").read_text())
            row.update(finished=True, final_test_acc=s["final_test_acc"], best_test_acc=s["best_test_acc"],
                       train_time_s=s["train_time_s"], images_per_s=s["images_per_s"])
        else:
            metrics = folder / "metrics.jsonl"
            row.update(finished=False, epochs_done=len(metrics.read_text().splitlines()) if metrics.is_file() else 0)
        rows.append(row)
    return rows


def part_reproduce(args, out: PartFile) -> None:
    """`cifarlab reproduce --tuned` until the budget is spent, in its own order (each article run, then its
    tuned run: every finished pair compares the two recipes at the article's budget on one GPU). The study
    folder outlives the call: the next call on the same machine reuses finished runs and resumes the
    stopped one from the checkpoint SIGTERM made it write. When the study ends, its reproduce.json and
    report.html are copied beside this part's JSON."""
    from cifarlab.data.sources import DATASETS, missing_files

    root, study = Path(args.data_dir), Path(args.study)
    absent = [d for d in ("cifar10", "cifar100") if missing_files(DATASETS[d], root)]
    if absent:
        return out.update(status="skipped", reason=f"{' and '.join(absent)} not in {root}: the study needs both "
                          "(pack them with pack_data.py pack --datasets cifar10,cifar100)")
    cmd = [sys.executable, "-m", "cifarlab", "reproduce", "--tuned", "--data-dir", str(root), "--scale",
           str(args.scale), "--out", str(study), "--device", args.device, "--no-download"]
    out.update(study=str(study), scale=args.scale, log=args.log, runs_before=len(study_runs(study)))
    budget = Budget(args.budget_s)
    process = run_with_deadline(cmd, Path(args.log), budget.left() - args.grace_s, args.grace_s)
    runs = study_runs(study)
    out.update(process=process, runs=runs, finished=sum(r["finished"] for r in runs))
    here = Path(args.json).parent
    if process["rc"] == 0:
        shutil.copyfile(study / "reproduce.json", here / "reproduce-study.json")
        shutil.copyfile(study / "report.html", here / "reproduce-report.html")
    elif not process["stopped_at_deadline"]:
        out.update(status="failed", reason=f"cifarlab reproduce exited with status {process['rc']}",
                   log_tail=tail(Path(args.log).read_text(errors="replace")))


# ---------------------------------------------------------------- 8. report

def fmt(value, spec: str = ".2f") -> str:
    """A number as text ("-" for none); anything else (a reason, "absent") as it is."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_statuses(path: Path) -> dict:
    """parts.tsv, the driver's line per part (name, state, exit status, seconds, limit), by part name."""
    rows = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, state, rc, seconds, limit = (line.split("\t") + [""] * 5)[:5]
        rows[name] = {"state": state, "rc": rc, "seconds": seconds, "limit": limit}
    return rows


def status_line(driver: dict | None, data: dict | None) -> str:
    """What happened to a part, from the driver's record and the part's own JSON."""
    if driver is None and data is None:
        return "not run"
    if data is not None and data.get("status") == "skipped":
        return f"skipped: {data.get('reason', '')}"
    if driver is None:
        return f"{data['status']} (run without the driver)"
    took = f"after {driver['seconds']} s (limit {driver['limit']} s)"
    if driver["state"] == "timed out":
        return f"timed out {took}; what it finished is below"
    if driver["state"] == "failed" or (data or {}).get("status") == "failed":
        why = (data or {}).get("reason") or (data or {}).get("error", "")[-300:] or "it wrote no JSON"
        return f"failed (exit status {driver['rc']}) {took}: {why}"
    return f"done in {driver['seconds']} s (limit {driver['limit']} s)"


def render_env(section, d: dict) -> None:
    section.table(["GPU", "capability", "torch", "CUDA", "cuDNN", "Python", "CPU", "cores", "commit"],
                  [[d.get(k) for k in ("gpu", "capability", "torch", "cuda", "cudnn", "python", "cpu", "cpu_count",
                                       "commit")]])
    section.pre(d.get("nvidia_smi") or "none")


def render_data(section, d: dict) -> None:
    section.text(f"{d.get('data_dir')}: {d.get('source')} ({fmt(d.get('prepare_s'), '.1f')} s).")
    rows = [[name, *(fmt(v.get(k), ",") for k in ("train", "test", "classes"))] if isinstance(v, dict)
            else [name, v, "", ""] for name, v in d.get("datasets", {}).items()]
    section.table(["dataset", "train images", "test images", "classes"], rows)


def correctness_cell(path: dict) -> str:
    if "loss" in path:
        return f"{path['loss']:.6f} ({path['loss_rel_diff']:.1e})"
    return "skipped" if "skipped" in path else "failed"


def render_correctness(section, d: dict) -> None:
    if d.get("rehearsal"):
        section.text(f"Rehearsal: {d.get('note', REHEARSAL)}.")
    section.text(f"{d.get('images')} real CIFAR-10 test images, eval mode, device {d.get('device')}, TF32 as "
                 "training sets it (off for fp32 and compiled, on for bf16 and fp16). Each cell: the loss and, in "
                 "brackets, its relative difference to the CPU's fp32 loss (compiled: to eager fp32 on the device). "
                 f"Limits: {d.get('limits')}.")
    rows, notes = [], []
    for name, r in d.get("models", {}).items():
        if "skipped" in r:
            notes.append(f"{name}: {r['skipped']}")
            continue
        rows.append([name, fmt(r["cpu_loss"], ".6f"), *(correctness_cell(r[k]) for k in ("fp32", "bf16", "fp16",
                                                                                          "compiled")),
                     fmt(r["fp32"]["grad_cos"], ".8f"), fmt(r["fp32"]["grad_rel_err"], ".1e"),
                     fmt(r["compiled"].get("compile_s"), ".1f"),
                     ("rehearsed: " if d.get("rehearsal") else "") + ("ok" if r["ok"] else "NOT OK")])
        notes += [f"{name} {k}: {r[k][why]}" for k in ("bf16", "fp16", "compiled") for why in ("skipped", "failed")
                  if why in r[k]]
    section.table(["model", "CPU fp32", "device fp32", "bf16 autocast", "fp16 autocast", "compiled",
                   "fp32 grad cosine", "fp32 grad rel. error", "compile s", "verdict"], rows)
    for note in notes:
        section.text(note)


def throughput_cells(r: dict | None) -> list[str]:
    if r is None:
        return ["-", "-"]
    if "skipped" in r or "error" in r:
        return ["skipped" if "skipped" in r else "error", (r.get("skipped") or r["error"])[:120]]
    fallback = " (fell back to eager)" if r.get("fell_back_to_eager") else ""
    return [fmt(r["warm_images_per_s"], ",.0f") + fallback, fmt(r["cold_epoch_s"], ".2f")]


def render_throughput(section, d: dict) -> None:
    section.text(f"{d.get('epochs')} epochs of {fmt(d.get('images'), ',')} training images, batch "
                 f"{d.get('batch_size')}, crop+flip, {d.get('precision')}, channels_last, device {d.get('device')}. "
                 "Warm: the last epoch's training images/s. Cold: the first epoch's seconds (cuDNN autotuning, "
                 "compilation; the process's first model also pays CUDA's start-up).")
    models = d.get("models", {})
    rows = [[name, *throughput_cells(models.get(name)), *throughput_cells(models.get(f"{name} compiled"))]
            for name in models if not name.endswith(" compiled")]
    section.table(["model", "eager img/s (warm)", "eager first epoch s", "compiled img/s (warm)",
                   "compiled first epoch s"], rows)


def render_fast94(section, d: dict) -> None:
    section.text(f"Recipe fast94 {d.get('settings') or ''}, {d.get('epochs')} epochs, device {d.get('device')}, "
                 f"{'compiled' if d.get('compiled') else 'eager'}: {d.get('seeds_done', 0)} seed(s); final test "
                 f"accuracy {fmt(d.get('final_test_acc_mean'))} ± {fmt(d.get('final_test_acc_std'))}% (median "
                 f"{fmt(d.get('final_test_acc_median'))}%), 94% reached in {d.get('reached', '0/0')}. Warm seeds "
                 f"({d.get('warm_seeds', 0)}): training only {fmt(d.get('warm_train_only_time_mean_s'))} ± "
                 f"{fmt(d.get('warm_train_only_time_std_s'))} s, with evaluation "
                 f"{fmt(d.get('warm_train_time_mean_s'))} s, wall {fmt(d.get('warm_wall_time_mean_s'))} s. "
                 + (d.get("stopped") or ""))
    rows = [[r["seed"], fmt(r["final_test_acc"]), fmt(r["time_to_target_s"]) if r["time_to_target_s"] is not None
             else "not reached", fmt(r["train_only_time_s"]), fmt(r["train_time_s"]), fmt(r["wall_time_s"], ".1f"),
             ", ".join(f"epoch {c['epoch']}: {c['test_acc']:.2f}%" for c in r["curve"])] for r in d.get("runs", [])]
    section.table(["seed", "final test %", "time to 94% s", "training only s", "with evaluation s", "wall s",
                   "scored epochs"], rows)


def render_airbench(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"{d.get('script')}: {d.get('runs_done', 0)} run(s)"
                 + (" before its deadline stopped it" if process.get("stopped_at_deadline") else "")
                 + f"; TTA test accuracy {fmt(d.get('tta_acc_mean'))} ± {fmt(d.get('tta_acc_std'))}%, "
                 f"{fmt(d.get('time_mean_s'), '.3f')} ± {fmt(d.get('time_std_s'), '.3f')} s per run (airbench's "
                 "own CUDA-event clock: training and the final TTA evaluation). Output: airbench.log.")
    section.table(["run", "TTA test acc %", "time s"],
                  [[r["run"], fmt(100 * r["tta_val_acc"]), fmt(r["time_s"], ".3f")] for r in d.get("runs", [])])
    if d.get("log_tail"):
        section.pre(d["log_tail"])


def render_reproduce(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"cifarlab reproduce --tuned --scale {d.get('scale')} into {d.get('study')}: "
                 f"{d.get('finished', 0)} run(s) finished ({d.get('runs_before', 0)} found from earlier calls)"
                 + ("; stopped at its deadline, the next call on this machine continues" if
                    process.get("stopped_at_deadline") else "") + ". Output: reproduce.log.")
    rows = [[r["key"], r["recipe"], r["epochs"], fmt(r.get("final_test_acc")), fmt(r["article_test_acc"]),
             fmt(r.get("train_time_s"), ".0f"), fmt(r["article_time_s"], ".0f"),
             "finished" if r["finished"] else f"{r['epochs_done']} of {r['epochs']} epochs"] for r in d.get("runs", [])]
    section.table(["run", "recipe", "epochs", "test % (ours)", "test % (article)", "time s (ours)",
                   "time s (article)", "state"], rows)


RENDER = {"env": render_env, "data": render_data, "correctness": render_correctness,
          "throughput": render_throughput, "fast94": render_fast94, "airbench": render_airbench,
          "reproduce": render_reproduce}
TITLES = {"env": "1. env: the machine", "data": "2. data", "correctness": "3. correctness: the device against the CPU",
          "throughput": "4. throughput: training images/s of every model", "fast94": "5. fast94: time to 94%",
          "airbench": "6. airbench: the public anchor", "reproduce": "7. reproduce: the article's study, tuned beside"}


def plain_text(report) -> str:
    """summary.txt: the report's sections as plain text, tables aligned."""
    from cifarlab.report.document import text_table

    lines = [report.title, "=" * len(report.title)]
    for section in report.sections:
        lines += ["", section.title, "-" * len(section.title)]
        lines += [text_table(b[1], b[2]).rstrip() if b[0] == "table" else b[1] for b in section.blocks]
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> None:
    """OUT/report.html (self-contained: plain tables, inline CSS, nothing fetched) and OUT/summary.txt,
    from every part's JSON and the driver's parts.tsv; a part without a file says "not run"."""
    from cifarlab.report.document import Report

    statuses, env = read_statuses(out / "parts.tsv"), load_json(out / "env.json") or {}
    report = Report(f"cifarlab GPU proof: {env.get('gpu', 'unknown device')}, commit {env.get('commit', 'unknown')}")
    overview = report.section("Overview")
    outcomes = []
    for name in PART_NAMES:
        data = load_json(out / f"{name}.json")
        outcomes.append([name, status_line(statuses.get(name), data)])
        section = report.section(TITLES[name]).text(outcomes[-1][1])
        if data and data.get("status") != "skipped":
            try:
                RENDER[name](section, data)
            except (KeyError, TypeError, ValueError) as e:   # a file from another version: say so, show the rest
                section.text(f"(this part's JSON cannot be shown: {type(e).__name__}: {e})")
    overview.table(["part", "outcome"], outcomes)
    atomic_write_text(out / "report.html", report.html())
    atomic_write_text(out / "summary.txt", plain_text(report))


# ---------------------------------------------------------------- command line

PARTS = {"env": part_env, "data": part_data, "correctness": part_correctness, "throughput": part_throughput,
         "fast94": part_fast94, "airbench": part_airbench, "reproduce": part_reproduce}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", required=True, help="this part's results file")
    common.add_argument("--budget-s", type=float, default=math.inf, help="seconds the part may spend")
    common.add_argument("--device", default="cuda", help="cuda, or cpu for the dry run")
    data = argparse.ArgumentParser(add_help=False, parents=[common])
    data.add_argument("--data-dir", required=True, help="CIFAR root in the official layout")
    sub.add_parser("env", parents=[common], help=part_env.__doc__)
    p = sub.add_parser("data", parents=[data], help=part_data.__doc__)
    p.add_argument("--pack", help="chunk folders to unpack into --data-dir")
    p.add_argument("--copy-from", help="a CIFAR root to copy a few images of every file from (dry run)")
    p.add_argument("--images", type=int, default=100, help="with --copy-from: images per file (default 100)")
    p = sub.add_parser("correctness", parents=[data], help=part_correctness.__doc__)
    p.add_argument("--images", type=int, default=64, help="test images in the batch (default 64)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (dry run: eager)")
    p.add_argument("--autocast", default="bf16,fp16", help="autocast dtypes to check (default bf16,fp16)")
    p = sub.add_parser("throughput", parents=[data], help=part_throughput.__doc__)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--models", default="", help="comma list (default: every model that needs no download)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager only")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p = sub.add_parser("fast94", parents=[data], help=part_fast94.__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default eager)")
    p.add_argument("--epochs", type=int, help="instead of the recipe's 10 (dry run)")
    p.add_argument("--limit-train", type=int, help="train on N images (dry run)")
    p = sub.add_parser("airbench", parents=[data], help=part_airbench.__doc__)
    p.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--script", help=f"its file to run (default: the first of {', '.join(AIRBENCH_SCRIPTS)})")
    p.add_argument("--work", required=True, help="its working folder (cifar10/*.pt are written there)")
    p.add_argument("--log", required=True)
    p.add_argument("--grace-s", type=float, default=10.0, help="from SIGTERM to SIGKILL")
    p = sub.add_parser("reproduce", parents=[data], help=part_reproduce.__doc__)
    p.add_argument("--study", required=True, help="the study folder (kept between calls)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--log", required=True)
    p.add_argument("--grace-s", type=float, default=20.0, help="from SIGTERM (checkpoint, exit) to SIGKILL")
    p = sub.add_parser("report", help=write_report.__doc__)
    p.add_argument("--out", required=True, help="the results folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.part == "report":
        write_report(Path(args.out))
        return 0
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
