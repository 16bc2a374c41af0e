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

import json
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.robustness import METRICS, findings, method_text
from cifarlab.report.stats import confidence_interval, mean_std
from cifarlab.runfolder import ROBUSTNESS as RECORD, RunFolder, atomic_write_json, weights_identity


@dataclass(frozen=True)
class Robustness:
    """What --robustness measures: `limit` test images per corrupted set (None: the whole test split), the
    corruptions' seed; enabled=False (the default) measures nothing."""
    enabled: bool = False
    limit: int | None = None
    seed: int = 0

    def check(self) -> "Robustness":
        if self.limit is not None and (not isinstance(self.limit, int) or isinstance(self.limit, bool)
                                       or self.limit < 1):
            raise UsageError(f"--robustness-limit must be >= 1, got {self.limit}")
        if self.limit is not None and not self.enabled:
            raise UsageError("--robustness-limit sets how many test images each corrupted set holds: add --robustness")
        return self


def check_study(cfg) -> None:
    """Refuse, before any run trains, a study whose runs --robustness could not measure."""
    from cifarlab.data.sources import DATASETS

    if not cfg.test:
        raise UsageError("--robustness corrupts the test split and scores it: leave out --no-test")
    from cifarlab.data.corruptions import check_side

    info, data = DATASETS.get(cfg.dataset), None
    if info is not None:
        channels, size = info.channels, (info.size, info.size)
    else:                    # a folder: or npz: dataset: its images' shape, and whether it ships a val split
        from cifarlab.training.splits import prepare_data

        data = prepare_data(cfg)
        channels, size = (data.test.images.shape[1], data.test.images.shape[2:]) if data.test is not None \
            else (3, (32, 32))
    if channels != 3:
        raise UsageError(f"--robustness: {cfg.dataset} has {channels} channel(s); the corruptions are defined for "
                         "colour images")
    check_side(size)
    if cfg.val_size or (data is not None and data.val is not None):
        return
    raise UsageError("--robustness fits a temperature on a val split (never on test), and these runs have none: "
                     "pass --val-size N, e.g. 5000")


def _cifar101_files(cfg) -> bool:
    from cifarlab.data.cifar101 import DATA_FILE, LABELS_FILE, TRAINED_ON, cifar101_folder

    if cfg.dataset != TRAINED_ON:
        return False
    folder = cifar101_folder(cfg.data_dir)
    return (folder / DATA_FILE).is_file() and (folder / LABELS_FILE).is_file()


def record_key(run: RunFolder, cfg, options: Robustness) -> dict:
    """What a record was measured on: the weights (sha256), the test data's identity, the settings, and what
    generates the sets (the corruptions' code, torch's and Pillow's versions, as their cache key holds)."""
    import PIL
    import torch

    from cifarlab.data.corruptions import CODE_VERSION
    from cifarlab.fingerprint import data_identity

    weights = weights_identity(run.weights_to_load())
    return {"weights": weights["name"], "weights_sha256": weights["sha256"], "data": data_identity(cfg),
            "limit": options.limit, "corruption_seed": options.seed, "corruption_code": CODE_VERSION,
            "torch": torch.__version__, "pillow": PIL.__version__, "cifar10.1": _cifar101_files(cfg)}


def measure(run: RunFolder, options: Robustness, data_dir: str | None = None, device: str = "auto",
            progress: bool = True) -> dict:
    """One run's record (see the module's text), written to RUN/robustness.json; an earlier record is reused
    when the weights' sha256 and the settings are the same."""
    cfg = run.train_config()
    if data_dir is not None:
        cfg.data_dir = data_dir
    key = record_key(run, cfg, options)
    path = run.path / RECORD
    old = _read(path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    record = {"key": key, "run": str(run.path), "seed": cfg.seed, "model": cfg.model, "dataset": cfg.dataset,
              "weights": key["weights"], **_measured(run, cfg, options, data_dir, device, progress, key["cifar10.1"])}
    atomic_write_json(path, record)
    return record


def _measured(run, cfg, options, data_dir, device, progress, cifar101: bool) -> dict:
    from cifarlab.robustness import evaluate_corruptions

    views = (bool(cfg.tta), int(cfg.tta_shift) if cfg.tta else 0)    # the run's own, as its test accuracy
    corrupted = evaluate_corruptions(run, "all", None, options.limit, None, options.seed, tta=views,
                                     data_dir=data_dir, device=device, progress=progress)
    out = {"tta": {"flip": views[0], "shift": views[1]}, "images_per_set": corrupted["images"],
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
                "ece_calibrated": None, "nll": before["nll"], "nll_calibrated": None, "no_temperature": str(e),
                "no_temperature_edge": e.edge}
    return {"temperature": calibration["temperature"], "val_images": calibration["val"]["before"]["images"],
            "ece": calibration["test"]["before"]["ece"], "ece_calibrated": calibration["test"]["after"]["ece"],
            "nll": calibration["test"]["before"]["nll"], "nll_calibrated": calibration["test"]["after"]["nll"],
            "no_temperature": None, "no_temperature_edge": None}


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
    """The METRICS some record has a value for (CIFAR-10.1 only with its files; ECE after T only where a
    temperature fits)."""
    return [m for m in METRICS if any(r.get(m[0]) is not None for r in records)]


def group_rows(groups: dict[str, list[dict]], baseline: str) -> list[dict]:
    """Per group, each metric's mean, std and per-seed values (None where a run has none), and (but the
    baseline) the paired change from the baseline, same seed against same seed, over the seeds where both have a
    value, with its 95% interval (None for one pair)."""
    every = [r for records in groups.values() for r in records]
    base = {r["seed"]: r for r in groups[baseline]}
    rows = []
    for name, records in groups.items():
        row = {"group": name, "seeds": [r["seed"] for r in records], "images_per_set": records[0]["images_per_set"]}
        for key, _, _ in metrics_of(every):
            values = [r.get(key) for r in records]
            present = [float(v) for v in values if v is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(present) if present else (None, None)
            row[f"{key}_per_seed"] = values
            if name != baseline:
                diffs = [float(r[key]) - float(base[r["seed"]][key]) for r in records
                         if r.get(key) is not None and base.get(r["seed"], {}).get(key) is not None]
                row[f"{key}_change"] = sum(diffs) / len(diffs) if diffs else None
                row[f"{key}_change_ci95"] = confidence_interval(diffs)
                row[f"{key}_pairs"] = len(diffs)
        rows.append(row)
    return rows


def compare_figures(folders: list[Path]) -> dict | None:
    """compare's robustness figures for a run (one folder) or a `train --seeds` folder (its seeds' folders):
    the mean corruption accuracy over all 15 x 5 generated sets (and the images per set) and the test ECE after
    temperature scaling, averaged over the folders (None where a folder lacks one); from robustness.json, else
    from `evaluate --corruptions all` and `--calibration`'s files. A file older than the weights, or a record of
    other weights, is stale and not shown. None where no folder has either figure."""
    corrupted, calibrated = [], []
    for folder in folders:
        accuracy, images, ece = _folder_figures(Path(folder))
        if accuracy is not None:
            corrupted.append((accuracy, images))
        if ece is not None:
            calibrated.append(ece)
    if not corrupted and not calibrated:
        return None
    whole = len(corrupted) == len(folders)
    return {"corruption_accuracy": sum(a for a, _ in corrupted) / len(corrupted) if whole else None,
            "images_per_set": sorted({n for _, n in corrupted}) if whole else None,
            "ece_calibrated": sum(calibrated) / len(calibrated) if len(calibrated) == len(folders) else None}


def _folder_figures(folder: Path) -> tuple[float | None, int | None, float | None]:
    from cifarlab.runfolder import open_run

    try:
        weights = open_run(folder).weights_to_load()
    except UsageError:
        return None, None, None
    record = _read(folder / RECORD)
    try:
        if record is not None and record["key"]["weights_sha256"] == weights_identity(weights)["sha256"]:
            return record["corruption_accuracy"], record["images_per_set"], record["ece_calibrated"]
        sets = _fresh(folder / "evaluation-corruptions" / "corruptions.json", weights)
        calibration = _fresh(folder / "evaluation-calibration" / "calibration.json", weights)
        whole = (sets is not None and sets.get("generated") and len(sets["accuracy"]) == 15
                 and len(sets["mean_by_severity"]) == 5)      # only the full 15 x 5 makes the mean comparable
        return (sets["mean_accuracy"] if whole else None, sets["images"] if whole else None,
                calibration["test"]["after"]["ece"] if calibration is not None else None)
    except (KeyError, TypeError):       # a file of another shape: no figure rather than a traceback
        return None, None, None


def _fresh(path: Path, weights: Path) -> dict | None:
    """The JSON at `path` if it was written after the weights were (an evaluation of these weights)."""
    if not path.is_file() or path.stat().st_mtime < weights.stat().st_mtime:
        return None
    return _read(path)


def compare_cells(figures: dict | None) -> list[str]:
    """The two columns' text: "61.23 (10,000)" and "4.12"; "-" for a missing figure."""
    figures = figures or {}
    accuracy, ece = figures.get("corruption_accuracy"), figures.get("ece_calibrated")
    sizes = "/".join(f"{n:,}" for n in figures.get("images_per_set") or [])
    return [f"{accuracy:.2f} ({sizes})" if accuracy is not None else "-", f"{ece:.2f}" if ece is not None else "-"]


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
