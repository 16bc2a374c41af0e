"""TrainConfig: the one source of settings. Recipes (TOML) fill it, CLI flags override it."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from cifarlab.data.augment import AUGMENTATIONS
from cifarlab.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ON_NAN = ("stop", "skip-step")


@dataclass
class TrainConfig:
    model: str = "basic-cnn"        # a registered name, or module:factory for your own
    dataset: str = "cifar10"        # a registered name, folder:PATH (ImageFolder) or npz:FILE
    model_args: dict = field(default_factory=dict)   # extra keywords for your own model's factory
    image_size: int | None = None   # folder:/npz: only: resize every image to N x N
    channels: int | None = None     # folder:/npz: only: 1 (grayscale) or 3 (RGB); default: the first image's
    recipe: str | None = None
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "none"
    step_size: int = 5              # epochs between decays (schedule = step)
    gamma: float = 0.1              # decay factor (schedule = step)
    warmup_epochs: float = 0.0      # linear warm-up (cosine) / rise fraction source (onecycle)
    label_smoothing: float = 0.0
    backbone_lr_factor: float = 1.0 # fine-tuning: lr of every layer but the classifier = lr x this
    norm_lr_factor: float = 1.0     # lr of normalisation-layer parameters = lr x this (fast94: BN shifts 64x)
    lookahead: bool = False         # every 5 steps pull the weights to a slow average of themselves
    tta: bool = False               # evaluate on each image and its mirror, average the logits
    tta_shift: int = 0              # final evaluation: also copies moved this many pixels up-left / down-right
    augment: list[str] = field(default_factory=list)
    crop_padding: int = 4
    jitter: float = 0.2
    cutout_size: int = 8
    batchnorm: bool = True
    init: str = "auto"
    dropout: bool = True
    val_size: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False           # torch.compile the training model (falls back to eager where it cannot)
    data_dir: str | None = None
    download: bool = True
    out: str | None = None
    limit_train: int | None = None
    quiet: bool = False
    overwrite: bool = False
    tensorboard: bool = True        # write RUN/tensorboard/ event files when tensorboard is installed
    on_nan: str = "stop"            # non-finite loss: stop (keep the last good checkpoint) | skip-step
    checkpoint_every: float = 0.0   # minutes between mid-epoch checkpoints (0: at epoch ends only)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
# Settings a recipe may not carry: where data and results live is the user's business.
_NOT_IN_RECIPES = {"data_dir", "out", "quiet", "overwrite", "device", "recipe", "model", "dataset", "tensorboard",
                   "checkpoint_every", "model_args", "image_size", "channels"}
# What `--resume` may change: where the data is, where to run, what to print, how often to save.
RESUME_MAY_CHANGE = ("data_dir", "device", "quiet", "download", "checkpoint_every", "tensorboard")


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
        raise UsageError(f"--resume continues the run with its saved settings; --{refused[0].replace('_', '-')} "
                         f"cannot be changed (allowed: {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)})")
    values = {**saved, **{k: v for k, v in changes.items() if v is not None}, "out": str(out)}
    return config_from_dict(values, model)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate(cfg: TrainConfig, model=None) -> None:
    """Raise UsageError with one line for the first setting that cannot work.

    model: the Python object behind cfg.model when the caller has it (a notebook's class).
    """
    from cifarlab.data.sources import dataset_info, is_custom
    from cifarlab.models import INITS, check_switches, model_spec
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
    for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
    _check(isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0,
           f"--lr must be a finite number > 0, got {cfg.lr}")
    for name in ("weight_decay", "momentum", "warmup_epochs"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
               f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    _check(isinstance(cfg.backbone_lr_factor, (int, float)) and 0 < cfg.backbone_lr_factor <= 1,
           f"--backbone-lr-factor must be in (0, 1], got {cfg.backbone_lr_factor}")
    _check(isinstance(cfg.norm_lr_factor, (int, float)) and math.isfinite(cfg.norm_lr_factor)
           and cfg.norm_lr_factor > 0, f"--norm-lr-factor must be a finite number > 0, got {cfg.norm_lr_factor}")
    _check(isinstance(cfg.tta_shift, int) and 0 <= cfg.tta_shift <= 4,
           f"--tta-shift must be 0..4 pixels, got {cfg.tta_shift}")
    for name in ("lookahead", "tta", "nesterov", "batchnorm", "dropout", "channels_last", "compile"):
        _check(isinstance(getattr(cfg, name), bool), f"{name} must be true or false, got {getattr(cfg, name)!r}")
    _check(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}")
    _check(cfg.optimizer in OPTIMIZERS, f"unknown optimizer '{cfg.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
    _check(cfg.schedule in SCHEDULES, f"unknown schedule '{cfg.schedule}' (choose from {', '.join(SCHEDULES)})")
    _check(cfg.precision in PRECISIONS, f"unknown precision '{cfg.precision}' (choose from {', '.join(PRECISIONS)})")
    _check(cfg.on_nan in ON_NAN, f"unknown --on-nan '{cfg.on_nan}' (choose from {', '.join(ON_NAN)})")
    _check(isinstance(cfg.checkpoint_every, (int, float)) and math.isfinite(cfg.checkpoint_every)
           and cfg.checkpoint_every >= 0, f"--checkpoint-every must be a number of minutes >= 0, "
           f"got {cfg.checkpoint_every}")
    _check(cfg.device in DEVICES, f"unknown device '{cfg.device}' (choose from {', '.join(DEVICES)})")
    _check(cfg.init in INITS + ("auto",), f"unknown init '{cfg.init}' (choose from auto, {', '.join(INITS)})")
    check_switches(spec, cfg.batchnorm, cfg.dropout, cfg.init)
    _check(isinstance(cfg.augment, list), f"augment must be a list, got {cfg.augment!r}")
    for op in cfg.augment:
        _check(op in AUGMENTATIONS, f"unknown augmentation '{op}' (choose from {', '.join(AUGMENTATIONS)}, or none)")
    for a, b in (("crop", "translate"), ("flip", "alt-flip")):
        _check(not (a in cfg.augment and b in cfg.augment), f"augment: choose one of {a} and {b}, not both")
    _check(isinstance(cfg.val_size, int) and cfg.val_size >= 0, f"--val-size must be >= 0, got {cfg.val_size}")
    _check(cfg.limit_train is None or cfg.limit_train >= 1, f"--limit-train must be >= 1, got {cfg.limit_train}")
    _check(0 <= cfg.crop_padding <= 16 and cfg.cutout_size >= 1 and 0 <= cfg.jitter < 1,
           "augmentation sizes out of range (crop_padding 0..16, cutout_size >= 1, jitter in [0, 1))")


def config_from_dict(values: dict, model=None) -> TrainConfig:
    """A TrainConfig from a saved config.json / checkpoint (extra keys such as `resolved` are ignored)."""
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in FIELD_TYPES})
    validate(cfg, model)
    return cfg


def parse_augment(text: str) -> list[str]:
    """'crop,flip' -> ['crop', 'flip']; 'none' or '' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]
