"""cifarlab ablate: the full recipe against variants with one technique removed, over several seeds.

The article says the deeper CNN would "degrade" without BatchNorm, Kaiming init, dropout or data
augmentation but never runs it; this measures each effect as a paired difference over seeds
(variant - full, same seed), mean +- std.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cifarlab.config import TrainConfig
from cifarlab.errors import UsageError
from cifarlab.models import model_spec
from cifarlab.report.document import Report, markdown_table, text_table
from cifarlab.report.stats import mean_rows, mean_std, plus_minus
from cifarlab.report.summary import model_title
from cifarlab.run import atomic_write_json, atomic_write_text
from cifarlab.study.runs import default_out, run_or_reuse

# technique -> the settings that remove it
TECHNIQUES = {
    "batchnorm": {"batchnorm": False},
    "kaiming": {"init": "default"},
    "dropout": {"dropout": False},
    "augment": {"augment": []},
}


def parse_without(text: str | None) -> tuple[list[str], bool]:
    """'batchnorm,dropout' -> (those, False); 'all' -> (every technique, True); None -> (every, False)."""
    if text is None:
        return list(TECHNIQUES), False
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["all"]:
        return list(TECHNIQUES), True
    for p in parts:
        if p not in TECHNIQUES:
            raise UsageError(f"unknown technique '{p}' for --without (choose from {', '.join(TECHNIQUES)}, or all)")
    if not parts:
        raise UsageError("--without needs at least one technique")
    return parts, False


def present(technique: str, cfg: TrainConfig, model=None) -> bool:
    """Whether the full recipe uses the technique and the model can drop it (the registry says which
    switches a model has: basic-cnn has no BatchNorm, a user's factory without `dropout=` no dropout)."""
    if technique == "augment":
        return bool(cfg.augment)
    spec = model_spec(cfg.model, model)
    if technique == "kaiming":
        init = spec.default_init if cfg.init == "auto" else cfg.init
        return init == "kaiming" and "init" in spec.switches
    return technique in spec.switches and getattr(cfg, technique)


def variants(cfg: TrainConfig, techniques: list[str], remove_all: bool, model=None) -> tuple[dict, list[str]]:
    """name -> settings overrides (full first), and the techniques skipped because the model or recipe lacks them."""
    out, skipped, removed = {"full": {}}, [], {}
    for t in techniques:
        if present(t, cfg, model):
            out[f"no-{t}"] = TECHNIQUES[t]
            removed.update(TECHNIQUES[t])
        else:
            skipped.append(t)
    if remove_all and len(out) > 2:
        out["none"] = removed
    return out, skipped


class Ablation(dict):
    """ablation.json's content; str() is what `cifarlab ablate` prints, plot() the bars with their spread."""

    def __str__(self) -> str:
        return text_report(self)

    def plot(self):
        from cifarlab.report.plots import bars_figure, shown

        names = [r["variant"] for r in self["variants"]]
        return shown(bars_figure(names, {"final test": [r["final_test_acc_mean"] for r in self["variants"]]},
                                 errors={"final test": [r["final_test_acc_std"] for r in self["variants"]]},
                                 title=f"Ablation of {self['model']}: final test accuracy, mean \u00b1 std"))


def ablate(cfg: TrainConfig, techniques: list[str], remove_all: bool, seeds: int, model=None) -> Ablation:
    base = Path(cfg.out) if cfg.out else default_out(f"ablate-{cfg.model}-{cfg.dataset}")
    plan, skipped = variants(cfg, techniques, remove_all, model)
    if len(plan) == 1:
        raise UsageError(f"nothing to ablate: the recipe for {cfg.model} uses none of {', '.join(techniques)}")
    start = time.perf_counter()
    results = {}
    for name, overrides in plan.items():
        runs = []
        for i in range(seeds):
            seed = cfg.seed + i
            variant = dataclasses.replace(cfg, **overrides, seed=seed, out=str(base / name / f"seed-{seed}"))
            if not cfg.quiet:
                print(f"cifarlab ablate: {name}, seed {seed}", flush=True)
            runs.append(run_or_reuse(variant, model))
        results[name] = runs
    result = Ablation(summarize(cfg, plan, results, skipped, seeds))
    result["wall_time_s"] = time.perf_counter() - start
    write_outputs(base, result, results)
    result["folder"] = str(base)
    return result


def summarize(cfg, plan, results, skipped, seeds) -> dict:
    rows = []
    full = [r.summary["final_test_acc"] for r in results["full"]]
    for name, runs in results.items():
        s = [r.summary for r in runs]
        row = {"variant": name, "removed": sorted(plan[name]), "seeds": [x["seed"] for x in s],
               "runs": [str(r.path) for r in runs]}
        for key in ("final_train_acc", "final_test_acc", "overfit_gap", "best_test_epoch", "train_time_s"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([float(x[key]) for x in s])
        row["final_test_acc_per_seed"] = [x["final_test_acc"] for x in s]
        diffs = [x["final_test_acc"] - f for x, f in zip(s, full)]
        row["effect_mean"], row["effect_std"] = mean_std(diffs)
        rows.append(row)
    return {"model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "epochs": cfg.epochs,
            "limit_train": cfg.limit_train, "seeds": seeds, "skipped": skipped, "variants": rows,
            "findings": findings(rows, seeds)}


def findings(rows: list[dict], seeds: int) -> list[str]:
    """One sentence per removed technique: the measured effect on test accuracy with its spread."""
    out = []
    for row in rows[1:]:
        what = "everything" if row["variant"] == "none" else row["variant"].removeprefix("no-")
        verdict = ("hurts" if row["effect_mean"] < -max(row["effect_std"], 0.1)
                   else "helps" if row["effect_mean"] > max(row["effect_std"], 0.1) else "makes no clear difference")
        out.append(f"Removing {what}: test accuracy {row['final_test_acc_mean']:.2f}% vs "
                   f"{rows[0]['final_test_acc_mean']:.2f}% with it, change {plus_minus(row, 'effect', signed=True)} "
                   f"pt (paired over {seeds} seed{'s' if seeds > 1 else ''}); removing it {verdict}.")
    return out


def table(result: dict) -> tuple[list[str], list[list]]:
    headers = ["variant", "train %", "test %", "change pt", "gap pt", "best epoch", "time s"]
    rows = [[r["variant"], plus_minus(r, "final_train_acc"), plus_minus(r, "final_test_acc"),
             "-" if r["variant"] == "full" else plus_minus(r, "effect", signed=True),
             plus_minus(r, "overfit_gap"), plus_minus(r, "best_test_epoch", 1), plus_minus(r, "train_time_s", 0)]
            for r in result["variants"]]
    return headers, rows


def text_report(result: dict) -> str:
    headers, rows = table(result)
    head = (f"Ablation: {result['model']} on {result['dataset']}, recipe {result['recipe']}, {result['epochs']} epochs, "
            f"{result['seeds']} seed(s)" + (f", {result['limit_train']:,} train images" if result["limit_train"] else ""))
    notes = ([f"Skipped (the model has no such switch, or the recipe does not use it): "
              f"{', '.join(result['skipped'])}"] if result["skipped"] else [])
    return "\n".join([head, "", text_table(headers, rows), *result["findings"], *notes]) + "\n"


def write_outputs(base: Path, result: dict, results: dict) -> None:
    from cifarlab.report import plots

    atomic_write_json(base / "ablation.json", dict(result))
    headers, rows = table(result)
    md = text_report(result).split("\n\n", 1)[0] + "\n\n" + markdown_table(headers, rows) + "\n" + \
        "\n".join(f"- {f}" for f in result["findings"]) + "\n"
    atomic_write_text(base / "ablation.md", md)
    series = {name: mean_rows([r.rows for r in runs]) for name, runs in results.items()}
    curves = plots.curves(series, base / "ablation.png", "Ablation (mean over seeds)")
    names = [r["variant"] for r in result["variants"]]
    bars = plots.accuracy_bars(names, {"final test": [r["final_test_acc_mean"] for r in result["variants"]]},
                               base / "ablation_bars.png",
                               errors={"final test": [r["final_test_acc_std"] for r in result["variants"]]},
                               title="Final test accuracy, mean \u00b1 std over seeds")
    report = Report(f"Ablation: {result['model']} on {result['dataset']}")
    report.section("Question").text(f"Would {model_title(result['model'])} degrade without BatchNorm, Kaiming "
                                    "initialisation, dropout or data augmentation, as the article claims for its "
                                    "deeper CNN? Each variant below removes one technique from the full recipe and "
                                    "is trained with the same seeds.")
    report.section("Results").table(headers, rows).pre(text_report(result))
    report.section("Findings").text(" ".join(result["findings"]))
    report.section("Curves").image(curves, "Test (solid) and train (dashed) accuracy per epoch, mean over seeds")
    report.section("Final accuracy").image(bars, "Final test accuracy per variant, whiskers = std over seeds")
    report.write(base)
