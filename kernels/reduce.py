"""Deterministic chunked reductions over a flat gradient buffer.

Math    sumsq[c]    = sum_{i in chunk c} g[i]^2      accumulated in float64
        nonfinite[c] = #{i in chunk c : g[i] is NaN or +-Inf}
        The caller sums the per-chunk partials in chunk order, so the global norm
        sqrt(sum(sumsq)) is the same for any thread count.
Shapes  g: 1-D contiguous float; starts, stops: int64[c]; sumsq float64[c]; nonfinite int64[c].
Oracle  tests/test_kernels.py against np.sum(g.astype(float64)**2) and np.isfinite.
Threads ``*_cpu`` runs chunks in parallel, ``*_serial`` (same arguments) in the calling thread.
Bench   part of the optimizer step when clipping or the finiteness check is on (bench/bench_optim.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _sumsq_nonfinite(g):
    acc = 0.0
    bad = 0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        acc += x * x
        bad += not np.isfinite(x)
    return acc, bad


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def sumsq_nonfinite_cpu(g, starts, stops, sumsq, nonfinite):
    for c in prange(starts.shape[0]):
        sumsq[c], nonfinite[c] = _sumsq_nonfinite(g[starts[c]:stops[c]])


@njit(cache=True, error_model="numpy", nogil=True)
def sumsq_nonfinite_serial(g, starts, stops, sumsq, nonfinite):
    for c in range(starts.shape[0]):
        sumsq[c], nonfinite[c] = _sumsq_nonfinite(g[starts[c]:stops[c]])
