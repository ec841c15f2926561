"""Deterministic chunked reductions over a flat gradient buffer.

Math    sumsq[c]    = sum_{i in chunk c} g[i]^2      accumulated in float64
        nonfinite[c] = #{i in chunk c : g[i] is NaN or +-Inf}
        The caller sums the per-chunk partials in chunk order, so the global norm
        sqrt(sum(sumsq)) is the same for any thread count.
Shapes  g: 1-D contiguous float; starts, stops: int64[c]; sumsq float64[c]; nonfinite int64[c].
Oracle  tests/test_kernels.py against np.sum(g.astype(float64)**2) and np.isfinite.
Bench   part of the optimizer step when clipping or the finiteness check is on (bench/bench_optim.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def sumsq_nonfinite_cpu(g, starts, stops, sumsq, nonfinite):
    for c in prange(starts.shape[0]):
        acc = 0.0
        bad = 0
        g_ = g[starts[c]:stops[c]]
        for i in range(g_.shape[0]):
            x = np.float64(g_[i])
            acc += x * x
            bad += not np.isfinite(x)
        sumsq[c] = acc
        nonfinite[c] = bad
