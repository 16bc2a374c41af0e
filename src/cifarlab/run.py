"""Run: the one owner of a run folder's layout, and what a user does with a finished run.

A run folder holds config.json (every setting, how the model was built, the data's shape and
statistics), metrics.jsonl (one row per epoch), summary.json / summary.txt, checkpoints/last.pt
and best.pt (full training state) and model.safetensors (best weights, no pickle). Every other
module reads and writes these through `Run`; writes are atomic (temporary file, fsync, rename).

Checkpoints load with `weights_only=True`: a file that holds Python objects is refused, never run,
and nothing in a run folder is ever imported (a model recorded as `module:factory` is imported
from the user's own Python path, not from the run folder).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cifarlab.errors import CifarlabError, UsageError

if TYPE_CHECKING:
    import torch

CONFIG, METRICS, SUMMARY, SUMMARY_TEXT, WEIGHTS = (
    "config.json", "metrics.jsonl", "summary.json", "summary.txt", "model.safetensors")
CHECKPOINTS, LAST, BEST = "checkpoints", "last.pt", "best.pt"
LOCK = ".lock"     # held by the one process writing the folder (see lock_folder)
# `cifarlab export` formats and the file each writes in the run folder by default.
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.export.safetensors"}


# ---------------------------------------------------------------- one writer per folder

_held: dict[Path, int] = {}     # folder -> descriptor of its lock file, for the locks this process holds


def lock_folder(folder: Path) -> None:
    """Take the advisory lock on a run folder (flock on FOLDER/.lock), or stop with one line naming the process
    that holds it. The OS drops the lock when that process ends, however it ends (a SIGKILL leaves no stale
    lock); a second train, --resume or study job on the folder is refused while it runs. No-op without fcntl."""
    try:
        import fcntl
    except ImportError:       # Windows: no advisory locks here
        return
    folder = Path(folder).resolve()
    if folder in _held:
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        raise UsageError(f"{folder} is being written by another process ({_describe(holder)}); wait for it to "
                         "finish or stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": shlex.join(sys.argv),
                             "started": datetime.now().isoformat(timespec="seconds")}).encode())
    _held[folder] = fd


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"


def release_folders() -> None:
    """Drop every run-folder lock this process holds (the end of fit(), however it ends)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash or a full disk mid-write leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CifarlabError(f"{path}: could not write ({e.strerror or e}); the previous file is kept") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _holds_objects(path: Path) -> bool:
    """Whether a plain pickle would import globals (classes, functions) when loaded: read, not run."""
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not even a well-formed pickle
        return False


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True onto the CPU; each way a file can be wrong gets its own line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):   # torch's zip format, or a legacy pickle
        raise UsageError(f"{path}: not a PyTorch checkpoint, or damaged")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - never pass torch's hint on: it suggests turning the safety off
        if "GLOBAL" in str(e) or (head[:1] == b"\x80" and _holds_objects(path)):
            raise UsageError(f"{path}: refused: it holds objects that could run code when loaded; "
                             "cifarlab loads weights only") from None
        raise UsageError(f"{path}: not a PyTorch checkpoint, or damaged") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise UsageError(f"{path}: not a cifarlab checkpoint (no model/config entries)")
    return checkpoint


def strip_prefixes(state: dict) -> dict:
    """Weights saved from torch.compile or DDP wrappers carry `_orig_mod.` / `module.`; drop them."""
    return {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state.items()}


def load_weights(model: torch.nn.Module, state: dict, source: Path) -> None:
    """Load `state` into `model`; a checkpoint of another model or version names the keys that differ."""
    state = strip_prefixes(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                 if keys]
        raise UsageError(f"{source}: a checkpoint of another model or version: {'; '.join(parts)}")
    model.load_state_dict(state)


# ---------------------------------------------------------------- the run folder

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from None


class Run:
    """A run folder. `cifarlab.load_run(path)` opens one; `cifarlab.train(...)` returns one.

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

    def checkpoint_path(self, name: str = LAST) -> Path:
        return self.path / CHECKPOINTS / name

    @classmethod
    def create(cls, out: str | Path | None, overwrite: bool, default_name: str) -> "Run":
        """A new run folder: `out`, or runs/<time>-<default_name>; refuses to replace a run silently."""
        if out:
            out = Path(out)
            if (out / CONFIG).exists() and not overwrite:
                raise UsageError(f"--out {out} already holds a run; continue it with `cifarlab train --resume {out}`, "
                                 f"replace it with --overwrite, or choose another folder")
        else:
            out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{default_name}"
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        lock_folder(out)            # before anything in it is replaced
        for stale in (METRICS, SUMMARY, SUMMARY_TEXT):
            (out / stale).unlink(missing_ok=True)
        return cls(out)

    @classmethod
    def reopen(cls, path: str | Path) -> "Run":
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

    def write_summary(self, summary: dict, block: str) -> None:
        atomic_write_json(self.summary_path, summary)
        atomic_write_text(self.path / SUMMARY_TEXT, block)

    def save_checkpoint(self, state: dict, name: str = LAST) -> None:
        save_checkpoint(self.checkpoint_path(name), state)

    def save_weights(self, state_dict: dict) -> None:
        from safetensors.torch import save_file

        buffer = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{WEIGHTS}.", suffix=".tmp")
        os.close(fd)
        save_file(buffer, tmp)
        os.replace(tmp, self.weights_path)

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
        return _read_json(self.summary_path)

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per finished epoch."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    rows = metrics

    def metrics_frame(self):
        """The metrics as a pandas DataFrame, one row per epoch (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("metrics_frame() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.metrics)

    def load_checkpoint(self, name: str = LAST) -> dict:
        return load_checkpoint(self.checkpoint_path(name))

    def train_config(self):
        """The run's settings as a TrainConfig (validated; the model is checked, not built)."""
        from cifarlab.config import config_from_dict

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

    def best_weights_file(self) -> Path:
        for candidate in (self.checkpoint_path(BEST), self.checkpoint_path(LAST), self.weights_path):
            if candidate.is_file():
                return candidate
        raise UsageError(f"{self.path}: no checkpoint or model.safetensors in this run folder")

    def model(self, weights: str | Path | None = None, device: str = "cpu"):
        """The trained model in eval mode, with the best weights (or the file `weights`)."""
        from cifarlab.models import build_model

        cfg = self.train_config()
        info = self.dataset_info()
        source = Path(weights) if weights else self.best_weights_file()
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(source))
        else:
            state = load_checkpoint(source)["model"]
        model = build_model(cfg.model, info.num_classes, info.channels, info.size, batchnorm=cfg.batchnorm,
                            init="auto", dropout=cfg.dropout, model_args=cfg.model_args,
                            supplied=self.supplied_model)
        load_weights(model, state, source)
        return model.to(device).eval()

    # ---- what a user does with a run
    def evaluate(self, split: str = "test", tta: str | None = None, data_dir: str | None = None,
                 device: str = "auto", out: str | Path | None = None):
        """Accuracy, per-class accuracy, confusion matrix on test (or val); tta: None, "flip", "flip-shift"."""
        from cifarlab.evaluate import evaluate_run

        return evaluate_run(self, split, tta, data_dir, out, device)

    def predict(self, images, top_k: int = 5) -> list[dict]:
        """Top-k labels for image files, PIL images or uint8 arrays (HWC, or NHWC / NCHW batches)."""
        from cifarlab.predict import predict

        return predict(self, images, top_k)

    def export(self, fmt: str, out: str | Path | None = None):
        """Write the model as onnx, torchscript or safetensors; returns what was written and checked."""
        from cifarlab.export import export_run

        return export_run(self, fmt, out)

    def plot(self):
        """Loss and accuracy curves per epoch as a matplotlib Figure (shown inline in Jupyter)."""
        from cifarlab.report.plots import run_figure

        return run_figure(self.name, self.metrics)

    def resume(self, **changes) -> "Run":
        """Continue an interrupted run exactly where it stopped (changes: data_dir, device, quiet, ...)."""
        from cifarlab.api import resume

        return resume(self, **changes)

    def __repr__(self) -> str:
        if self.finished:
            s = self.summary
            return (f"Run('{self.path}': {s['model']} on {s['dataset']}, {s['epochs']} epochs, "
                    f"final test {s['final_test_acc']:.2f}%)")
        return f"Run('{self.path}', not finished)"


def load_run(path: str | Path, model=None) -> Run:
    """Open a run folder (finished or not); `model` supplies a class Python cannot import again."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such run folder")
    run = Run(path, model)
    run.config   # noqa: B018 - a folder without config.json is refused here, in one line
    return run


def open_source(source: str | Path | Run, model=None) -> tuple[Run, Path]:
    """A run folder, or a checkpoint / safetensors file inside one: (the run, the weights to load)."""
    if isinstance(source, Run):
        return source, source.best_weights_file()
    source = Path(source)
    if source.is_dir():
        run = load_run(source, model)
        return run, run.best_weights_file()
    if not source.is_file():
        raise UsageError(f"{source}: no such run folder or checkpoint")
    folder = source.parent.parent if source.parent.name == CHECKPOINTS else source.parent
    if source.suffix == ".safetensors":
        if not (folder / CONFIG).is_file():
            raise UsageError(f"{source}: a .safetensors file needs the run's config.json beside it")
        return Run(folder, model), source
    config = None if (folder / CONFIG).is_file() else load_checkpoint(source)["config"]
    return Run(folder, model, config), source
