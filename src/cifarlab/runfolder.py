"""RunFolder: the one owner of a run folder's layout, and of reading and writing it.

A run folder holds config.json (every setting, how the model was built, the data's shape and
statistics), metrics.jsonl (one row per epoch), summary.json / summary.txt, checkpoints/last.pt
and best.pt (full training state) and model.safetensors (best weights, no pickle). Every other
module reads and writes these through `RunFolder`; writes are atomic (temporary file, fsync, rename).
It sits low (it imports only storage, errors, config, data and models) so that training, the studies
and report/ can use it; `cifarlab.Run` (run.py) is the user's face of the same folder, at the top.

Checkpoints load with `weights_only=True`: a file that holds Python objects is refused, never run,
and nothing in a run folder is ever imported (a model recorded as `module:factory` is imported
from the user's own Python path, not from the run folder).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cifarlab.errors import UsageError
# The storage layer, re-exported: the run folder's users import these from here.
from cifarlab.storage import (LOCK, atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401
                              current_metrics_row, current_summary, load_checkpoint, load_weights, lock_folder,
                              release_folders, replace_folder, save_checkpoint, save_weights, strip_prefixes)

if TYPE_CHECKING:
    import torch

CONFIG, METRICS, SUMMARY, SUMMARY_TEXT, WEIGHTS = (
    "config.json", "metrics.jsonl", "summary.json", "summary.txt", "model.safetensors")
CHECKPOINTS, LAST, BEST = "checkpoints", "last.pt", "best.pt"
STUDY_LOG = "train.log"   # a study's parallel run appends its output here; the parent holds it open
DIAGNOSTICS = "diagnostics.jsonl"   # --diagnostics N: a row per recorded layer per recorded step
DIAGNOSE = "diagnose"     # `cifarlab diagnose RUN`'s figures, by default
TEMPERATURE = "temperature.json"   # `cifarlab evaluate RUN --calibration`: T fitted on val (predict/export use it)
ROBUSTNESS = "robustness.json"     # a study's --robustness: this run's figures beyond its test split
# `cifarlab export`: each format and the file it writes in the run folder by default.
EXPORT_FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt",
                  "safetensors": "model.export.safetensors"}


# ---------------------------------------------------------------- the run folder

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from None



# What cifarlab itself writes in a run folder: --overwrite replaces a folder that holds nothing else.
RUN_ENTRIES = {CONFIG, METRICS, SUMMARY, SUMMARY_TEXT, WEIGHTS, CHECKPOINTS, STUDY_LOG, "tensorboard",
               DIAGNOSTICS, DIAGNOSE, TEMPERATURE, ROBUSTNESS, *EXPORT_FORMATS.values()}


def _check_only_run_files(out: Path) -> None:
    """--overwrite empties the folder: refuse one that holds anything cifarlab did not write there (the user's
    notes, code, the current folder) rather than delete it."""
    if out.resolve() == Path.cwd().resolve():
        raise UsageError(f"--out {out} is the current folder: --overwrite would empty it; choose a run folder")
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in RUN_ENTRIES and not p.name.startswith((".", "evaluation-")))
    if foreign:
        raise UsageError(f"--out {out} holds files that are not a run's ({', '.join(foreign[:3])}"
                         f"{' ...' if len(foreign) > 3 else ''}): --overwrite replaces a run folder only; choose "
                         "another folder")

class RunFolder:
    """A run folder: its layout, and its files read and written. `cifarlab.Run` adds what a user does with it.

    model: the class, factory or module a run was trained with when Python cannot import it
    again (a class defined in a notebook is recorded as `__main__:Name`).
    """

    def __init__(self, path: str | Path, model=None, config: dict | None = None):
        self.path = Path(path)
        self.supplied_model = model
        self._config = config

    # ---- layout
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def diagnostics_path(self) -> Path:
        return self.path / DIAGNOSTICS

    def checkpoint_path(self, name: str = LAST) -> Path:
        return self.path / CHECKPOINTS / name

    def temperature(self, purpose: str, weights: Path | None = None) -> float:
        """The temperature `cifarlab evaluate RUN --calibration` stored for `weights` (default: the weights the run
        loads); without one, or with one fitted on other weights (another checkpoint, or these before a resume),
        refused in one line that says how to fit it (`purpose` names what asked: "predict --calibrated")."""
        path = self.path / TEMPERATURE
        weights = Path(weights) if weights else self.weights_to_load()
        again = self.path if weights == self.weights_to_load() else weights
        if not path.is_file():
            raise UsageError(f"{purpose}: {self.path} has no stored temperature ({TEMPERATURE}); fit one first with "
                             f"`cifarlab evaluate {again} --calibration` (the run needs a val split: --val-size)")
        stored = _read_json(path)
        value = stored.get("temperature")
        if not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(f"{path}: 'temperature' must be a number > 0, got {value!r}")
        fitted_on, now = stored.get("weights"), weights_identity(weights)
        if not isinstance(fitted_on, dict) or fitted_on.get("sha256") != now["sha256"]:
            why = (f"was fitted on {fitted_on.get('name')} (sha256 {str(fitted_on.get('sha256'))[:12]}), not on "
                   f"{weights} (sha256 {now['sha256'][:12]}): the weights changed since (a resume, another checkpoint)"
                   if isinstance(fitted_on, dict) else
                   "does not identify by sha256 the weights it was fitted on (an older cifarlab wrote it)")
            raise UsageError(f"{purpose}: the temperature in {path} {why}; fit it again with "
                             f"`cifarlab evaluate {again} --calibration`")
        return float(value)

    @classmethod
    def create(cls, out: str | Path | None, overwrite: bool, default_name: str) -> "RunFolder":
        """A new run folder: `out`, or runs/<time>-<default_name>; refuses to replace a run silently.

        overwrite: a run already in `out` is moved aside and deleted, so the new run starts from an empty folder
        (no checkpoint of the old one is left for a --resume to continue under the new settings)."""
        if not out:
            out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{default_name}"
        out = Path(out)
        held = [name for name in (CONFIG, CHECKPOINTS, WEIGHTS, METRICS, SUMMARY) if (out / name).exists()]
        if (out / CONFIG).exists() and not overwrite:
            raise UsageError(f"--out {out} already holds a run; continue it with `cifarlab train --resume {out}`, "
                             f"replace it with --overwrite, or choose another folder")
        if held and not overwrite:
            raise UsageError(f"--out {out} holds files of a run ({', '.join(held)}); replace them with --overwrite, "
                             "or choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        lock_folder(out)            # before anything in it is replaced
        if held:
            _check_only_run_files(out)
            replace_folder(out, keep=(STUDY_LOG,))
        (out / CHECKPOINTS).mkdir(exist_ok=True)
        return cls(out)

    @classmethod
    def reopen(cls, path: str | Path) -> "RunFolder":
        """The folder of a run being resumed, locked for this process as `create` locks a new one."""
        lock_folder(Path(path))
        return cls(path)

    # ---- writing (the engine, on rank 0)
    def write_config(self, config: dict) -> None:
        self._config = config
        atomic_write_json(self.config_path, config)

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, summary)

    def write_summary_text(self, block: str) -> None:
        """summary.txt: the article's block, which report/ makes of summary.json."""
        atomic_write_text(self.path / SUMMARY_TEXT, block)

    def save_checkpoint(self, state: dict, name: str = LAST) -> None:
        save_checkpoint(self.checkpoint_path(name), state)

    def save_weights(self, state_dict: dict) -> None:
        save_weights(self.weights_path, state_dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}')"

    # ---- reading
    @property
    def config(self) -> dict:
        if self._config is None:
            if not self.config_path.is_file():
                raise UsageError(f"{self.path}: not a cifarlab run folder (no config.json)")
            self._config = _read_json(self.config_path)
        return self._config

    @property
    def finished(self) -> bool:
        return self.summary_path.is_file()

    @property
    def summary(self) -> dict:
        if not self.finished:
            hint = " (the run has not finished)" if self.config_path.is_file() else ""
            raise UsageError(f"{self.path}: not a finished cifarlab run folder, no summary.json{hint}")
        return current_summary(_read_json(self.summary_path))     # a 0.1 run's keys under their new names

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per finished epoch."""
        if not self.metrics_path.is_file():
            return []
        return [current_metrics_row(json.loads(line)) for line in self.metrics_path.read_text().splitlines()
                if line.strip()]

    def diagnostics_rows(self) -> list[dict]:
        """diagnostics.jsonl: a row per recorded layer per recorded step; a run trained without --diagnostics
        is refused in one line that says how to record them."""
        if not self.diagnostics_path.is_file():
            raise UsageError(f"{self.path}: no {DIAGNOSTICS}; train with --diagnostics N (e.g. --diagnostics 50) to "
                             "record the gradient flow")
        rows = []
        for line in self.diagnostics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:     # a line cut short by a kill (resume trims it): not a row
                continue
        return rows

    def load_checkpoint(self, name: str = LAST) -> dict:
        return load_checkpoint(self.checkpoint_path(name))

    def train_config(self):
        """The run's settings as a TrainConfig (validated; the model is checked, not built)."""
        from cifarlab.validation import config_from_dict

        return config_from_dict(self.config, model=self.supplied_model)

    def dataset_info(self):
        """Classes, image shape and normalisation of the data the run was trained on."""
        from cifarlab.data.sources import DatasetInfo, dataset_info

        recorded = self.config.get("data_info")
        if not recorded:
            return dataset_info(self.config["dataset"])
        return DatasetInfo(recorded["name"], recorded["title"], recorded["num_classes"], recorded["channels"],
                           recorded["size"], tuple(recorded["mean"]), tuple(recorded["std"]), "", (), (), (),
                           tuple(self.config.get("classes") or ()))

    @property
    def classes(self) -> list[str]:
        info = self.dataset_info()
        names = self.config.get("classes")
        if isinstance(names, list) and len(names) == info.num_classes:
            return [str(n) for n in names]
        if len(info.default_classes) == info.num_classes:
            return list(info.default_classes)
        return [str(i) for i in range(info.num_classes)]

    def weights_to_load(self) -> Path:
        """The weights the run loads: checkpoints/best.pt, else checkpoints/last.pt, else model.safetensors."""
        for candidate in (self.checkpoint_path(BEST), self.checkpoint_path(LAST), self.weights_path):
            if candidate.is_file():
                return candidate
        raise UsageError(f"{self.path}: no checkpoint or model.safetensors in this run folder")

    def model(self, weights: str | Path | None = None, device: str = "cpu"):
        """The trained model in eval mode, with the best weights (or the file `weights`)."""
        from cifarlab.models import build_model
        from cifarlab.models.renames import refuse_old_layer_names

        cfg = self.train_config()
        info = self.dataset_info()
        source = Path(weights) if weights else self.weights_to_load()
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(source))
        else:
            state = load_checkpoint(source)["model"]
        model = build_model(cfg.model, info.num_classes, info.channels, info.size, batchnorm=cfg.batchnorm,
                            init="auto", dropout=cfg.dropout, skip=cfg.skip, model_args=cfg.model_args,
                            supplied=self.supplied_model)
        refuse_old_layer_names(model, strip_prefixes(state), source)
        load_weights(model, state, source)
        return model.to(device).eval()

def open_run(path: str | Path, model=None, kind: type[RunFolder] = RunFolder) -> RunFolder:
    """Open a run folder (finished or not) as a `kind`; `model` supplies a class Python cannot import again."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such run folder")
    run = kind(path, model)
    run.config   # noqa: B018 - a folder without config.json is refused here, in one line
    return run


def weights_identity(path: Path) -> dict:
    """{"name", "sha256"} of a weights file: what temperature.json records, so that a temperature is never used
    with weights other than those it was fitted on (the sha256 of the bytes: a resume rewrites the file in place)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"name": Path(path).name, "sha256": h.hexdigest()}


def open_source(source: str | Path | RunFolder, model=None) -> tuple[RunFolder, Path]:
    """A run folder, or a checkpoint / safetensors file inside one: (the run, the weights to load)."""
    if isinstance(source, RunFolder):
        return source, source.weights_to_load()
    source = Path(source)
    if source.is_dir():
        run = open_run(source, model)
        return run, run.weights_to_load()
    if not source.is_file():
        raise UsageError(f"{source}: no such run folder or checkpoint")
    folder = source.parent.parent if source.parent.name == CHECKPOINTS else source.parent
    if source.suffix == ".safetensors":
        if not (folder / CONFIG).is_file():
            raise UsageError(f"{source}: a .safetensors file needs the run's config.json beside it")
        return RunFolder(folder, model), source
    config = None if (folder / CONFIG).is_file() else load_checkpoint(source)["config"]
    return RunFolder(folder, model, config), source
