"""The public anchors on a CPU: KellerJordan/cifar10-airbench's legacy airbench94 and airbench94_muon, run
from a checkout given by path, with only the edits a CPU needs.

    python benchmarks/cpu_anchors.py --airbench CHECKOUT --data-dir DIR [--scripts airbench94,airbench94_muon]
        [--runs N] [--epochs E] [--precision auto|bf16|fp32] [--threads N] [--malloc system|reuse] [--keep-warmup]
        [--work DIR] [--dry-run]

CHECKOUT is a checkout of the airbench repository (legacy/airbench94.py and airbench94_muon.py; a flat folder
holding airbench94.py is taken too). Nothing of it is copied into cifarlab: each script is read at run time,
edited in a temporary copy under --work and run there, where its data is written as it reads it
(cifar10/{train,test}.pt, from DIR in the official python layout). The edits, each listed with its count, are:
  - data and model on the CPU (no .cuda(), map_location cpu);
  - no torch.compile (the model's and Newton-Schulz's); airbench94_muon's warm-up run, whose only purpose is
    to warm up the compiled model, is dropped too (--keep-warmup keeps it; it is never timed or counted);
  - fp32 weights and images, with the model's forward under bf16 autocast where the CPU runs bf16 natively
    (cifarlab's own detection, as --precision auto does); the loss sees the forward's logits, as upstream's
    fp16 loss does;
  - CUDA events and synchronize replaced by wall-clock timers (a CPU has finished each op by the next line).
--malloc reuse runs a script with what cifarlab's CPU training does during a run (freed memory kept for reuse),
set through glibc's tunables in its environment (GLIBC_TUNABLES), not by an edit. The comparison runs the anchors
without it; with it, a second pass shows how much of a gap is that setting rather than the recipe.
Each edit must find its pattern exactly as often as the upstream script has it; otherwise the script is refused in
one line (exit 2) rather than run half-edited. --runs and --epochs are edits too (the scripts take no arguments).

Times are airbench's own clock (whitening init + training + the final TTA evaluation; not the per-epoch
evaluations). Run it on an otherwise idle machine: the figures are only as quiet as the CPU was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from math import ceil
from pathlib import Path

from campaign import machine
from gpu_airbench import airbench_data, parse_airbench

from cifarlab.errors import UsageError

# Where each script lives in a checkout: the repository's layout first, then a flat folder of scripts.
SCRIPTS = {"airbench94": ("legacy/airbench94.py", "airbench94.py"), "airbench94_muon": ("airbench94_muon.py",)}
# The scripts' training batch (their loaders drop the last partial batch): fewer images train no step at all.
BATCH = {"airbench94": 1024, "airbench94_muon": 2000}
UPSTREAM_RUNS = {"airbench94": 25, "airbench94_muon": 200}
UPSTREAM_EPOCHS = {"airbench94": "9.9", "airbench94_muon": "8"}

# Put in after the imports: the timers, the no-op synchronize and the CPU model (fp32 weights, bf16 autocast).
SHIM = '''
# --- cpu_anchors' additions: wall-clock timers, fp32 weights with bf16 autocast where native ---
import time as _cpu_anchors_time
_CPU_ANCHORS_BF16 = {bf16}


class _WallEvent:
    def record(self):
        self.t = _cpu_anchors_time.perf_counter()

    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)


def _no_sync():
    pass


def _cpu_anchors_model(net):
    net = net.float()
    eager = net.forward

    def forward(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_CPU_ANCHORS_BF16):
            return eager(*args, **kwargs)
    net.forward = forward
    return net
# --- end of cpu_anchors' additions ---
'''
# With --malloc reuse: what cifarlab's CPU training does during a run (src/cifarlab/training/cpu_memory.py), given
# to the anchor through glibc's tunables in its environment, so that its script needs no edit for it.
REUSE_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


@dataclass(frozen=True)
class Edit:
    what: str
    old: str
    new: str
    count: int       # how often upstream's script holds `old`: any other count refuses the script


def edits_for(name: str, bf16: bool, runs: int | None, epochs: str | None, keep_warmup: bool) -> list[Edit]:
    """The edits of one script, in the order they are applied."""
    head = Edit("cpu helpers after the imports", "import torch.nn.functional as F\n",
                "import torch.nn.functional as F\n" + SHIM.format(bf16=bf16), 1)
    timers = [Edit("wall-clock timers for CUDA events", "torch.cuda.Event(enable_timing=True)", "_WallEvent()", 2)]
    if name == "airbench94":
        edits = [head, Edit("data on the cpu", "map_location=torch.device(gpu)", 'map_location=torch.device("cpu")', 1),
                 Edit("fp32 images", "self.images.half() / 255", "self.images.float() / 255", 1),
                 Edit("fp32 weights, bf16 autocast, no .cuda()", "net = net.half().cuda()",
                      "net = _cpu_anchors_model(net)", 1), *timers,
                 Edit("no cuda synchronize", "torch.cuda.synchronize()", "_no_sync()", 3)]
        runs_old, epochs_old = "for run in range(25)]", "'train_epochs': 9.9,"
        epochs_new = f"'train_epochs': {epochs},"
    else:
        edits = [head, Edit("no compile (Newton-Schulz)", "@torch.compile\n", "", 1),
                 Edit("no compile (model)", '    model.compile(mode="max-autotune")\n', "", 1),
                 Edit("data on the cpu", 'map_location=torch.device("cuda")', 'map_location=torch.device("cpu")', 1),
                 Edit("fp32 images", "self.images.half() / 255", "self.images.float() / 255", 1),
                 Edit("fp32 weights, bf16 autocast, no .cuda()", "model = CifarNet().cuda()",
                      "model = _cpu_anchors_model(CifarNet())", 1), *timers,
                 Edit("no cuda synchronize", "torch.cuda.synchronize()", "_no_sync()", 1)]
        if not keep_warmup:
            edits.append(Edit("no compile warm-up run", '    main("warmup", model)\n', "", 1))
        runs_old, epochs_old = "for run in range(200)]", "total_train_steps = ceil(8 * len(train_loader))"
        epochs_new = f"total_train_steps = ceil({epochs} * len(train_loader))"
    if runs is not None:
        edits.append(Edit(f"runs: {runs}", runs_old, f"for run in range({runs})]", 1))
    if epochs is not None:
        edits.append(Edit(f"epochs: {epochs}", epochs_old, epochs_new, 1))
    return edits


def apply_edits(text: str, edits: list[Edit], script: str) -> str:
    """`text` with every edit applied; a pattern found a number of times other than the upstream one refuses."""
    for edit in edits:
        found = text.count(edit.old)
        if found != edit.count:
            raise UsageError(f"{script}: edit '{edit.what}' expects {edit.count} x {edit.old.strip()!r} but the "
                             f"script has {found}; has the upstream script changed? (nothing was run)")
        text = text.replace(edit.old, edit.new)
    return text


def find_script(checkout: Path, name: str) -> Path:
    for relative in SCRIPTS[name]:
        if (checkout / relative).is_file():
            return checkout / relative
    raise UsageError(f"--airbench {checkout}: no {' or '.join(SCRIPTS[name])} there (a cifar10-airbench checkout?)")


def epoch_times(text: str) -> dict[str, list[float]]:
    """Each run's clock at the end of each numbered epoch (airbench's table: whitening init + training so far)."""
    header, current, clocks = None, None, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if header is None:
            header = cells if {"run", "epoch", "tta_val_acc"} <= set(cells) else None
        elif len(cells) == len(header):
            row = dict(zip(header, cells))
            current = row["run"] or current
            clock = next(k for k in header if "time" in k)
            if row["epoch"].isdigit() and current != "warmup":
                clocks.setdefault(current, []).append(float(row[clock]))
    return clocks


def run_edited(source: str, folder: Path, name: str, threads: int | None, malloc: str) -> tuple[int, str, float]:
    """Run the edited script in `folder`, echoing its table: (exit status, its output, wall seconds)."""
    script = folder / f"{name}.py"
    script.write_text(source)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    if malloc == "reuse":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), REUSE_TUNABLES]))
    env.pop("PYTHONPATH", None)          # the anchor imports torch and torchvision, nothing of cifarlab
    start, lines = time.perf_counter(), []
    with subprocess.Popen([sys.executable, "-u", script.name], cwd=folder, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        for line in process.stdout:
            print(f"  {name} | {line}", end="", flush=True)
            lines.append(line)
    text = "".join(lines)
    (folder / f"{name}.log").write_text(text)
    return process.returncode, text, time.perf_counter() - start


def summarise(name: str, text: str, epochs: float) -> dict:
    """The runs in the script's table, with their mean and spread; per epoch: the clock at the last numbered
    epoch (whitening init + training) over the epochs trained."""
    runs, clocks = parse_airbench(text), epoch_times(text)
    for run in runs:
        run["epoch_clock_s"] = clocks.get(run["run"], [])
        run["s_per_epoch"] = run["epoch_clock_s"][-1] / epochs if run["epoch_clock_s"] else None
    accs, times = [100 * r["tta_val_acc"] for r in runs], [r["time_s"] for r in runs]
    spread = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
    return {"runs": runs, "acc_mean": statistics.fmean(accs) if runs else None, "acc_std": spread(accs),
            "time_mean_s": statistics.fmean(times) if runs else None, "time_std_s": spread(times)}


def anchor(args, name: str, work: Path, bf16: bool) -> dict:
    """Edit one script, run it unless --dry-run, and print what it measured."""
    path = find_script(Path(args.airbench), name)
    source = path.read_text()
    edits = edits_for(name, bf16, args.runs, args.epochs, args.keep_warmup)
    edited = apply_edits(source, edits, str(path))
    print(f"{name}: {path} (sha256 {hashlib.sha256(source.encode()).hexdigest()[:12]}), {len(edits)} edits:")
    for edit in edits:
        print(f"  {edit.count} x {edit.what}")
    result = {"path": str(path.resolve()), "sha256": hashlib.sha256(source.encode()).hexdigest(),
              "edits": [{"what": e.what, "count": e.count} for e in edits]}
    if args.dry_run:
        (work / f"{name}.py").write_text(edited)
        return {**result, "edited_copy": str(work / f"{name}.py")}
    rc, text, wall = run_edited(edited, work, name, args.threads, args.malloc)
    epochs = float(args.epochs or UPSTREAM_EPOCHS[name])
    result.update(rc=rc, wall_s=round(wall, 1), log=str(work / f"{name}.log"), **summarise(name, text, epochs))
    for run in result["runs"]:
        per_epoch = f", {run['s_per_epoch']:.1f} s per epoch" if run["s_per_epoch"] else ""
        print(f"{name} run {run['run']}: TTA {100 * run['tta_val_acc']:.2f}%, {run['time_s']:.1f} s{per_epoch}")
    if result["runs"]:
        print(f"{name}: {len(result['runs'])} run(s), TTA {result['acc_mean']:.2f} +- {result['acc_std']:.2f}%, "
              f"{result['time_mean_s']:.1f} +- {result['time_std_s']:.1f} s (airbench's clock: whitening init, "
              f"training, final TTA evaluation)")
    return result


def check_data(work: Path, names: list[str], epochs: float) -> None:
    import torch

    images = len(torch.load(work / "cifar10" / "train.pt", weights_only=True)["labels"])
    for name in names:
        if images < BATCH[name]:
            raise UsageError(f"--data-dir: {images} training images, fewer than {name}'s batch of {BATCH[name]}: "
                             f"it would train no step (give a larger data set, e.g. cifar-mini)")
    if "airbench94" in names and (images // BATCH["airbench94"]) * epochs < 5:
        # Its lookahead copies its average back at the last step, and the first average is taken at step 5.
        print(f"note: airbench94 trains {ceil((images // BATCH['airbench94']) * epochs)} step(s), fewer than 5: "
              f"its lookahead ends at the initial weights, so its accuracy means nothing (give more --epochs)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--data-dir", help="CIFAR-10 in the official python layout (not needed with --dry-run)")
    p.add_argument("--scripts", default="airbench94,airbench94_muon", help="which anchors, comma-separated")
    p.add_argument("--runs", type=int, help="runs per script (upstream: airbench94 25, airbench94_muon 200)")
    p.add_argument("--epochs", help="epochs per run, for a quick rehearsal (upstream: 9.9 and 8)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="autocast of the forward: auto is bf16 where the CPU runs it natively, else fp32")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the scripts (default: torch's own choice)")
    p.add_argument("--malloc", choices=("system", "reuse"), default="system",
                   help="system: the anchors as they are (the comparison's setting); reuse: with what cifarlab's CPU "
                        "training does to the allocator (glibc's tunables), to see how much of a gap is that")
    p.add_argument("--keep-warmup", action="store_true", help="keep airbench94_muon's untimed compile warm-up run")
    p.add_argument("--work", help="folder for the data, edited copies and logs (default: a new temporary one)")
    p.add_argument("--dry-run", action="store_true", help="apply and list the edits, write the copies, run nothing")
    return p.parse_args(argv)


def check_args(args) -> list[str]:
    names = [n for n in args.scripts.split(",") if n]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown or not names:
        raise UsageError(f"--scripts {args.scripts}: unknown {', '.join(unknown) or 'empty'}; "
                         f"choose from {', '.join(SCRIPTS)}")
    if args.runs is not None and args.runs < 1:
        raise UsageError(f"--runs {args.runs}: give at least 1")
    if args.epochs is not None:
        try:
            ok = float(args.epochs) > 0 and repr(float(args.epochs)) != "inf"
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--epochs {args.epochs}: give a positive number, e.g. 1 or 0.5")
    if not args.dry_run and not args.data_dir:
        raise UsageError("--data-dir: required unless --dry-run (CIFAR-10 in the official python layout)")
    if not Path(args.airbench).is_dir():
        raise UsageError(f"--airbench {args.airbench}: no such folder")
    for name in names:               # before any folder or data is written
        find_script(Path(args.airbench), name)
    return names


def main(argv=None) -> int:
    import tempfile

    import torch

    from cifarlab.training.device import resolve_precision

    args = parse_args(argv)
    names = check_args(args)
    precision = args.precision if args.precision != "auto" else resolve_precision("auto", torch.device("cpu"))
    work = Path(args.work or tempfile.mkdtemp(prefix="cpu_anchors-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        airbench_data(args.data_dir, work)
        check_data(work, names, float(args.epochs or UPSTREAM_EPOCHS['airbench94']))
    cpu = machine(device="cpu")
    print(f"cpu_anchors: {', '.join(names)} on {cpu}, precision {precision}, "
          f"threads {args.threads or torch.get_num_threads()}, malloc {args.malloc}, work {work}")
    results = {name: anchor(args, name, work, precision == "bf16") for name in names}
    timed = {n: r["time_mean_s"] for n, r in results.items() if r.get("time_mean_s")}
    faster = min(timed, key=timed.get) if timed else None
    print(json.dumps({"benchmark": "cpu_anchors", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "machine": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
                      "precision": precision, "malloc": args.malloc, "threads": args.threads, "runs": args.runs,
                      "epochs": args.epochs, "dry_run": args.dry_run, "faster": faster, "scripts": results}))
    failed = [n for n, r in results.items() if r.get("rc")]
    if failed:
        statuses = ", ".join(f"{n} exited with status {results[n]['rc']}" for n in failed)
        print(f"cpu_anchors: {statuses} (logs in {work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as error:
        print(f"cpu_anchors: {error}", file=sys.stderr)
        sys.exit(2)
