"""When a kernel is worth running on several threads.

Every kernel here comes as ``<op>_cpu`` (Numba prange over chunks or rows) and
``<op>_serial`` (same arguments, same per-chunk code, in the calling thread). Waking a
thread team costs tens of microseconds, more than a small layer's whole update, and on a
machine where OpenBLAS threads also wait for work, idle spinning threads steal each other's
cores. So work below ``PARALLEL_MIN_ELEMENTS`` elements runs serially. Results are identical
either way: the chunk partition never depends on the thread count.

Numba's workqueue threading layer (where neither OpenMP nor TBB loads, e.g. NUMBA_THREADING_LAYER
=workqueue) is not thread-safe: two threads launching parallel kernels at once end the process
("Concurrent access has been detected"). There only the main thread runs them in parallel.
"""
from __future__ import annotations

import threading

import numba

from .affinity import keep_off

PARALLEL_MIN_ELEMENTS = 1 << 16


def parallel_safe_here() -> bool:
    """False in any thread but the main one under the workqueue layer (the omp and tbb layers
    are thread-safe)."""
    numba.get_num_threads()                     # starts the threading layer
    return numba.threading_layer() != "workqueue" or threading.current_thread() is threading.main_thread()


def pick(parallel_kernel, serial_kernel, n_elements: int):
    """The parallel kernel when ``n_elements`` is large enough and more than one thread is set
    (its threads then pinned: kernels/affinity.py)."""
    if n_elements >= PARALLEL_MIN_ELEMENTS:
        threads = numba.get_num_threads()
        if threads > 1 and parallel_safe_here():
            keep_off(threads)
            return parallel_kernel
    return serial_kernel
