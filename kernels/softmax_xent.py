"""Softmax cross-entropy against integer labels: loss and gradient in two row passes around
one NumPy exp.

Math    s_i = x_i - max_j x_ij                       (shift_rows: rows of s, and s_i[y_i])
        e_i = exp(s_i)                               (the caller: np.exp in place, SIMD)
        loss = mean_i (log sum_j e_ij - s_i[y_i])    (finish_rows, float64)
        dx_i = e_i / (N sum_j e_ij) - onehot(y_i) / N
        A NaN or +Inf logit makes its row's loss and gradient NaN (as the NumPy formulas and
        torch do); a -Inf logit is a class of probability 0 (the loss is +Inf where it is the
        label, NaN where the whole row is -Inf).
Shapes  x: (N, C) float32/float64, C-contiguous; labels: (N,) int64; g: (N, C) of x's dtype
        (s, then e, then dx, in place); picked: (N,) float64.
Why     the NumPy formulas take ~11 array calls (~25 us at N=64, C=10, most of it call
        overhead); these take two Numba calls and one np.exp (Numba has no vector exp
        without SVML: a scalar exp per element was 2.6x slower than NumPy at C=1000).
Oracle  tests/test_layers.py (the formulas in NumPy, float64; finite differences).
Bench   python bench/bench_train.py   (the "loss" rows, against torch's cross_entropy)
"""
from __future__ import annotations

import numpy as np
from numba import njit

_REASSOC = {"reassoc", "contract"}


@njit(inline="always", error_model="numpy")
def _row_max(r):
    """max of r (length >= 1) over eight independent chains: one chain is a compare's latency
    per element (256 x 1000 float32: 135 us; eight: 36 us; NumPy's axis max: 30 us). Each
    step is "v if v > m else m", the x86 max instruction's rule."""
    c = r.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = r[0]
    for b in range(0, c // 8 * 8, 8):
        v0, v1, v2, v3, v4, v5, v6, v7 = r[b], r[b + 1], r[b + 2], r[b + 3], r[b + 4], r[b + 5], r[b + 6], r[b + 7]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    m = m4 if m4 > m0 else m0
    for j in range(c // 8 * 8, c):
        v = r[j]
        m = v if v > m else m
    return m


@njit(cache=True, error_model="numpy", nogil=True)
def shift_rows(x, labels, g, picked):
    """g = x - rowmax(x), picked[i] = g[i, labels[i]]; returns the first row whose label is
    outside [0, C), or -1 (then g and picked are fully written)."""
    n, c = x.shape
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return i
        r = x[i]
        m = _row_max(r)
        gi = g[i]
        for j in range(c):
            gi[j] = r[j] - m
        picked[i] = gi[lab]
    return -1


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REASSOC)
def finish_rows(g, labels, picked):
    """g holds exp(x - rowmax) on entry, dloss/dx on return; returns the mean loss (float64)."""
    n, c = g.shape
    total = 0.0
    inv_n = 1.0 / n
    for i in range(n):
        gi = g[i]
        s = 0.0
        for j in range(c):
            s += np.float64(gi[j])
        total += np.log(s) - picked[i]
        scale = g.dtype.type(inv_n / s)
        for j in range(c):
            gi[j] *= scale
        gi[labels[i]] -= g.dtype.type(inv_n)
    return total * inv_n
