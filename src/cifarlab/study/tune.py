"""cifarlab tune: search a recipe with Optuna on a validation split; the test split is touched once, at the end.

Each trial is an ordinary run folder under OUT/trials/ trained with `--no-test`: it is scored on the
validation split alone, and pruned (Optuna's median pruner) when its per-epoch validation accuracy falls
behind the other trials' at the same epoch. The sampler is TPE with --seed. Trials live in an Optuna
storage: a SQLite file in OUT by default (no server), or `--storage postgresql://...` shared by several
processes or machines; the same command again continues the study up to --trials.

At the end: OUT/best-recipe.toml (usable as --recipe; it records the trial it came from), tune.json, a
report (md + html: optimisation history, parameter importances, parallel coordinates, the best trial's
curves) and, with --confirm-seeds K, the best recipe retrained on the whole train split over K seeds with
its test accuracy as mean ± std and 95% interval: the only time the test split is scored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from cifarlab.config import FIELD_TYPES, TrainConfig, load_recipe, validate
from cifarlab.errors import CifarlabError, Interrupted, UsageError
from cifarlab.run import atomic_write_json, atomic_write_text, load_run
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out

# The default search space: the knobs that matter for a small CNN, and augmentation strength.
DEFAULT_SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
    "schedule": {"type": "categorical", "choices": ["onecycle", "cosine"]},
    "warmup_epochs": {"type": "float", "low": 0.0, "high": 2.0},
    "augment": {"type": "categorical", "choices": ["none", "flip", "crop,flip", "crop,flip,cutout"]},
}
# What a trial may not vary: the question itself, and where things are.
FIXED = {"model", "dataset", "model_args", "recipe", "val_size", "seed", "out", "data_dir", "device", "quiet",
         "overwrite", "test", "download", "tensorboard", "checkpoint_every", "image_size", "channels", "limit_train"}


def load_space(path: str | Path | None) -> dict:
    """The search space: DEFAULT_SPACE, or a TOML file of tables `[setting] type = "float" | "int" |
    "categorical"`, with low / high (and log = true) or choices; checked here, one line per mistake."""
    if path is None:
        return DEFAULT_SPACE
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--space {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--space {path}: not valid TOML ({e})") from None
    if not data:
        raise UsageError(f"--space {path}: no settings to search")
    for name, spec in data.items():
        _check_dimension(path, name, spec)
    return data


def _check_dimension(path: Path, name: str, spec) -> None:
    where = f"--space {path}: [{name}]"
    if name not in FIELD_TYPES or name in FIXED:
        raise UsageError(f"{where} is not a setting a trial may vary")
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise UsageError(f'{where} needs type = "float", "int" or "categorical"')
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise UsageError(f"{where} needs a non-empty list of choices")
        return
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
            or low >= high:
        raise UsageError(f"{where} needs numbers low < high, got low={low!r}, high={high!r}")
    if spec.get("log") and low <= 0:
        raise UsageError(f"{where}: a log scale needs low > 0, got {low}")


def sample(trial, space: dict) -> dict:
    """One trial's settings from the space (augment choices are comma strings, 'none' = no augmentation)."""
    values = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            value = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            value = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            value = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        values[name] = _as_setting(name, value)
    return values


def _as_setting(name: str, value):
    if name == "augment" and isinstance(value, str):
        return [] if value == "none" else [op.strip() for op in value.split(",") if op.strip()]
    return value


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError('cifarlab tune needs Optuna: pip install "cifarlab[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune(cfg: TrainConfig, trials: int, space: dict, storage: str | None = None, study_name: str | None = None,
         confirm_seeds: int = 0, launch: Launch = SEQUENTIAL, worker_args: list[str] | None = None) -> dict:
    """Run the study up to `trials` trials (continuing the trials already in its storage); returns tune.json.

    launch: with jobs N, N-1 more `cifarlab tune` processes (worker_args, the command's own arguments) share
    the study with this one; with ray, N of them run as Ray tasks and this process only waits. Either way the
    summary, the recipe, the report and the confirmation come from here, once every worker is done."""
    optuna = _optuna()
    if cfg.val_size <= 0:
        raise UsageError("tune selects on a validation split: --val-size must be > 0 (for example 5000)")
    if trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    out = Path(cfg.out) if cfg.out else default_out(f"tune-{cfg.model}-{cfg.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    study = open_study(optuna, study_name or f"{cfg.model}-{cfg.dataset}", storage, cfg.seed)
    # Stop at `trials` in the whole study, counting the ones other workers are running: several processes
    # (or machines, on one --storage) share the count, and a trial interrupted earlier (failed) is replaced.
    state = optuna.trial.TrialState
    counted = (state.COMPLETE, state.PRUNED, state.RUNNING)
    workers = start_workers(launch, [*(worker_args or []), "--storage", storage, "--study", study.study_name,
                                     "--confirm-seeds", "0", "--quiet"], out)
    if not launch.ray and len(study.get_trials(deepcopy=False, states=counted)) < trials:
        optimize(study, lambda trial: objective(trial, cfg, space, out, optuna),
                 optuna.study.MaxTrialsCallback(trials, states=counted))
    workers.wait()
    result = summarize(study, cfg, storage, out, optuna)
    write_best_recipe(out / "best-recipe.toml", cfg, result)
    if confirm_seeds:
        result["confirm"] = confirm(cfg, result["best"]["params"], out, confirm_seeds)
    atomic_write_json(out / "tune.json", result)
    write_report(out, result, study)
    return result


def optimize(study, objective, enough) -> None:
    """study.optimize until `enough` says so, stopping cleanly on SIGINT/SIGTERM. A signal during a trial's
    training is fit's: it saves, and the trial ends as failed. One anywhere else only sets a flag: the trial
    in hand ends as failed before it trains, and the study stops. (Left to Python, the KeyboardInterrupt
    could land between Optuna creating a trial and running it, leaving that trial 'running' for ever, and a
    rerun would count it among the trials.)"""
    from cifarlab.training.state import StopSignals

    def stopped() -> Interrupted:
        return Interrupted("tune stopped by a signal; finished trials are kept: run the same command again to "
                           "continue", stop.signum)

    def checked(trial):
        if stop.signum is not None:
            raise stopped()
        return objective(trial)

    def stopping(study, trial):
        enough(study, trial)
        if stop.signum is not None:
            study.stop()

    with StopSignals() as stop:
        study.optimize(checked, callbacks=[stopping])
    if stop.signum is not None:
        raise stopped()


class Workers:
    """The other processes of a parallel study: started with it, waited for before the summary, or ended."""

    def __init__(self, processes: list | None = None, ray_codes=None, logs: list[Path] | None = None):
        self.processes, self.ray_codes, self.logs = processes or [], ray_codes, logs or []

    def wait(self) -> None:
        from cifarlab.study.launch import exit_code

        codes = [exit_code(p.wait()) for p in self.processes] + (self.ray_codes() if self.ray_codes else [])
        failed = [i for i, code in enumerate(codes) if code != 0]
        if failed:
            where = f"; see {self.logs[failed[0]]}" if failed[0] < len(self.logs) else ""
            raise CifarlabError(f"{len(failed)} of {len(codes)} tune workers failed{where}")

    def stop(self) -> None:
        """End every worker here (SIGTERM: a trial in training saves and ends as failed) and wait for them."""
        import signal

        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            p.wait()


def start_workers(launch: Launch, args: list[str], out: Path) -> Workers:
    """`cifarlab ARGS` in jobs-1 more processes here, or in `jobs` Ray tasks; each worker's output goes to
    OUT/workers/worker-K.log. Here the launcher places them: cores/N threads each, worker K pinned to the K-th
    share of the cores and given the K-th GPU (this process keeps the first share's thread count)."""
    if not launch.parallel:
        return Workers()
    command = [sys.executable, "-m", "cifarlab", *args]
    if launch.ray:
        from cifarlab.study.cluster import run_commands_on_ray
        return Workers(ray_codes=run_commands_on_ray([command] * launch.jobs, launch.ray, launch.ray_cpus, out))
    from cifarlab.study.launch import environment, slots, start_process, threads_per_run

    threads = threads_per_run(launch.jobs)
    import torch
    torch.set_num_threads(threads)
    (out / "workers").mkdir(parents=True, exist_ok=True)
    places = slots(launch.jobs)
    logs = [out / "workers" / f"worker-{k}.log" for k in range(1, launch.jobs)]
    processes = []
    for slot, log in zip(places[1:], logs):
        with open(log, "a") as sink:       # the worker holds its own copy of the descriptor
            # in this process group, as before: a terminal's Ctrl-C reaches every tune process at once
            processes.append(start_process(command, environment(slot, threads), slot.cpus, own_session=False,
                                           stdout=sink, stderr=subprocess.STDOUT))
    return Workers(processes, logs=logs)


def open_study(optuna, name: str, storage: str, seed: int):
    """Create the study, or join it: workers starting together may race to create the storage's tables or the
    study itself, and the loser of such a race simply tries again."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                       sampler=optuna.samplers.TPESampler(seed=seed),
                                       pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)


def objective(trial, cfg: TrainConfig, space: dict, out: Path, optuna) -> float:
    """Train one trial on the train split minus val, never scoring test; its best val accuracy."""
    from cifarlab.training.engine import fit

    settings = sample(trial, space)
    folder = out / "trials" / f"trial-{trial.number:04d}"
    trial_cfg = dataclasses.replace(cfg, **settings, out=str(folder), quiet=True, overwrite=True, test=False,
                                    eval_every=1, tensorboard=False)
    validate(trial_cfg)
    trial.set_user_attr("run", str(folder))
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")     # who trained it

    def report(row: dict) -> None:
        trial.report(row["val_acc"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned()

    if not cfg.quiet:
        print(f"cifarlab tune: trial {trial.number}: {settings}", flush=True)
    summary = fit(trial_cfg, on_epoch=report)
    return summary["best_val_acc"]


def summarize(study, cfg: TrainConfig, storage: str, out: Path, optuna) -> dict:
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
               "run": t.user_attrs.get("run"), "worker": t.user_attrs.get("worker"),
               "epochs_trained": len(t.intermediate_values)} for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UsageError(f"no trial of study {study.study_name} completed (all pruned or failed); see {out / 'trials'}")
    best = study.best_trial
    return {"study": study.study_name, "storage": storage, "model": cfg.model, "dataset": cfg.dataset,
            "recipe": cfg.recipe, "epochs": cfg.epochs, "val_size": cfg.val_size, "seed": cfg.seed,
            "best": {"number": best.number, "val_acc": best.value,
                     "params": {k: _as_setting(k, v) for k, v in best.params.items()}, "run": best.user_attrs["run"]},
            "trials": trials}


def write_best_recipe(path: Path, cfg: TrainConfig, result: dict) -> None:
    """The base recipe with the best trial's settings: a TOML file `--recipe` accepts."""
    best = result["best"]
    settings = {**(load_recipe(cfg.recipe) if cfg.recipe else {}), "epochs": cfg.epochs, **best["params"]}
    lines = [f"# cifarlab tune: trial {best['number']} of study {result['study']} ({result['storage']})",
             f"# {best['val_acc']:.2f}% validation accuracy on {cfg.val_size:,} held-out train images; "
             f"{cfg.model} on {cfg.dataset}, from recipe {cfg.recipe or '(defaults)'}",
             f'description = "tuned by cifarlab tune: trial {best["number"]} of {result["study"]}"',
             f'models = ["{cfg.model}"]']
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def confirm(cfg: TrainConfig, params: dict, out: Path, seeds: int) -> dict:
    """The best settings on the whole train split (no val held out), K seeds, scored on test: once."""
    from cifarlab.study.seeds import train_seeds

    final = dataclasses.replace(cfg, **params, val_size=0, test=True, out=str(out / "confirm"))
    summary = train_seeds(final, seeds) if seeds > 1 else _one(final)
    return {"seeds": summary.get("seeds", [cfg.seed]), "folder": str(out / "confirm"),
            "final_test_acc_mean": summary.get("final_test_acc_mean", summary["final_test_acc"]),
            "final_test_acc_std": summary.get("final_test_acc_std", 0.0),
            "final_test_acc_ci95": summary.get("final_test_acc_ci95")}


def _one(cfg: TrainConfig) -> dict:
    from cifarlab.study.runs import run_or_reuse

    return run_or_reuse(cfg).summary


def write_report(out: Path, result: dict, study) -> None:
    from cifarlab.report import plots
    from cifarlab.report.document import Report
    from cifarlab.report.plots import history_figure, importance_figure, parallel_figure

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    best = result["best"]
    report = Report(f"Recipe search: {result['model']} on {result['dataset']}")
    report.section("Search").text(
        f"{len(result['trials'])} trials of study {result['study']}, each {result['epochs']} epochs, selected on "
        f"{result['val_size']:,} validation images; the test split was not scored by any trial. Best: trial "
        f"{best['number']}, {best['val_acc']:.2f}% validation accuracy, settings {best['params']}.")
    rows = [[t["number"], t["state"], "-" if t["value"] is None else f"{t['value']:.2f}", t["epochs_trained"],
             json.dumps(t["params"])] for t in result["trials"]]
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
        best_rows = load_run(best["run"]).metrics
        report.section("The best trial").image(plots.curves({f"trial {best['number']}": best_rows},
                                                            figures / "best_curves.png", "Best trial"), "Its curves")
    else:     # trained by another machine of a shared study
        report.section("The best trial").text(f"Its run folder, {best['run']}, is on the machine that trained it.")
    if "confirm" in result:
        c = result["confirm"]
        report.section("Confirmation on test").text(
            f"The best settings retrained on the whole train split over {len(c['seeds'])} seed(s): "
            f"{c['final_test_acc_mean']:.2f}% ± {c['final_test_acc_std']:.2f} test accuracy.")
    report.write(out)


def _importances(study) -> dict[str, float]:
    """Optuna's parameter importances, or {} where it cannot tell (fewer than 2 complete trials)."""
    optuna = _optuna()
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
