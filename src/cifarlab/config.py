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
    model: str = "basic-cnn"
    dataset: str = "cifar10"
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
                   "checkpoint_every"}


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


def build_config(overrides: dict, recipe: str | None = None) -> TrainConfig:
    """Defaults <- recipe <- overrides (values that are not None), then validated."""
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["recipe"] = recipe
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate(cfg: TrainConfig) -> None:
    """Raise UsageError with one line for the first setting that cannot work."""
    from cifarlab.data.sources import dataset_info
    from cifarlab.models import INITS, model_spec

    spec, info = model_spec(cfg.model), dataset_info(cfg.dataset)
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
    _check(isinstance(cfg.augment, list), f"augment must be a list, got {cfg.augment!r}")
    for op in cfg.augment:
        _check(op in AUGMENTATIONS, f"unknown augmentation '{op}' (choose from {', '.join(AUGMENTATIONS)}, or none)")
    for a, b in (("crop", "translate"), ("flip", "alt-flip")):
        _check(not (a in cfg.augment and b in cfg.augment), f"augment: choose one of {a} and {b}, not both")
    _check(isinstance(cfg.val_size, int) and cfg.val_size >= 0, f"--val-size must be >= 0, got {cfg.val_size}")
    _check(cfg.limit_train is None or cfg.limit_train >= 1, f"--limit-train must be >= 1, got {cfg.limit_train}")
    _check(0 <= cfg.crop_padding <= 16 and cfg.cutout_size >= 1 and 0 <= cfg.jitter < 1,
           "augmentation sizes out of range (crop_padding 0..16, cutout_size >= 1, jitter in [0, 1))")
    _check(info.size >= spec.min_size,
           f"model '{cfg.model}' needs inputs of at least {spec.min_size}x{spec.min_size}; "
           f"{cfg.dataset} images are {info.size}x{info.size}")


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a saved config.json / checkpoint (extra keys such as `resolved` are ignored)."""
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in FIELD_TYPES})
    validate(cfg)
    return cfg


def parse_augment(text: str) -> list[str]:
    """'crop,flip' -> ['crop', 'flip']; 'none' or '' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]
