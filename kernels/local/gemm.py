"""Small "NT" matrix products on packed panels: the micro-kernel of every local layer.

Math    C[i, j] (+)= sum_k A[i, k] * B[j, k] (+ bias[j])   for i < m, j < n, k < kk
        (both operands k-contiguous: a patch row and a transposed weight row).
Shapes  A: (>= m, >= kk) C-contiguous scratch, B: (>= n, >= kk) C-contiguous scratch,
        C: any 2-D view (m, n) of an output (rows may be strided, e.g. y[:, p, :]).
How     4x2 tiles of scalar accumulators; the k loop is innermost and contiguous in A and
        B, so LLVM's loop vectorizer (fastmath: reassociation allowed) turns each scalar
        into an 8-lane (float32) FMA accumulator and reduces it once after the loop. On
        this Zen3 (AVX2, 16 ymm registers) 4x2 and 2x4 tiles ran at ~55-60 GFLOP/s fp32
        per core on a 64x144 . 144x16 panel (4x4: 39, 2x8: 27, 1x4: 30; measured with
        /tmp experiments, ±10 %); larger tiles spill. Accumulators start at
        ``A.dtype.type(0)`` so they keep the array's dtype (``x * 0`` would promote
        float32 to float64 in Numba and silently halve the speed).
        The outer-product form (vectorising over the output columns) would need Numba's
        SLP vectoriser, which is off by default and process-wide (research/gemm.md 3.2),
        so it is not used here.
Inline  both products are inlined into the kernels that allocate the scratch panels: LLVM
        then knows the panels cannot alias and vectorizes without runtime overlap checks
        (as a separate function the weight-gradient product ran ~3x slower).
Oracle  tests/test_local.py (through every layer) against tests/reference_local.py loops.
"""
from __future__ import annotations

from numba import njit

MR, NR = 4, 2


@njit(inline="always")
def _tile42(A, B, C, i, j, kk, acc, bias):
    a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
    b0, b1 = B[j], B[j + 1]
    z = A.dtype.type(0)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for k in range(kk):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        y0, y1 = b0[k], b1[k]
        c00 += x0 * y0
        c01 += x0 * y1
        c10 += x1 * y0
        c11 += x1 * y1
        c20 += x2 * y0
        c21 += x2 * y1
        c30 += x3 * y0
        c31 += x3 * y1
    if acc:
        C[i, j] += c00
        C[i, j + 1] += c01
        C[i + 1, j] += c10
        C[i + 1, j + 1] += c11
        C[i + 2, j] += c20
        C[i + 2, j + 1] += c21
        C[i + 3, j] += c30
        C[i + 3, j + 1] += c31
    else:
        e0 = bias[j] if bias.shape[0] > 0 else z
        e1 = bias[j + 1] if bias.shape[0] > 0 else z
        C[i, j] = c00 + e0
        C[i, j + 1] = c01 + e1
        C[i + 1, j] = c10 + e0
        C[i + 1, j + 1] = c11 + e1
        C[i + 2, j] = c20 + e0
        C[i + 2, j + 1] = c21 + e1
        C[i + 3, j] = c30 + e0
        C[i + 3, j + 1] = c31 + e1


@njit(inline="always")
def _tile41(A, B, C, i, j, kk, acc, bias):
    a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
    b0 = B[j]
    z = A.dtype.type(0)
    c0 = c1 = c2 = c3 = z
    for k in range(kk):
        y0 = b0[k]
        c0 += a0[k] * y0
        c1 += a1[k] * y0
        c2 += a2[k] * y0
        c3 += a3[k] * y0
    if acc:
        C[i, j] += c0
        C[i + 1, j] += c1
        C[i + 2, j] += c2
        C[i + 3, j] += c3
    else:
        e0 = bias[j] if bias.shape[0] > 0 else z
        C[i, j] = c0 + e0
        C[i + 1, j] = c1 + e0
        C[i + 2, j] = c2 + e0
        C[i + 3, j] = c3 + e0


@njit(inline="always")
def _tile1x(A, B, C, i, j, kk, acc, bias):
    a0 = A[i]
    b0 = B[j]
    c0 = A.dtype.type(0)
    for k in range(kk):
        c0 += a0[k] * b0[k]
    if acc:
        C[i, j] += c0
    else:
        C[i, j] = c0 + (bias[j] if bias.shape[0] > 0 else A.dtype.type(0))


@njit(inline="always")
def _tile12(A, B, C, i, j, kk, acc, bias):
    a0 = A[i]
    b0, b1 = B[j], B[j + 1]
    c0 = A.dtype.type(0)
    c1 = c0
    for k in range(kk):
        x = a0[k]
        c0 += x * b0[k]
        c1 += x * b1[k]
    if acc:
        C[i, j] += c0
        C[i, j + 1] += c1
    else:
        C[i, j] = c0 + (bias[j] if bias.shape[0] > 0 else A.dtype.type(0))
        C[i, j + 1] = c1 + (bias[j + 1] if bias.shape[0] > 0 else A.dtype.type(0))


@njit(inline="always")
def gemm_nt(A, B, C, m, n, kk, acc, bias):
    """C[:m, :n] (+)= A[:m, :kk] @ B[:n, :kk].T; ``acc`` False overwrites C with the product
    plus ``bias[:n]`` (a length-0 ``bias`` adds nothing)."""
    m4, n2 = m - m % MR, n - n % NR
    for i in range(0, m4, MR):
        for j in range(0, n2, NR):
            _tile42(A, B, C, i, j, kk, acc, bias)
        if n2 < n:
            _tile41(A, B, C, i, n2, kk, acc, bias)
    for i in range(m4, m):
        for j in range(0, n2, NR):
            _tile12(A, B, C, i, j, kk, acc, bias)
        if n2 < n:
            _tile1x(A, B, C, i, n2, kk, acc, bias)


@njit(inline="always")
def gemm_tn_acc(A, D, Ct, m, n, kk):
    """Ct[j, :kk] += sum_i D[i, j] * A[i, :kk] for i < m, j < n (a weight gradient).

    The reduction runs over the rows i (the samples), so here the loop vectorizes over
    the contiguous k instead: blocks of 4 rows x 2 columns give 8 FMAs per 4 loads of A,
    2 loads and 2 stores of Ct (L1-resident), close to the FMA ports' rate on AVX2."""
    m4, n2 = m - m % 4, n - n % 2
    for i in range(0, m4, 4):
        a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
        d0, d1, d2, d3 = D[i], D[i + 1], D[i + 2], D[i + 3]
        for j in range(0, n2, 2):
            c0, c1 = Ct[j], Ct[j + 1]
            e00, e10, e20, e30 = d0[j], d1[j], d2[j], d3[j]
            e01, e11, e21, e31 = d0[j + 1], d1[j + 1], d2[j + 1], d3[j + 1]
            for k in range(kk):
                x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
                c0[k] += x0 * e00 + x1 * e10 + x2 * e20 + x3 * e30
                c1[k] += x0 * e01 + x1 * e11 + x2 * e21 + x3 * e31
        if n2 < n:
            c0 = Ct[n2]
            e00, e10, e20, e30 = d0[n2], d1[n2], d2[n2], d3[n2]
            for k in range(kk):
                c0[k] += a0[k] * e00 + a1[k] * e10 + a2[k] * e20 + a3[k] * e30
    for i in range(m4, m):
        a0 = A[i]
        d0 = D[i]
        for j in range(n):
            c0 = Ct[j]
            e = d0[j]
            for k in range(kk):
                c0[k] += a0[k] * e
