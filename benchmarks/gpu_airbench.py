"""Part 6, airbench: the public anchor, KellerJordan/cifar10-airbench's script unchanged on the same GPU and data."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from gpu_part import Budget, PartFile, mean_std, run_with_deadline, tail


AIRBENCH_SCRIPTS = ("airbench94.py", "airbench94_muon.py")   # the first found runs: uncompiled first


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
