"""Max and average pooling over NHWC windows, forward and backward.

Math    max  y[n, oh, ow, c] = max over the window's pixels inside the image of x[n, ih, iw, c]
             (NaN propagates); idx records the winner as ih*W + iw (first one on ties).
             dx[n, ih, iw, c] = sum of dy[n, oh, ow, c] over the windows whose winner is (ih, iw).
        avg  y = (sum over the window's pixels inside the image) / count, count = KH*KW when
             ``full`` (zero padding counted: torch's count_include_pad=True), else the number of
             the window's pixels inside the image (padding excluded: Keras "same"). The sum
             is in the dtype of ``acc`` (0 elements): the input's for windows of at most
             EXACT_SUM_PIXELS pixels, float64 above (float32 one value at a time lost 2.5e-3
             relative over 512x512; a float64 sum made 7x7 windows 1.4x slower).
             dx[n, ih, iw, c] = sum over the windows covering (ih, iw) of dy / count.
        with ih = oh*sh - pt + kh, iw = ow*sw - pl + kw.
Shapes  x, dx: (N, H, W, C); y, dy: (N, OH, OW, C); idx: int32 (N, OH, OW, C);
        geo: int64[12] = (sh, sw, pt, pl, 1, 1, KH, KW, OH, OW, H, W); full: bool.
How     samples in parallel (each thread writes only its own samples' dx: no races);
        channels innermost and contiguous, so every loop vectorizes over c.
Oracle  tests/reference_local.py::pool_ref (plain loops).
Bench   covered by bench/bench_local.py's small CNN.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTS = dict(cache=True, error_model="numpy", nogil=True)

#: windows of at most this many pixels are summed in the input's dtype: relative error
#: below 256 * 2**-24 = 1.5e-5 in float32 (worst case; typically ~1e-6); larger ones in float64
EXACT_SUM_PIXELS = 256


def sum_dtype(dtype, pixels: int) -> type:
    """The dtype a mean over ``pixels`` values of ``dtype`` sums in."""
    return dtype if pixels <= EXACT_SUM_PIXELS else np.float64


@njit(inline="always")
def _max_fwd(x, y, idx, geo, n):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    sh, sw, pt, pl, KH, KW, OH, OW = geo[0], geo[1], geo[2], geo[3], geo[6], geo[7], geo[8], geo[9]
    for oh in range(OH):
        for ow in range(OW):
            out = y[n, oh, ow]
            ix = idx[n, oh, ow]
            first = True
            for kh in range(KH):
                ih = oh * sh - pt + kh
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    iw = ow * sw - pl + kw
                    if iw < 0 or iw >= W:
                        continue
                    src = x[n, ih, iw]
                    j = ih * W + iw
                    if first:
                        for c in range(C):
                            out[c] = src[c]
                            ix[c] = j
                        first = False
                    else:
                        for c in range(C):
                            v = src[c]
                            if v > out[c] or (v != v and out[c] == out[c]):
                                out[c] = v
                                ix[c] = j


@njit(inline="always")
def _max_bwd(dy, idx, dx, n):
    W = dx.shape[2]
    OH, OW, C = dy.shape[1], dy.shape[2], dy.shape[3]
    dxn = dx[n]
    dxn[...] = 0
    for oh in range(OH):
        for ow in range(OW):
            d = dy[n, oh, ow]
            ix = idx[n, oh, ow]
            for c in range(C):
                j = ix[c]
                dxn[j // W, j % W, c] += d[c]


@njit(inline="always")
def _avg_fwd(x, y, geo, full, n, acc):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    sh, sw, pt, pl, KH, KW, OH, OW = geo[0], geo[1], geo[2], geo[3], geo[6], geo[7], geo[8], geo[9]
    acc = np.empty(C, acc.dtype)
    for oh in range(OH):
        ih0 = oh * sh - pt
        h_lo, h_hi = max(ih0, 0), min(ih0 + KH, H)
        for ow in range(OW):
            iw0 = ow * sw - pl
            w_lo, w_hi = max(iw0, 0), min(iw0 + KW, W)
            acc[:] = 0
            for ih in range(h_lo, h_hi):
                for iw in range(w_lo, w_hi):
                    src = x[n, ih, iw]
                    for c in range(C):
                        acc[c] += src[c]
            inv = 1.0 / (KH * KW if full else max((h_hi - h_lo) * (w_hi - w_lo), 1))
            out = y[n, oh, ow]
            for c in range(C):
                out[c] = acc[c] * inv


@njit(inline="always")
def _avg_bwd(dy, dx, geo, full, n):
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    sh, sw, pt, pl, KH, KW, OH, OW = geo[0], geo[1], geo[2], geo[3], geo[6], geo[7], geo[8], geo[9]
    dxn = dx[n]
    dxn[...] = 0
    for oh in range(OH):
        ih0 = oh * sh - pt
        h_lo, h_hi = max(ih0, 0), min(ih0 + KH, H)
        for ow in range(OW):
            iw0 = ow * sw - pl
            w_lo, w_hi = max(iw0, 0), min(iw0 + KW, W)
            d = dy[n, oh, ow]
            inv = 1.0 / (KH * KW if full else max((h_hi - h_lo) * (w_hi - w_lo), 1))
            for ih in range(h_lo, h_hi):
                for iw in range(w_lo, w_hi):
                    dst = dxn[ih, iw]
                    for c in range(C):
                        dst[c] += d[c] * inv


@njit(parallel=True, **_OPTS)
def maxpool_forward_cpu(x, y, idx, geo):
    for n in prange(x.shape[0]):
        _max_fwd(x, y, idx, geo, n)


@njit(**_OPTS)
def maxpool_forward_serial(x, y, idx, geo):
    for n in range(x.shape[0]):
        _max_fwd(x, y, idx, geo, n)


@njit(parallel=True, **_OPTS)
def maxpool_backward_cpu(dy, idx, dx):
    for n in prange(dx.shape[0]):
        _max_bwd(dy, idx, dx, n)


@njit(**_OPTS)
def maxpool_backward_serial(dy, idx, dx):
    for n in range(dx.shape[0]):
        _max_bwd(dy, idx, dx, n)


@njit(parallel=True, **_OPTS)
def avgpool_forward_cpu(x, y, geo, full, acc):
    for n in prange(x.shape[0]):
        _avg_fwd(x, y, geo, full, n, acc)


@njit(**_OPTS)
def avgpool_forward_serial(x, y, geo, full, acc):
    for n in range(x.shape[0]):
        _avg_fwd(x, y, geo, full, n, acc)


@njit(parallel=True, **_OPTS)
def avgpool_backward_cpu(dy, dx, geo, full):
    for n in prange(dx.shape[0]):
        _avg_bwd(dy, dx, geo, full, n)


@njit(**_OPTS)
def avgpool_backward_serial(dy, dx, geo, full):
    for n in range(dx.shape[0]):
        _avg_bwd(dy, dx, geo, full, n)
