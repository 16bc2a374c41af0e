"""cifarlab from Python: the same study as the command line, for your own model and images.

    import cifarlab
    run = cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn", epochs=2)
    run = cifarlab.train(MyCNN, "folder:~/pets", epochs=5, image_size=64)   # your class, your images
    run.plot(); run.evaluate(tta="flip"); run.predict(["cat.jpg"]); run.export("onnx")
    cifarlab.compare([run_a, run_b])
    best = cifarlab.tune("basic-cnn", "cifar10", trials=20, epochs=3)          # print(best); best.recipe

Settings are the `cifarlab train` flags with `_` for `-` (batch_size=128, label_smoothing=0.1) and
are validated the same way: bad input raises `cifarlab.UsageError` with the line the CLI prints.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.run import Run, as_run, load_run, resume  # noqa: F401 - resume is cifarlab.resume


def _model_ref(model) -> tuple[str, object]:
    """(what config.json records, the Python object or None): a name, module:factory, a class or a module."""
    from torch import nn

    from cifarlab.models import reference

    if isinstance(model, str):
        return model, None
    if isinstance(model, nn.Module) or callable(model):
        return reference(model), model
    raise UsageError(f"model must be a registered name, 'module:factory', a class, a factory or an nn.Module; "
                     f"got {type(model).__name__}")


def _dataset_ref(dataset) -> str:
    """A registered name, folder:PATH, npz:FILE, or (x_train, y_train, x_test, y_test[, classes]) arrays."""
    if isinstance(dataset, (str, Path)):
        return str(dataset)
    if isinstance(dataset, (tuple, list)) and len(dataset) in (4, 5):
        from cifarlab.data.custom import save_arrays

        return f"npz:{save_arrays(*dataset)}"
    raise UsageError("dataset must be a name (cifar10, folder:PATH, npz:FILE) or a tuple "
                     "(x_train, y_train, x_test, y_test) of uint8 arrays")


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _config(model, dataset, recipe, out, settings, default_recipe=False):
    from cifarlab.recipes import train_config

    ref, obj = _model_ref(model)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}   # data_dir=Path(...)
    overrides = {**settings, "model": ref, "dataset": _dataset_ref(dataset), "out": str(out) if out else None}
    return train_config(overrides, recipe, default_recipe, model=obj, note=_note), obj


def train(model, dataset, *, recipe: str | None = None, out: str | Path | None = None, seeds: int = 1,
          jobs: int = 1, ray: str | None = None, ray_cpus: int = 1, **settings):
    """Train `model` on `dataset` and write a run folder; returns its `Run` (with seeds > 1, a `Seeds`).

    model: a registered name ("resnet18"), "module:factory", a class or factory (called with the
    keywords it accepts among num_classes, in_channels, image_size, batchnorm, dropout, skip), or an
    nn.Module (a copy is trained; your object keeps its weights).
    dataset: a registered name, "folder:PATH" (ImageFolder layout), "npz:FILE", or arrays.
    jobs, ray, ray_cpus: with seeds > 1, train up to `jobs` seeds at once in worker processes (on a CPU each run
    gets cores/jobs threads, or `threads=` as given), or each as a task on the Ray cluster `ray` ("auto" or an
    address) with `ray_cpus` CPUs.
    """
    from cifarlab.study.runs import train_run
    from cifarlab.study.seeds import train_seeds

    launch = _launch(seeds, jobs, ray, ray_cpus)
    cfg, obj = _config(model, dataset, recipe, out, settings)
    if seeds > 1:
        return _as_runs(train_seeds(cfg, seeds, obj, launch))
    from torch import nn
    summary = train_run(cfg, model=copy.deepcopy(obj) if isinstance(obj, nn.Module) else obj)
    return load_run(summary["run_dir"], obj)


def compare(runs: list, plot: str | Path | None = None):
    """The article's COMPARISON block for two finished runs (Run objects or folders), a table for more."""
    from cifarlab.study.compare import compare as compare_runs

    return _as_runs(compare_runs(runs, plot))


def _as_runs(result):
    """A study's result with its runs as `Run`s (the study layer hands back `RunFolder`s), so a notebook can
    call `result.runs[0].evaluate()`; a `--seeds` folder stays what it is."""
    from cifarlab.runfolder import RunFolder

    result.runs = [as_run(r) if isinstance(r, RunFolder) else r for r in result.runs]
    return result


def ablate(model, dataset, *, without: str | list[str] | None = None, seeds: int = 2, recipe: str | None = None,
           out: str | Path | None = None, jobs: int = 1, ray: str | None = None, ray_cpus: int = 1,
           robustness: bool = False, robustness_limit: int | None = None, **settings):
    """The full recipe against each technique removed (batchnorm, kaiming, dropout, augment), over seeds.

    without: a list or comma string of techniques, or "all" (each, and all at once).
    jobs, ray, ray_cpus: as for train().
    robustness: also each run's mean corruption accuracy (robustness_limit test images per corrupted set; None:
    all), test ECE before and after temperature scaling (needs val_size) and CIFAR-10.1 where its files are.
    """
    from cifarlab.study.ablate import ablate as run_ablation, parse_without
    from cifarlab.study.robustness import Robustness

    launch = _launch(seeds, jobs, ray, ray_cpus)
    techniques, remove_all = parse_without(",".join(without) if isinstance(without, list) else without)
    cfg, obj = _config(model, dataset, recipe, out, settings, default_recipe=True)
    return run_ablation(cfg, techniques, remove_all, seeds, obj, launch,
                        Robustness(robustness, robustness_limit).check())


def depth(family: str = "resnet-cifar", depths: str | list[int] = "20,32,44,56", dataset="cifar10", *,
          seeds: int = 2, recipe: str | None = "he2015-cifar", out: str | Path | None = None, jobs: int = 1,
          ray: str | None = None, ray_cpus: int = 1, **settings):
    """He et al.'s degradation experiment, as `cifarlab depth`: the plain (skip=False) and the residual net of
    `family` at each depth over `seeds` seeds. Returns a DepthStudy (depth.json's content; print() it, .plot()
    draws the paper's Fig. 6 from the runs, .runs every `Run`, .nets() them by net).

    depths: "20,56" or [20, 56], each 6n+2 and registered. settings: as for train() (epochs=3, limit_train=5000);
    not model or skip, which the study sets. jobs, ray, ray_cpus: as for train().
    """
    from cifarlab.study.depth import depth_settings, depth_study, fit_validation

    launch = _launch(seeds, jobs, ray, ray_cpus)
    parsed, settings = depth_settings(family, depths, settings)
    cfg, _ = _config(settings.pop("model"), dataset, recipe, out, settings)
    cfg = fit_validation(cfg, settings.get("val_size") is not None, _note)
    return _as_runs(depth_study(cfg, family, parsed, seeds, launch))


def tune(model, dataset, *, trials: int, space: dict | str | Path | None = None, storage: str | None = None,
         study: str | None = None, confirm_seeds: int = 2, recipe: str | None = None, out: str | Path | None = None,
         jobs: int = 1, ray: str | None = None, ray_cpus: int = 1, **settings):
    """An Optuna recipe search selected on a validation split, as `cifarlab tune`; returns a Tuning (tune.json's
    content; print() it for what the command prints, .recipe is OUT/best-recipe.toml).

    space: a dict of dimensions ({"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}) or a TOML
    file; default: lr, weight decay, label smoothing, batch size, schedule, warm-up, augmentation.
    val_size: as a setting; without it, 10% of the train split. jobs, ray, ray_cpus: trials at once, as for
    train() (the worker processes import the model by name, so a class must be importable for jobs > 1).
    """
    from cifarlab.study.tune import check_space, load_space, tune as run_tune

    launch = _launch(1, jobs, ray, ray_cpus)
    cfg, obj = _config(model, dataset, recipe, out, settings)
    space = check_space(space) if isinstance(space, dict) else load_space(space)
    return run_tune(cfg, trials, space, storage, study, confirm_seeds, launch, obj,
                    val_size_given="val_size" in settings)


def _launch(seeds, jobs, ray, ray_cpus):
    from cifarlab.study.runs import Launch

    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    return Launch(jobs, ray, ray_cpus).check()


def reproduce(data_dir: str | Path | None = None, *, scale: float = 1.0, tuned: bool = False,
              out: str | Path | None = None, jobs: int = 1, ray: str | None = None, ray_cpus: int = 1,
              question_seeds: int = 2, depth_study: str | Path | None = None, with_depth: bool = False,
              robustness: bool = False, robustness_limit: int | None = None, **settings):
    """The article's six runs with its recipes (and our tuned ones), its figures beside ours, and what the article
    could not tell (skip connections, gradient flow over question_seeds seeds; 0 leaves it out), with a finished
    depth study (depth_study=DIR) or a new one (with_depth=True); jobs, ray, ray_cpus: as for train().
    robustness: as for ablate() (each run then holds out a tenth of its train images, at most 5,000, as val)."""
    from cifarlab.study.questions import Questions
    from cifarlab.study.reproduce import reproduce as run_study
    from cifarlab.study.robustness import Robustness

    launch = _launch(1, jobs, ray, ray_cpus)

    allowed = {"device", "download", "quiet"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise UsageError(f"reproduce takes no setting '{unknown[0]}' (it takes: {', '.join(sorted(allowed))})")
    questions = Questions(question_seeds, str(depth_study) if depth_study else None, with_depth)
    return run_study(str(data_dir) if data_dir else None, scale, tuned, str(out) if out else None, settings, launch,
                     questions, Robustness(robustness, robustness_limit).check())


# ---------------------------------------------------------------- what the command line calls
# cli.py parses the flags and prints; these turn the flags' values (None: not given) into the work.

def command_config(settings: dict, recipe: str | None = None, sample: bool = False, default_recipe: bool = False):
    """The settings of `cifarlab train`, `ablate` or `tune` from its flags: --sample is the data folder, and a
    recipe fills what the flags leave out. A bad value is refused here, before torch is imported."""
    from cifarlab.recipes import train_config
    from cifarlab.sample import with_sample

    settings = with_sample(settings, sample, (settings["dataset"],))
    return train_config(settings, recipe, default_recipe, note=_note)


def depth_command(settings: dict, family: str, depths: str, seeds: int, recipe: str | None, sample: bool, launch):
    """`cifarlab depth`: its flags' settings (dataset cifar10 and recipe he2015-cifar unless given) -> the study."""
    from cifarlab.study.depth import DEFAULT_RECIPE, depth_settings, depth_study, fit_validation

    parsed, settings = depth_settings(family, depths, {**settings, "dataset": settings.get("dataset") or "cifar10"})
    cfg = command_config(settings, recipe or DEFAULT_RECIPE, sample)
    cfg = fit_validation(cfg, settings.get("val_size") is not None, _note)
    return depth_study(cfg, family, parsed, seeds, launch)


def train_command(cfg, seeds: int, launch) -> None:
    """`cifarlab train` without --resume: `seeds` runs (a study), or one, after the note that other work on the
    cores slows a lone run's timings too; the summary is printed as each run ends."""
    from cifarlab.study.launch import say_if_busy
    from cifarlab.study.runs import train_run
    from cifarlab.study.seeds import train_seeds

    if seeds > 1:
        train_seeds(cfg, seeds, launch=launch)
    else:
        say_if_busy(cfg)
        train_run(cfg)
