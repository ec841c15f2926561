"""Packing helpers shared by the local kernels: gather one NHWC patch into a panel row.

Math    row[(kh*KW + kw)*cg + c] = x[ih0 + kh*dh, iw0 + kw*dw, c0 + c], zero outside the image
        (zero padding).
Shapes  xs: (H, W*C) one sample (x viewed as (N, H, W*C)); row: (>= KH*KW*C,).
Note    copies loop over slices from index 0 (kernels/chunks.py Note) and are as long as
        the layout allows (KW*C with dilation 1), so they vectorize; 16-element copies
        per tap ran ~2x slower.
Oracle  exercised through tests/test_local.py against tests/reference_local.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .threads import run_chunks

# The local kernels' fastmath flags: reassociation lets LLVM vectorize the reductions of
# gemm.py, contraction allows FMA. Nothing else (no nnan/ninf: NaN and Inf propagate as in
# NumPy). Functions inlined with inline="always" take the flags of the function they are
# inlined into, so every kernel that inlines a tile carries these flags.
FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def copy_run(src, dst, n):
    """dst[:n] = src[:n] for 1-D slices starting at index 0 (a loop LLVM vectorizes)."""
    for j in range(n):
        dst[j] = src[j]


@njit(inline="always")
def zero_run(dst, n):
    z = dst.dtype.type(0)
    for j in range(n):
        dst[j] = z


@njit(inline="always")
def patch_row(xs, C, c0, cg, ih0, iw0, dh, dw, KH, KW, row):
    """Gather channels [c0, c0 + cg) of one patch of sample ``xs`` (H, W*C); with all
    channels and dilation 1 along w each kernel row is one contiguous copy."""
    H = xs.shape[0]
    W = xs.shape[1] // C
    run = KW * cg
    if dw == 1 and cg == C and ih0 >= 0 and ih0 + (KH - 1) * dh < H and iw0 >= 0 and iw0 + KW <= W:
        # interior patch (the common case): KH straight copies, no bounds logic
        for kh in range(KH):
            s0 = iw0 * C
            copy_run(xs[ih0 + kh * dh, s0:s0 + run], row[kh * run:(kh + 1) * run], run)
        return
    for kh in range(KH):
        ih = ih0 + kh * dh
        seg = row[kh * run:(kh + 1) * run]
        if ih < 0 or ih >= H:
            zero_run(seg, run)
            continue
        xr = xs[ih]
        if dw == 1 and cg == C:
            lo = min(max(0, -iw0), KW)          # first kw inside the image
            hi = max(min(KW, W - iw0), lo)      # one past the last
            zero_run(seg, lo * C)
            copy_run(xr[(iw0 + lo) * C:(iw0 + hi) * C], seg[lo * C:hi * C], (hi - lo) * C)
            zero_run(seg[hi * C:run], (KW - hi) * C)
        else:
            for kw in range(KW):
                iw = iw0 + kw * dw
                dst = seg[kw * cg:(kw + 1) * cg]
                if 0 <= iw < W:
                    copy_run(xr[iw * C + c0:iw * C + c0 + cg], dst, cg)
                else:
                    zero_run(dst, cg)


@njit(inline="always")
def block_rows(n_rows, k):
    """Rows per packed block: the (rows, k) panel stays within ~128 KiB of L2 (fp32)."""
    mb = max(4, (32768 // max(k, 1)) // 4 * 4)
    return max(1, min(n_rows, mb))


@njit(cache=True, error_model="numpy", nogil=True)
def _pad_samples(x, flat, lda, pt, pl, hp, wp, lo, hi):
    """flat[n*lda:(n+1)*lda] = sample n of x placed at (pt, pl) in an hp x wp frame of zeros
    (the rest of its lda zero too), for n in [lo, hi): every element written once."""
    N, H, W, C = x.shape
    xf = x.reshape(N, H, W * C)
    left, right = pl * C, (wp - pl - W) * C
    for n in range(lo, hi):
        s = flat[n * lda:(n + 1) * lda]
        zero_run(s, pt * wp * C)
        for h in range(H):
            row = s[(pt + h) * wp * C:(pt + h + 1) * wp * C]
            zero_run(row, left)
            copy_run(xf[n, h], row[left:left + W * C], W * C)
            zero_run(row[left + W * C:], right)
        zero_run(s[(pt + H) * wp * C:], lda - (pt + H) * wp * C)


def padded_copy(x: np.ndarray, geo: np.ndarray, tail: int = 0, n_chunks: int = 1):
    """(flat copy of x (N, H, W, C) zero-padded so that every window of geo is inside, its
    sample stride in elements, (Hp, Wp)). The stride is an odd number of 64-byte lines: a
    32x32x16 fp32 image is 64 KiB, and 64 samples a multiple of 4 KiB apart would share one
    L1/L2 cache set. ``tail`` zero elements follow the last sample (kernels that read a
    whole register tile past the last valid row). Samples are copied in n_chunks ranges on
    threads, each element written once (np.zeros and a slice copy wrote the frame twice, in
    one thread: 0.58 of a 4.9 ms Conv2D step at 2 threads)."""
    x = np.ascontiguousarray(x)
    N, H, W, C = x.shape
    sh, sw, pt, pl, dh, dw, KH, KW, OH, OW = (int(v) for v in geo[:10])
    hp = max(H + pt, (OH - 1) * sh + (KH - 1) * dh + 1)
    wp = max(W + pl, (OW - 1) * sw + (KW - 1) * dw + 1)
    line = 64 // x.itemsize
    lines = -(-hp * wp * C // line)
    lda = (lines + 1 - lines % 2) * line
    flat = np.empty(N * lda + tail, x.dtype)
    flat[N * lda:] = 0
    run_chunks(_pad_samples, (x, flat, lda, pt, pl, hp, wp), N, n_chunks)
    return flat, lda, (hp, wp)
