"""Part 1, env: what every other figure was measured on (versions, the GPU, nvidia-smi, the code's commit)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gpu_part import PartFile

HERE = Path(__file__).resolve().parent


def git(*args: str) -> str | None:
    """git's answer about the tree this file is in, or None (no git, no repository)."""
    try:
        found = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def code_commit() -> str:
    """The commit of the code that runs: the COMMIT file of a snapshot folder (GPU.md), else git's when this
    tree is a checkout itself (a snapshot inside a checkout would otherwise report the checkout's HEAD)."""
    stamp = HERE.parent / "COMMIT"
    if stamp.is_file():
        return stamp.read_text().strip()
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != HERE.parent:
        return "unknown (a snapshot without a COMMIT file)"
    return git("describe", "--always", "--dirty", "--abbrev=12") or "unknown"


def nvidia_smi() -> str:
    """nvidia-smi's report, or "none" where there is no such program (a CPU machine, the dry run)."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    found = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    return (found.stdout + found.stderr).strip() or f"nvidia-smi: exit status {found.returncode}, no output"


def part_env(args, out: PartFile) -> None:
    """What every other figure was measured on: versions, the GPU, nvidia-smi, the code's commit."""
    import platform

    import torch

    from cifarlab.training.device import cuda_bf16_native

    cuda = torch.cuda.is_available()
    out.update(device=args.device, python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               gpu=torch.cuda.get_device_name(0) if cuda else "none",
               capability=list(torch.cuda.get_device_capability(0)) if cuda else None,
               bf16_supported=torch.cuda.is_bf16_supported() if cuda else None,
               bf16_native=cuda_bf16_native() if cuda else None,
               cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               commit=code_commit(), nvidia_smi=nvidia_smi())
