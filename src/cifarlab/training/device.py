"""Where a run computes (--device) and in which number format (--precision)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cifarlab.errors import UsageError


@contextmanager
def cpu_threads(threads: int | None):
    """torch's CPU threads set to `threads` for the block (None: leave them), then put back. A CPU run's numbers
    depend on its thread count (a convolution's gradient is summed in another order), so a study that spreads
    its runs gives each the same count it records."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else Apple's MPS, else the CPU; a named device that is missing is refused."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps: no MPS device is available")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# CPU flags of the bf16 instructions that make bf16 faster than fp32 (Linux's /proc/cpuinfo names).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 / AMX) and oneDNN uses them.

    oneDNN alone is not enough: it reports bf16 support on any AVX-512 CPU, where bf16 is emulated
    and *slower* than fp32 (measured on CPUs without AVX512-BF16 and AMX: BENCHMARKS.md, "Figures
    behind choices in the code"). So the CPU's own flags must list a bf16 instruction too.
    """
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:          # not Linux: no flags to read, trust oneDNN
            return onednn
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    return onednn and any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cuda_bf16_native() -> bool:
    """True where this GPU computes in bf16 itself (Ampere, compute capability 8.0, and later).

    torch.cuda.is_bf16_supported() also says True on older GPUs where bf16 is emulated (slower than fp16,
    and no faster than fp32); only native support counts here."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:   # a torch without the argument: ask the hardware
        return torch.cuda.get_device_capability() >= (8, 0)


def resolve_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if cuda_bf16_native() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def use_tf32(precision: str) -> None:
    """TF32 matmuls and convolutions (a 10-bit mantissa) for the mixed precisions only: `fp32` means fp32.

    The switch is process-wide, so it is set for every run, both ways: a bf16 run before an fp32 one in the
    same process must not leave TF32 on for it. Without a GPU it changes nothing."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@dataclass
class Precision:
    """fp32, bf16 or fp16: the autocast around the forward pass (fp32: autocast off)."""

    name: str

    @classmethod
    def for_training(cls, requested: str, device: torch.device) -> Precision:
        """--precision resolved for `device`; bf16 on a GPU without bf16 support is refused."""
        precision = cls(resolve_precision(requested, device))
        if precision.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
        return precision

    @property
    def dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)
