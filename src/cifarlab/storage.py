"""The files of a run folder, at the bottom of the layers: one writer per folder (an advisory lock), atomic
writes that respect the umask, replacing a folder whole, and checkpoints that load weights only.

`cifarlab.runfolder.RunFolder` owns the folder's layout and uses these; other modules that write files beside a run
(reports, tune's records) use the atomic writes too.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import shlex
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cifarlab.errors import CifarlabError, UsageError

if TYPE_CHECKING:
    import torch

LOCK = ".lock"     # held by the one process writing the folder (see lock_folder)


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


def replace_folder(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Empty `folder`, which this process has locked: rename it aside (one atomic step: no reader sees half an
    old run), make it again, lock the new one, then delete the old. Files named in `keep` move into the new
    folder (a rename keeps them open for whoever writes them: a study's log)."""
    folder = Path(folder)
    key = folder.resolve()          # as lock_folder named it, while the folder is still there
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    try:
        os.replace(folder, aside)   # onto the empty directory mkdtemp made: atomic on POSIX
    except OSError:                 # Windows renames no folder over another
        os.rmdir(aside)
        os.rename(folder, aside)
    old_fd = _held.pop(key, None)
    try:
        folder.mkdir()
        lock_folder(folder)         # the new folder is ours before the old one goes
        for name in keep:
            if (aside / name).exists():
                os.replace(aside / name, folder / name)
    finally:
        if old_fd is not None:
            os.close(old_fd)
        shutil.rmtree(aside, ignore_errors=True)


def release_folders() -> None:
    """Drop every run-folder lock this process holds (the end of fit(), however it ends)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_file). A crash or a full disk mid-write leaves the
    previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise CifarlabError(f"{path}: could not write ({e.strerror or e}); the previous file is kept") from None


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write, by name, so that writers which want a file
    name (safetensors, numpy) stream straight to disk; afterwards it gets the mode open() would give it
    (from the umask: teammates and web servers read run folders and caches), is fsynced and renamed onto
    `path`. Readers see the old file or the whole new one, never a part; on any error the temporary file
    goes and the error passes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _set_mode_from_umask(tmp)   # mkstemp makes 0600, and a writer may make a file of its own
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _set_mode_from_umask(path: Path) -> None:
    try:
        os.chmod(path, 0o666 & ~current_umask())
    except OSError:
        pass                        # a filesystem without modes (FAT, some network shares): nothing to set


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder (Windows cannot).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it, and
    setting it for a moment would give another thread's new files the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- names from older run folders

# Keys renamed since cifarlab 0.1 (old name: new name), so that run folders already on disk still read.
RENAMED_SUMMARY_KEYS = {"train_time_s": "train_and_eval_time_s"}   # in summary.json it counted evaluation too
RENAMED_METRICS_KEYS = {"train_time_s": "train_only_time_s"}       # in a metrics.jsonl row it never did


def current_summary(summary: dict) -> dict:
    """A summary.json (a run's or a seeds folder's) with today's key names."""
    return _renamed(summary, RENAMED_SUMMARY_KEYS)


def current_metrics_row(row: dict) -> dict:
    """A metrics.jsonl row with today's key names."""
    return _renamed(row, RENAMED_METRICS_KEYS)


def _renamed(record: dict, renames: dict[str, str]) -> dict:
    out = dict(record)
    for old, new in renames.items():
        for suffix in ("", "_mean", "_std", "_per_seed"):    # a seeds summary's keys follow their key
            if old + suffix in out and new + suffix not in out:
                out[new + suffix] = out.pop(old + suffix)
    return out


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_weights(path: Path, state_dict: dict) -> None:
    """The weights alone as safetensors (no pickle), written atomically; a failed write keeps the old file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    try:
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp))
    except OSError as e:
        raise CifarlabError(f"{path}: could not write ({e.strerror or e}); the previous file is kept") from None


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
