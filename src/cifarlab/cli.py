"""Command-line interface: parsing (the flags: cli_flags.py) and printing only; each command hands its flags
to one call below and prints what comes back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cifarlab.cli_flags import build_parser, given_settings, parse_model_args, train_settings
from cifarlab.errors import CifarlabError, Interrupted, UsageError


def _launch(args):
    from cifarlab.study.runs import Launch

    return Launch(args.jobs, args.ray, args.ray_cpus).check()


def _check_seeds(seeds: int) -> None:
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")


def cmd_train(args) -> int:
    from cifarlab.api import command_config, resume, train_command
    from cifarlab.sample import with_sample

    if args.resume:
        # Everything given is passed on, so that resume_config() names a setting that may not change.
        changes = {**given_settings(args), "recipe": args.recipe, "model_arg": args.model_arg}
        if args.seeds != 1:
            changes["seeds"] = args.seeds
        resume(args.resume, **with_sample(changes, args.sample, ()))
        return 0
    _check_seeds(args.seeds)
    cfg = command_config(train_settings(args), args.recipe, args.sample)
    train_command(cfg, args.seeds, _launch(args))
    return 0


def cmd_compare(args) -> int:
    from cifarlab.study.compare import compare

    result = compare(args.runs, args.plot)
    if args.json:
        print(json.dumps([{"run": str(r.path), **r.summary, "robustness": figures}
                          for r, figures in zip(result.runs, result.robustness)], indent=2))
    else:
        print(result, end="")
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def cmd_ablate(args) -> int:
    from cifarlab.api import command_config
    from cifarlab.study.ablate import ablate, parse_without

    _check_seeds(args.seeds)
    launch = _launch(args)
    techniques, remove_all = parse_without(args.without)
    cfg = command_config(train_settings(args), args.recipe, args.sample, default_recipe=True)
    result = ablate(cfg, techniques, remove_all, args.seeds, launch=launch, robustness=_robustness(args))
    print(result, end="")
    print(f"ablation.json, ablation.md, ablation.png, report.html in {result['folder']}")
    return 0


def _robustness(args):
    from cifarlab.study.robustness import Robustness

    return Robustness(args.robustness, args.robustness_limit).check()


def cmd_depth(args) -> int:
    from cifarlab.api import depth_command

    _check_seeds(args.seeds)
    result = depth_command({**given_settings(args), "model_args": parse_model_args(args.model_arg)}, args.family,
                           args.depths, args.seeds, args.recipe, args.sample, _launch(args))
    print(result, end="")
    print(f"depth.json, depth.md, depth.png, report.html in {result['folder']}")
    return 0


def cmd_reproduce(args) -> int:
    from cifarlab.sample import study_settings
    from cifarlab.study.questions import Questions
    from cifarlab.study.reproduce import FULL_STUDY, reproduce

    overrides = {k: getattr(args, k) for k in ("device", "download", "quiet") if getattr(args, k) is not None}
    data_dir, scale, out, overrides = study_settings(args.data_dir, args.scale, args.out, overrides, args.sample)
    questions = Questions(args.question_seeds, args.depth_study, args.with_depth)
    result = reproduce(data_dir, scale, args.tuned, out, overrides, _launch(args), questions, _robustness(args))
    print(result, end="")
    print(f"report: {Path(result['folder']) / 'report.html'} (and report.md)")
    if args.sample:
        print("That was the shipped sample: 200 train images per dataset, far too few for the article's accuracies. "
              f"The full study downloads CIFAR-10 and CIFAR-100 (340 MB) and takes hours on a CPU:\n  {FULL_STUDY}")
    return 0


def cmd_evaluate(args) -> int:
    from cifarlab.evaluate import evaluate_run

    mode = _evaluate_mode(args)
    if mode in ("--corruptions", "--corruptions-dir"):
        return _evaluate_corruptions(args)
    if mode:
        return _evaluate_other(args)
    r = evaluate_run(args.source, args.split, args.tta, args.data_dir, args.out, args.device)
    return _print_evaluation(args, r, "evaluation.json, confusion.png, per_class.png")


# The flags only the corruptions mode reads: given to another mode they would be dropped without a word.
CORRUPTION_FLAGS = (("limit", "--limit"), ("severities", "--severities"), ("corruption_seed", "--corruption-seed"))


def _evaluate_mode(args) -> str | None:
    """The one mode `evaluate` was asked for (--corruptions, --calibration, --dataset; None: plain accuracy), or a
    one-line refusal of two modes at once or of a flag the chosen mode would ignore."""
    corruptions = "--corruptions" if args.corruptions else "--corruptions-dir" if args.corruptions_dir else None
    modes = [flag for flag, given in ((corruptions, corruptions), ("--calibration", args.calibration),
                                      ("--dataset", args.dataset)) if given]
    if len(modes) > 1:
        raise UsageError(f"evaluate: {' and '.join(modes)} are separate evaluations; run them one at a time")
    stray = [flag for name, flag in CORRUPTION_FLAGS if getattr(args, name) is not None]
    if stray and not corruptions:
        named, it = ", ".join(stray), "them" if len(stray) > 1 else "it"
        raise UsageError(f"evaluate: {named} only {'apply' if len(stray) > 1 else 'applies'} to --corruptions or "
                         + (f"--corruptions-dir; {modes[0]} would ignore {it}, so leave {it} out" if modes else
                            f"--corruptions-dir, and neither was given; add one, or leave {named} out"))
    if args.corruptions_dir and args.corruption_seed is not None:
        raise UsageError("evaluate: --corruption-seed seeds the corruptions generated here; the files in "
                         "--corruptions-dir are already corrupted, so leave it out")
    return modes[0] if modes else None


def _evaluate_corruptions(args) -> int:
    from cifarlab.robustness import evaluate_corruptions

    if args.split != "test":
        raise UsageError("--corruptions: the corrupted sets are made from the test split; leave out --split")
    seed = 0 if args.corruption_seed is None else args.corruption_seed
    r = evaluate_corruptions(args.source, args.corruptions or "all", args.severities, args.limit,
                             args.corruptions_dir, seed, args.tta, args.data_dir, args.out,
                             args.device, progress=not args.json)
    return _print_evaluation(args, r, "corruptions.json, corruptions.png, corruption-examples.png")


def _evaluate_other(args) -> int:
    """evaluate --calibration (calibrate.py) or --dataset cifar10.1 (shift.py)."""
    if args.calibration:
        if args.split != "test" or args.tta != "none":
            raise UsageError("--calibration fits on val and measures test, without test-time views: leave out "
                             "--split and --tta")
        from cifarlab.calibrate import calibrate_run
        r = calibrate_run(args.source, args.data_dir, args.out, args.device)
        files = "calibration.json, reliability.png"
    else:
        if args.split != "test":
            raise UsageError(f"--dataset {args.dataset} is a test set: leave out --split")
        from cifarlab.shift import evaluate_shift
        r = evaluate_shift(args.source, args.dataset, args.tta, args.data_dir, args.out, args.device)
        files = "shift.json"
    return _print_evaluation(args, r, f"{files}, logits")


def _print_evaluation(args, r, files: str) -> int:
    """An evaluation's table (or its JSON with --json), then where its files went."""
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "folder"}, indent=2))
        return 0
    print(r, end="")
    print(f"{files} in {r['folder']}")
    return 0


def cmd_diagnose(args) -> int:
    from cifarlab.report.gradients import diagnose

    result = diagnose(args.runs, args.out)
    print(result, end="")
    print(f"depth.png, heat maps, report.md and report.html in {result.folder}")
    return 0


def cmd_predict(args) -> int:
    from cifarlab.predict import format_predictions, predict

    results = predict(args.source, args.images, args.top_k, calibrated=args.calibrated)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_predictions(results), end="")
    return 0


def cmd_export(args) -> int:
    from cifarlab.export import export_run

    print(export_run(args.source, args.format, args.out, calibrated=args.calibrated))
    return 0


def cmd_models(args) -> int:
    from cifarlab.data.sources import dataset_info
    from cifarlab.models.listing import format_models, model_rows

    info = dataset_info(args.dataset)
    rows, warnings = model_rows(info.num_classes, info.channels, info.size, args.dataset)
    for warning in warnings:   # a plug-in that cannot be built for this dataset
        print(f"cifarlab: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_models(rows, args.dataset), end="")
    return 0


def cmd_recipes(args) -> int:
    from cifarlab.recipes import list_recipes

    recipes = list_recipes()
    if args.json:
        print(json.dumps(recipes, indent=2))
        return 0
    for name, settings in recipes.items():
        print(f"{name}: {settings.get('description', '')}")
        if "by_device" in settings:     # fast94: a name for the best recipe on each kind of device
            chosen = ", ".join(f"{kind} -> {recipe}" for kind, recipe in settings["by_device"].items())
            print(f"    chooses by the device the run trains on: {chosen}; the run records the one it got")
            continue
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "description")
        print(f"    {shown}")
    return 0


def cmd_data(args) -> int:
    from cifarlab.data.describe import describe_dataset, format_description
    from cifarlab.sample import as_data_dir

    data_dir = as_data_dir(args.data_dir, (args.dataset,)) if args.sample else args.data_dir
    facts = describe_dataset(args.dataset, data_dir, args.image_size, args.channels,
                             download_missing=args.action == "download", verify=args.action == "verify")
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(format_description(facts, args.action == "verify"), end="")
    return 0


def cmd_tune(args) -> int:
    from cifarlab.api import command_config
    from cifarlab.study.tune import load_space, tune, work

    if args.worker_of:        # one of the processes `--jobs N` started: the parent's settings are in the file
        work(args.worker_of, args.storage, args.study)
        return 0
    if args.trials is None:
        raise UsageError("the following arguments are required: --trials")
    result = tune(command_config(train_settings(args), args.recipe, args.sample), args.trials, load_space(args.space),
                  args.storage, args.study, args.confirm_seeds, _launch(args), val_size_given=args.val_size is not None)
    print(result, end="")
    return 0


COMMANDS = {"train": cmd_train, "models": cmd_models, "recipes": cmd_recipes, "data": cmd_data, "tune": cmd_tune,
            "compare": cmd_compare, "ablate": cmd_ablate, "depth": cmd_depth, "reproduce": cmd_reproduce,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export, "diagnose": cmd_diagnose}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `--model mynet:TinyNet` imports from the current folder, as uvicorn and gunicorn do (the console
    # script, unlike `python -m`, does not put it on sys.path). Never a run folder's path.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except CifarlabError as e:
        if os.environ.get("CIFARLAB_DEBUG") == "1":
            raise
        if isinstance(e, Interrupted) and os.environ.get("RANK", "0") != "0":
            return e.exit_code  # under torchrun, rank 0 alone says where the state was saved
        print(f"cifarlab: {'' if isinstance(e, Interrupted) else 'error: '}{getattr(e, 'cli', None) or e}",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cifarlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
