"""The run folders of a study: train each config once, reuse it when it is already there."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime
from pathlib import Path

import torch

from cifarlab.config import TrainConfig
from cifarlab.errors import UsageError
from cifarlab.run import LAST, Run, load_run


def run_or_reuse(cfg: TrainConfig, model=None) -> Run:
    """Train `cfg` into cfg.out unless a finished run is already there (studies resume by skipping).

    model: the Python class or factory behind cfg.model, when it is one.
    """
    from cifarlab.training.engine import fit

    out = Path(cfg.out)
    if Run(out).finished:
        run = load_run(out, model)
        if run.config.get("model") == cfg.model and run.config.get("dataset") == cfg.dataset \
                and run.config.get("epochs") == cfg.epochs:
            if not cfg.quiet:
                print(f"cifarlab: {out} already finished, reusing it", flush=True)
            return run
        raise UsageError(f"{out} holds a different run ({run.config.get('model')} on {run.config.get('dataset')}, "
                         f"{run.config.get('epochs')} epochs); choose another --out")
    # A module instance is copied: every run of a study starts from the same weights.
    fresh = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model
    if Run(out).checkpoint_path(LAST).is_file() and Run(out).config_path.is_file():
        fit(cfg, resume=True, model=fresh)  # an unfinished run: continue it exactly where it stopped
    else:
        fit(dataclasses.replace(cfg, overwrite=True), model=fresh)
    return load_run(out, model)


def default_out(prefix: str) -> Path:
    """runs/YYYYmmdd-HHMMSS-PREFIX: a study's folder when no --out is given."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{prefix}"
