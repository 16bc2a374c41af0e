"""Part 8, depth (optional: runs only when --parts names it): `cifarlab depth` at the paper's budget until the
budget is spent; the study folder outlives the call, as reproduce's does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from gpu_part import Budget, PartFile, run_with_deadline, tail


def study_runs(study: Path) -> list[dict]:
    """Every run folder of the study (OUT/NET/seed-S), finished ones with their final errors, unfinished ones
    with the epochs they have done (the next call resumes them)."""
    rows = []
    for config_path in sorted(study.glob("*/seed-*/config.json")):
        folder, config = config_path.parent, json.loads(config_path.read_text())
        row = {"net": folder.parent.name, "seed": config.get("seed"), "model": config.get("model"),
               "skip": config.get("skip"), "epochs": config.get("epochs")}
        if (folder / "summary.json").is_file():
            s = json.loads((folder / "summary.json").read_text())
            row.update(finished=True, final_train_error=100 - s["final_train_acc"],
                       final_test_error=100 - s["final_test_acc"], train_and_eval_time_s=s["train_and_eval_time_s"],
                       images_per_s=s["images_per_s"])
        else:
            metrics = folder / "metrics.jsonl"
            row.update(finished=False, epochs_done=len(metrics.read_text().splitlines()) if metrics.is_file() else 0)
        rows.append(row)
    return rows


def depth_command(args) -> list[str]:
    """The study's command line: the shipped he2015-cifar recipe, scaled down only by the dry run's flags."""
    cmd = [sys.executable, "-m", "cifarlab", "depth", "--family", "resnet-cifar", "--depths", args.depths,
           "--seeds", str(args.seeds), "--dataset", "cifar10", "--data-dir", args.data_dir, "--out", args.study,
           "--device", args.device, "--no-download"]
    for flag, value in (("--epochs", args.epochs), ("--limit-train", args.limit_train), ("--val-size", args.val_size)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def part_depth(args, out: PartFile) -> None:
    """`cifarlab depth` (recipe he2015-cifar: 64k iterations of batch 128 on 45k CIFAR-10 images) for the plain and
    the residual resnet-cifar nets at --depths, over --seeds, until the budget is spent; the study folder outlives
    the call, so the next call on the same machine reuses finished runs and resumes the stopped one. Optional:
    it runs only when --parts names it. When the study ends, its depth.json, depth.png and report.html are copied
    beside this part's JSON."""
    from cifarlab.data.sources import DATASETS, missing_files

    root, study = Path(args.data_dir), Path(args.study)
    if missing_files(DATASETS["cifar10"], root):
        return out.update(status="skipped", reason=f"cifar10 not in {root}")
    out.update(study=str(study), depths=args.depths, seeds=args.seeds, epochs=args.epochs, log=args.log,
               runs_before=len(study_runs(study)))
    budget = Budget(args.budget_s)
    process = run_with_deadline(depth_command(args), Path(args.log), budget.left() - args.grace_s, args.grace_s)
    runs = study_runs(study)
    out.update(process=process, runs=runs, finished=sum(r["finished"] for r in runs))
    here = Path(args.json).parent
    if process["rc"] == 0:
        result = json.loads((study / "depth.json").read_text())
        out.update(findings=result["findings"], budget=result["budget"]["text"],
                   nets=[{"net": n["net"], "train_error": n["final_train_error_mean"],
                          "test_error": n["final_test_error_mean"], "paper_test_error": n["paper_test_error"]}
                         for n in result["nets"]])
        for name, copy in (("depth.json", "depth-study.json"), ("report.html", "depth-report.html"),
                           ("depth.png", "depth.png")):
            shutil.copyfile(study / name, here / copy)
    elif not process["stopped_at_deadline"]:
        out.update(status="failed", reason=f"cifarlab depth exited with status {process['rc']}",
                   log_tail=tail(Path(args.log).read_text(errors="replace")))
