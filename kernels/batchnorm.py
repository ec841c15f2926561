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
How     rows cut into K = partial.shape[0] chunks fixed by M alone, so the caller's chunk-order
        sum of the partials is the same for any thread count; ``lo, hi`` are chunk indices
        (two_sums) or rows (the maps), run on kernels/local/threads.py's pool. Each row's
        channel loop vectorizes.
Oracle  fastnn/layers/batchnorm.py's tests against torch.nn.BatchNorm1d/2d.
Bench   python bench/bench_batchnorm.py (against torch's BatchNorm1d/2d, channels_last).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_OPTS)
def two_sums(u, us, v, vs, partial, lo, hi):
    m, c = u.shape
    k = partial.shape[0]
    for chunk in range(lo, hi):
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


@njit(**_OPTS)
def affine(x, m, s, b, out, lo, hi):
    for r in range(lo, hi):
        xr, o = x[r], out[r]
        for j in range(x.shape[1]):
            o[j] = (xr[j] - m[j]) * s[j] + b[j]


@njit(**_OPTS)
def affine2(dy, a, x, m, s, b, out, lo, hi):
    for r in range(lo, hi):
        dr, xr, o = dy[r], x[r], out[r]
        for j in range(x.shape[1]):
            o[j] = dr[j] * a[j] + (xr[j] - m[j]) * s[j] + b[j]
