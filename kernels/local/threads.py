"""Run a chunked Numba kernel body on several threads, without a parfors wrapper.

The local kernels' bodies are compiled ``nogil`` functions ``body(*args, lo, hi)`` over a
range of independent work items (output positions, input pixels, rows, weight-gradient
parts); each allocates its own scratch. ``run_chunks`` cuts [0, total) into ``n_chunks``
contiguous ranges and runs them on a small thread pool (the calling thread takes the first),
so the "_cpu" variant of a kernel needs no separate ``parallel=True`` compilation: a
parfors wrapper took 3-8 s to compile per kernel and dtype here, this costs nothing, and
the per-call overhead (~20-50 us) is small against these kernels' milliseconds. Results do
not depend on the number of chunks: each item is computed by one thread, in one order (for
kernels whose register tiles span several items, the chunks are cut at tile bounds).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="fastnn-local")
        return _POOL


def run_chunks(body, args: tuple, total: int, n_chunks: int, align: int = 1) -> None:
    """body(*args, lo, hi) for n_chunks contiguous ranges covering [0, total), every bound but
    the last a multiple of ``align`` (a kernel's register tile of rows: each item then lands
    in the same kind of tile at any chunk count, so its sum runs in the same order)."""
    n_chunks = max(1, min(int(n_chunks), int(total) // max(align, 1)))
    if n_chunks == 1:
        body(*args, 0, total)
        return
    bounds = [c * total // n_chunks // align * align for c in range(n_chunks)] + [total]
    futures = [_pool().submit(body, *args, bounds[c], bounds[c + 1]) for c in range(1, n_chunks)]
    body(*args, bounds[0], bounds[1])
    for f in futures:
        f.result()
