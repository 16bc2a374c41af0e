"""What `cifarlab tune` leaves once its trials are done: tune.json (a Tuning, whose str() is what the command
prints), best-recipe.toml, the confirmation on test, trained from that file itself, and the report."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import fields
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.recipes import build_config
from cifarlab.runfolder import atomic_write_json, atomic_write_text, open_run
from cifarlab.settings import TrainConfig

# The settings a recipe file may carry: best-recipe.toml holds every one of them, as the trials used it.
RECIPE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata["in_recipes"])
STATES = ("complete", "pruned", "failed", "running")


def as_setting(name: str, value):
    """A sampled value as the setting takes it: augment choices are comma strings, 'none' is no augmentation."""
    if name == "augment" and isinstance(value, str):
        return [] if value == "none" else [op.strip() for op in value.split(",") if op.strip()]
    return value


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError('cifarlab tune needs Optuna: pip install "cifarlab[tune]"') from None
    # ERROR, not WARNING: Optuna logs a failing trial's traceback as a warning before re-raising, so a bad
    # setting would print a traceback above cifarlab's one-line error; tune reports each failed trial itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def trial_config(cfg: TrainConfig, settings: dict, folder: Path) -> TrainConfig:
    """What a trial trains: cfg with its sampled settings, scored on val each epoch (for the pruner), never on test."""
    return dataclasses.replace(cfg, **settings, out=str(folder), quiet=True, overwrite=True, test=False,
                               eval_every=1, tensorboard=False)


class Tuning(dict):
    """tune.json's content; str() is what `cifarlab tune` prints."""

    def __str__(self) -> str:
        return tuning_text(self)

    @property
    def recipe(self) -> Path:
        """OUT/best-recipe.toml: usable as recipe= / --recipe."""
        return Path(self["folder"]) / "best-recipe.toml"


def finish(study, cfg: TrainConfig, storage: str, val_images: int, confirm_seeds: int, model=None) -> Tuning:
    """The summary, best-recipe.toml, the confirmation (from that file), tune.json and the report."""
    out = Path(cfg.out)
    result = summarize(study, cfg, storage, val_images)
    write_best_recipe(out / "best-recipe.toml", cfg, result)
    if confirm_seeds:
        result["confirm"] = confirm(cfg, out / "best-recipe.toml", result["best"]["number"], confirm_seeds, model)
    atomic_write_json(out / "tune.json", dict(result))
    write_report(out, result, study)
    return result


def shown_storage(storage: str) -> str:
    """The storage URL without its password: tune.json, the recipe and the report are for sharing."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", storage)


def summarize(study, cfg: TrainConfig, storage: str, val_images: int) -> Tuning:
    trials = [{"number": t.number, "state": _state(t), "value": t.value, "params": t.params,
               "run": t.user_attrs.get("run"), "worker": t.user_attrs.get("worker"),
               "failed": t.user_attrs.get("failed"), "epochs_trained": len(t.intermediate_values)}
              for t in study.trials]
    counts = {state: sum(t["state"] == state for t in trials) for state in STATES}
    if not counts["complete"]:
        raise UsageError(f"no trial of study {study.study_name} completed ({counts_text(counts)}); "
                         f"see {Path(cfg.out) / 'trials'}")
    best = study.best_trial
    return Tuning({"study": study.study_name, "storage": shown_storage(storage), "folder": cfg.out,
                   "model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "epochs": cfg.epochs,
                   "val_size": cfg.val_size, "val_images": val_images, "seed": cfg.seed, "counts": counts,
                   "best": {"number": best.number, "val_acc": best.value, "params": _settings(best.params),
                            "run": best.user_attrs["run"]},
                   "trials": trials})


def _state(trial) -> str:
    name = trial.state.name.lower()
    return "failed" if name == "fail" else name


def _settings(params: dict) -> dict:

    return {k: as_setting(k, v) for k, v in params.items()}


def counts_text(counts: dict) -> str:
    """'6 trials (4 finished, 2 pruned); 1 failed': a failed trial is no trial of the search."""
    text = f"{counts['complete'] + counts['pruned']} trials ({counts['complete']} finished, {counts['pruned']} pruned)"
    if counts["failed"]:
        text += f"; {counts['failed']} failed"
    if counts["running"]:
        text += f"; {counts['running']} still running"
    return text


def tuning_text(result: dict) -> str:
    best = result["best"]
    lines = [f"study {result['study']}: {counts_text(result['counts'])}",
             f"best: trial {best['number']}, {best['val_acc']:.2f}% validation accuracy, {best['params']}"]
    if "confirm" in result:
        c = result["confirm"]
        lines.append(f"confirmed on test over {len(c['seeds'])} seed(s): {c['final_test_acc_mean']:.2f}% "
                     f"\u00b1 {c['final_test_acc_std']:.2f}")
    lines.append(f"best-recipe.toml, tune.json, report.html in {result['folder']}")
    return "\n".join(lines) + "\n"


def write_best_recipe(path: Path, cfg: TrainConfig, result: dict) -> None:
    """Every recipe setting of the best trial, fixed or sampled: a TOML file `--recipe` accepts, from which
    the trial's own settings come back (`tune --optimizer sgd` gives optimizer = "sgd", not the default)."""

    best = result["best"]
    trained = trial_config(cfg, best["params"], Path(best["run"]))
    settings = {name: getattr(trained, name) for name in RECIPE_FIELDS if getattr(trained, name) is not None}
    lines = [f"# cifarlab tune: trial {best['number']} of study {result['study']} ({result['storage']})",
             f"# {best['val_acc']:.2f}% validation accuracy on {result['val_images']:,} held-out train images; "
             f"{cfg.model} on {cfg.dataset}, from recipe {cfg.recipe or '(defaults)'}",
             "# Training from this file repeats that trial (its val split and seed); the confirmation trains it",
             "# with val_size = 0, on the whole train split. Settings a recipe does not hold are in the command:",
             f"#   {repeat_command(cfg, path)}",
             f'description = "tuned by cifarlab tune: trial {best["number"]} of {result["study"]}"',
             f"models = [{_toml_value(cfg.model)}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def repeat_command(cfg: TrainConfig, recipe: Path) -> str:
    """The `cifarlab train` command that repeats the best trial from the file: the settings a recipe may not
    hold (the model's arguments, image size, channels, the CPU thread count the trials recorded) on it."""
    import shlex

    parts = ["cifarlab", "train", "--model", cfg.model, "--dataset", cfg.dataset, "--recipe", str(recipe)]
    parts += [f for key, value in sorted(cfg.model_args.items()) for f in ("--model-arg", f"{key}={value!r}")]
    for name in ("image_size", "channels", "threads"):
        if getattr(cfg, name) is not None:
            parts += [f"--{name.replace('_', '-')}", str(getattr(cfg, name))]
    return shlex.join(parts)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def confirm(cfg: TrainConfig, recipe: Path, number: int, seeds: int, model=None) -> dict:
    """The recipe file on the whole train split (no val held out), K seeds, scored on test: once. Built from
    the file itself with the settings no recipe carries (model, data, where), so a wrong file shows here.
    One folder per confirmed trial: a continued study with a new best never meets the old best's runs."""
    from cifarlab.study.seeds import train_seeds

    folder = Path(cfg.out) / "confirm" / f"trial-{number:04d}"
    unrecorded = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)
                  if not f.metadata["in_recipes"] and f.name != "recipe"}
    final = build_config({**unrecorded, "val_size": 0, "test": True, "out": str(folder)}, str(recipe), model)
    summary = train_seeds(final, seeds, model) if seeds > 1 else _one(final, model)
    return {"seeds": summary.get("seeds", [final.seed]), "folder": str(folder),
            "final_test_acc_mean": summary.get("final_test_acc_mean", summary["final_test_acc"]),
            "final_test_acc_std": summary.get("final_test_acc_std", 0.0),
            "final_test_acc_ci95": summary.get("final_test_acc_ci95")}


def _one(cfg: TrainConfig, model=None) -> dict:
    from cifarlab.study.runs import run_or_reuse

    return run_or_reuse(cfg, model).summary


def write_report(out: Path, result: dict, study) -> None:
    from cifarlab.report import plots
    from cifarlab.report.document import Report
    from cifarlab.report.plots import history_figure, importance_figure, parallel_figure

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    best = result["best"]
    report = Report(f"Recipe search: {result['model']} on {result['dataset']}")
    report.section("Search").text(
        f"Study {result['study']}: {counts_text(result['counts'])}, each of {result['epochs']} "
        f"epoch{'' if result['epochs'] == 1 else 's'}, selected on {result['val_images']:,} validation images; the "
        f"test split was not scored by any trial. Best: trial "
        f"{best['number']}, {best['val_acc']:.2f}% validation accuracy, settings {best['params']}.")
    rows = [[t["number"], t["state"] + (f" ({t['failed']})" if t.get("failed") else ""),
             "-" if t["value"] is None else f"{t['value']:.2f}", t["epochs_trained"], json.dumps(t["params"])]
            for t in result["trials"]]
    report.section("Trials").table(["trial", "state", "best val %", "epochs", "settings"], rows)
    report.section("Optimisation history").image(plots.save(history_figure(result["trials"]), figures /
                                                             "history.png"), "Validation accuracy per trial")
    importances = _importances(study)
    if importances:
        report.section("Parameter importances").image(plots.save(importance_figure(importances), figures /
                                                                 "importances.png"),
                                                      "How much each setting explains the validation accuracy")
    report.section("Parallel coordinates").image(plots.save(parallel_figure(result["trials"]), figures /
                                                            "parallel.png"), "Each line a trial, coloured by accuracy")
    if (Path(best["run"]) / "metrics.jsonl").is_file():
        best_rows = open_run(best["run"]).metrics
        report.section("The best trial").image(plots.curves({f"trial {best['number']}": best_rows},
                                                            figures / "best_curves.png", "Best trial"), "Its curves")
    else:     # trained by another machine of a shared study
        report.section("The best trial").text(f"Its run folder, {best['run']}, is on the machine that trained it.")
    if "confirm" in result:
        c = result["confirm"]
        report.section("Confirmation on test").text(
            f"The best settings, trained from best-recipe.toml on the whole train split over {len(c['seeds'])} "
            f"seed(s): {c['final_test_acc_mean']:.2f}% ± {c['final_test_acc_std']:.2f} test accuracy.")
    report.write(out)


def _importances(study) -> dict[str, float]:
    """Optuna's parameter importances, or {} where it cannot tell (fewer than 2 complete trials)."""

    optuna = import_optuna()
    try:
        with warnings.catch_warnings():     # e.g. "importances will be equal" on a few trials: the plot shows it
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
