"""Deterministic reductions: chunked sum of squares over a flat gradient buffer (global norm,
finiteness) and column sums (bias gradients).

Math    sumsq[c] = sum_{i in chunk c} g[i]^2, accumulated in float64. The caller sums the
        per-chunk partials in chunk order, so the global norm sqrt(sum(sumsq)) is the same
        for any thread count. A NaN or Inf anywhere makes the total non-finite, so this one
        pass is also the finiteness check (the caller counts offenders only on that path).
Shapes  g: 1-D contiguous float; starts, stops: int64[c]; sumsq: float64[c].
Speed   the per-chunk sum may be reassociated (fastmath "reassoc") so LLVM vectorizes it;
        without that the float64 add chain runs scalar, one element per add latency, and
        the check costs more than the Adam update itself. Each chunk is read as four
        quarters side by side: one core keeps more misses in flight on four streams than on
        one (16M float32 from memory: 4.9 -> 3.6 ms on 1 thread, 13.8 -> 18.6 GB/s; 8
        streams gave no more), which is what the read-only pass is bound by. Reassociation keeps the result
        deterministic for one build and one chunk layout; NaN/Inf semantics are kept.
Threads ``*_cpu`` runs chunks in parallel, ``*_serial`` (same arguments) in the calling thread.
        add_column_sums(a, out): out[j] += sum_i a[i, j], a (R, C) C-contiguous, summed in
        float64 row by row (the j loop vectorizes; NumPy's axis-0 sum of a (43264, 16)
        float32 array took 1.1 ms here, this about 0.1 ms).
Oracle  tests/test_kernels.py against np.sum(g.astype(float64)**2) and np.sum(a, axis=0).
Bench   the nonfinite="raise" rows of bench/bench_optim.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_REASSOC = {"reassoc", "contract"}


@njit(inline="always", fastmath=_REASSOC)
def _sumsq(g):
    q = g.shape[0] // 4                  # four quarters read side by side: four streams in flight
    a0 = a1 = a2 = a3 = 0.0
    for i in range(q):
        x0, x1, x2, x3 = np.float64(g[i]), np.float64(g[q + i]), np.float64(g[2 * q + i]), np.float64(g[3 * q + i])
        a0 += x0 * x0
        a1 += x1 * x1
        a2 += x2 * x2
        a3 += x3 * x3
    acc = (a0 + a1) + (a2 + a3)
    for i in range(4 * q, g.shape[0]):
        x = np.float64(g[i])
        acc += x * x
    return acc


@njit(parallel=True, cache=True, error_model="numpy", nogil=True, fastmath=_REASSOC)
def sumsq_cpu(g, starts, stops, sumsq):
    for c in prange(starts.shape[0]):
        sumsq[c] = _sumsq(g[starts[c]:stops[c]])


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REASSOC)
def sumsq_serial(g, starts, stops, sumsq):
    for c in range(starts.shape[0]):
        sumsq[c] = _sumsq(g[starts[c]:stops[c]])


@njit(cache=True, error_model="numpy", nogil=True)
def add_column_sums(a, out):
    acc = np.zeros(a.shape[1], np.float64)
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(a.shape[1]):
            acc[j] += row[j]
    for j in range(a.shape[1]):
        out[j] += acc[j]
