"""Settings checked: validate() stops at the first one that cannot work, in one line; a saved run's
settings (config.json, a checkpoint, `--resume`'s changes) come back through here, checked again."""

from __future__ import annotations

import math

from cifarlab.errors import UsageError
from cifarlab.settings import (AUGMENTATIONS, DEVICES, FIELD_TYPES, ON_NAN, OPTIMIZERS, PRECISIONS,
                               RESUME_MAY_CHANGE, SCHEDULES, TrainConfig, flag_text)


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
    _check(isinstance(cfg.muon_ns_steps, int) and not isinstance(cfg.muon_ns_steps, bool) and cfg.muon_ns_steps >= 1,
           f"--muon-ns-steps must be an integer >= 1, got {cfg.muon_ns_steps}")
    _check(isinstance(cfg.whiten_bias_epochs, (int, float)) and math.isfinite(cfg.whiten_bias_epochs)
           and cfg.whiten_bias_epochs >= 0, f"--whiten-bias-epochs must be a finite number >= 0, "
           f"got {cfg.whiten_bias_epochs}")
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
    for name in ("lookahead", "tta", "nesterov", "batchnorm", "dropout", "skip", "channels_last", "compile", "decay_norms",
                 "test", "muon_renorm"):
        _check(isinstance(getattr(cfg, name), bool), f"{name} must be true or false, got {getattr(cfg, name)!r}")
    _check(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}")
    _check(isinstance(cfg.milestones, list) and all(isinstance(m, (int, float)) and not isinstance(m, bool)
                                                    and 0 < m < 1 for m in cfg.milestones)
           and cfg.milestones == sorted(set(cfg.milestones)),
           f"milestones must be increasing fractions of the run in (0, 1), e.g. [0.5, 0.75]; got {cfg.milestones!r}")
    _check(isinstance(cfg.checkpoint_every, (int, float)) and math.isfinite(cfg.checkpoint_every)
           and cfg.checkpoint_every >= 0, f"--checkpoint-every must be a number of minutes >= 0, "
           f"got {cfg.checkpoint_every}")
    _check(isinstance(cfg.val_size, int) and cfg.val_size >= 0, f"--val-size must be >= 0, got {cfg.val_size}")
    _check(isinstance(cfg.diagnostics, int) and cfg.diagnostics >= 0,
           f"--diagnostics must be a number of steps >= 0 (0: off), got {cfg.diagnostics}")
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
    check_switches(spec, cfg.batchnorm, cfg.dropout, cfg.init, cfg.skip)
    _check(isinstance(cfg.augment, list), f"augment must be a list, got {cfg.augment!r}")
    for op in cfg.augment:
        _check(op in AUGMENTATIONS, f"unknown augmentation '{op}' (choose from {', '.join(AUGMENTATIONS)}, or none)")
    for a, b in (("crop", "translate"), ("flip", "alt-flip")):
        _check(not (a in cfg.augment and b in cfg.augment), f"augment: choose one of {a} and {b}, not both")


def config_from_dict(values: dict, model=None) -> TrainConfig:
    """A TrainConfig from a saved config.json / checkpoint (extra keys such as `resolved` are ignored; a switch
    recorded as null, one the model does not have, takes its default)."""
    cfg = TrainConfig(**{k: v for k, v in values.items()
                         if k in FIELD_TYPES and not (v is None and k in ("batchnorm", "dropout", "skip", "init"))})
    validate(cfg, model)
    return cfg


def resume_config(saved: dict, changes: dict, out: str, model=None) -> TrainConfig:
    """A stopped run's own settings (in folder `out`), with only the RESUME_MAY_CHANGE ones replaced."""
    refused = [k for k, v in changes.items() if v is not None and k not in RESUME_MAY_CHANGE]
    if refused:
        raise UsageError(f"--resume continues the run with its saved settings; {flag_text(refused[0])} cannot be "
                         f"changed (allowed: {', '.join(flag_text(k) for k in RESUME_MAY_CHANGE)})")
    values = {**saved, **{k: v for k, v in changes.items() if v is not None}, "out": str(out)}
    return config_from_dict(values, model)
