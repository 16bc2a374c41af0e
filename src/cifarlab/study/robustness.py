"""`--robustness` for `reproduce` and `ablate`: every run of the study measured beyond its test split.

Per run (robustness.json in its folder, reused while its weights and these settings are unchanged):
- the mean accuracy over the 15 generated corruptions x 5 severities (robustness.py), with the run's own
  test-time views, and its gap to clean accuracy on the same images;
- the test ECE before and after a temperature fitted on the run's val split (calibrate.py): so the runs need a
  val split, and a study refuses before training without one;
- for a CIFAR-10 run whose CIFAR-10.1 files are in the data folder (never downloaded for this), the CIFAR-10.1
  accuracy and the drop from CIFAR-10 test (shift.py).

A study's groups (ablate's variants) are compared as paired differences over seeds with Student's t 95%
intervals, the way ablate compares clean accuracy; a verdict only where the interval excludes 0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.stats import confidence_interval, interval_text, mean_std, plural
from cifarlab.runfolder import ROBUSTNESS as RECORD, RunFolder, atomic_write_json

# (key in a run's record, the column's name, what a rise means: the verdict words for a clear rise and fall)
METRICS = (("clean_accuracy", "clean %", ("raises", "lowers")),
           ("corruption_accuracy", "corrupted %", ("raises", "lowers")),
           ("corruption_gap", "clean-corrupted pt", ("widens", "narrows")),
           ("ece", "ECE %", ("raises", "lowers")),
           ("ece_calibrated", "ECE after T %", ("raises", "lowers")),
           ("cifar101_accuracy", "CIFAR-10.1 %", ("raises", "lowers")))
METRIC_WORDS = {"clean_accuracy": "clean accuracy", "corruption_accuracy": "mean corruption accuracy", "corruption_gap": "the clean-corrupted gap",
                "ece": "test ECE", "ece_calibrated": "test ECE after temperature scaling",
                "cifar101_accuracy": "CIFAR-10.1 accuracy"}


@dataclass(frozen=True)
class Robustness:
    """What --robustness measures: `limit` test images per corrupted set (None: the whole test split), the
    corruptions' seed; enabled=False (the default) measures nothing."""
    enabled: bool = False
    limit: int | None = None
    seed: int = 0

    def check(self) -> "Robustness":
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise UsageError(f"--robustness-limit must be >= 1, got {self.limit}")
        if self.limit is not None and not self.enabled:
            raise UsageError("--robustness-limit sets how many test images each corrupted set holds: add --robustness")
        return self


def check_study(cfg) -> None:
    """Refuse, before any run trains, a study whose runs --robustness could not measure."""
    from cifarlab.data.sources import DATASETS

    if not cfg.test:
        raise UsageError("--robustness corrupts the test split and scores it: leave out --no-test")
    info = DATASETS.get(cfg.dataset)
    if info is not None and info.channels != 3:
        raise UsageError(f"--robustness: {cfg.dataset} has {info.channels} channel(s); the corruptions are "
                         "defined for colour images")
    if cfg.val_size:
        return
    if info is None:         # a folder: or npz: dataset may ship its own val split
        from cifarlab.training.splits import prepare_data

        if prepare_data(cfg).val is not None:
            return
    raise UsageError("--robustness fits a temperature on a val split (never on test), and these runs have none: "
                     "pass --val-size N, e.g. 5000")


def _weights_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cifar101_files(cfg, data_dir) -> bool:
    from cifarlab.data.cifar101 import DATA_FILE, LABELS_FILE, TRAINED_ON, cifar101_folder

    if cfg.dataset != TRAINED_ON:
        return False
    folder = cifar101_folder(data_dir if data_dir is not None else cfg.data_dir)
    return (folder / DATA_FILE).is_file() and (folder / LABELS_FILE).is_file()


def measure(run: RunFolder, options: Robustness, data_dir: str | None = None, device: str = "auto",
            progress: bool = True) -> dict:
    """One run's record (see the module's text), written to RUN/robustness.json; an earlier record is reused
    when the weights' sha256 and the settings are the same."""
    from cifarlab.data.corruptions import CODE_VERSION

    cfg = run.train_config()
    weights = run.weights_to_load()
    key = {"weights": weights.name, "weights_sha256": _weights_sha256(weights), "limit": options.limit,
           "corruption_seed": options.seed, "corruption_code": CODE_VERSION,
           "cifar10.1": _cifar101_files(cfg, data_dir)}
    path = run.path / RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("key") == key:
            return old
    record = {"key": key, "run": str(run.path), "seed": cfg.seed, "model": cfg.model, "dataset": cfg.dataset,
              **_measured(run, cfg, options, data_dir, device, progress, key["cifar10.1"])}
    atomic_write_json(path, record)
    return record


def _measured(run, cfg, options, data_dir, device, progress, cifar101: bool) -> dict:
    from cifarlab.robustness import evaluate_corruptions

    views = ("flip-shift" if cfg.tta_shift else "flip") if cfg.tta else None
    corrupted = evaluate_corruptions(run, "all", None, options.limit, None, options.seed, tta=views,
                                     data_dir=data_dir, device=device, progress=progress)
    out = {"weights": run.weights_to_load().name, "tta": views, "images_per_set": corrupted["images"],
           "clean_accuracy": corrupted["clean_accuracy"], "corruption_accuracy": corrupted["mean_accuracy"],
           "corruption_gap": corrupted["clean_accuracy"] - corrupted["mean_accuracy"],
           "ratio_to_clean": corrupted["ratio_to_clean"], "mean_by_severity": corrupted["mean_by_severity"],
           **_calibration(run, data_dir, device), "cifar101_accuracy": None, "cifar101": None}
    if cifar101:
        from cifarlab.shift import evaluate_shift

        shift = evaluate_shift(run, tta=views, data_dir=data_dir, device=device)
        out["cifar101_accuracy"] = shift["cifar10.1"]["accuracy"]
        out["cifar101"] = {"images": shift["cifar10.1"]["images"], "cifar10_accuracy": shift["cifar10"]["accuracy"],
                           "drop": shift["drop"], "drop_interval": list(shift["drop_interval"])}
    return out


def _calibration(run, data_dir, device) -> dict:
    """ECE and NLL on test before and after the temperature fitted on val; where no temperature fits (the val
    NLL still falls at an edge of the search: a nearly untrained model), the figures before it and the reason."""
    from cifarlab.calibrate import calibrate_run, split_logits
    from cifarlab.training.calibration import TemperatureBeyondRange, calibration_figures

    try:
        calibration = calibrate_run(run, data_dir, device=device)
    except TemperatureBeyondRange as e:
        _, logits = split_logits(run, run.weights_to_load(), data_dir, device)
        before = calibration_figures(*logits["test"])
        return {"temperature": None, "val_images": len(logits["val"][1]), "ece": before["ece"],
                "ece_calibrated": None, "nll": before["nll"], "nll_calibrated": None, "no_temperature": str(e)}
    return {"temperature": calibration["temperature"], "val_images": calibration["val"]["before"]["images"],
            "ece": calibration["test"]["before"]["ece"], "ece_calibrated": calibration["test"]["after"]["ece"],
            "nll": calibration["test"]["before"]["nll"], "nll_calibrated": calibration["test"]["after"]["nll"],
            "no_temperature": None}


def measure_all(runs: list[RunFolder], options: Robustness, data_dir=None, device: str = "auto",
                quiet: bool = False) -> list[dict]:
    """measure() for each run, one after another, saying which."""
    records = []
    for i, run in enumerate(runs, 1):
        if not quiet:
            print(f"cifarlab: robustness {i}/{len(runs)}: {run.path}", flush=True)
        records.append(measure(run, options, data_dir, device, progress=not quiet))
    return records


def metrics_of(records: list[dict]) -> list[tuple[str, str, tuple[str, str]]]:
    """The METRICS every record has a value for (CIFAR-10.1 only where each run had its files)."""
    return [m for m in METRICS if all(r.get(m[0]) is not None for r in records)]


def group_rows(groups: dict[str, list[dict]], baseline: str) -> list[dict]:
    """Per group, each metric's mean, std and per-seed values, and (but the baseline) the paired change from the
    baseline, same seed against same seed, with its 95% interval (None for one seed)."""
    every = [r for records in groups.values() for r in records]
    base = {r["seed"]: r for r in groups[baseline]}
    rows = []
    for name, records in groups.items():
        row = {"group": name, "seeds": [r["seed"] for r in records], "images_per_set": records[0]["images_per_set"]}
        for key, _, _ in metrics_of(every):
            values = [float(r[key]) for r in records]
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_per_seed"] = values
            if name != baseline:
                diffs = [float(r[key]) - float(base[r["seed"]][key]) for r in records if r["seed"] in base]
                row[f"{key}_change"] = sum(diffs) / len(diffs) if diffs else None
                row[f"{key}_change_ci95"] = confidence_interval(diffs)
        rows.append(row)
    return rows


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
        parts = [f"{METRIC_WORDS[key]} {row[f'{key}_mean']:.2f}{_unit(key)} vs {rows[0][f'{key}_mean']:.2f}"
                 f"{_unit(key)} ({row[f'{key}_change']:+.2f} pt, "
                 f"{interval_text(row[f'{key}_change_ci95'], signed=True)}: "
                 f"{verdict(row[f'{key}_change_ci95'], words)})" for key, _, words in keys]
        out.append(f"Removing {what} (paired over {plural(seeds, 'seed')}): " + "; ".join(parts) + ".")
    return out


def group_tables(rows: list[dict]) -> list[tuple[list[str], list[list]]]:
    """ablate's robustness tables: each metric's mean \u00b1 std per variant; then each variant's paired change
    from the full recipe with its 95% interval."""
    keys = [(key, name) for key, name, _ in METRICS if f"{key}_mean" in rows[0]]
    values = [[row["group"], *[f"{row[f'{key}_mean']:.2f} \u00b1 {row[f'{key}_std']:.2f}" for key, _ in keys]]
              for row in rows]
    changes = [[row["group"], *[_change(row, key) for key, _ in keys]] for row in rows[1:]]
    headers = [name for _, name in keys]
    return [(["variant", *headers], values), (["change from full", *headers], changes)]


def _unit(key: str) -> str:
    return " pt" if key == "corruption_gap" else "%"


def _change(row: dict, key: str) -> str:
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
    """What the robustness figures are, for a report: images per set, weights, views, the val split."""
    sizes = sorted({r["images_per_set"] for r in records})
    weights = sorted({r["weights"] for r in records})
    cifar101 = any(r.get("cifar101") for r in records)
    unfitted = sum(r.get("temperature") is None for r in records)
    none_fits = (f" No temperature fits {plural(unfitted, 'run')} (the val NLL still falls at the edge of the "
                 "search, T = 0.05 or 20: a model about as good as chance), so ECE after T is left out for "
                 f"{'it' if unfitted == 1 else 'them'}." if unfitted else "")
    return (f"Mean accuracy over the 15 corruptions x 5 severities of Hendrycks & Dietterich (CIFAR-10-C-style sets "
            f"generated here from the test split, {' or '.join(f'{n:,}' for n in sizes)} images per set), with each "
            f"run's own test-time views; its gap to clean accuracy on the same images. ECE over 15 bins on test, "
            f"before and after one temperature T fitted on the run's val split (never on test). Weights: "
            f"{', '.join(weights)}.{none_fits} "
            + ("CIFAR-10.1: the drop from CIFAR-10 test with its 95% interval (about +-2 points with 2,000 images)."
               if cifar101 else "CIFAR-10.1: not measured (its files are not in the data folder; "
                                "`cifarlab evaluate RUN --dataset cifar10.1` downloads them)."))


def compare_cells(folders: list[Path]) -> tuple[str, str] | None:
    """compare's robustness columns for a run (one folder) or a `train --seeds` folder (its seeds' folders):
    the mean corruption accuracy (with the images per set) and the test ECE after temperature scaling, averaged
    over the folders; from robustness.json, else from `evaluate --corruptions all` and `--calibration`'s own
    files; None where no folder has either, "-" for a column some folder lacks."""
    corrupted, calibrated = [], []
    for folder in folders:
        record = _read(folder / RECORD)
        if record is not None:
            corrupted.append((record["corruption_accuracy"], record["images_per_set"]))
            if record["ece_calibrated"] is not None:
                calibrated.append(record["ece_calibrated"])
            continue
        sets = _read(folder / "evaluation-corruptions" / "corruptions.json")
        if sets is not None and sets.get("generated") and len(sets["accuracy"]) == 15 \
                and len(sets["mean_by_severity"]) == 5:      # only the full 15 x 5 makes the mean comparable
            corrupted.append((sets["mean_accuracy"], sets["images"]))
        calibration = _read(folder / "evaluation-calibration" / "calibration.json")
        if calibration is not None:
            calibrated.append(calibration["test"]["after"]["ece"])
    if not corrupted and not calibrated:
        return None
    sizes = sorted({n for _, n in corrupted})
    cell = (f"{sum(a for a, _ in corrupted) / len(corrupted):.2f} ({'/'.join(f'{n:,}' for n in sizes)})"
            if len(corrupted) == len(folders) else "-")
    return cell, f"{sum(calibrated) / len(calibrated):.2f}" if len(calibrated) == len(folders) else "-"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def study_summary(groups: dict[str, list[dict]], baseline: str, seeds: int, options: Robustness) -> dict:
    """What a study's JSON keeps of --robustness: the settings, the method, each group's row, the findings."""
    rows = group_rows(groups, baseline)
    return {"limit": options.limit, "corruption_seed": options.seed,
            "method": method_text([r for records in groups.values() for r in records]),
            "rows": rows, "findings": findings(rows, seeds)}


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
    errors = {what: [_half_width(r[f"{key}_per_seed"]) for r in rows]
              for what, key in (("clean", "clean_accuracy"), ("corrupted", "corruption_accuracy"))}
    bars = plots.accuracy_bars(names, series, figure, errors=errors,
                               title="Clean and mean corrupted accuracy, mean and 95% interval over seeds")
    (headers, values), (change_headers, changes) = group_tables(rows)
    report.section("Beyond the test split").text(summary["method"]).table(headers, values).table(
        change_headers, changes).text(" ".join(summary["findings"])).image(bars, "Clean and mean corrupted test accuracy per variant; whiskers = "
                                                   "95% interval of the mean over seeds (none for one seed)")


def _half_width(values: list[float]) -> float:
    interval = confidence_interval(values)
    return 0.0 if interval is None else (interval[1] - interval[0]) / 2
