"""The report: every part's JSON and the driver's parts.tsv read back into report.html and summary.txt.
It imports no torch, so it runs wherever Python does."""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path

from gpu_correctness import REHEARSAL
from gpu_part import PART_NAMES

from cifarlab.run import atomic_write_text


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
    section.text(f"Recipe {d.get('recipe', 'fast94')} {d.get('settings') or ''}, {d.get('epochs')} epochs, "
                 f"device {d.get('device')}, "
                 f"{'compiled' if d.get('compiled') else 'eager'}: {d.get('seeds_done', 0)} seed(s); final test "
                 f"accuracy {fmt(d.get('final_test_acc_mean'))} ± {fmt(d.get('final_test_acc_std'))}% (median "
                 f"{fmt(d.get('final_test_acc_median'))}%), 94% reached in {d.get('reached', '0/0')}. Warm seeds "
                 f"({d.get('warm_seeds', 0)}): in airbench's scope {fmt(d.get('warm_time_to_result_mean_s'))} ± "
                 f"{fmt(d.get('warm_time_to_result_std_s'))} s (the figure beside airbench's: "
                 f"{d.get('time_scope', 'not recorded')}); training only {fmt(d.get('warm_train_only_time_mean_s'))} ± "
                 f"{fmt(d.get('warm_train_only_time_std_s'))} s, with evaluation "
                 f"{fmt(d.get('warm_train_and_eval_time_mean_s'))} s, wall {fmt(d.get('warm_wall_time_mean_s'))} s. "
                 + (d.get("stopped") or ""))
    rows = [[r["seed"], fmt(r["final_test_acc"]), fmt(r["time_to_target_s"]) if r["time_to_target_s"] is not None
             else "not reached", fmt(r.get("time_to_result_s")), fmt(r["train_only_time_s"]), fmt(r["train_and_eval_time_s"]),
             fmt(r["wall_time_s"], ".1f"),
             ", ".join(f"epoch {c['epoch']}: {c['test_acc']:.2f}%" for c in r["curve"])] for r in d.get("runs", [])]
    section.table(["seed", "final test %", "time to 94% s", "airbench scope s", "training only s", "with evaluation s", "wall s",
                   "scored epochs"], rows)


def render_airbench(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"{d.get('script')}: {d.get('runs_done', 0)} run(s)"
                 + (" before its deadline stopped it" if process.get("stopped_at_deadline") else "")
                 + f"; TTA test accuracy {fmt(d.get('tta_acc_mean'))} ± {fmt(d.get('tta_acc_std'))}%, "
                 f"{fmt(d.get('time_mean_s'), '.3f')} ± {fmt(d.get('time_std_s'), '.3f')} s per run (airbench's "
                 "own CUDA-event clock: the whitening init, training and the final TTA evaluation, without compile "
                 "warm-up or data loading; fast94's figure in that scope: its airbench-scope time). "
                 "Output: airbench.log.")
    section.table(["run", "TTA test acc %", "time s"],
                  [[r["run"], fmt(100 * r["tta_val_acc"]), fmt(r["time_s"], ".3f")] for r in d.get("runs", [])])
    if d.get("log_tail"):
        section.pre(d["log_tail"])


def render_compare(section, d: dict) -> None:
    for line in d.get("lines") or ["(no result yet: the part stopped before both sides ran)"]:
        section.text(line)
    section.text(f"Scope: airbench's own CUDA-event clock (whitening init, training, final TTA evaluation; no "
                 f"compile warm-up, no per-epoch evaluation, no data loading); fast94 read from "
                 f"{d.get('fast94_scope_key', '-')} (expected: {d.get('scope_key')}); fast94's seed 0 is a warm-up, "
                 "left out as airbench leaves out its warm-up run.")
    anchor = (d.get("airbench94_muon_process") or {}).get("runs", [])
    fast = [r for r in d.get("fast94_runs", []) if not r.get("warm_up")]
    rows = [[i + 1, fmt(100 * a["tta_val_acc"]) if a else "-", fmt(a["time_s"], ".3f") if a else "-",
             fmt(f["final_test_acc"]) if f else "-", fmt(f.get("scope_time_s"), ".3f") if f else "-"]
            for i, (a, f) in enumerate(zip_longest(anchor, fast))]
    section.table(["run", "airbench94_muon %", "airbench94_muon s", "fast94 %", "fast94 s"], rows)


def render_budgets(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"benchmarks/campaign.py --only {','.join(d.get('entries', []))} into {d.get('study')}: "
                 f"{d.get('finished', 0)} run(s) finished ({d.get('runs_before', 0)} from earlier calls)"
                 + ("; stopped at its deadline, the next call on this machine resumes it" if
                    process.get("stopped_at_deadline") else "") + (f"; {d['note']}" if d.get("note") else "")
                 + ". Output: budgets.log; figures: BENCHMARKS-gpu.md.")
    rows = [[r["entry"], r["seed"], fmt(r.get("final_test_acc")), fmt(r.get("train_and_eval_time_s"), ".0f"),
             r["state"] + (f" after epoch {r['epochs_done']}" if r.get("epochs_done") else "")]
            for r in d.get("runs", [])]
    section.table(["entry", "seed", "test %", "time s", "state"], rows)
    if d.get("figures"):
        section.pre(d["figures"])


def render_reproduce(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"cifarlab reproduce --tuned --scale {d.get('scale')} into {d.get('study')}: "
                 f"{d.get('finished', 0)} run(s) finished ({d.get('runs_before', 0)} found from earlier calls)"
                 + ("; stopped at its deadline, the next call on this machine continues" if
                    process.get("stopped_at_deadline") else "") + ". Output: reproduce.log.")
    rows = [[r["key"], r["recipe"], r["epochs"], fmt(r.get("final_test_acc")), fmt(r["article_test_acc"]),
             fmt(r.get("train_and_eval_time_s"), ".0f"), fmt(r["article_time_s"], ".0f"),
             "finished" if r["finished"] else f"{r['epochs_done']} of {r['epochs']} epochs"] for r in d.get("runs", [])]
    section.table(["run", "recipe", "epochs", "test % (ours)", "test % (article)", "time s (ours)",
                   "time s (article)", "state"], rows)


def render_depth(section, d: dict) -> None:
    process = d.get("process") or {}
    section.text(f"cifarlab depth --depths {d.get('depths')} --seeds {d.get('seeds')} (recipe he2015-cifar"
                 + (f", --epochs {d['epochs']}" if d.get("epochs") else ", the paper's budget") + f") into "
                 f"{d.get('study')}: {d.get('finished', 0)} run(s) finished ({d.get('runs_before', 0)} found from "
                 "earlier calls)" + ("; stopped at its deadline, the next call on this machine continues" if
                                     process.get("stopped_at_deadline") else "") + ". Output: depth.log.")
    rows = [[r["net"], r["seed"], r["epochs"], fmt(r.get("final_train_error")), fmt(r.get("final_test_error")),
             fmt(r.get("train_and_eval_time_s"), ".0f"),
             "finished" if r["finished"] else f"{r['epochs_done']} of {r['epochs']} epochs"] for r in d.get("runs", [])]
    section.table(["net", "seed", "epochs", "train error %", "test error %", "time s", "state"], rows)
    if d.get("nets"):
        section.table(["net", "train error % (mean)", "test error % (mean)", "paper test error %"],
                      [[n["net"], fmt(n["train_error"]), fmt(n["test_error"]), fmt(n["paper_test_error"])]
                       for n in d["nets"]])
    for line in [d.get("budget"), *d.get("findings", [])]:
        if line:
            section.text(line)
    if d.get("log_tail"):
        section.pre(d["log_tail"])


RENDER = {"env": render_env, "data": render_data, "compare": render_compare, "budgets": render_budgets,
          "correctness": render_correctness,
          "throughput": render_throughput, "fast94": render_fast94, "airbench": render_airbench,
          "reproduce": render_reproduce, "depth": render_depth}
TITLES = {"env": "1. env: the machine", "data": "2. data",
          "compare": "3. compare: fast94 against airbench94_muon (the GPU goal)",
          "budgets": "4. budgets: the article's budgets (campaign)",
          "correctness": "5. correctness: the device against the CPU",
          "throughput": "6. throughput: training images/s of every model",
          "fast94": "7. fast94 (optional): time to 94%", "airbench": "8. airbench (optional): the legacy anchor",
          "reproduce": "9. reproduce: the article's study, tuned beside",
          "depth": "10. depth (optional): He et al.'s degradation study at the paper's budget"}


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
