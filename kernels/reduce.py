"""Deterministic reductions: chunked sum of squares over a flat gradient buffer (global norm,
finiteness) and column sums (bias gradients).

Math    sumsq[c] = sum_{i in chunk c} g[i]^2, accumulated in float64. The caller sums the
        per-chunk partials in chunk order, so the global norm sqrt(sum(sumsq)) is the same
        for any thread count. A NaN or Inf anywhere makes the total non-finite, so this one
        pass is also the finiteness check (the caller counts offenders only on that path).
Shapes  g: 1-D contiguous float; starts, stops: int64[c]; sumsq: float64[c].
Speed   the per-chunk sum may be reassociated (fastmath "reassoc") so LLVM vectorizes it;
        without that the float64 add chain runs scalar, one element per add latency, and
        the check costs more than the Adam update itself. Reassociation keeps the result
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
    acc = 0.0
    for i in range(g.shape[0]):
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
