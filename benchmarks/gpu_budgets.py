"""Part 4, budgets: the issue's article-budget runs (benchmarks/campaign.py), after the fast94 comparison.

tuned-deeper-cnn at 15 epochs x 3 seeds on CIFAR-10, tuned-resnet18 at 15 epochs, then the CIFAR-100 budgets
(tuned-deeper-cnn-cifar100 at 35 epochs, tuned-resnet18-cifar100 at 25), one after another until the budget is
spent. The campaign folder stays on the machine (WORK/budgets), so a later call on the same warm machine resumes
the stopped run from its checkpoint and skips the finished ones; every finished entry's figure is appended to
OUT/BENCHMARKS-gpu.md (never the repository's file) for the lead to copy into BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpu_part import Budget, PartFile, run_with_deadline, tail

HERE = Path(__file__).resolve().parent
ENTRIES = ("tuned-deeper-cnn-c10-3seeds", "tuned-resnet18-c10", "tuned-deeper-cnn-c100", "tuned-resnet18-c100")


def wanted_entries(data_dir: str) -> tuple[list[str], str | None]:
    """The entries the data allows: the CIFAR-100 ones only where CIFAR-100 was carried."""
    from cifarlab.data.sources import DATASETS, missing_files

    if missing_files(DATASETS["cifar100"], Path(data_dir)):
        return [e for e in ENTRIES if not e.endswith("c100")], "CIFAR-100 not carried: its two budgets left out"
    return list(ENTRIES), None


def runs_of(study: Path, names: list[str]) -> list[dict]:
    """Each seed of each entry: finished (its accuracy and time), interrupted (epochs done) or not started."""
    import campaign

    rows = []
    by_name = {e.name: e for e in campaign.ALL_ENTRIES}
    for entry in (by_name[n] for n in names):
        for seed in entry.seeds:
            folder = study / entry.folder(seed)
            row = {"entry": entry.name, "seed": seed, "state": campaign.state(folder)}
            if row["state"] == "finished":
                summary = json.loads((folder / "summary.json").read_text())
                row.update(final_test_acc=summary["final_test_acc"],
                           train_and_eval_time_s=summary["train_and_eval_time_s"], epochs=summary.get("epochs"))
            elif (folder / "metrics.jsonl").is_file():
                row["epochs_done"] = len((folder / "metrics.jsonl").read_text().splitlines())
            rows.append(row)
    return rows


def part_budgets(args, out: PartFile) -> None:
    """The article's budgets (benchmarks/campaign.py): tuned-deeper-cnn 15 epochs x 3 seeds, tuned-resnet18
    15 epochs, the CIFAR-100 budgets; resumable on the same machine, until the budget is spent."""
    names, note = wanted_entries(args.data_dir)
    study, log, figures = Path(args.study), Path(args.log), Path(args.figures)
    study.mkdir(parents=True, exist_ok=True)
    before = sum(r["state"] == "finished" for r in runs_of(study, names))
    cmd = [sys.executable, "-u", str(HERE / "campaign.py"), "--out", str(study), "--data-dir", args.data_dir,
           "--only", ",".join(names), "--benchmarks", str(figures), *[f"--extra={x}" for x in args.extra]]
    out.update(entries=names, note=note, study=str(study), runs_before=before, command=" ".join(cmd))
    budget = Budget(args.budget_s)
    # its own process group: SIGTERM reaches the training run, which saves a checkpoint, not only the campaign
    process = run_with_deadline(cmd, log, budget.left() - args.grace_s, args.grace_s, group=True)
    runs = runs_of(study, names)
    out.update(process=process, runs=runs, finished=sum(r["state"] == "finished" for r in runs),
               figures=figures.read_text() if figures.is_file() else None,
               log_tail=tail(log.read_text(errors="replace")) if log.is_file() else None)
    if process["rc"] != 0 and not process["stopped_at_deadline"]:
        out.update(status="failed", reason=f"campaign.py exited with status {process['rc']}")
