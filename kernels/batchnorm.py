"""Batch normalization over the rows of a (M, C) channels-last view: two per-channel sums, and
a per-channel affine map of one or two inputs.

Math    two_sums: for each chunk k of rows, partial[k, 0, c] = sum (u - us[c]) and
        partial[k, 1, c] = sum (u - us[c]) * (v - vs[c]), in float64. With u = v = x and
        us = vs = a sample of each channel (a shift near the data keeps the variance from
        cancelling) they give the batch mean and variance; with u = dy, us = 0, v = x,
        vs = mean, the backward's sum(dy) and sum(dy * (x - mean)).
        affine: out = (x - m[c]) * s[c] + b[c]            (forward: m mean, s weight/std)
        affine2: out = dy * a[c] + (x - m[c]) * s[c] + b[c] (backward's input gradient)
Shapes  x, u, v, dy, out: (M, C) C-contiguous of one float dtype; per-channel vectors (C,)
        in that dtype for the maps, float64 shifts for the sums; partial: float64 (K, 2, C).
How     two_sums cuts the rows into K = partial.shape[0] chunks fixed by M alone, so the
        caller's chunk-order sum of the partials is the same for any thread count. Each row's
        channel loop vectorizes. ``*_cpu`` runs chunks or rows on Numba's threads (prange),
        ``*_serial`` (same arguments) in the calling thread: kernels/parallel.py's ``pick``.
        Numba's OpenMP threads wake in microseconds; a Python thread pool's wake-up (tens of
        microseconds per pass) made 2 threads slower than 1 below 1M values.
Oracle  fastnn/layers/batchnorm.py's tests against torch.nn.BatchNorm1d/2d.
Bench   python bench/bench_batchnorm.py (against torch's BatchNorm1d/2d, channels_last).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(inline="always")
def _two_sums_chunk(u, us, v, vs, partial, chunk):
    m, c = u.shape
    k = partial.shape[0]
    s0 = np.zeros(c)
    s1 = np.zeros(c)
    for r in range(chunk * m // k, (chunk + 1) * m // k):
        ur, vr = u[r], v[r]
        for j in range(c):
            a = ur[j] - us[j]
            s0[j] += a
            s1[j] += a * (vr[j] - vs[j])
    partial[chunk, 0] = s0
    partial[chunk, 1] = s1


@njit(parallel=True, **_OPTS)
def two_sums_cpu(u, us, v, vs, partial):
    for chunk in prange(partial.shape[0]):
        _two_sums_chunk(u, us, v, vs, partial, chunk)


@njit(**_OPTS)
def two_sums_serial(u, us, v, vs, partial):
    for chunk in range(partial.shape[0]):
        _two_sums_chunk(u, us, v, vs, partial, chunk)


@njit(inline="always")
def _affine_row(x, m, s, b, out, r):
    xr, o = x[r], out[r]
    for j in range(x.shape[1]):
        o[j] = (xr[j] - m[j]) * s[j] + b[j]


@njit(parallel=True, **_OPTS)
def affine_cpu(x, m, s, b, out):
    for r in prange(x.shape[0]):
        _affine_row(x, m, s, b, out, r)


@njit(**_OPTS)
def affine_serial(x, m, s, b, out):
    for r in range(x.shape[0]):
        _affine_row(x, m, s, b, out, r)


@njit(inline="always")
def _affine2_row(dy, a, x, m, s, b, out, r):
    dr, xr, o = dy[r], x[r], out[r]
    for j in range(x.shape[1]):
        o[j] = dr[j] * a[j] + (xr[j] - m[j]) * s[j] + b[j]


@njit(parallel=True, **_OPTS)
def affine2_cpu(dy, a, x, m, s, b, out):
    for r in prange(x.shape[0]):
        _affine2_row(dy, a, x, m, s, b, out, r)


@njit(**_OPTS)
def affine2_serial(dy, a, x, m, s, b, out):
    for r in range(x.shape[0]):
        _affine2_row(dy, a, x, m, s, b, out, r)
