"""Locally connected 2-D layer (untied weights per output position), NHWC, no im2col.

Math    forward  y[n, p, o] = act(b[p or 0, o] + sum_k X_p[n, k] * w[p, k, o])
                 X_p[n, (kh*KW + kw)*C + c] = x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c]
                 (zero outside the image), p = oh*OW + ow.
        weight   dw[p, k, o] += sum_n X_p[n, k] * dy[n, p, o]       (each p owns its dw[p])
        input    dx[n, ih, iw, c] = sum over the taps (p, kh, kw) whose window covers
                 (ih, iw) of sum_o dy[n, p, o] * w[p, (kh*KW + kw)*C + c, o]
                 (gather formulation: each input pixel is written by one thread, once;
                 deterministic, no atomics, no col2im scatter).
Shapes  x, dx: (N, H, W, C); w, dw: (P, K, O) with K = KH*KW*C, i.e. the layer's
        (OH, OW, KH, KW, C, O) weight viewed flat (Keras 2 mode-1 layout); y, dy: (N, P, O);
        b: (P, O) untied, (1, O) tied or (0, O) none; geo: int64[12] =
        (sh, sw, pt, pl, dh, dw, KH, KW, OH, OW, H, W); act: kernels.activation code.
How     Each output position p packs its weight block transposed (O, K) once, gathers
        the patches of a block of samples into a (rows, K) panel in thread-local scratch
        (never the whole im2col) and calls the 4x2 micro-kernel of gemm.py. Where the
        shapes fit fastnn.matmul's register tile, the *_direct variants read x (forward, on a
        padded copy for the weight gradient) or dy (input gradient, unit strides) in place
        and need no gathered panel. Work is split
        in ``n_chunks`` contiguous ranges of positions (input pixels for dx), one scratch
        set per range, run on threads by ``*_cpu`` (kernels/local/threads.py) or in the
        calling thread by ``*_serial``; results do not depend on the split.
Oracle  tests/reference_local.py::lc2d_ref (plain loops), finite differences in
        tests/test_local.py.
Bench   python bench/bench_local.py   (against torch unfold + bmm, time and peak memory)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..activation import _act
from .gemm import gemm_nt, gemm_tn_acc
from .pack import FASTMATH, block_rows, copy_run, padded_copy, patch_row, zero_run
from ..prefetch import prefetch_read
from ..transpose import transpose_block
from .threads import run_chunks
from .tiles import compile_with_slp, micro, micro_seg, micro_t, store, store_edge, t_rows, tile_for, tile_shape


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward(x, w, b, y, geo, act, lo, hi):
    N, H, W, Cin = x.shape
    xf = x.reshape(N, H, W * Cin)
    K, O = w.shape[1], w.shape[2]
    sh, sw, pt, pl, dh, dw, KH, KW, OW = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[9]
    mb = block_rows(N, K)
    A = np.empty((mb, K), x.dtype)
    B = np.empty((O, K), x.dtype)
    nb = b.shape[0]
    b0 = np.empty(0, x.dtype)
    for p in range(lo, hi):
        oh = p // OW
        ow = p - oh * OW
        wp = w[p]
        for k in range(K):
            wr = wp[k]
            for o in range(O):
                B[o, k] = wr[o]
        for n0 in range(0, N, mb):
            m = min(mb, N - n0)
            for i in range(m):
                patch_row(xf[n0 + i], Cin, 0, Cin, oh * sh - pt, ow * sw - pl, dh, dw, KH, KW, A[i])
            C = y[n0:n0 + m, p]
            gemm_nt(A, B, C, m, O, K, False, b[p if nb > 1 else 0] if nb > 0 else b0)
            if act != 0:
                for i in range(m):
                    r = C[i]
                    for o in range(O):
                        r[o] = _act(r[o], act)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward_direct(tile, x, w, b, y, geo, act, lo, hi):
    """_forward on fastnn.matmul's register tile (O a multiple of NR, no w dilation): interior
    positions read their patches in place, the kernel rows summed in registers (A rows strided
    by the sample, B = w[p] rows as stored: no gather, no transpose); border positions and the
    last N % MR samples go through gathered rows."""
    N, H, W, Cin = x.shape
    P, K, O = w.shape
    MR, NR = tile_shape(tile)
    sh, sw, pt, pl, dh, KH, KW, OW = geo[0], geo[1], geo[2], geo[3], geo[4], geo[6], geo[7], geo[9]
    xs = x.reshape(N, H, W * Cin)
    x1 = x.reshape(-1)
    w1 = w.reshape(-1)
    y1 = y.reshape(-1)
    lda = H * W * Cin
    ldc = P * O
    run = KW * Cin
    mb = -(-block_rows(N, K) // MR) * MR
    A = np.zeros((mb, K), x.dtype)
    A1 = A.reshape(-1)
    t = np.empty(MR * NR, x.dtype)
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    nb = b.shape[0]
    b0 = np.empty(0, x.dtype)
    nfull = N // MR * MR
    for p in range(lo, hi):
        oh = p // OW
        ow = p - oh * OW
        ih0 = oh * sh - pt
        iw0 = ow * sw - pl
        bp = b[p if nb > 1 else 0] if nb > 0 else b0
        yp = y1[p * O:]
        wp = w1[p * K * O:]
        g0 = 0
        if ih0 >= 0 and ih0 + (KH - 1) * dh < H and iw0 >= 0 and iw0 + KW <= W:
            for jr in range(0, O, NR):
                bj = bp[jr:] if nb > 0 else bp
                for n0 in range(0, nfull, MR):
                    micro_seg(tile, run, KH, dh * W * Cin, run * O, x1[n0 * lda + ih0 * W * Cin + iw0 * Cin:], lda,
                              wp[jr:], O, t)
                    store(tile, t, yp[n0 * ldc + jr:], ldc, one, zero, True, True, bj, act)
            g0 = nfull
        for n0 in range(g0, N, mb):
            m = min(mb, N - n0)
            for i in range(m):
                patch_row(xs[n0 + i], Cin, 0, Cin, ih0, iw0, dh, 1, KH, KW, A[i])
            for i in range(m, -(-m // MR) * MR):
                zero_run(A[i], K)
            for jr in range(0, O, NR):
                bj = bp[jr:] if nb > 0 else bp
                for i0 in range(0, m, MR):
                    micro(tile, K, A1[i0 * K:], K, wp[jr:], O, t)
                    if i0 + MR <= m:
                        store(tile, t, yp[(n0 + i0) * ldc + jr:], ldc, one, zero, True, True, bj, act)
                    else:
                        store_edge(tile, t, yp, ldc, n0 + i0, jr, m - i0, NR, one, zero, True, True, bp, act)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad(x, dy, dw_, geo, lo, hi):
    N, H, W, Cin = x.shape
    xf = x.reshape(N, H, W * Cin)
    K, O = dw_.shape[1], dw_.shape[2]
    sh, sw, pt, pl, dh, dw, KH, KW, OW = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[9]
    mb = block_rows(N, K)
    A = np.empty((mb, K), x.dtype)
    Ct = np.empty((O, K), x.dtype)
    for p in range(lo, hi):
        oh = p // OW
        ow = p - oh * OW
        for o in range(O):
            zero_run(Ct[o], K)
        for n0 in range(0, N, mb):
            m = min(mb, N - n0)
            for i in range(m):
                patch_row(xf[n0 + i], Cin, 0, Cin, oh * sh - pt, ow * sw - pl, dh, dw, KH, KW, A[i])
            gemm_tn_acc(A, dy[n0:n0 + m, p], Ct, m, O, K)
        g = dw_[p]
        for k in range(K):
            gk = g[k]
            for o in range(O):
                gk[o] += Ct[o, k]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad_direct(tile, xp, lda, hw, dy, dw_, geo, lo, hi):
    """_weight_grad on fastnn.matmul's register tile, reading patches in place from xp: x
    zero-padded on all sides (so every window is inside) with a sample stride lda of an odd
    number of cache lines (so the samples of one tile column do not evict each other from
    L1/L2). Each MT x NR tile of dw[p] is one product over all N samples (A = X_p read
    transposed, B = dy[:, p] rows). Needs KW*C a multiple of MT and O of NR."""
    Hp, Wp = hw
    N = dy.shape[0]
    P, K, O = dw_.shape
    Cin = K // (geo[6] * geo[7])
    NR = tile_shape(tile)[1]
    MT = t_rows(tile)
    sh, sw, dh, KH, KW, OW = geo[0], geo[1], geo[4], geo[6], geo[7], geo[9]
    dy1 = dy.reshape(-1)
    dw1 = dw_.reshape(-1)
    run = KW * Cin
    for p in range(lo, hi):
        oh = p // OW
        ow = p - oh * OW
        for kh in range(KH):
            base = (oh * sh + kh * dh) * Wp * Cin + ow * sw * Cin
            for jr in range(0, O, NR):
                micro_t(tile, N, run // MT, xp[base:], lda, dy1[p * O + jr:], P * O,
                        dw1[p * K * O + kh * run * O + jr:], O)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _input_grad(dy, w, dx, geo, lo, hi):
    N, H, W, C = dx.shape
    P, K, O = w.shape
    sh, sw, pt, pl, dh, dw, KH, KW, OH, OW = (geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7],
                                              geo[8], geo[9])
    kmax = KH * KW * O
    mb = block_rows(N, kmax)
    A = np.empty((mb, kmax), dy.dtype)
    B = np.empty((C, kmax), dy.dtype)
    run_p = np.empty(KH * KW, np.int64)      # first output position of each run of taps
    run_n = np.empty(KH * KW, np.int64)      # its length (consecutive positions)
    wf = w.reshape(P, K * O)
    dyf = dy.reshape(N, P * O)
    b0 = np.empty(0, dy.dtype)
    for q in range(lo, hi):
        ih = q // W
        iw = q - ih * W
        t = 0        # taps so far
        nr = 0       # runs so far
        for kh in range(KH):
            r = ih + pt - kh * dh
            if r < 0 or r % sh != 0 or r // sh >= OH:
                continue
            oh = r // sh
            for kw in range(KW - 1, -1, -1):      # ascending ow: runs of adjacent positions
                s = iw + pl - kw * dw
                if s < 0 or s % sw != 0 or s // sw >= OW:
                    continue
                p = oh * OW + s // sw
                kb = (kh * KW + kw) * C
                src = wf[p, kb * O:(kb + C) * O]
                for c in range(C):
                    copy_run(src[c * O:(c + 1) * O], B[c, t * O:(t + 1) * O], O)
                if nr > 0 and run_p[nr - 1] + run_n[nr - 1] == p:
                    run_n[nr - 1] += 1
                else:
                    run_p[nr] = p
                    run_n[nr] = 1
                    nr += 1
                t += 1
        kk = t * O
        for n0 in range(0, N, mb):
            m = min(mb, N - n0)
            Cv = dx[n0:n0 + m, ih, iw]
            if kk == 0:
                for i in range(m):
                    zero_run(Cv[i], C)
                continue
            for i in range(m):
                u = 0
                a = A[i]
                d = dyf[n0 + i]
                for j in range(nr):
                    ln = run_n[j] * O
                    copy_run(d[run_p[j] * O:run_p[j] * O + ln], a[u:u + ln], ln)
                    u += ln
            gemm_nt(A, B, Cv, m, C, kk, False, b0)


@njit(inline="always")
def _taps(q, W, pt, pl, KH, KW, OH, OW):
    """The output positions whose windows cover input pixel q (unit strides and dilation): a
    rectangle of nseg rows from oh0 and run columns from ow0, reached by the taps kh_hi and
    kw_hi downwards, as (oh0, ow0, kh_hi, kw_hi, nseg, run); nseg or run <= 0 when none."""
    ih = q // W
    iw = q - ih * W
    kh_hi = min(KH - 1, ih + pt)
    kw_hi = min(KW - 1, iw + pl)
    nseg = kh_hi - max(0, ih + pt - OH + 1) + 1
    run = kw_hi - max(0, iw + pl - OW + 1) + 1
    return ih + pt - kh_hi, iw + pl - kw_hi, kh_hi, kw_hi, nseg, run


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _input_grad_direct(tile, dy, w, dx, geo, lo, hi):
    """_input_grad on fastnn.matmul's register tile (unit strides and dilation, C a multiple of
    NR). With unit strides the taps covering pixel (ih, iw) are the output positions of a
    rectangle: rows oh ascending (kh descending), in each a run of adjacent ow (kw descending).
    So dy is read in place, one segment of run*O values per row (the micro-kernel sums the
    segments in registers); only the pixel's weight blocks are copied, transposed to (O, C)
    rows, into L1-sized scratch (each block of w is used by exactly one pixel). The last
    N % MR samples go through a zero-padded copy of their dy rows. The blocks are transposed
    L x L in registers (kernels/transpose.py) when O is a multiple of L. The next pixel's
    blocks (1 KiB runs at scattered positions for 16 x 16 channels, which the hardware
    prefetchers miss) are prefetched while this pixel's products run: 3.0-3.3 -> 2.6-2.7 ms
    at 32x32x16 on Zen 5, one thread."""
    N, H, W, C = dx.shape
    P, K, O = w.shape
    MR, NR = tile_shape(tile)
    pt, pl, KH, KW, OH, OW = geo[2], geo[3], geo[6], geo[7], geo[8], geo[9]
    Bt = np.empty(KH * KW * O * C, dy.dtype)
    Ar = np.zeros(MR * KH * KW * O, dy.dtype)
    t = np.empty(MR * NR, dy.dtype)
    dy1 = dy.reshape(-1)
    dx1 = dx.reshape(-1)
    w1 = w.reshape(-1)
    L = 32 // dy.itemsize
    lda = P * O
    ldc = H * W * C
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    b0 = np.empty(0, dy.dtype)
    nfull = N // MR * MR
    line = 64 // dy.itemsize
    for q in range(lo, hi):
        oh0, ow0, kh_hi, kw_hi, nseg, run = _taps(q, W, pt, pl, KH, KW, OH, OW)
        if nseg <= 0 or run <= 0:
            for n in range(N):
                zero_run(dx1[n * ldc + q * C:], C)
            continue
        if q + 1 < hi:      # the next pixel's weight blocks, while this one's products run
            oh1, ow1, kh1, kw1, nseg1, run1 = _taps(q + 1, W, pt, pl, KH, KW, OH, OW)
            for sg in range(nseg1):
                for r in range(run1):
                    s1 = ((oh1 + sg) * OW + ow1 + r) * K * O + ((kh1 - sg) * KW + kw1 - r) * C * O
                    for e in range(0, C * O, line):
                        prefetch_read(w1, s1 + e)
        kc = run * O
        for sg in range(nseg):
            for r in range(run):
                s0 = ((oh0 + sg) * OW + ow0 + r) * K * O + ((kh_hi - sg) * KW + kw_hi - r) * C * O
                d0 = (sg * run + r) * O * C
                if O % L == 0:
                    for cb in range(0, C, L):
                        for ob in range(0, O, L):
                            transpose_block(w1, s0 + cb * O + ob, O, L, Bt, d0 + ob * C + cb, C)
                else:
                    for c in range(C):
                        for o in range(O):
                            Bt[d0 + o * C + c] = w1[s0 + c * O + o]
        a0 = (oh0 * OW + ow0) * O
        for jr in range(0, C, NR):
            for n0 in range(0, nfull, MR):
                micro_seg(tile, kc, nseg, OW * O, kc * C, dy1[n0 * lda + a0:], lda, Bt[jr:], C, t)
                store(tile, t, dx1[n0 * ldc + q * C + jr:], ldc, one, zero, True, True, b0, 0)
        if nfull < N:
            for i in range(N - nfull):
                for sg in range(nseg):
                    copy_run(dy1[(nfull + i) * lda + a0 + sg * OW * O:], Ar[(i * nseg + sg) * kc:], kc)
            for jr in range(0, C, NR):
                micro_seg(tile, kc, nseg, kc, kc * C, Ar, nseg * kc, Bt[jr:], C, t)
                store_edge(tile, t, dx1[q * C:], ldc, nfull, jr, N - nfull, NR, one, zero, True, True, b0, 0)


def _input_grad_args(dy, w, dx, geo):
    """(kernel, its leading arguments): _input_grad_direct where it applies (unit strides and
    dilation, C a multiple of a register tile's NR)."""
    tile = tile_for(dy.dtype, dx.shape[3])
    if tile is None or geo[0] != 1 or geo[1] != 1 or geo[4] != 1 or geo[5] != 1:
        return _input_grad, (dy, w, dx, geo)
    args = (tile, dy, w, dx, geo)
    compile_with_slp(_input_grad_direct, (*args, 0, 0))
    return _input_grad_direct, args


def _forward_args(x, w, b, y, geo, act):
    """(kernel, its leading arguments): _forward_direct where a register tile fits (O a
    multiple of its NR, no w dilation)."""
    tile = tile_for(x.dtype, w.shape[2])
    if tile is None or geo[5] != 1:
        return _forward, (x, w, b, y, geo, act)
    args = (tile, x, w, b, y, geo, act)
    compile_with_slp(_forward_direct, (*args, 0, 0))
    return _forward_direct, args


def lc2d_forward_cpu(x, w, b, y, geo, act, n_chunks):
    """Positions split into n_chunks ranges on threads (kernels/local/threads.py)."""
    run_chunks(*_forward_args(x, w, b, y, geo, act), w.shape[0], n_chunks)


def lc2d_forward_serial(x, w, b, y, geo, act, n_chunks=1):
    fn, args = _forward_args(x, w, b, y, geo, act)
    fn(*args, 0, w.shape[0])


def _weight_grad_args(x, dy, dw, geo, n_chunks):
    """(kernel, its leading arguments): _weight_grad_direct on a padded copy where a tile fits."""
    tile = tile_for(dy.dtype, dw.shape[2])
    tile = None if tile is None else tile.transposed_for(x.shape[3] * int(geo[7]))
    if tile is None or geo[5] != 1:
        return _weight_grad, (x, dy, dw, geo)
    args = (tile, *padded_copy(x, geo, 0, n_chunks), dy, dw, geo)
    compile_with_slp(_weight_grad_direct, (*args, 0, 0))
    return _weight_grad_direct, args


def lc2d_weight_grad_cpu(x, dy, dw, geo, n_chunks):
    run_chunks(*_weight_grad_args(x, dy, dw, geo, n_chunks), dw.shape[0], n_chunks)


def lc2d_weight_grad_serial(x, dy, dw, geo, n_chunks=1):
    fn, args = _weight_grad_args(x, dy, dw, geo, 1)
    fn(*args, 0, dw.shape[0])


def lc2d_input_grad_cpu(dy, w, dx, geo, n_chunks):
    run_chunks(*_input_grad_args(dy, w, dx, geo), dx.shape[1] * dx.shape[2], n_chunks)


def lc2d_input_grad_serial(dy, w, dx, geo, n_chunks=1):
    fn, args = _input_grad_args(dy, w, dx, geo)
    fn(*args, 0, dx.shape[1] * dx.shape[2])
