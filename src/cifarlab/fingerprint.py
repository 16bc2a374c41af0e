"""A run's fingerprint: every setting that changes its numbers, and whether a folder may be reused for a config.

STAND-IN (branch t-jobs): the t-runs branch owns this module; this minimal version has the same two
functions so the parallel path can be built and tested against it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cifarlab.config import TrainConfig
from cifarlab.errors import UsageError
from cifarlab.run import LAST, Run

# Settings that say where things are or how they are shown, never what is computed.
NOT_NUMBERS = {"out", "quiet", "overwrite", "tensorboard", "download", "data_dir", "checkpoint_every", "device"}


def fingerprint(cfg: TrainConfig, model=None) -> dict:
    """The settings of `cfg` that change its numbers."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_NUMBERS}


def reuse_state(cfg: TrainConfig, model=None) -> str:
    """"new" (nothing to reuse), "finished" (reuse it) or "resume" (continue it) for cfg.out; a UsageError
    naming the first setting that differs when the folder holds another run."""
    run = Run(Path(cfg.out))
    if not run.config_path.is_file():
        return "new"
    recorded = json.loads(run.config_path.read_text())
    for key, value in fingerprint(cfg, model).items():
        if key in recorded and recorded[key] != value:
            raise UsageError(f"{cfg.out} was trained with {key} {recorded[key]}, this study asks {value}: "
                             "use another --out or --overwrite")
    if run.finished:
        return "finished"
    return "resume" if run.checkpoint_path(LAST).is_file() else "new"
