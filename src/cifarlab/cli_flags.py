"""The command line's flags: `build_parser()` and what reads them back (`given_settings`, `train_settings`).

The settings flags are generated from TrainConfig's declarations (settings.py); the others are written here.
Nothing here imports torch, so `cifarlab --help` is fast. cli.py runs the commands.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from cifarlab import __version__
from cifarlab.errors import UsageError
from cifarlab.runfolder import EXPORT_FORMATS   # no torch import: --help stays fast
from cifarlab.sample import STUDY_SCALE
from cifarlab.settings import DEVICES, RESUME_MAY_CHANGE, TrainConfig, flag_text, flags


class _Parser(argparse.ArgumentParser):
    # argparse's own errors become our one-line, exit-2 errors.
    def error(self, message):
        raise UsageError(message)


_FLAG_TYPES = {"int": int, "int | None": int, "float": float}   # from the annotation; other values stay text


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every TrainConfig field that has one, as its setting() in settings.py describes it.

    Every default is None ("not given"), so a recipe fills what the command line leaves out.
    """
    for f in fields(TrainConfig):
        meta = f.metadata
        for i, flag in enumerate(flags(f)):
            if f.type == "bool":   # --X turns it on, --no-X off; the second of a pair has its own help
                p.add_argument(flag, dest=f.name, action="store_const", const=not flag.startswith("--no-"),
                               help=meta["off_help"] if i else meta["help"])
            else:   # augment stays text here; train_config() splits the comma list
                p.add_argument(flag, dest=f.name, type=_FLAG_TYPES.get(f.type), choices=meta["choices"],
                               metavar=meta["metavar"], help=meta["help"])


def given_settings(args: argparse.Namespace) -> dict:
    """The values of add_train_flags' flags in `args` (None: not given)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if flags(f)}


def train_settings(args: argparse.Namespace) -> dict:
    """The settings of train, ablate and tune (None: not given), --model-arg's pairs parsed; refused without
    --model (or a recipe that names it) and --dataset."""
    if args.model is None and args.recipe is None or args.dataset is None:
        raise UsageError(f"{args.command} needs --model and --dataset (see `cifarlab models`)")
    return {**given_settings(args), "model_args": parse_model_args(args.model_arg)}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a named recipe (see `cifarlab recipes`) or a .toml file; flags override it")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="an extra keyword for your own model's factory (repeatable; VALUE as a Python literal)")
    add_train_flags(p)
    _add_sample(p)


SAMPLE_HELP = ("use the real CIFAR-10/100 sample shipped with cifarlab as --data-dir (200 train and 100 test "
               "images each): offline, nothing is downloaded")


def _add_sample(p: argparse.ArgumentParser, help: str = SAMPLE_HELP) -> None:
    p.add_argument("--sample", action="store_true", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description="Train, compare and ablate image classifiers on MNIST, Fashion-MNIST, "
                     "CIFAR-10, CIFAR-100 and your own images (--dataset folder:PATH), with your own models "
                     "(--model module:factory).",
                     epilog="First run, offline: cifarlab reproduce --sample. Example: cifarlab train --model basic-cnn "
                     "--dataset cifar10 --recipe article-basic-cnn")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train_and_ablate(sub)
    _add_depth_command(sub)
    _add_tune_command(sub)
    _add_study_commands(sub)
    _add_run_commands(sub)
    _add_listing_commands(sub)
    return parser


def _add_train_and_ablate(sub) -> None:
    """`train` and `ablate`: the settings flags, generated from TrainConfig, plus their own."""
    train = sub.add_parser("train", help="train one model and write a run folder",
                           description="Train a model; writes config.json, metrics.jsonl, summary.json, summary.txt, "
                           "checkpoints/ and model.safetensors to the run folder.")
    _add_train_args(train)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR exactly where it stopped (its saved settings; only "
                       f"{', '.join(flag_text(name) for name in RESUME_MAY_CHANGE)} may be given)")
    train.add_argument("--seeds", type=int, default=1,
                       help="train K seeds (--seed, --seed+1, ...) into OUT/seed-S; summary.json gets mean +- std")
    _add_jobs(train)

    ablate = sub.add_parser("ablate", help="full recipe vs each technique removed, over seeds",
                            description="Train the full recipe and variants without BatchNorm / Kaiming init / "
                            "dropout / augmentation; writes ablation.json, ablation.md, plots and report.html.",
                            epilog="Example: cifarlab ablate --model deeper-cnn --dataset cifar10 --epochs 3 "
                            "--seeds 2 --limit-train 10000")
    _add_train_args(ablate)
    ablate.add_argument("--seeds", type=int, default=2, help="seeds per variant (default 2)")
    _add_jobs(ablate)
    ablate.add_argument("--without", help="comma list of batchnorm,kaiming,dropout,augment,skip (default: the "
                        "article's four, each), or all = each of the four and all four removed at once; skip (the "
                        "residual shortcuts) only by name, e.g. --model resnet18 --without skip,batchnorm")
    _add_robustness(ablate, "every run (needs --val-size N: the temperature is fitted on val); each change from "
                    "the full recipe paired over seeds with its 95%% interval")


def _add_robustness(parser, what: str) -> None:
    parser.add_argument("--robustness", action="store_true",
                        help="also measure beyond the test split: mean accuracy over 15 generated corruptions x 5 "
                        "severities, test ECE before and after a temperature fitted on val, and CIFAR-10.1 where "
                        f"its files are in the data folder, for {what}")
    parser.add_argument("--robustness-limit", type=int, metavar="N",
                        help="--robustness: N test images per corrupted set (default: the whole test split; "
                        "75 sets of it)")


def _add_depth_command(sub) -> None:
    """`depth`: He et al.'s degradation experiment, plain and residual nets at several depths."""
    depth = sub.add_parser("depth", help="plain vs residual nets at several depths: does the deeper plain net train "
                           "worse? (He et al. 2015, Fig. 6)",
                           description="Train the plain net (--no-skip: the shortcuts removed) and the residual net "
                           "of a family at each depth, over seeds, into OUT/plain-D/seed-S and OUT/resnet-D/seed-S; "
                           "writes depth.json, depth.md, depth.png (He et al.'s Fig. 6 from these runs: training "
                           "error dashed, test error solid) and report.html. The verdict on degradation: the deepest "
                           "net's final training error minus the shallowest's, paired over seeds, with its 95% "
                           "interval; 'no clear effect' where it covers 0. Finished runs are reused, stopped ones "
                           "resumed. Every train flag but --model, --skip/--no-skip and --no-test works (the study sets "
                           "the first two and needs the test split; --epochs scales the recipe's budget down; "
                           "--limit-train N takes fewer images).",
                           epilog="Examples: cifarlab depth --depths 20,56 --epochs 1 --seeds 2 --sample; "
                           "cifarlab depth --depths 20,32,44,56 --epochs 10 --limit-train 10000 --seeds 2 --jobs 2 "
                           "--out runs/depth")
    _add_train_args(depth)
    depth.add_argument("--family", default="resnet-cifar", help="the nets (default resnet-cifar: He et al.'s CIFAR "
                       "ResNets resnet20/32/44/56/110, 6n+2 layers, option-A shortcuts)")
    depth.add_argument("--depths", default="20,32,44,56", metavar="LIST",
                       help="comma list of depths, each 6n+2 and registered (default 20,32,44,56)")
    depth.add_argument("--seeds", type=int, default=2, help="seeds per net (default 2; 1 gives no interval)")
    _add_jobs(depth)
    for action in depth._actions:      # refused here (the study sets them), so not offered in --help
        if action.dest in ("model", "skip"):
            action.help = argparse.SUPPRESS
    next(a for a in depth._actions if a.dest == "recipe").help = (
        "a named recipe or a .toml file (default he2015-cifar: the paper's SGD 0.1, momentum 0.9, weight decay "
        "1e-4, batch 128, lr / 10 at 50%% and 75%%, pad-4 crop + flip, 45k/5k train/val); flags override it")


JOBS_HELP = ("run up to N runs at once in N worker processes: one GPU each (round robin over the allowed ones), and "
             "on a CPU cores/N threads per run on its own cores (pinned on Linux; the numbers equal a sequential "
             "study with --threads cores/N), or --threads T as given; each run's output goes to RUN/train.log "
             "(default 1: one after another)")


RAY_HELP = ("run each run as a task on a Ray cluster: auto (the one this machine belongs to) or HOST:PORT; --out "
            'must be on a filesystem every node sees (pip install "cifarlab[ray]")')


def _add_jobs(parser, jobs_help: str = JOBS_HELP, ray_help: str = RAY_HELP) -> None:
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help=jobs_help)
    parser.add_argument("--ray", metavar="ADDRESS", help=ray_help)
    parser.add_argument("--ray-cpus", type=int, default=1, metavar="N", help="CPUs per Ray task (default 1; on a "
                        "GPU cluster each task also takes one GPU)")


def _add_tune_command(sub) -> None:
    """`tune`: a recipe search with Optuna, selected on a validation split."""
    tune = sub.add_parser("tune", help="search a recipe with Optuna on a validation split; best-recipe.toml",
                          description="Each trial trains a run folder under OUT/trials/ and is scored on the "
                          "validation split only (pruned when it falls behind); the best settings go to "
                          "OUT/best-recipe.toml, tune.json and report.html, and with --confirm-seeds K they are "
                          "retrained on the whole train split and scored on test, once. Needs Optuna "
                          '(pip install "cifarlab[tune]").',
                          epilog="Example: cifarlab tune --model basic-cnn --dataset cifar10 --trials 20 --epochs 3 "
                          "--out runs/tune")
    _add_train_args(tune)
    next(a for a in tune._actions if a.dest == "val_size").help = (
        "hold out N train images (class-balanced, seeded) that the trials are selected on (default: 10%% of the "
        "train split, at least one per class; a folder dataset's own val/ split where it has one)")
    tune.add_argument("--trials", type=int, help="trials in the study in all (required; a second run of the "
                      "same command continues up to this number, and refuses other fixed settings)")
    tune.add_argument("--worker-of", metavar="FILE", help=argparse.SUPPRESS)   # a --jobs study's other processes
    tune.add_argument("--space", metavar="FILE.toml", help="the search space: tables [setting] with type = "
                      '"float" | "int" | "categorical" and low/high (log = true) or choices (default: lr, '
                      "weight decay, label smoothing, batch size, schedule, warm-up, augmentation)")
    tune.add_argument("--storage", metavar="URL", help="Optuna storage shared by several processes or machines, "
                      "e.g. postgresql://user:pass@host/db (default: sqlite file OUT/tune.db)")
    tune.add_argument("--study", help="study name in the storage (default MODEL-DATASET)")
    tune.add_argument("--confirm-seeds", type=int, default=2, metavar="K",
                      help="retrain the best settings on the whole train split over K seeds and score test "
                      "(default 2; 0: skip)")
    _add_jobs(tune, "run N trials at once: N tune processes share the study (cores/N threads each, the others "
                    "pinned to their own cores and logging to OUT/workers/)", "run the N (--jobs) tune workers as tasks on a Ray cluster instead "
                    "(auto or HOST:PORT); --out must be on a filesystem every node sees, and the storage reachable "
                    "from every node (--storage postgresql://... across machines)")


def _add_study_commands(sub) -> None:
    """`compare` and `reproduce`: studies over finished or new runs."""
    compare = sub.add_parser("compare", help="the article's COMPARISON block for two runs, a table for more",
                             description="Compare finished run folders: test accuracies, improvement, parameters "
                             "and their ratio.", epilog="Example: cifarlab compare runs/basic runs/deeper --plot cmp.png")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--plot", metavar="FILE.png", help="write a bar chart + overlaid test-accuracy curves")
    compare.add_argument("--json", action="store_true", help="print the runs' summaries as JSON")

    reproduce = sub.add_parser("reproduce", help="the article's six runs, its figures beside ours, one report",
                               description="Run the article's study (basic-cnn, deeper-cnn, resnet18 on CIFAR-10/100) "
                               "with its recipes; writes one folder per run, reproduce.json, report.md and report.html. "
                               "A second invocation reuses finished runs.",
                               epilog="Examples: cifarlab reproduce --sample (offline, on the shipped sample); "
                               "cifarlab reproduce --data-dir ~/data --scale 0.1 --out runs/quick")
    reproduce.add_argument("--data-dir", help="dataset root (default $CIFARLAB_DATA or ~/.cache/cifarlab)")
    _add_sample(reproduce, "run the study offline on the real CIFAR-10/100 sample shipped with cifarlab (200 train "
                f"and 100 test images each), at --scale {STUDY_SCALE:g} unless given: a first look in minutes")
    reproduce.add_argument("--scale", type=float,
                           help="multiply epochs and train-set size by F in (0, 1] for a quick pass (default 1; "
                           f"{STUDY_SCALE:g} with --sample)")
    reproduce.add_argument("--tuned", action="store_true",
                           help="add our tuned recipes side by side (tuned-<model>[-<dataset>]; at full scale "
                           "the deeper-cnn and resnet18 ones take hours on a CPU)")
    reproduce.add_argument("--out", help="study folder (default runs/reproduce; runs/reproduce-sample with --sample, "
                           "so that the full study never meets the sample's runs)")
    reproduce.add_argument("--question-seeds", type=int, default=2, metavar="K",
                           help="the section 'What the article could not tell': ResNet-18 with and without skip "
                           "connections on CIFAR-10 and CIFAR-100 and the deeper CNN with and without BatchNorm, K "
                           "seeds each (seed 0 of each is the article's run), with their gradient flow (default 2; "
                           "0 leaves the section out)")
    reproduce.add_argument("--depth-study", metavar="DIR", help="add a finished `cifarlab depth --out DIR` study "
                           "(He et al.'s Fig. 6 and the degradation verdicts) to that section")
    reproduce.add_argument("--with-depth", action="store_true",
                           help="run the depth study too (plain and residual nets of depth 20, 32, 44, 56, recipe "
                           "he2015-cifar, scaled by --scale, over --question-seeds seeds but at least 2; at full "
                           "scale a GPU job) into OUT/depth")
    _add_robustness(reproduce, "each of its runs (which then hold out a tenth of the train images, at most 5,000, "
                    "as their val split)")
    _add_jobs(reproduce)
    reproduce.add_argument("--device", choices=DEVICES)
    reproduce.add_argument("--no-download", dest="download", action="store_const", const=False)
    reproduce.add_argument("--quiet", action="store_const", const=True)


def _add_evaluate(sub) -> None:
    """`evaluate`: a run's accuracy on test or val, and beyond the test split (corruptions, calibration,
    CIFAR-10.1)."""
    evaluate = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix of a trained model",
                              description="Reload a run folder (its best checkpoint) or a checkpoint file and "
                              "evaluate it; writes evaluation.json, confusion.png and per_class.png. Beyond the "
                              "test split, one at a time: --corruptions, --calibration or --dataset cifar10.1.",
                              epilog="Example: cifarlab evaluate runs/basic --tta flip")
    evaluate.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--tta", choices=("none", "flip", "flip-shift"), default="none",
                          help="flip = average with the mirror; flip-shift = also with copies moved 1 pixel "
                          "up-left and down-right (what the fast94 recipe's final evaluation uses)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--out", help="folder for the results (default RUN_DIR/evaluation-SPLIT)")
    evaluate.add_argument("--json", action="store_true")
    robust = evaluate.add_argument_group(
        "corruptions", "accuracy on CIFAR-10-C-style copies of the test split (Hendrycks & Dietterich's 15 "
        "corruptions x 5 severities, generated here, seeded and cached), or on the official -C files; writes "
        "RUN_DIR/evaluation-corruptions/corruptions.json, corruptions.png, corruption-examples.png. "
        "Example: cifarlab evaluate runs/basic --corruptions all --limit 500")
    robust.add_argument("--corruptions", metavar="all|NAME,...",
                        help="which corruptions: all, or names such as gaussian_noise,fog,jpeg_compression")
    robust.add_argument("--severities", metavar="1-5", help="a range (1-5) or a list (1,3,5); default all five")
    robust.add_argument("--limit", type=int, metavar="N", help="at most the first N test images (a quick look; a smaller split is used whole)")
    robust.add_argument("--corruptions-dir", metavar="DIR",
                        help="evaluate the official CIFAR-10-C / CIFAR-100-C files in DIR (NAME.npy of 5 x N "
                        "images, severities in order, and labels.npy) instead of generating them")
    robust.add_argument("--corruption-seed", type=int, metavar="S",
                        help="seed of the generated corruptions, default 0 (the same seed gives the same images)")
    evaluate.add_argument("--calibration", action="store_true",
                          help="NLL, Brier score and ECE (15 bins) on test before and after a temperature fitted on "
                          "the run's val split (needs a run trained with --val-size); writes calibration.json, "
                          "reliability.png and RUN_DIR/temperature.json (used by predict/export --calibrated)")
    evaluate.add_argument("--dataset", choices=("cifar10.1",),
                          help="cifar10.1: score a CIFAR-10 run on CIFAR-10.1 (read from DATA_DIR/cifar10.1, "
                          "downloaded if missing) and show the drop from CIFAR-10 test with its 95%% interval")


def _add_run_commands(sub) -> None:
    """`evaluate`, `diagnose`, `predict`, `export`: what to do with a trained run."""
    _add_evaluate(sub)

    diagnose = sub.add_parser(
        "diagnose", help="draw the gradient flow of runs trained with --diagnostics N",
        description="Heat maps of log10 gradient norm (layers x steps), gradient norm against layer depth (first "
        "step, after epoch 1, end; runs overlaid) and the first layer's gradient norm over the last layer's, early "
        "and late, per run and mean ± std over seeds; writes PNGs, report.md and report.html.",
        epilog="Example: cifarlab diagnose runs/deeper runs/deeper-no-bn --out runs/flow")
    diagnose.add_argument("runs", nargs="+", metavar="RUN_DIR")
    diagnose.add_argument("--out", help="folder for the figures (default RUN_DIR/diagnose for one run, else diagnose/ "
                          "beside the runs)")

    predict = sub.add_parser("predict", help="top-k labels for image files",
                             description="Classify image files (PNG, JPEG, any size) with a trained model: each is "
                             "converted to RGB (grayscale for MNIST-style models), resized to the dataset's size and "
                             "normalised as in training.",
                             epilog="Example: cifarlab predict runs/resnet18 cat.png ship.jpg --top-k 3")
    predict.add_argument("source", metavar="CHECKPOINT|RUN_DIR")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=5, help="labels to show per image (default 5)")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--calibrated", action="store_true",
                         help="divide the logits by the temperature `evaluate --calibration` stored in the run")

    export = sub.add_parser("export", help="write a trained model as ONNX, TorchScript or safetensors",
                            description="Export a run's model (its best checkpoint) for use outside cifarlab. Input: "
                            "float32 NCHW images, pixels / 255 normalised with the dataset's mean/std (stored in the "
                            "file's metadata with the class names). ONNX: input 'images', output 'logits', dynamic "
                            "batch; needs `pip install 'cifarlab[export]'`.",
                            epilog="Example: cifarlab export runs/resnet18 --format onnx --out resnet18.onnx")
    export.add_argument("source", metavar="RUN_DIR")
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    export.add_argument("--out", metavar="FILE",
                        help="output file (default RUN_DIR/" + ", RUN_DIR/".join(EXPORT_FORMATS.values()) + ")")
    export.add_argument("--calibrated", action="store_true",
                        help="use the temperature `evaluate --calibration` stored: ONNX and TorchScript output the "
                        "logits divided by it; safetensors records it in its metadata")


def _add_listing_commands(sub) -> None:
    """`models`, `recipes`, `data`: what is there to use."""
    models = sub.add_parser("models", help="list models with their parameter counts")
    models.add_argument("--dataset", default="cifar10", help="count parameters for this dataset (default cifar10)")
    models.add_argument("--json", action="store_true")

    recipes = sub.add_parser("recipes", help="list the named recipes and what they set")
    recipes.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="download, verify or describe datasets (built-in, folder:PATH, npz:FILE)")
    data.add_argument("action", choices=("download", "verify", "info"))
    data.add_argument("--dataset", default="cifar10")
    data.add_argument("--data-dir")
    data.add_argument("--image-size", type=int, metavar="N", help="as in train: describe the images resized to NxN")
    data.add_argument("--channels", type=int, choices=(1, 3), help="as in train: describe them with 1 or 3 channels")
    data.add_argument("--json", action="store_true", help="print the facts as JSON")
    _add_sample(data, "describe or verify the CIFAR-10/100 sample shipped with cifarlab")


def parse_model_args(pairs: list[str] | None) -> dict | None:
    """['width=64', 'act="gelu"'] -> {'width': 64, 'act': 'gelu'}; a VALUE that is no literal stays a string."""
    import ast

    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-arg {pair}: write KEY=VALUE, e.g. --model-arg width=64")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
