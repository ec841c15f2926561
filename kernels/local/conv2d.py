"""2-D convolution (local connectivity + weight sharing), NHWC, grouped, no im2col buffer.

Math    forward  y[n, oh, ow, g*Og + o] = act(b[g*Og + o] + sum_k X[n, oh, ow, k] * w2[k, g*Og + o])
                 X[.., (kh*KW + kw)*Cg + c] = x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*Cg + c]
                 (zero outside the image); w2 = w.reshape(KH*KW*Cg, O).
        weight   dw2[k, g*Og + o] += sum_{n, oh, ow} X[n, oh, ow, k] * dy[n, oh, ow, g*Og + o]
        input    dx[n, ih, iw, g*Cg + c] = sum over the taps (kh, kw) whose output (oh, ow)
                 exists of sum_o dy[n, oh, ow, g*Og + o] * w[kh, kw, c, g*Og + o]
                 (gather formulation, one writer per input pixel, deterministic); with unit
                 strides and one group, the forward convolution of dy by the flipped,
                 transposed weights (_transposed), on the forward's kernels.
Shapes  x, dx: (N, H, W, C); w, dw: (KH, KW, Cg, O) with Cg = C/G, Og = O/G; y, dy: (N, OH, OW, O);
        b: (O,) or (0,); geo: int64[12] = (sh, sw, pt, pl, dh, dw, KH, KW, OH, OW, H, W).
How     Output pixels are cut into blocks of rows; each block gathers its patches into a
        (rows, KH*KW*Cg) panel in thread-local scratch and multiplies by the packed
        transposed weights with the micro-kernel of gemm.py; with one group and O a multiple
        of a register tile's NR (kernels/local/tiles.py: fastnn.matmul's, or half as wide),
        that tile runs instead, on x in place or on gathered rows (_path). ``*_cpu`` runs ranges of rows
        on threads (kernels/local/threads.py), ``*_serial`` in the calling thread. The
        weight gradient is summed in ``N_PARTS`` fixed row ranges (partials added in order
        afterwards: the same result for any thread count).
Oracle  tests/reference_local.py::conv2d_ref (plain loops); finite differences.
Bench   python bench/bench_local.py   (against torch.nn.functional.conv2d, oneDNN)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..activation import _act
from .gemm import MR as GEMM_MR, gemm_nt, gemm_tn_acc
from .pack import FASTMATH, block_rows, copy_run, padded_copy, patch_row, zero_run
from .threads import run_chunks
from .tiles import (Tile, compile_with_slp, micro, micro_seg, micro_t, store, store_edge, t_rows, tile_for, tile_shape,
                    wide_tile)

N_PARTS = 8


@njit(inline="always")
def _pack_wt(w, G):
    """(G, Og, Kg) transposed weights: Bs[g, o, k] = w2[k, g*Og + o]."""
    KH, KW, Cg, O = w.shape
    Kg, Og = KH * KW * Cg, O // G
    w2 = w.reshape(Kg, O)
    Bs = np.empty((G, Og, Kg), w.dtype)
    for g in range(G):
        for k in range(Kg):
            for o in range(Og):
                Bs[g, o, k] = w2[k, g * Og + o]
    return Bs


@njit(inline="always")
def _gather_pixels(xf, c0, cg, geo, r0, m, A):
    """A[i] = the patch (channels [c0, c0 + cg)) of output pixel r0 + i, pixels numbered
    (n, oh, ow) row-major; xf is x viewed (N, H, W*C)."""
    C = xf.shape[2] // geo[11]
    sh, sw, pt, pl, dh, dw, KH, KW, OH, OW = (geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7],
                                              geo[8], geo[9])
    for i in range(m):
        r = r0 + i
        n = r // (OH * OW)
        q = r - n * (OH * OW)
        oh = q // OW
        patch_row(xf[n], C, c0, cg, oh * sh - pt, (q - oh * OW) * sw - pl, dh, dw, KH, KW, A[i])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward(x, Bs, b, y2, geo, act, lo, hi):
    N, H, W, C = x.shape
    G, Og, Kg = Bs.shape
    Cg, O = C // G, G * Og
    xf = x.reshape(N, H, W * C)
    mb = block_rows(hi - lo, Kg)
    A = np.empty((mb, Kg), x.dtype)
    for r0 in range(lo, hi, mb):
        m = min(mb, hi - r0)
        for g in range(G):
            _gather_pixels(xf, g * Cg, Cg, geo, r0, m, A)
            bg = b[g * Og:(g + 1) * Og] if b.shape[0] > 0 else b
            gemm_nt(A, Bs[g], y2[r0:r0 + m, g * Og:(g + 1) * Og], m, Og, Kg, False, bg)
        if act != 0:
            for i in range(m):
                row = y2[r0 + i]
                for o in range(O):
                    row[o] = _act(row[o], act)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad_part(x, dy2, part, G, geo, lo, hi):
    """part (Kg, O) = this row range's contribution to the weight gradient."""
    N, H, W, C = x.shape
    Kg, O = part.shape
    Cg, Og = C // G, O // G
    xf = x.reshape(N, H, W * C)
    mb = block_rows(max(hi - lo, 1), Kg)
    A = np.empty((mb, Kg), x.dtype)
    Ct = np.zeros((G, Og, Kg), x.dtype)
    for r0 in range(lo, hi, mb):
        m = min(mb, hi - r0)
        for g in range(G):
            _gather_pixels(xf, g * Cg, Cg, geo, r0, m, A)
            gemm_tn_acc(A, dy2[r0:r0 + m, g * Og:(g + 1) * Og], Ct[g], m, Og, Kg)
    for k in range(Kg):
        for g in range(G):
            for o in range(Og):
                part[k, g * Og + o] = Ct[g, o, k]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _input_grad(dy, w, dx2, geo, lo, hi):
    KH, KW, Cg, O = w.shape
    N, OH, OW = dy.shape[0], dy.shape[1], dy.shape[2]
    C = dx2.shape[1]
    G = C // Cg
    Og = O // G
    H, W = geo[10], geo[11]
    sh, sw, pt, pl, dh, dw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    kt = KH * KW * Og
    # Runs: with one group and unit stride and dilation along w, the taps of one kernel row
    # read adjacent output pixels, so taps are ordered kw descending (ow ascending) and each
    # kernel row of an A row is one contiguous copy of dy.
    runs = G == 1 and sw == 1 and dw == 1
    # Bt[g, c, (kh*KW + kw')*Og + o] = w[kh, kw, c, g*Og + o], kw' = KW-1-kw with runs, else kw
    Bt = np.empty((G, Cg, kt), w.dtype)
    for g in range(G):
        for c in range(Cg):
            for t in range(KH * KW):
                kh, kw = t // KW, t % KW
                tt = kh * KW + (KW - 1 - kw) if runs else t
                src = w[kh, kw, c, g * Og:(g + 1) * Og]
                copy_run(src, Bt[g, c, tt * Og:(tt + 1) * Og], Og)
    dyf = dy.reshape(N, OH * OW * O)
    mb = block_rows(max(hi - lo, 1), kt)
    A = np.empty((mb, kt), dy.dtype)
    for r0 in range(lo, hi, mb):
        m = min(mb, hi - r0)
        for g in range(G):
            for i in range(m):
                r = r0 + i
                n = r // (H * W)
                q = r - n * (H * W)
                ih = q // W
                iw = q - ih * W
                a = A[i]
                d = dyf[n]
                if runs:
                    seg = KW * O
                    ow0 = iw + pl - (KW - 1)            # ow of kw' = 0
                    lo_w = min(max(0, -ow0), KW)        # first kw' with 0 <= ow < OW
                    hi_w = max(min(KW, OW - ow0), lo_w)
                    for kh in range(KH):
                        dst = a[kh * seg:(kh + 1) * seg]
                        u = ih + pt - kh * dh
                        if u < 0 or u % sh != 0 or u // sh >= OH:
                            zero_run(dst, seg)
                            continue
                        s0 = ((u // sh) * OW + ow0 + lo_w) * O
                        zero_run(dst, lo_w * O)
                        copy_run(d[s0:s0 + (hi_w - lo_w) * O], dst[lo_w * O:hi_w * O], (hi_w - lo_w) * O)
                        zero_run(dst[hi_w * O:seg], (KW - hi_w) * O)
                    continue
                for kh in range(KH):
                    u = ih + pt - kh * dh
                    okh = u >= 0 and u % sh == 0 and u // sh < OH
                    for kw in range(KW):
                        dst = a[(kh * KW + kw) * Og:(kh * KW + kw + 1) * Og]
                        v = iw + pl - kw * dw
                        if okh and v >= 0 and v % sw == 0 and v // sw < OW:
                            s = ((u // sh) * OW + v // sw) * O + g * Og
                            copy_run(d[s:s + Og], dst, Og)
                        else:
                            zero_run(dst, Og)
            gemm_nt(A, Bt[g], dx2[r0:r0 + m, g * Cg:(g + 1) * Cg], m, Cg, kt, False, Bt[0, 0, :0])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward_direct(tile, xp, lda, hw, w, b, y, geo, act, lo, hi):
    """_forward on fastnn.matmul's register tile (one group, O a multiple of NR, no w
    dilation) for output lines (n, oh) in [lo, hi): xp is x zero-padded (kernels/local/
    pack.py padded_copy, sample stride lda), so each tile of MR adjacent output pixels reads
    its patches in place, A rows sw*C apart, the kernel rows summed in registers, B = the
    weights as stored (KH*KW*C, O). No gather, no transposed weights."""
    Wp = hw[1]
    KH, KW, C, O = w.shape
    MR, NR = tile_shape(tile)
    sh, sw, dh, OH, OW = geo[0], geo[1], geo[4], geo[8], geo[9]
    w1 = w.reshape(-1)
    y1 = y.reshape(-1)
    run = KW * C
    t = np.empty(MR * NR, xp.dtype)
    one = xp.dtype.type(1)
    zero = xp.dtype.type(0)
    for line in range(lo, hi):
        n = line // OH
        oh = line - n * OH
        a0 = n * lda + oh * sh * Wp * C
        yl = y1[line * OW * O:]
        for jr in range(0, O, NR):
            bj = b[jr:] if b.shape[0] > 0 else b
            for i0 in range(0, OW, MR):
                micro_seg(tile, run, KH, dh * Wp * C, run * O, xp[a0 + i0 * sw * C:], sw * C, w1[jr:], O, t)
                if i0 + MR <= OW:
                    store(tile, t, yl[i0 * O + jr:], O, one, zero, True, True, bj, act)
                else:
                    store_edge(tile, t, yl, O, i0, jr, OW - i0, NR, one, zero, True, True, b, act)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward_tiled(tile, x, w, b, y2, geo, act, lo, hi):
    """_forward for one group and O a multiple of NR on narrow output lines: output pixels
    [lo, hi) (rows of y2) gather their patches into a (rows, K) panel, which the register
    tile reads with B = the weights as stored (no transposed copy)."""
    N, H, W, C = x.shape
    KH, KW, _, O = w.shape
    K = KH * KW * C
    MR, NR = tile_shape(tile)
    xf = x.reshape(N, H, W * C)
    w1 = w.reshape(-1)
    y1 = y2.reshape(-1)
    mb = -(-block_rows(max(hi - lo, 1), K) // MR) * MR
    A = np.zeros((mb, K), x.dtype)
    A1 = A.reshape(-1)
    t = np.empty(MR * NR, x.dtype)
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    for r0 in range(lo, hi, mb):
        m = min(mb, hi - r0)
        _gather_pixels(xf, 0, C, geo, r0, m, A)
        for i in range(m, -(-m // MR) * MR):
            zero_run(A[i], K)
        yr = y1[r0 * O:]
        for jr in range(0, O, NR):
            bj = b[jr:] if b.shape[0] > 0 else b
            for i0 in range(0, m, MR):
                micro(tile, K, A1[i0 * K:], K, w1[jr:], O, t)
                if i0 + MR <= m:
                    store(tile, t, yr[i0 * O + jr:], O, one, zero, True, True, bj, act)
                else:
                    store_edge(tile, t, yr, O, i0, jr, m - i0, NR, one, zero, True, True, b, act)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad_tiled(tile, x, dy2, parts, geo, lo, hi):
    """_weight_grad_parts for one group, O a multiple of NR and K of MT on narrow lines: each
    part's rows gather their patches into a panel that the accumulating transposed tile
    reads (MT K-values per pixel), summed over the panel's pixels straight into the part."""
    N, H, W, C = x.shape
    Kg, O = parts.shape[1], parts.shape[2]
    NR = tile_shape(tile)[1]
    MT = t_rows(tile)
    R = dy2.shape[0]
    xf = x.reshape(N, H, W * C)
    dy1 = dy2.reshape(-1)
    mb = block_rows(max(R // N_PARTS, 1), Kg)
    A = np.empty((mb, Kg), x.dtype)
    A1 = A.reshape(-1)
    for j in range(lo, hi):
        p1 = parts[j].reshape(-1)
        zero_run(p1, Kg * O)
        for r0 in range(j * R // N_PARTS, (j + 1) * R // N_PARTS, mb):
            m = min(mb, (j + 1) * R // N_PARTS - r0)
            _gather_pixels(xf, 0, C, geo, r0, m, A)
            for jr in range(0, O, NR):
                micro_t(tile, m, Kg // MT, A1, Kg, dy1[r0 * O + jr:], O, p1[jr:], O)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad_direct(tile, xp, lda, hw, dy2, parts, geo, lo, hi):
    """parts[j] = the weight gradient (KH*KW*C, O) of the output lines j*L//N_PARTS up to
    (j+1)*L//N_PARTS (L = N*OH lines), for j in [lo, hi): per line, kernel row and NR columns
    one accumulating product over the OW pixels (A = patches read transposed in place from
    the padded xp, B = dy rows), straight into the L1-resident part."""
    Wp = hw[1]
    Kg, O = parts.shape[1], parts.shape[2]
    sh, sw, dh, KH, KW, OH, OW = geo[0], geo[1], geo[4], geo[6], geo[7], geo[8], geo[9]
    C = Kg // (KH * KW)
    NR = tile_shape(tile)[1]
    MT = t_rows(tile)
    run = KW * C
    L = dy2.shape[0] // OW
    dy1 = dy2.reshape(-1)
    for j in range(lo, hi):
        p1 = parts[j].reshape(-1)
        zero_run(p1, Kg * O)
        for line in range(j * L // N_PARTS, (j + 1) * L // N_PARTS):
            n = line // OH
            oh = line - n * OH
            for kh in range(KH):
                a0 = n * lda + (oh * sh + kh * dh) * Wp * C
                for jr in range(0, O, NR):
                    micro_t(tile, OW, run // MT, xp[a0:], sw * C, dy1[line * OW * O + jr:], O,
                            p1[kh * run * O + jr:], O)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _forward_packed(x, w, b, y, geo, act, groups, lo, hi):
    Bs = _pack_wt(w, groups)
    _forward(x, Bs, b, y.reshape(-1, y.shape[3]), geo, act, lo, hi)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
def _weight_grad_parts(x, dy2, parts, groups, geo, lo, hi):
    R = dy2.shape[0]
    for j in range(lo, hi):
        _weight_grad_part(x, dy2, parts[j], groups, geo, j * R // N_PARTS, (j + 1) * R // N_PARTS)


@njit(cache=True, error_model="numpy", nogil=True)
def _sum_parts(parts, dw):
    """dw += the parts, in order (their columns past dw's O, from a _widened dy, are zero)."""
    dw2 = dw.reshape(parts.shape[1], dw.shape[3])
    for j in range(parts.shape[0]):
        for k in range(parts.shape[1]):
            for o in range(dw2.shape[1]):
                dw2[k, o] += parts[j, k, o]


#: the in-place kernels tile each output line with MR-pixel tiles: narrower lines go the
#: gathered way (an 8-pixel line wastes a third of its second 6-row tile: measured slower at
#: 8x8x64 on AVX2), unless they are whole tiles (AVX-512's 8 rows, 8x8 images, forward and
#: backward, one thread: 1.31 against 1.85 ms with 32 channels, 0.63 against 1.21 with 16,
#: equal with 64)
MIN_DIRECT_WIDTH = 16


def _path(x, w, geo, groups, weight_grad=False) -> tuple[str, Tile | None]:
    """Which kernels run, on which register tile: "inplace" (the tile on a padded copy: one
    group, O a multiple of NR, no w dilation, lines of MIN_DIRECT_WIDTH+ pixels or of whole
    MR-pixel tiles; for the weight gradient KW*C a multiple of the tile's MT), "tiled" (the tile
    on gathered patches: one group, O a multiple of NR; for the weight gradient K a multiple of
    MT) or "packed" (gathered patches, transposed weights, the 4x2 kernel; no tile). The tile
    is the widest whose NR divides O (tiles.tile_for), for the weight gradient with the most
    transposed rows that fit (Tile.transposed_for). There, where no tile divides O, O may
    instead fill half or more of the wide tile, the operand then zero-padded to it
    (_widened)."""
    KH, KW, Cg, O = w.shape
    tile = tile_for(x.dtype, O)
    if tile is None and weight_grad and 2 * O >= _width(O, wide_tile(x.dtype)):
        tile = wide_tile(x.dtype)
    if groups != 1 or tile is None:
        return "packed", None
    inplace = geo[5] == 1 and (geo[9] >= MIN_DIRECT_WIDTH or geo[9] % tile.mr == 0)
    if not weight_grad:
        return ("inplace" if inplace else "tiled"), tile
    for path, k in ((("inplace", KW * Cg),) if inplace else ()) + (("tiled", KH * KW * Cg),):
        fitting = tile.transposed_for(k)
        if fitting is not None:
            return path, fitting
    return "packed", None


def _width(O: int, tile: Tile) -> int:
    """O rounded up to a multiple of the tile's NR columns."""
    return -(-O // tile.nr) * tile.nr


def _widened(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` with its last axis zero-padded to ``width`` (``a`` itself when it is that wide):
    the register tile reads whole NR-column blocks of its B operand."""
    if a.shape[-1] == width:
        return a
    out = np.zeros((*a.shape[:-1], width), a.dtype)
    out[..., :a.shape[-1]] = a
    return out


def conv2d_forward_cpu(x, w, b, y, geo, act, groups, n_chunks):
    """Output lines (in place) or rows split into n_chunks ranges on threads
    (kernels/local/threads.py); the packed path's chunks pack the transposed weights each."""
    path, tile = _path(x, w, geo, groups)
    if path == "inplace":
        tail = (tile.mr * int(geo[1]) + w.shape[1]) * x.shape[3]
        args = (tile, *padded_copy(x, geo, tail, n_chunks), w, b, y, geo, act)
        compile_with_slp(_forward_direct, (*args, 0, 0))
        run_chunks(_forward_direct, args, y.shape[0] * y.shape[1], n_chunks)
    elif path == "tiled":
        args = (tile, x, w, b, y.reshape(-1, y.shape[3]), geo, act)
        compile_with_slp(_forward_tiled, (*args, 0, 0))
        run_chunks(_forward_tiled, args, y.size // y.shape[3], n_chunks)
    else:
        run_chunks(_forward_packed, (x, w, b, y, geo, act, groups), y.size // y.shape[3], n_chunks, GEMM_MR)


def conv2d_forward_serial(x, w, b, y, geo, act, groups, n_chunks=1):
    conv2d_forward_cpu(x, w, b, y, geo, act, groups, 1)


def _weight_grad(x, dy, dw, geo, groups, n_chunks):
    KH, KW, Cg, O = dw.shape
    path, tile = _path(x, dw, geo, groups, weight_grad=True)
    if path != "packed":
        O = _width(O, tile)
        dy = _widened(dy, O)
    parts = np.empty((N_PARTS, KH * KW * Cg, O), dw.dtype)
    if path == "inplace":
        args = (tile, *padded_copy(x, geo, 0, n_chunks), dy.reshape(-1, O), parts, geo)
        compile_with_slp(_weight_grad_direct, (*args, 0, 0))
        run_chunks(_weight_grad_direct, args, N_PARTS, n_chunks)
    elif path == "tiled":
        args = (tile, x, dy.reshape(-1, O), parts, geo)
        compile_with_slp(_weight_grad_tiled, (*args, 0, 0))
        run_chunks(_weight_grad_tiled, args, N_PARTS, n_chunks)
    else:
        run_chunks(_weight_grad_parts, (x, dy.reshape(-1, O), parts, groups, geo), N_PARTS, n_chunks)
    _sum_parts(parts, dw)


def conv2d_weight_grad_cpu(x, dy, dw, geo, groups, n_chunks):
    """dw += the sum of N_PARTS fixed row-range partials (computed on threads, added in order)."""
    _weight_grad(x, dy, dw, geo, groups, n_chunks)


def conv2d_weight_grad_serial(x, dy, dw, geo, groups, n_chunks=1):
    _weight_grad(x, dy, dw, geo, groups, 1)


def _transposed(w, geo):
    """(flipped weights, geometry) of the input gradient as a forward convolution of dy, or
    None: with unit strides and one group, dx[n, ih, iw, c] = sum dy[n, ih - pt' + kh*dh,
    iw - pl' + kw*dw, o] * w[KH-1-kh, KW-1-kw, c, o] (zero outside dy), pt' = (KH-1)*dh - pt
    and pl' = (KW-1)*dw - pl, which the forward kernels run on the register tile (with C a
    multiple of its NR; no gather of dy, no packed 4x2 product). None where padding exceeds
    the kernel's extent (pt' < 0) or a stride is not 1."""
    sh, sw, pt, pl, dh, dw, KH, KW, OH, OW, H, W = (int(v) for v in geo)
    ptt, plt = (KH - 1) * dh - pt, (KW - 1) * dw - pl
    if sh != 1 or sw != 1 or ptt < 0 or plt < 0:
        return None
    wf = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    return wf, np.array([1, 1, ptt, plt, dh, dw, KH, KW, H, W, OH, OW], np.int64)


def conv2d_input_grad_cpu(dy, w, dx, geo, n_chunks):
    """dx = the input gradient (overwritten): on the register tile as a forward convolution of
    dy (_transposed) where the shapes fit it, else gathered dy rows and the packed 4x2 product."""
    t = _transposed(w, geo) if w.shape[2] == dx.shape[3] else None     # one group
    if t is not None and _path(dy, t[0], t[1], 1)[0] != "packed":
        conv2d_forward_cpu(dy, t[0], np.empty(0, dy.dtype), dx, t[1], 0, 1, n_chunks)
        return
    run_chunks(_input_grad, (dy, w, dx.reshape(-1, dx.shape[3]), geo), dx.size // dx.shape[3], n_chunks, GEMM_MR)


def conv2d_input_grad_serial(dy, w, dx, geo, n_chunks=1):
    conv2d_input_grad_cpu(dy, w, dx, geo, 1)
