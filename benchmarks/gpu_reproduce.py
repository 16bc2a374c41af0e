"""Part 7, reproduce: `cifarlab reproduce --tuned` until the budget is spent; the study folder outlives the call."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from gpu_part import Budget, PartFile, run_with_deadline, tail


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
                       train_and_eval_time_s=s["train_and_eval_time_s"], images_per_s=s["images_per_s"])
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
