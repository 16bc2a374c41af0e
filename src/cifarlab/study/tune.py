"""cifarlab tune: search a recipe with Optuna on a validation split; the test split is touched once, at the end.

Each trial is an ordinary run folder under OUT/trials/ trained with `--no-test`: it is scored on the
validation split alone, and pruned (Optuna's median pruner) when its per-epoch validation accuracy falls
behind the other trials' at the same epoch; one that diverges (non-finite loss) is recorded as failed and
the study goes on. The sampler is TPE with --seed. Trials live in an Optuna storage: a SQLite file in OUT by
default (no server), or `--storage postgresql://...` shared by several processes or machines; the same
command again continues the study up to --trials, and one with other fixed settings is refused.

At the end (tune_results.py): OUT/best-recipe.toml (every setting the trials shared plus the best one's
sampled ones; it records the trial it came from), tune.json, a report and, with --confirm-seeds K, the
best recipe retrained from that file on the whole train split over K seeds, scored on test: the only time
the test split is scored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from cifarlab.errors import Diverged, Interrupted, UsageError
from cifarlab.runfolder import atomic_write_json
from cifarlab.settings import FIELD_TYPES, TrainConfig
from cifarlab.study.launch import with_threads
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out, train_run
from cifarlab.study.tune_results import as_setting, finish, import_optuna, trial_config
from cifarlab.study.tune_workers import Workers, check_importable, pinned, start_workers
from cifarlab.validation import config_from_dict, validate

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
# Settings a continued study may change: where things are and what is printed, not what a trial computes
# (several machines share one study from their own --out and --data-dir).
MAY_DIFFER = {"out", "data_dir", "device", "quiet", "overwrite", "download", "tensorboard", "checkpoint_every",
              "test", "eval_every", "recipe"}
SETTINGS_ATTR = "cifarlab_settings"       # the study's user attribute that records them
WORKER_FILE = "tune-worker.json"


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
    return check_space(data, f"--space {path}")


def check_space(space: dict, source: str = "space") -> dict:
    """`space` itself once every dimension is a setting a trial may vary, well described."""
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{source}: no settings to search")
    for name, spec in space.items():
        _check_dimension(source, name, spec)
    return space


def _check_dimension(source: str, name: str, spec) -> None:
    where = f"{source}: [{name}]"
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
        values[name] = as_setting(name, value)
    return values


def tune(cfg: TrainConfig, trials: int, space: dict, storage: str | None = None, study_name: str | None = None,
         confirm_seeds: int = 0, launch: Launch = SEQUENTIAL, model=None, val_size_given: bool = True):
    """Run the study up to `trials` trials (continuing the trials already in its storage); returns the
    Tuning (tune.json's content, str() what `cifarlab tune` prints).

    launch: with jobs N, up to N-1 more processes (`cifarlab tune --worker-of OUT/tune-worker.json`, which
    holds this cfg) share the study with this one; with ray, the workers run as Ray tasks and this process
    only waits. The summary, the recipe, the report and the confirmation come from here, once they are done.
    val_size_given: False when the user gave no --val-size, so that it is chosen from the data."""

    optuna = import_optuna()
    if not isinstance(trials, int) or trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    if not isinstance(confirm_seeds, int) or confirm_seeds < 0:
        raise UsageError(f"--confirm-seeds must be >= 0, got {confirm_seeds}")
    cfg, val_images = with_val_split(cfg, val_size_given)        # before Optuna: a bad size is one line
    out = Path(cfg.out) if cfg.out else default_out(f"tune-{cfg.model}-{cfg.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, out=str(out))
    storage = storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    if launch.parallel:
        check_importable(model, launch)
        cfg = with_threads(cfg, launch)    # every trial, here or in a worker, trains with (and records) this count
    study = join_study(optuna, study_name or f"{cfg.model}-{cfg.dataset}", storage, cfg, space)
    remaining = trials - len(counted(study, optuna))
    workers = Workers()
    try:
        if remaining > 0 and launch.parallel:
            # never more workers than trials left: an idle one would only find the study done
            launch = dataclasses.replace(launch, jobs=min(launch.jobs, remaining))
            atomic_write_json(out / WORKER_FILE, {"config": cfg.to_dict(), "space": space, "trials": trials})
            workers = start_workers(launch, ["tune", "--worker-of", str(out / WORKER_FILE), "--storage", storage,
                                             "--study", study.study_name], out, cfg.threads)
        if not launch.ray and remaining > 0:
            with pinned(workers.own_cpus):
                run_trials(study, cfg, space, trials, optuna, model)
        workers.wait()
    finally:
        workers.stop()             # the parent failed or was stopped: its workers must not go on unseen
    return finish(study, cfg, storage, val_images, confirm_seeds, model)


def with_val_split(cfg: TrainConfig, given: bool) -> tuple[TrainConfig, int]:
    """(cfg with the validation split the trials select on, its size), checked against the data before any
    trial: without --val-size, 10% of the train split (at least one image per class); a folder with its own
    val/ split uses that."""
    from cifarlab.data.sources import is_custom, load_dataset

    if given and cfg.val_size <= 0 and not is_custom(cfg.dataset):
        raise UsageError("tune selects on a validation split: --val-size must be > 0 (default: 10% of the "
                         "train split)")
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download, image_size=cfg.image_size,
                      channels=cfg.channels, quiet=cfg.quiet)
    if ds.val is not None:
        if cfg.val_size:
            raise UsageError(f"{cfg.dataset} has its own val/ folder, which tune selects on; drop --val-size")
        return cfg, len(ds.val)
    if cfg.val_size <= 0 and given:
        raise UsageError(f"tune selects on a validation split: {cfg.dataset} has no val/ folder, so --val-size "
                         "must be > 0 (default: 10% of the train split)")
    size = cfg.val_size if cfg.val_size > 0 else max(len(ds.train) // 10, len(ds.classes))
    if size >= len(ds.train):
        raise UsageError(f"--val-size {size} must be smaller than the train split ({len(ds.train)} images)")
    return dataclasses.replace(cfg, val_size=size), size


def counted(study, optuna) -> list:
    """The trials that count towards --trials: finished, pruned, diverged (recorded failed) and running ones
    (other workers'). A trial failed by an interruption does not count: it is replaced."""
    state = optuna.trial.TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (state.COMPLETE, state.PRUNED, state.RUNNING)
            or (t.state == state.FAIL and "failed" in t.user_attrs)]


def run_trials(study, cfg: TrainConfig, space: dict, trials: int, optuna, model=None) -> None:
    """Trials in this process until the study holds `trials` counted ones (several processes share the count)."""
    def enough(study, trial):
        if len(counted(study, optuna)) >= trials:
            study.stop()

    if len(counted(study, optuna)) < trials:
        optimize(study, lambda trial: objective(trial, cfg, space, Path(cfg.out), optuna, model), enough)


def work(path: str | Path, storage: str, study_name: str) -> None:
    """A worker of a parallel study (`cifarlab tune --worker-of FILE`): the parent's settings from FILE, its
    trials until the study is done; the parent summarises."""
    optuna = import_optuna()
    job = json.loads(Path(path).read_text())
    cfg = dataclasses.replace(config_from_dict(job["config"]), quiet=True)
    study = join_study(optuna, study_name, storage, cfg, job["space"])
    run_trials(study, cfg, job["space"], job["trials"], optuna)


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


def join_study(optuna, name: str, storage: str, cfg: TrainConfig, space: dict):
    """open_study, refusing one whose trials were run under other fixed settings (another --optimizer,
    --epochs, space, ...): continuing it would mix them in one ranking, and the best recipe would be wrong."""
    study = open_study(optuna, name, storage, cfg.seed)
    wanted = tuned_settings(cfg, space)
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return study
    for key in [*wanted, *(k for k in recorded if k not in wanted)]:
        old, new = recorded.get(key), wanted.get(key)
        if old != new:
            where = storage[len("sqlite:///"):] if storage.startswith("sqlite:///") else "--storage"   # no password
            raise UsageError(f"study {name} in {where} was tuned with {key} {_shown(old)}, this tune asks "
                             f"{_shown(new)}: use another --out or --study")
    return study


def tuned_settings(cfg: TrainConfig, space: dict) -> dict:
    """Every setting that decides a trial's numbers, as JSON keeps it: a searched one as its dimension."""
    values = json.loads(json.dumps(cfg.to_dict(), default=str))
    searched = json.loads(json.dumps(space))
    return {k: {"searched": searched[k]} if k in searched else v for k, v in values.items() if k not in MAY_DIFFER}


def _shown(value) -> str:
    if isinstance(value, dict) and "searched" in value:
        spec = value["searched"]
        if spec.get("type") == "categorical":
            return f"searched over {spec.get('choices')}"
        return f"searched over {spec.get('low')}..{spec.get('high')}{' (log)' if spec.get('log') else ''}"
    return "(not set)" if value is None else str(value)


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


def objective(trial, cfg: TrainConfig, space: dict, out: Path, optuna, model=None) -> float:
    """Train one trial on the train split minus val, never scoring test; its best val accuracy (NaN, which
    Optuna records as failed, when it diverged)."""
    from torch import nn

    settings = sample(trial, space)
    folder = out / "trials" / f"trial-{trial.number:04d}"
    trial_cfg = trial_config(cfg, settings, folder)
    validate(trial_cfg, model)
    trial.set_user_attr("run", str(folder))
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")     # who trained it

    def report(row: dict) -> None:
        trial.report(row["val_acc"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned()

    if not cfg.quiet:
        print(f"cifarlab tune: trial {trial.number}: {settings}", flush=True)
    try:
        summary = train_run(trial_cfg, on_epoch=report, model=copy.deepcopy(model) if isinstance(model, nn.Module)
                            else model)
    except Diverged as e:     # a setting of the space, not a fault of the study: the other trials go on
        trial.set_user_attr("failed", str(e).split(":")[0])
        if not cfg.quiet:
            print(f"cifarlab tune: trial {trial.number} failed: {str(e).split(':')[0]}; the study goes on",
                  file=sys.stderr, flush=True)
        return math.nan
    return summary["best_val_acc"]
