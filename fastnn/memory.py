"""Keep freed memory in the process: the two glibc malloc settings that stop a training step
from page-faulting its activations and gradients in afresh every step.

Why     every forward and backward allocates its outputs (NumPy arrays of a few MB for a CNN
        batch) and frees them a step later. glibc serves blocks above its mmap threshold
        with a fresh ``mmap`` and returns the top of the heap to the system once more than
        the trim threshold lies free there; its dynamic threshold settles near the largest
        single block, but a step frees many blocks, so every step maps, zeroes and faults the
        same megabytes in again. Measured here (``python bench/bench_allocator.py``: the
        data-parallel benchmark's CNN, batch 64, 1 thread, fresh processes alternating):
        17-22 % of the process's CPU time in the kernel with glibc's defaults, none with
        these settings; the median step 1.35x faster (18.3-23.9 ms -> 13.5-14.7 ms over three
        pairs), its 90th percentile 20-29 ms -> 14-19 ms (the jitter that synchronous data
        parallelism waits for). The MLP's arrays stay under glibc's own threshold: 0.97x and
        1.08x in two runs (``--model mlp``, 3 and 5 pairs), no change beyond the noise.
What    ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (glibc's own ceiling for its dynamic threshold)
        and ``mallopt(M_TRIM_THRESHOLD, 256 MiB)``: freed blocks up to 32 MiB stay in the heap
        and are reused, and up to 256 MiB of free heap top is kept. The process's resident
        size stays near its peak instead of breathing each step. PyTorch users get the same
        effect from preloading jemalloc or tcmalloc.
When    at ``import fastnn``, process-wide, like the Numba settings. Not applied when
        ``FASTNN_KEEP_FREED_MEMORY=0`` or when the user tuned glibc's malloc (any ``MALLOC_*``
        variable, or a ``glibc.malloc.*`` entry in ``GLIBC_TUNABLES``), and a no-op where the
        C library is not glibc. ``fastnn info`` says which.
Oracle  tests/test_memory.py counts minor page faults of a loop that allocates and frees
        5 x 4 MiB each round, with and without the settings.
"""
from __future__ import annotations

import ctypes
import os

from .kernels.env import switched_off

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
OPT_OUT = "FASTNN_KEEP_FREED_MEMORY"

_state = {"status": "not applied yet"}


def glibc_version() -> str | None:
    """This process's glibc version ("2.36"), or None under another C library."""
    try:
        libc, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    return version if libc == "glibc" else None


def keep_freed_memory() -> str:
    """Apply the settings unless opted out; returns (and remembers) what happened, in words."""
    version = glibc_version()
    kept = (f"glibc {version}, freed memory kept (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
            f"{TRIM_THRESHOLD >> 20} MiB")
    if version is None:
        status = "not glibc: allocator left as it is"
    elif switched_off(OPT_OUT) or any(name.startswith("MALLOC_") for name in os.environ) \
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        if _state.get("applied"):   # mallopt has no undo: the opt-out counts only before the first call
            status = (f"{kept}), set at import: {OPT_OUT}=0 or the user's malloc settings count only when set "
                      "before fastnn is imported")
        elif switched_off(OPT_OUT):
            status = f"glibc {version} defaults ({OPT_OUT}={os.environ[OPT_OUT]})"
        else:
            status = f"glibc {version}, the user's malloc settings (MALLOC_* or GLIBC_TUNABLES glibc.malloc.*)"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            status, _state["applied"] = f"{kept}; {OPT_OUT}=0 to leave glibc's defaults)", True
        else:
            status = f"glibc {version} rejected mallopt: allocator left as it is"
    _state["status"] = status
    return status


def allocator_status() -> str:
    """What ``keep_freed_memory`` did in this process, for ``fastnn info``."""
    return _state["status"]
