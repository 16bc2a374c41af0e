"""Keep freed CPU memory for reuse instead of returning it to the kernel after every step.

glibc's malloc serves each request above 32 MB (its largest mmap threshold) with a fresh mmap, and gives it
back with munmap when it is freed. A CPU training step allocates and frees dozens of such buffers (a
batch of 1,024 CIFAR images at fast94's widths is 134 MB per activation in bf16), so every step the kernel
maps fresh pages, faults them in one 4 KB page at a time and zeroes them: on the 2-core Xeon this was
developed on, about a third of a fast94 step's CPU time was the kernel's (18.6 s system time against
73 s user for 20 + 20 steps), and 6.7 million page faults.

`reuse_freed_memory()` turns that off for the process: no mmap for large blocks (they come from the heap),
and no trimming of the heap's top, so a freed buffer is handed back at the next step without touching
the kernel. The cost is that the process keeps its peak memory until it exits, which a training
process does soon after its peak anyway. The speed-up is measured in BENCHMARKS.md ("The CPU
allocator"). Only glibc has mallopt; elsewhere (macOS, musl) nothing changes. CIFARLAB_CPU_MALLOC=system
keeps the system's behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4     # glibc's <malloc.h> parameter numbers
KEEP = "reuse"


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_state: str | None = None


def reuse_freed_memory() -> str:
    """Set once per process; returns what the process's allocator does now ("reuse", "system", or
    "system (not glibc)"), the value a run records."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> str:
    if os.environ.get("CIFARLAB_CPU_MALLOC", KEEP) != KEEP:
        return "system"
    libc = _glibc()
    if libc is None:
        return "system (not glibc)"
    # 1 is success; both are plain integers (no upper cap applies to these two, unlike M_MMAP_THRESHOLD).
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return KEEP if ok else "system"
