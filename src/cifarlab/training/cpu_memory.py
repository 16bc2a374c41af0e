"""While a CPU run trains, freed memory is kept for its next step instead of going back to the kernel.

glibc's malloc serves each request above 32 MB (its largest mmap threshold) with a fresh mmap and gives it
back with munmap when it is freed. A CPU training step allocates and frees dozens of such buffers (a
batch of 1,024 CIFAR images at fast94's widths is 134 MB per activation in bf16), so every step the kernel
maps fresh pages, faults them in 4 KB at a time and zeroes them. Measured on the 2-core Xeon this was
developed on (BENCHMARKS.md, "fast94 on a CPU, back to back with the anchors"): system time was 12% of a
fast94-sgd step's CPU time, 22% of airbench94's and 33% of fast94-muon's (batch 2,000), and with freed memory
kept those steps took 13%, 28% and 44% less time.

`keep_freed_memory()` turns that off around a run: no mmap for large blocks (they come from the heap), and no
trimming of the heap's top, so a freed buffer is handed back at the next step without the kernel. On the way
out it puts glibc's defaults back (mmap above 128 KB, trim above 128 KB) and trims the heap
(malloc_trim), so a notebook or a worker that trains several runs gets its memory back between them. Within a
run the process holds its peak, with some fragmentation while the heap settles (tests/test_cpu_memory.py).

Only glibc has these knobs: elsewhere (macOS, musl) nothing changes, and where LD_PRELOAD puts another
allocator in front (jemalloc, tcmalloc) it is left alone. The variable CIFARLAB_CPU_MALLOC=system, read when a
run starts, keeps the system's behaviour: like OMP_NUM_THREADS it is about the process, not the run's numbers
(the arithmetic is the same either way), so it is not a TrainConfig setting.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4      # glibc's <malloc.h> parameter numbers
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}
REUSE = "reuse"

_lock = threading.Lock()
_depth = 0          # runs inside keep_freed_memory() in this process (a study may nest them)
_state = "system"
_libc = None        # the glibc whose settings the outermost block changed, to put them back through


def _glibc():
    """glibc's malloc, where it is the process's allocator; else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set(libc, values: dict) -> bool:
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in values.items())


def current() -> str:
    """What the allocator does now, the value a run records: "reuse" inside a run that kept freed memory,
    else "system" (with the reason where it could not)."""
    return _state


@contextmanager
def keep_freed_memory():
    """Freed memory kept for reuse for the block (where glibc allows and CIFARLAB_CPU_MALLOC is not "system"),
    then glibc's defaults again and the heap trimmed."""
    global _depth, _state, _libc
    with _lock:
        _depth += 1
        if _depth == 1:
            _state, _libc = _enter()
    try:
        yield _state
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _libc is not None:
                _set(_libc, GLIBC_DEFAULTS)
                _libc.malloc_trim(0)
                _state, _libc = "system", None


def _enter():
    """(the state a run records, the glibc whose settings were changed or None)."""
    if os.environ.get("CIFARLAB_CPU_MALLOC", REUSE) != REUSE:
        return "system (CIFARLAB_CPU_MALLOC)", None
    libc = _glibc()
    if libc is None:
        return "system (not glibc's malloc)", None
    if not _set(libc, KEEP):
        _set(libc, GLIBC_DEFAULTS)
        return "system (mallopt refused)", None
    return REUSE, libc
