"""cifarlab ablate: the full recipe against variants with one technique removed, over several seeds.

The article says the deeper CNN would "degrade" without BatchNorm, Kaiming init, dropout or data
augmentation but never runs it; this measures each effect as a paired difference over seeds
(variant - full, same seed), with its 95% confidence interval from Student's t distribution. A verdict
("removing it helps" / "hurts") is given only when that interval excludes 0, never from one seed, and
the report sets its budget (epochs x train images) beside the article's.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.models import model_spec
from cifarlab.report.document import Report, markdown_table, text_table
from cifarlab.settings import TrainConfig
from cifarlab.report.stats import (confidence_interval, half_width, interval_text, mean_rows, mean_std, plural,
                                   plus_minus, scored_split)
from cifarlab.report.summary import model_title
from cifarlab.runfolder import atomic_write_json, atomic_write_text
from cifarlab.report import robustness as robustness_report
from cifarlab.study import robustness as beyond
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out, run_groups

# The article's deeper CNN, whose ablation claims these are: 15 epochs of the 50,000 CIFAR-10 train images.
ARTICLE_BUDGET = (15, 50_000)

# technique -> the settings that remove it
TECHNIQUES = {
    "batchnorm": {"batchnorm": False},
    "kaiming": {"init": "default"},
    "dropout": {"dropout": False},
    "augment": {"augment": []},
    "skip": {"skip": False},
}
# What ablate removes when --without is not given (and what `all` removes at once): the article's four claims.
# The shortcuts are asked for by name (--without skip): a plain deep net is a different question.
ARTICLE_TECHNIQUES = ("batchnorm", "kaiming", "dropout", "augment")


def parse_without(text: str | None) -> tuple[list[str], bool]:
    """'batchnorm,dropout' -> (those, False); 'all' -> (the article's four, True); None -> (the four, False)."""
    if text is None:
        return list(ARTICLE_TECHNIQUES), False
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["all"]:
        return list(ARTICLE_TECHNIQUES), True
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

        names, key, what = [r["variant"] for r in self["variants"]], score_key(self), scored_text(self)
        return shown(bars_figure(names, {f"final {what}": [r[f"{key}_mean"] for r in self["variants"]]},
                                 errors={f"final {what}": [half_width(r[f"{key}_per_seed"])
                                                           for r in self["variants"]]},
                                 title=f"Ablation of {self['model']}: final {what} accuracy, mean and 95% interval"))


def ablate(cfg: TrainConfig, techniques: list[str], remove_all: bool, seeds: int, model=None,
           launch: Launch = SEQUENTIAL, robustness: beyond.Robustness = beyond.Robustness()) -> Ablation:
    """Each variant over `seeds` seeds; robustness.enabled (--robustness) also measures every run beyond its test
    split (study/robustness.py) and compares those figures the same way."""
    robustness = robustness.check()
    base = Path(cfg.out) if cfg.out else default_out(f"ablate-{cfg.model}-{cfg.dataset}")
    plan, skipped = variants(cfg, techniques, remove_all, model)
    if len(plan) == 1:
        raise UsageError(f"nothing to ablate: the recipe for {cfg.model} uses none of {', '.join(techniques)}")
    if not cfg.test and not cfg.val_size:     # refused before any training, not after all of it
        raise UsageError("--no-test without --val-size: the runs would score neither test nor val, and there "
                         "would be nothing to compare; pass --val-size N")
    if robustness.enabled:
        beyond.check_study(cfg)
    start = time.perf_counter()
    configs = {name: [dataclasses.replace(cfg, **overrides, seed=cfg.seed + i,
                                          out=str(base / name / f"seed-{cfg.seed + i}")) for i in range(seeds)]
               for name, overrides in plan.items()}
    results = run_groups(configs, launch, model, "ablate")
    result = Ablation(summarize(cfg, plan, results, skipped, seeds))
    if robustness.enabled:
        records = {name: beyond.measure_all(runs, robustness, device=cfg.device, quiet=cfg.quiet)
                   for name, runs in results.items()}
        result["robustness"] = beyond.study_summary(records, "full", seeds, robustness)
    result["wall_time_s"] = time.perf_counter() - start
    write_outputs(base, result, results)
    result["folder"] = str(base)
    return result


def summarize(cfg, plan, results, skipped, seeds) -> dict:
    """ablation.json: per variant, the mean and spread of its final accuracy and of its paired effect. The
    accuracy is test's, or val's where test was never scored (--no-test), as `scored_on` says."""
    split = scored_split([r.summary for runs in results.values() for r in runs])
    if split is None:
        raise UsageError("the runs scored neither test nor val (--no-test without --val-size): nothing to compare; "
                         "pass --val-size N")
    score, rows = f"final_{split}_acc", []
    full = [r.summary[score] for r in results["full"]]
    for name, runs in results.items():
        s = [r.summary for r in runs]
        row = {"variant": name, "removed": sorted(plan[name]), "seeds": [x["seed"] for x in s],
               "runs": [str(r.path) for r in runs]}
        for key in ("final_train_acc", score, f"best_{split}_epoch", "train_and_eval_time_s"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([float(x[key]) for x in s])
        row["overfit_gap_mean"], row["overfit_gap_std"] = mean_std([x["final_train_acc"] - x[score] for x in s])
        row[f"{score}_per_seed"] = [x[score] for x in s]
        diffs = [x[score] - f for x, f in zip(s, full)]
        row["effect_mean"], row["effect_std"] = mean_std(diffs)
        row["effect_ci95"] = confidence_interval(diffs)
        rows.append(row)
    train_images = results["full"][0].config.get("train_size")
    result = {"model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "epochs": cfg.epochs,
              "limit_train": cfg.limit_train, "train_images": train_images, "seeds": seeds, "skipped": skipped,
              "scored_on": split, "variants": rows}
    result["findings"] = findings(rows, seeds, split)
    result["budget"] = budget_note(cfg.epochs, train_images)
    return result


def verdict(interval: tuple[float, float] | None) -> str:
    """What removing a technique does, said only where the 95% interval of its effect excludes 0."""
    if interval is None:
        return "no verdict from one seed"
    if interval[1] < 0:
        return "removing it hurts"
    if interval[0] > 0:
        return "removing it helps"
    return "no clear effect at this budget"


def findings(rows: list[dict], seeds: int, split: str = "test") -> list[str]:
    """One sentence per removed technique: the measured effect on test (or val) accuracy, its interval, the
    verdict."""
    out, key = [], f"final_{split}_acc_mean"
    label = "test" if split == "test" else f"{split} (test not scored)"
    for row in rows[1:]:
        what = "everything" if row["variant"] == "none" else row["variant"].removeprefix("no-")
        out.append(f"Removing {what}: {label} accuracy {row[key]:.2f}% vs {rows[0][key]:.2f}% with it, change "
                   f"{row['effect_mean']:+.2f} pt, {interval_text(row['effect_ci95'], signed=True)} (paired over "
                   f"{plural(seeds, 'seed')}); {verdict(row['effect_ci95'])}.")
    return out


def budget_note(epochs: int, train_images: int | None) -> str:
    """This ablation's budget beside the article's, with a warning below a tenth of it."""
    article_epochs, article_images = ARTICLE_BUDGET
    article = article_epochs * article_images
    if train_images is None:
        return (f"Budget: {plural(epochs, 'epoch')}; the article's deeper CNN: {article_epochs} epochs x "
                f"{article_images:,} images.")
    ours = epochs * train_images
    note = (f"Budget: {plural(epochs, 'epoch')} x {train_images:,} train images = {ours:,} image-epochs; the "
            f"article's deeper CNN: {article_epochs} x {article_images:,} = {article:,} ({ours / article:.1%} of it).")
    if ours < article / 10:
        note += (" Warning: below a tenth of the article's budget, so the article's question cannot be answered "
                 "here; the findings describe this budget only.")
    return note


def score_key(result: dict) -> str:
    """The summary key the ablation compares: final_test_acc, or final_val_acc where test was never scored."""
    return f"final_{result.get('scored_on', 'test')}_acc"


def scored_text(result: dict) -> str:
    split = result.get("scored_on", "test")
    return "test" if split == "test" else f"{split} (test not scored)"


def table(result: dict) -> tuple[list[str], list[list]]:
    split = result.get("scored_on", "test")
    headers = ["variant", "train %", f"{scored_text(result)} %", "change pt [95% CI]", "gap pt", "best epoch",
               "time s"]
    rows = [[r["variant"], plus_minus(r, "final_train_acc"), plus_minus(r, score_key(result)),
             "-" if r["variant"] == "full" else effect_text(r),
             plus_minus(r, "overfit_gap"), plus_minus(r, f"best_{split}_epoch", 1),
             plus_minus(r, "train_and_eval_time_s", 0)]
            for r in result["variants"]]
    return headers, rows


def effect_text(row: dict) -> str:
    """'+1.20 [+0.10, +2.30]': the mean paired change and its 95% interval (the mean alone for one seed)."""
    interval = row.get("effect_ci95")
    if interval is None:
        return f"{row['effect_mean']:+.2f} (1 seed)"
    return f"{row['effect_mean']:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def text_report(result: dict) -> str:
    headers, rows = table(result)
    recipe = f"recipe {result['recipe']}" if result["recipe"] else "no recipe (the defaults)"
    head = (f"Ablation: {result['model']} on {result['dataset']}, {recipe}, {plural(result['epochs'], 'epoch')}, "
            f"{plural(result['seeds'], 'seed')}" + (f", {result['limit_train']:,} train images"
                                                    if result["limit_train"] else "")
            + ("" if result.get("scored_on", "test") == "test" else
               f"; scored on {scored_text(result)} accuracy"))
    notes = ([f"Skipped (the model has no such switch, or the recipe does not use it): "
              f"{', '.join(result['skipped'])}"] if result["skipped"] else [])
    budget = [result["budget"]] if result.get("budget") else []
    beyond_lines = robustness_report.text_lines(result["robustness"]) if result.get("robustness") else []
    return "\n".join([head, "", text_table(headers, rows), *budget, *result["findings"], *notes,
                      *beyond_lines]) + "\n"


def write_outputs(base: Path, result: dict, results: dict) -> None:
    from cifarlab.report import plots

    atomic_write_json(base / "ablation.json", dict(result))
    headers, rows = table(result)
    md = text_report(result).split("\n\n", 1)[0] + "\n\n" + markdown_table(headers, rows) + "\n" + \
        "\n".join(f"- {f}" for f in [result.get("budget", ""), *result["findings"]] if f) + "\n"
    if result.get("robustness"):
        md += robustness_report.markdown(result["robustness"])
    atomic_write_text(base / "ablation.md", md)
    series = {name: mean_rows([r.metrics for r in runs]) for name, runs in results.items()}
    curves = plots.curves(series, base / "ablation.png", "Ablation (mean over seeds)")
    names = [r["variant"] for r in result["variants"]]
    key, what = score_key(result), scored_text(result)
    bars = plots.accuracy_bars(names, {f"final {what}": [r[f"{key}_mean"] for r in result["variants"]]},
                               base / "ablation_bars.png",
                               errors={f"final {what}": [half_width(r[f"{key}_per_seed"])
                                                         for r in result["variants"]]},
                               title=f"Final {what} accuracy, mean and 95% confidence interval over seeds")
    report = Report(f"Ablation: {result['model']} on {result['dataset']}")
    report.section("Question").text(f"Would {model_title(result['model'])} degrade without BatchNorm, Kaiming "
                                    "initialisation, dropout or data augmentation, as the article claims for its "
                                    "deeper CNN? Each variant below removes one technique from the full recipe and "
                                    "is trained with the same seeds.")
    report.section("Results").table(headers, rows).pre(text_report(result))
    report.section("Findings").text(" ".join([result.get("budget", ""), *result["findings"]]).strip())
    report.section("Curves").image(curves, "Test (solid) and train (dashed) accuracy per epoch, mean over seeds")
    report.section("Final accuracy").image(bars, "Final test accuracy per variant, whiskers = 95% confidence "
                                           "interval of the mean over seeds (none for one seed)")
    if result.get("robustness"):
        robustness_report.report_section(report, result["robustness"], base / "robustness_bars.png")
    report.write(base)
