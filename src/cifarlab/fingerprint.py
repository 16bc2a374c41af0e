"""A run's fingerprint: every setting that changes its numbers, so a study reuses or resumes a run folder only
when it would train exactly that run again.

The fingerprint is a flat dict, recorded in config.json under "fingerprint" when a run starts:
- model, model_args: what is built (a switch the model does not have, such as basic-cnn's batchnorm, is None);
- dataset and data_files: the name, and the identity of the files behind it (a sha256 over the official files'
  names, sizes and contents for a built-in dataset or an npz:, cached by size and mtime so a rerun does not
  read them again; an image folder's own fingerprint of every image's path, size and mtime for folder:);
- every TrainConfig setting that changes what is computed (the recipe's settings, seed, limit_train, ...);
- device: the resolved device type (a CUDA run and a CPU run of the same recipe differ);
- threads: the effective CPU thread count of a CPU run (--threads, else torch's default): a convolution's
  gradient is summed in another order with another count; None on a GPU, where it does not matter;
- precision: what --precision resolves to on that device;
- cifarlab: the version's compatible part (major, or major.minor while the major is 0, as in semantic versioning).

Left out: where things live and what is printed or recorded (out, data_dir, quiet, overwrite, tensorboard,
checkpoint_every, download, diagnostics: it reads the gradients and changes none) and the recipe's name (and the one that chose it by device), whose settings are already in the fields it filled. All of it is computed from
the settings alone, with no model built, so a study's parent process checks every folder before it starts a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, fields
from pathlib import Path

from cifarlab.errors import CifarlabError, UsageError
from cifarlab.runfolder import LAST, RunFolder, atomic_write_json
from cifarlab.settings import TrainConfig

# TrainConfig fields that never change a run's numbers (where things live, what is printed).
NOT_NUMBERS = frozenset({"out", "data_dir", "quiet", "overwrite", "tensorboard", "checkpoint_every", "download",
                         "recipe", "recipe_chosen_by", "diagnostics"})
# Fields recorded as what they resolve to, after the settings.
RESOLVED = ("device", "threads", "precision")
SWITCHES = ("batchnorm", "dropout", "skip", "init")     # settings that exist only where the model has the switch
# How the refusal names a fingerprint entry that is not a flag.
LABELS = {"data_files": "data files (sha256)", "cifarlab": "cifarlab version", "threads": "CPU threads"}
DEFAULTS = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(TrainConfig)}
SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_NUMBERS and f.name not in RESOLVED)


def fingerprint(cfg: TrainConfig, model=None, resolve: bool = True) -> dict:
    """Every setting that changes the numbers of the run `cfg` describes (see the module's docstring).

    model: the Python object behind cfg.model, when it is one (its switches are read from it).
    resolve=False: leave out what the device, threads and precision resolve to (a Ray study's driver: they
    resolve on the node that trains, whose worker checks them again before it reuses or resumes)."""
    import torch

    from cifarlab.training.device import Precision, resolve_device

    out = {name: getattr(cfg, name) for name in SETTINGS}
    out.update(recorded_switches(cfg.model, {name: getattr(cfg, name) for name in SWITCHES}, model))
    out["data_files"] = data_identity(cfg)
    if not resolve:
        out["cifarlab"] = compatible_version()
        return json.loads(json.dumps(out))
    device = resolve_device(cfg.device)
    out["device"] = device.type
    out["threads"] = (cfg.threads or torch.get_num_threads()) if device.type == "cpu" else None
    out["precision"] = Precision.for_training(cfg.precision, device).name
    out["cifarlab"] = compatible_version()
    return json.loads(json.dumps(out))      # as config.json will hold it: tuples become lists


def recorded_switches(model_ref: str, values: dict, model=None) -> dict:
    """batchnorm / dropout / skip / init as a run records them: None where the model has no such switch (basic-cnn has
    no BatchNorm: "batchnorm": true would claim a choice nobody made)."""
    from cifarlab.models import model_spec

    try:
        switches = model_spec(model_ref, model).switches
    except CifarlabError:          # a model Python cannot import here: keep what was given
        return dict(values)
    return {name: value if name in switches else None for name, value in values.items()}


def compatible_version(version: str | None = None) -> str:
    """The part of a cifarlab version (default: this one) within which runs compare: 1.4.2 -> "1", 0.3.1 -> "0.3"."""
    import cifarlab

    parts = str(version or cifarlab.__version__).split(".")
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]


# ---------------------------------------------------------------- reuse

def reuse_state(cfg: TrainConfig, model=None, resolve: bool = True) -> str:
    """What a study does with cfg.out: "new" (nothing trained there), "finished" (a finished run of exactly these
    settings: reuse it) or "resume" (an unfinished run of exactly these settings, with checkpoints/last.pt).

    Any other run there is refused in one line naming the first setting that differs. With cfg.overwrite, every
    folder is "new": whatever is there is replaced (the run starts from an empty folder). resolve: as in
    fingerprint()."""
    run = RunFolder(cfg.out)
    if cfg.overwrite or (not run.finished and not run.checkpoint_path(LAST).is_file()):
        return "new"
    if not run.config_path.is_file():
        raise UsageError(f"{cfg.out} holds a checkpoint but no config.json, so what trained it is unknown: use "
                         "another --out or --overwrite")
    recorded = run.config
    wanted = fingerprint(cfg, model, resolve)
    had = recorded.get("fingerprint")
    if not isinstance(had, dict):
        had = legacy_fingerprint(recorded, wanted, model)
    difference = first_difference(had, wanted)
    if difference is not None:
        name, then, now = difference
        raise UsageError(f"{cfg.out} was trained with {LABELS.get(name, name.replace('_', '-'))} {_show(then)}, "
                         f"this study asks {_show(now)}: use another --out or --overwrite")
    return "finished" if run.finished else "resume"


def check_same_data(cfg: TrainConfig, recorded: dict) -> None:
    """A resumed run continues on the files it started on: a --data-dir (or --sample) that holds other files
    is refused in one line (the rest of the settings are the run's own: validation.resume_config)."""
    had = (recorded.get("fingerprint") or {}).get("data_files")
    now = data_identity(cfg)
    if had and now and had != now:
        where = f"--data-dir {cfg.data_dir}" if cfg.data_dir else "the default data folder"
        raise UsageError(f"{cfg.out} was trained on other {cfg.dataset} files (sha256 {had[:12]}) than {where} holds "
                         f"({now[:12]}): resume it with the --data-dir it started from")


def first_difference(had: dict, wanted: dict) -> tuple[str, object, object] | None:
    """(setting, recorded value, wanted value) of the first setting that differs, in the fingerprint's order.

    A setting one side lacks (a folder written before it existed) counts as its default; data files that cannot
    be identified now (not downloaded yet) are not compared."""
    for name, now in wanted.items():
        then = had.get(name, DEFAULTS.get(name, MISSING))
        if name in SWITCHES and name not in had and now is None:
            then = None     # a switch added later (skip): the model recorded without it has none either
        if name == "data_files" and (now is None or then is MISSING):
            continue
        if then is MISSING or then != now:
            return name, None if then is MISSING else then, now
    return None


def legacy_fingerprint(recorded: dict, wanted: dict, model=None) -> dict:
    """What a config.json from before fingerprints records of them: its settings, resolved device and precision,
    its thread count when it recorded one, and its version. What it does not record is taken as equal."""
    had = {name: recorded[name] for name in SETTINGS if name in recorded}
    had.update(recorded_switches(recorded.get("model", ""), {n: recorded.get(n, DEFAULTS[n]) for n in SWITCHES},
                                 model))
    resolved = recorded.get("resolved") or {}
    if "device" in resolved:
        had["device"] = str(resolved["device"]).split(":")[0]
    if "precision" in resolved:
        had["precision"] = resolved["precision"]
    had["threads"] = recorded["threads"] if recorded.get("threads") else wanted["threads"]
    version = (recorded.get("versions") or {}).get("cifarlab")
    had["cifarlab"] = compatible_version(version) if version else wanted["cifarlab"]
    return {name: had.get(name, wanted[name]) for name in wanted if name in had or name not in SETTINGS}


def _show(value) -> str:
    if isinstance(value, str) and len(value) == 64:     # a sha256: its start is enough to tell two apart
        return value[:12]
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- the data's identity

def data_identity(cfg: TrainConfig) -> str | None:
    """A sha256 naming the files the run trains on; None where they are not there yet (a download to come)."""
    from cifarlab.data.sources import DATASETS, _present, default_data_dir

    kind, _, target = cfg.dataset.partition(":")
    if kind == "folder":
        from cifarlab.data.folder import fingerprint as folder_fingerprint, scan_folder
        from cifarlab.data.foldercache import CACHE_VERSION

        try:
            return folder_fingerprint(scan_folder(Path(target).expanduser()), cfg.image_size, cfg.channels,
                                      CACHE_VERSION)
        except CifarlabError:
            return None
    if kind == "npz":
        path = Path(target).expanduser()
        return files_hash([path]) if path.is_file() else None
    info = DATASETS.get(cfg.dataset)
    if info is None:
        return None
    folder = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    found = [_present(folder / info.folder, name) for name in info.train_files + info.test_files]
    return None if any(f is None for f in found) else files_hash(found)


def files_hash(paths: list[Path]) -> str:
    """sha256 over each file's name, size and content hash (the content hashes cached by path, size, mtime)."""
    cache_file = _hash_cache()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    h, changed = hashlib.sha256(), False
    for path in paths:
        stat = path.stat()
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = cache.get(key)
        if not (isinstance(entry, list) and entry[:2] == stamp):
            entry, changed = [*stamp, _sha256(path)], True
            cache[key] = entry
        h.update(f"{path.name}\0{stat.st_size}\0{entry[2]}\n".encode())
    if changed:
        try:
            atomic_write_json(cache_file, cache)
        except (CifarlabError, OSError):
            pass                   # a read-only cache: the hashes are computed again next time
    return h.hexdigest()


def _hash_cache() -> Path:
    from cifarlab.data.foldercache import cache_dir

    return cache_dir() / "file-hashes.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
