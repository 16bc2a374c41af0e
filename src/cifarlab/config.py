"""TrainConfig: the one source of settings. Recipes (TOML) fill it, CLI flags override it.

Each field is declared with `setting(...)`, which says everything else about it: the help of its
`cifarlab train` flag, its choices, whether a recipe may carry it and whether `--resume` may change
it. cli_flags.py makes the flags from these declarations. This module imports no torch, so `--help` is fast.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import MISSING, Field, dataclass, fields
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from cifarlab.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("none", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ON_NAN = ("stop", "skip-step")
# translate: a crop from a reflect-padded image (no black borders); alt-flip: each image is
# mirrored in every other epoch (a seeded half of the images in even epochs, the rest in odd),
# so over two epochs the network sees both views of every image instead of a random 3/4.
# (Here, not in data/augment.py where they are implemented, because that package imports torch.)
AUGMENTATIONS = ("crop", "translate", "flip", "alt-flip", "jitter", "cutout")


def setting(default=MISSING, help: str | None = None, *, factory=MISSING, choices: tuple | None = None,
            metavar: str | None = None, flag: bool = True, off_help: str | None = None, in_recipes: bool = True,
            on_resume: bool = False) -> Field:
    """A TrainConfig field and the facts about it.

    Its flag is --NAME (with - for _), given as `help` describes; a bool that defaults to true is
    turned off by --no-NAME instead, and one given `off_help` gets both --NAME and --no-NAME.
    flag=False: no flag of its own (a recipe, or a hand-written flag in cli_flags.py, sets it).
    in_recipes=False: a recipe may not set it (where data and results live is the user's business).
    on_resume=True: `--resume` may change it (where the data is, where to run, what to print, how often to save).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "off_help": off_help,
            "in_recipes": in_recipes, "on_resume": on_resume}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


@dataclass
class TrainConfig:
    model: str = setting(
        "basic-cnn", in_recipes=False,
        help="basic-cnn | deeper-cnn | resnet18 | fast94 | resnet18-imagenet | ... (all: `cifarlab models`), or your "
        "own as module:factory (e.g. mynet:TinyNet, imported from the current folder or PYTHONPATH); a recipe made "
        "for one model (fast94, tuned-*) names it for you")
    dataset: str = setting(
        "cifar10", in_recipes=False,
        help="cifar10 | cifar100 | mnist | fashion-mnist, or your own images: folder:PATH (PATH/train/<class>/*.png, "
        "PATH/test/<class>/..., optional PATH/val/) or npz:FILE")
    # extra keywords for your own model's factory; cli_flags.py fills it from --model-arg KEY=VALUE
    model_args: dict = setting(factory=dict, flag=False, in_recipes=False)
    image_size: int | None = setting(
        None, "folder:/npz: resize every image to NxN (antialiased); needed when sizes differ", metavar="N",
        in_recipes=False)
    channels: int | None = setting(
        None, "folder:/npz: 1 = grayscale, 3 = RGB (default: as the first image)", choices=(1, 3), in_recipes=False)
    recipe: str | None = setting(None, flag=False, in_recipes=False)   # the recipe's name; the CLI's --recipe
    epochs: int = setting(10)
    batch_size: int = setting(64)
    eval_batch_size: int = setting(1000, "batch size for evaluation (default 1000)")
    eval_every: int = setting(
        1, "score val and test every N epochs and after the last (default 1); 0: after the last only, so the time "
        "to accuracy is training alone (fast94: 0)", metavar="N", on_resume=True)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "peak learning rate")
    muon_lr: float = setting(
        0.02, "--optimizer muon: peak lr of the conv filters, whose momentum is orthogonalised (Muon); the other "
        "parameters take Nesterov SGD at --lr")
    muon_momentum: float = setting(0.95, "--optimizer muon: the conv filters' momentum (default 0.95)")
    momentum: float = setting(0.9)
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    weight_decay: float = setting(0.0, "L2 (SGD/Adam) or decoupled (AdamW) decay; not on BN/bias")
    decay_norms: bool = setting(False, "also decay normalisation parameters and biases (airbench94 decays its BN "
                                "shifts)")
    schedule: str = setting("none", "step = decay by --gamma every --step-size epochs", choices=SCHEDULES)
    step_size: int = setting(5, "epochs between step decays (default 5, as in the article)")
    gamma: float = setting(0.1, "step decay factor")
    # cosine: linear warm-up length; onecycle: the source of the rise fraction
    warmup_epochs: float = setting(0.0, "warm-up length for cosine / one-cycle")
    onecycle_start: float = setting(0.04, "one-cycle: the lr factor it rises from (default 0.04)", metavar="FACTOR")
    onecycle_end: float = setting(0.001, "one-cycle: the lr factor it decays to (default 0.001)", metavar="FACTOR")
    label_smoothing: float = setting(0.0)
    backbone_lr_factor: float = setting(
        1.0, "fine-tuning: every layer but the classifier learns at lr x this (0, 1]")
    norm_lr_factor: float = setting(
        1.0, "normalisation-layer parameters (BatchNorm, LayerNorm) learn at lr x this (fast94: 64)")
    lookahead: bool = setting(
        False, "lookahead weight averaging: every 5 steps pull the weights to their slow average",
        off_help="turn off a recipe's lookahead (ablation)")
    tta: bool = setting(
        False, "test-time augmentation: average predictions on each image and its mirror",
        off_help="turn off a recipe's TTA")
    tta_shift: int = setting(
        0, "the final evaluation also averages two copies moved PIXELS up-left and down-right (fast94: 1)",
        metavar="PIXELS")
    augment: list[str] = setting(
        factory=list, help=f"comma list of {','.join(AUGMENTATIONS)}, or none (translate: crop from a reflect-padded "
        "image; alt-flip: mirror each image every other epoch)")
    crop_padding: int = setting(4, flag=False)     # augmentation sizes: recipes only
    jitter: float = setting(0.2, flag=False)
    cutout_size: int = setting(8, flag=False)
    batchnorm: bool = setting(True, "build the model without BatchNorm (ablation)")
    init: str = setting("auto", "auto (the article's choice per model) | kaiming | xavier | default")
    dropout: bool = setting(True, "build the model without dropout (ablation)")
    val_size: int = setting(0, "hold out N train images (class-balanced, seeded) for validation")
    test: bool = setting(True, "never score the test split (a search's trials select on val alone: cifarlab tune)",
                         in_recipes=False)
    seed: int = setting(0)
    device: str = setting("auto", choices=DEVICES, in_recipes=False, on_resume=True)
    threads: int | None = setting(
        None, "CPU threads for this run (default: torch's, all physical cores; with --jobs N, cores/N). A CPU run's "
        "numbers depend on it: --jobs N --threads T equals --jobs 1 --threads T", metavar="N",
        in_recipes=False, on_resume=True)
    precision: str = setting(
        "auto", "auto = bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32", choices=PRECISIONS)
    channels_last: bool = setting(True)
    compile: bool = setting(
        False, "torch.compile the model for training (falls back to eager, with a warning, where it cannot "
        "compile); see BENCHMARKS.md for where it helps")
    data_dir: str | None = setting(
        None, "dataset root (default $CIFARLAB_DATA or ~/.cache/cifarlab)", in_recipes=False, on_resume=True)
    download: bool = setting(True, "never download; fail with a message naming the missing files", on_resume=True)
    out: str | None = setting(None, "run folder (default runs/<time>-<model>-<dataset>)", in_recipes=False)
    limit_train: int | None = setting(None, "train on a seeded subset of N images (quick runs)")
    quiet: bool = setting(False, "no progress output", in_recipes=False, on_resume=True)
    overwrite: bool = setting(False, "replace the run already in --out", in_recipes=False)
    tensorboard: bool = setting(
        True, "do not write TensorBoard event files (written to RUN/tensorboard when installed)", in_recipes=False,
        on_resume=True)
    on_nan: str = setting(
        "stop", "non-finite loss: stop and keep the last good checkpoint (default), or skip the batch", choices=ON_NAN)
    checkpoint_every: float = setting(
        0.0, "also save checkpoints/last.pt every MINUTES within an epoch (default: epoch ends only)",
        metavar="MINUTES", in_recipes=False, on_resume=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
_NOT_IN_RECIPES = {f.name for f in fields(TrainConfig) if not f.metadata["in_recipes"]}
RESUME_MAY_CHANGE = tuple(f.name for f in fields(TrainConfig) if f.metadata["on_resume"])


def flags(f: Field) -> tuple[str, ...]:
    """The flags that set field `f`: ("--lr",), ("--no-batchnorm",), ("--tta", "--no-tta"); () for none."""
    if not f.metadata["flag"]:
        return ()
    name = "--" + f.name.replace("_", "-")
    if f.type == "bool" and f.default is True:
        return ("--no-" + name[2:],)
    return (name, "--no-" + name[2:]) if f.metadata["off_help"] else (name,)


def flag_text(name: str) -> str:
    """How a message names setting `name`: its flags ("--no-tensorboard", "--tta/--no-tta"), else --NAME."""
    spelled = next((flags(f) for f in fields(TrainConfig) if f.name == name), ())
    return "/".join(spelled) if spelled else "--" + name.replace("_", "-")


def recipe_dir():
    return resources.files("cifarlab") / "recipes"


def list_recipes() -> dict[str, dict]:
    """Named recipes shipped with cifarlab: name -> the settings it makes."""
    out = {}
    for entry in sorted(recipe_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = _parse_toml(entry.read_text(), entry.name)
    return out


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: invalid TOML ({e})") from None


def _recipe_data(name_or_path: str) -> tuple[dict, str]:
    """(everything the recipe file holds, where it came from), from a shipped name or a .toml path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{path}: recipe file not found")
        try:
            return _parse_toml(path.read_text(), str(path)), str(path)
        except UnicodeDecodeError:
            raise UsageError(f"{path}: recipe file is not UTF-8 text") from None
    recipes = list_recipes()
    if name_or_path not in recipes:
        raise UsageError(f"unknown recipe '{name_or_path}' (choose from {', '.join(recipes)})")
    return recipes[name_or_path], name_or_path


def recipe_models(name_or_path: str) -> list[str]:
    """The models a recipe was made for (its `models` list; empty: any)."""
    models = _recipe_data(name_or_path)[0].get("models", [])
    return list(models) if isinstance(models, list) else []


def load_recipe(name_or_path: str) -> dict:
    """A recipe's settings (validated keys), from a shipped name or a .toml path."""
    data, source = _recipe_data(name_or_path)
    settings = {k: v for k, v in data.items() if k not in ("description", "models", "target")}
    for key in settings:
        if key not in FIELD_TYPES or key in _NOT_IN_RECIPES:
            raise UsageError(f"{source}: unknown recipe setting '{key}'")
    return settings


def build_config(overrides: dict, recipe: str | None = None, model=None) -> TrainConfig:
    """Defaults <- recipe <- overrides (values that are not None), then validated.

    model: the Python object behind a `module:attribute` model name, when the caller has it.
    """
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["recipe"] = recipe
    unknown = [k for k in values if k not in FIELD_TYPES]
    if unknown:
        raise UsageError(f"unknown setting '{unknown[0]}' (settings are the `cifarlab train` flags, "
                         "with _ for -: e.g. batch_size, label_smoothing)")
    cfg = TrainConfig(**values)
    validate(cfg, model)
    return cfg


def train_config(overrides: dict, recipe: str | None = None, default_recipe: bool = False, model=None,
                 note=print) -> TrainConfig:
    """The settings of a `train` / `ablate`: a recipe made for one model names it when none is given.

    default_recipe: without --recipe, use `article-<model>` where there is one (what ablate compares).
    note: where to say that a recipe was made for another model.
    """
    made_for = recipe_models(recipe) if recipe else []
    overrides = dict(overrides)
    if overrides.get("model") is None and len(made_for) == 1:   # a recipe made for one model (fast94) names it
        overrides["model"] = made_for[0]
    if overrides.get("model") is None or overrides.get("dataset") is None:
        raise UsageError("needs a model and a dataset (see `cifarlab models`)")
    if made_for and overrides["model"] not in made_for and not overrides.get("quiet"):
        note(f"cifarlab: note: recipe {recipe} was made for {', '.join(made_for)}, not {overrides['model']}; "
             "its settings may not suit it")
    if isinstance(overrides.get("augment"), str):
        overrides["augment"] = parse_augment(overrides["augment"])
    if recipe is None and default_recipe and f"article-{overrides['model']}" in list_recipes():
        recipe = f"article-{overrides['model']}"
    return build_config(overrides, recipe, model)


def resume_config(saved: dict, changes: dict, out: str, model=None) -> TrainConfig:
    """A stopped run's own settings (in folder `out`), with only the RESUME_MAY_CHANGE ones replaced."""
    refused = [k for k, v in changes.items() if v is not None and k not in RESUME_MAY_CHANGE]
    if refused:
        raise UsageError(f"--resume continues the run with its saved settings; {flag_text(refused[0])} cannot be "
                         f"changed (allowed: {', '.join(flag_text(k) for k in RESUME_MAY_CHANGE)})")
    values = {**saved, **{k: v for k, v in changes.items() if v is not None}, "out": str(out)}
    return config_from_dict(values, model)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate(cfg: TrainConfig, model=None) -> None:
    """Raise UsageError with one line for the first setting that cannot work.

    model: the Python object behind cfg.model when the caller has it (a notebook's class).
    """
    _validate_numbers(cfg)          # first: it needs no torch, so `cifarlab train --lr 0` answers at once
    spec = _validate_model_and_data(cfg, model)
    _validate_names(cfg, spec)


def _validate_model_and_data(cfg: TrainConfig, model):
    """The model can be built (its import path, its --model-arg) and fits the dataset's images."""
    from cifarlab.data.sources import dataset_info, is_custom
    from cifarlab.models import model_spec
    from cifarlab.models.registry import check_model_args

    spec = model_spec(cfg.model, model)
    _check(isinstance(cfg.model_args, dict), f"model_args must be a dict, got {cfg.model_args!r}")
    check_model_args(spec, cfg.model_args)
    if is_custom(cfg.dataset):
        _check(cfg.image_size is None or (isinstance(cfg.image_size, int) and cfg.image_size >= 1),
               f"--image-size must be an integer >= 1, got {cfg.image_size}")
        _check(cfg.channels in (None, 1, 3), f"--channels must be 1 or 3, got {cfg.channels}")
    else:
        info = dataset_info(cfg.dataset)
        _check(cfg.image_size is None and cfg.channels is None,
               f"--image-size and --channels apply to your own images (folder:PATH, npz:FILE), not {cfg.dataset}")
        _check(info.size >= spec.min_size,
               f"model '{cfg.model}' needs inputs of at least {spec.min_size}x{spec.min_size}; "
               f"{cfg.dataset} images are {info.size}x{info.size}")
    return spec


def _validate_numbers(cfg: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
    for name in ("lr", "muon_lr"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
               f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    _check(isinstance(cfg.muon_momentum, (int, float)) and 0 <= cfg.muon_momentum < 1,
           f"--muon-momentum must be in [0, 1), got {cfg.muon_momentum}")
    for name in ("onecycle_start", "onecycle_end"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and 0 <= value <= 1,
               f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    for name in ("weight_decay", "momentum", "warmup_epochs"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
               f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    _check(isinstance(cfg.backbone_lr_factor, (int, float)) and 0 < cfg.backbone_lr_factor <= 1,
           f"--backbone-lr-factor must be in (0, 1], got {cfg.backbone_lr_factor}")
    _check(isinstance(cfg.norm_lr_factor, (int, float)) and math.isfinite(cfg.norm_lr_factor)
           and cfg.norm_lr_factor > 0, f"--norm-lr-factor must be a finite number > 0, got {cfg.norm_lr_factor}")
    _check(cfg.threads is None or (isinstance(cfg.threads, int) and not isinstance(cfg.threads, bool)
                                   and cfg.threads >= 1), f"--threads must be an integer >= 1, got {cfg.threads}")
    _check(isinstance(cfg.eval_every, int) and not isinstance(cfg.eval_every, bool) and cfg.eval_every >= 0,
           f"--eval-every must be an integer >= 0, got {cfg.eval_every}")
    _check(isinstance(cfg.tta_shift, int) and 0 <= cfg.tta_shift <= 4,
           f"--tta-shift must be 0..4 pixels, got {cfg.tta_shift}")
    for name in ("lookahead", "tta", "nesterov", "batchnorm", "dropout", "channels_last", "compile", "decay_norms",
                 "test"):
        _check(isinstance(getattr(cfg, name), bool), f"{name} must be true or false, got {getattr(cfg, name)!r}")
    _check(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}")
    _check(isinstance(cfg.checkpoint_every, (int, float)) and math.isfinite(cfg.checkpoint_every)
           and cfg.checkpoint_every >= 0, f"--checkpoint-every must be a number of minutes >= 0, "
           f"got {cfg.checkpoint_every}")
    _check(isinstance(cfg.val_size, int) and cfg.val_size >= 0, f"--val-size must be >= 0, got {cfg.val_size}")
    _check(cfg.limit_train is None or cfg.limit_train >= 1, f"--limit-train must be >= 1, got {cfg.limit_train}")
    _check(0 <= cfg.crop_padding <= 16 and cfg.cutout_size >= 1 and 0 <= cfg.jitter < 1,
           "augmentation sizes out of range (crop_padding 0..16, cutout_size >= 1, jitter in [0, 1))")


def _validate_names(cfg: TrainConfig, spec) -> None:
    """Choices (optimizer, schedule, ...), the model's switches and the augmentations."""
    from cifarlab.models import INITS, check_switches

    _check(cfg.optimizer in OPTIMIZERS, f"unknown optimizer '{cfg.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
    _check(cfg.schedule in SCHEDULES, f"unknown schedule '{cfg.schedule}' (choose from {', '.join(SCHEDULES)})")
    _check(cfg.precision in PRECISIONS, f"unknown precision '{cfg.precision}' (choose from {', '.join(PRECISIONS)})")
    _check(cfg.on_nan in ON_NAN, f"unknown --on-nan '{cfg.on_nan}' (choose from {', '.join(ON_NAN)})")
    _check(cfg.device in DEVICES, f"unknown device '{cfg.device}' (choose from {', '.join(DEVICES)})")
    _check(cfg.init in INITS + ("auto",), f"unknown init '{cfg.init}' (choose from auto, {', '.join(INITS)})")
    check_switches(spec, cfg.batchnorm, cfg.dropout, cfg.init)
    _check(isinstance(cfg.augment, list), f"augment must be a list, got {cfg.augment!r}")
    for op in cfg.augment:
        _check(op in AUGMENTATIONS, f"unknown augmentation '{op}' (choose from {', '.join(AUGMENTATIONS)}, or none)")
    for a, b in (("crop", "translate"), ("flip", "alt-flip")):
        _check(not (a in cfg.augment and b in cfg.augment), f"augment: choose one of {a} and {b}, not both")


def config_from_dict(values: dict, model=None) -> TrainConfig:
    """A TrainConfig from a saved config.json / checkpoint (extra keys such as `resolved` are ignored; a switch
    recorded as null, one the model does not have, takes its default)."""
    cfg = TrainConfig(**{k: v for k, v in values.items()
                         if k in FIELD_TYPES and not (v is None and k in ("batchnorm", "dropout", "init"))})
    validate(cfg, model)
    return cfg


def parse_augment(text: str) -> list[str]:
    """'crop,flip' -> ['crop', 'flip']; 'none' or '' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]
