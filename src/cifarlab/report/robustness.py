"""How a study's `--robustness` figures read (study/robustness.py measures them): the tables of `ablate`'s
variants (mean \u00b1 std, then the paired change from the full recipe with its 95% interval) and `reproduce`'s
runs, the findings with their verdicts, the method in words, the report section and its figure."""

from __future__ import annotations

from pathlib import Path

from cifarlab.report.stats import half_width, interval_text, plural

# (key in a run's record, the column's name, what a rise means: the verdict words for a clear rise and fall)
METRICS = (("clean_accuracy", "clean %", ("raises", "lowers")),
           ("corruption_accuracy", "corrupted %", ("raises", "lowers")),
           ("corruption_gap", "clean-corrupted pt", ("widens", "narrows")),
           ("ece", "ECE %", ("raises", "lowers")),
           ("ece_calibrated", "ECE after T %", ("raises", "lowers")),
           ("cifar101_accuracy", "CIFAR-10.1 %", ("raises", "lowers")))
METRIC_WORDS = {"clean_accuracy": "clean accuracy", "corruption_accuracy": "mean corruption accuracy",
                "corruption_gap": "the clean-corrupted gap",
                "ece": "test ECE", "ece_calibrated": "test ECE after temperature scaling",
                "cifar101_accuracy": "CIFAR-10.1 accuracy"}


def verdict(interval, words: tuple[str, str]) -> str:
    if interval is None:
        return "no verdict from one seed"
    if interval[0] > 0:
        return f"removing it {words[0]} it"
    if interval[1] < 0:
        return f"removing it {words[1]} it"
    return "no clear effect at this budget"


def findings(rows: list[dict], seeds: int) -> list[str]:
    """One sentence per removed technique: each metric's paired change, its interval and the verdict."""
    out = []
    # clean accuracy's change is ablate's own finding: these say what the test split alone does not
    keys = [m for m in METRICS if f"{m[0]}_mean" in rows[0] and m[0] != "clean_accuracy"]
    for row in rows[1:]:
        what = "everything" if row["group"] == "none" else row["group"].removeprefix("no-")
        parts = [_finding(row, rows[0], key, words, seeds) for key, _, words in keys
                 if row.get(f"{key}_change") is not None]
        out.append(f"Removing {what} (paired over {plural(seeds, 'seed')}): " + "; ".join(parts) + ".")
    return out


def _finding(row: dict, full: dict, key: str, words: tuple[str, str], seeds: int) -> str:
    pairs = row[f"{key}_pairs"]
    fewer = "" if pairs == seeds else f", over the {plural(pairs, 'seed')} with a value"
    return (f"{METRIC_WORDS[key]} {row[f'{key}_mean']:.2f}{_unit(key)} vs {full[f'{key}_mean']:.2f}{_unit(key)} "
            f"({row[f'{key}_change']:+.2f} pt, {interval_text(row[f'{key}_change_ci95'], signed=True)}{fewer}: "
            f"{verdict(row[f'{key}_change_ci95'], words)})")


def group_tables(rows: list[dict]) -> list[tuple[list[str], list[list]]]:
    """ablate's robustness tables: each metric's mean \u00b1 std per variant; then each variant's paired change
    from the full recipe with its 95% interval."""
    keys = [(key, name) for key, name, _ in METRICS if f"{key}_mean" in rows[0]]
    values = [[row["group"], *[_value(row, key) for key, _ in keys]] for row in rows]
    changes = [[row["group"], *[_change(row, key) for key, _ in keys]] for row in rows[1:]]
    headers = [name for _, name in keys]
    return [(["variant", *headers], values), (["change from full", *headers], changes)]


def _unit(key: str) -> str:
    return " pt" if key == "corruption_gap" else "%"


def _value(row: dict, key: str) -> str:
    if row[f"{key}_mean"] is None:
        return "-"
    return f"{row[f'{key}_mean']:.2f} \u00b1 {row[f'{key}_std']:.2f}"


def _change(row: dict, key: str) -> str:
    if row[f"{key}_change"] is None:
        return "-"
    interval = row[f"{key}_change_ci95"]
    change = f"{row[f'{key}_change']:+.2f}"
    return f"{change} [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else f"{change} (1 seed)"


def run_table(keys: list[str], records: list[dict]) -> tuple[list[str], list[list]]:
    """reproduce's robustness table: one row per run."""
    headers = ["run", "clean %", "corrupted %", "ratio", "ECE %", "ECE after T %", "T", "CIFAR-10.1 % (drop [95% CI])"]
    rows = []
    for key, r in zip(keys, records):
        shift = r.get("cifar101")
        drop = (f"{r['cifar101_accuracy']:.2f} ({shift['drop']:+.2f} [{shift['drop_interval'][0]:+.2f}, "
                f"{shift['drop_interval'][1]:+.2f}])" if shift else "-")
        fitted = r["temperature"] is not None
        rows.append([key, f"{r['clean_accuracy']:.2f}", f"{r['corruption_accuracy']:.2f}",
                     f"{r['ratio_to_clean']:.3f}", f"{r['ece']:.2f}", f"{r['ece_calibrated']:.2f}" if fitted else "-",
                     f"{r['temperature']:.3f}" if fitted else "none fits", drop])
    return headers, rows


def method_text(records: list[dict]) -> str:
    """What the robustness figures are, for a report: the sets and how they differ from the official files, the
    images per set, the weights and views, the temperature's val split, the runs no temperature fits, CIFAR-10.1."""
    sizes = sorted({r["images_per_set"] for r in records})
    weights = sorted({r["weights"] for r in records})
    return (f"Mean accuracy over the 15 corruptions x 5 severities of Hendrycks & Dietterich, on CIFAR-10-C-style "
            f"sets generated here from the test split ({' or '.join(f'{n:,}' for n in sizes)} images per set; their "
            "constants, but frost is procedural rather than their photographs, motion blur reimplemented rather than "
            "ImageMagick's, and the random draws are torch's: each run's evaluation-corruptions/corruptions.json "
            "lists the differences), with each run's own test-time views; its gap to clean accuracy on the same "
            "images. ECE over 15 bins on test, from the model's own logits (no test-time views, as predict uses "
            "it), before and after one temperature T fitted on the run's val split (never on test). Weights: "
            f"{', '.join(weights)}.{_unfitted_text(records)} {_cifar101_text(records)}")


def _unfitted_text(records: list[dict]) -> str:
    """Which runs no temperature fits, and why, in the words of the edge the search ended at."""
    reasons = {20.0: "the val NLL still falls past T = 20: a model about as good as chance",
               0.05: "the val NLL still falls below T = 0.05: a model right on nearly every val image"}
    out = []
    for edge, reason in reasons.items():
        runs = [r for r in records if r.get("temperature") is None and r.get("no_temperature_edge") == edge]
        if runs:
            whose = "its" if len(runs) == 1 else "their"
            out.append(f" No temperature fits {plural(len(runs), 'run')} ({reason}): {whose} ECE after T is left "
                       "out, and the changes pair the seeds that have one.")
    return "".join(out)


def _cifar101_text(records: list[dict]) -> str:
    if any(r.get("cifar101") for r in records):
        return "CIFAR-10.1: the drop from CIFAR-10 test with its 95% interval (about +-2 points with 2,000 images)."
    if any(r["dataset"] == "cifar10" for r in records):
        return ("CIFAR-10.1: not measured (its files are not in the data folder; `cifarlab evaluate RUN --dataset "
                "cifar10.1` downloads them).")
    return "CIFAR-10.1 tests CIFAR-10 models only."


def text_lines(summary: dict) -> list[str]:
    """The lines a study prints under its own table."""
    from cifarlab.report.document import text_table

    tables = [text_table(headers, rows).rstrip("\n") for headers, rows in group_tables(summary["rows"])]
    return ["", "Beyond the test split (--robustness): mean \u00b1 std over seeds; then the change from the full "
            "recipe, paired over seeds [95% CI]", tables[0], "", tables[1], *summary["findings"]]


def markdown(summary: dict) -> str:
    """The section ablation.md ends with."""
    from cifarlab.report.document import markdown_table

    tables = "\n".join(markdown_table(headers, rows) for headers, rows in group_tables(summary["rows"]))
    return ("\n## Beyond the test split\n\n" + summary["method"] + "\n\n" + tables + "\n"
            + "".join(f"- {f}\n" for f in summary["findings"]))


def report_section(report, summary: dict, figure: Path) -> None:
    """The study report's section "Beyond the test split": the method, the table, the findings, and clean beside
    corrupted accuracy per group with 95% whiskers."""
    from cifarlab.report import plots

    rows = summary["rows"]
    names = [r["group"] for r in rows]
    series = {what: [r[f"{key}_mean"] for r in rows] for what, key in (("clean", "clean_accuracy"),
                                                                         ("corrupted", "corruption_accuracy"))}
    errors = {what: [half_width(r[f"{key}_per_seed"]) for r in rows]
              for what, key in (("clean", "clean_accuracy"), ("corrupted", "corruption_accuracy"))}
    bars = plots.accuracy_bars(names, series, figure, errors=errors,
                               title="Clean and mean corrupted accuracy, mean and 95% interval over seeds")
    (headers, values), (change_headers, changes) = group_tables(rows)
    section = report.section("Beyond the test split").text(summary["method"])
    section.table(headers, values).table(change_headers, changes).text(" ".join(summary["findings"]))
    section.image(bars, "Clean and mean corrupted test accuracy per variant; whiskers = 95% interval of the mean "
                        "over seeds (none for one seed)")
