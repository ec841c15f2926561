"""The matmul register tile, borrowed by the local kernels: fastnn.matmul's micro-kernel per dtype.

Math    micro(kc, a, lda, b, ldb, t):  t[i*NR + j] = sum_p a[i*lda + p] * b[p*ldb + j]
        (an MR x NR tile of A @ B read in place: A rows strided by lda, B rows by ldb);
        micro_seg(kc, nseg, sa, sb, a, lda, b, ldb, t) the same over nseg runs of kc, the
        operands advanced by sa and sb per run (a patch's kernel rows, in place);
        micro_t(kc, nt, a, lda, b, ldb, c, ldc) nt row tiles with A read transposed, added
        into C: c[(q*MR + i)*ldc + j] += sum_p a[p*lda + q*MR + i] * b[p*ldb + j] (a weight
        gradient summed over the samples p);
        store(t, c, ldc, alpha, beta, first, last, bias, act) writes a full tile into C
        (row stride ldc) with the GEMM epilogue; store_edge(t, c, ldc, r0, c0, mr, nr, ...)
        a partial one. tile_shape(x) is (MR, NR) for x's dtype.
How     Each name is a Numba overload that, at compile time, picks the generated module
        fastnn.matmul uses for that dtype (kernels/matmul/blocks.py: 6x16 fp32 and 6x8 fp64 on
        AVX2, 8x32 / 8x16 with AVX-512) and inlines a call to its micro_direct / micro_direct_seg /
        micro_direct_t / store_c / _store. Kernels that call these must be compiled inside settings.slp_scope()
        (``compile_with_slp``): the tile lives in scalar variables only SLP vectorizes.
Oracle  through tests/test_local.py (every local layer against plain loops).
"""
from __future__ import annotations

import numba
import numpy as np
from numba.extending import overload

from ..matmul import blocks, module_for
from ..matmul.settings import slp_scope

_ready: set = set()


def _module(dtype):
    """The generated gemm_<MR>x<NR> module fastnn.matmul uses for this (Numba) dtype."""
    return module_for(np.dtype(str(dtype)))


def compile_with_slp(fn, args: tuple) -> None:
    """Compile the Numba function ``fn`` for these arguments' types with SLP on (once)."""
    key = (fn, tuple(numba.typeof(a) for a in args))
    if key not in _ready:
        with slp_scope():
            fn.compile(key[1])
        _ready.add(key)


def tile_shape_py(dtype) -> tuple[int, int]:
    """(MR, NR) for this NumPy dtype, from Python."""
    b = blocks.blocks_for(np.dtype(dtype).char)
    return b.mr, b.nr


def tile_shape(x):
    """(MR, NR) of x's dtype."""


def micro(kc, a, lda, b, ldb, t):
    """t[i*NR + j] = sum_p a[i*lda + p] * b[p*ldb + j] for i < MR, j < NR."""


def micro_seg(kc, nseg, sa, sb, a, lda, b, ldb, t):
    """micro summed over nseg runs of kc: a advanced by sa, b by sb per run (registers hold the tile)."""


def micro_t(kc, nt, a, lda, b, ldb, c, ldc):
    """c[(q*MR + i)*ldc + j] += sum_p a[p*lda + q*MR + i] * b[p*ldb + j] for q < nt."""


def store(t, c, ldc, alpha, beta, first, last, bias, act):
    """A full tile into C with the epilogue (see the generated store_c)."""


def store_edge(t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act):
    """The first mr x nr of a tile into C[r0:, c0:] with the epilogue (the generated _store)."""


@overload(tile_shape)
def _tile_shape(x):
    mod = _module(x.dtype)
    shape = (mod.MR, mod.NR)
    return lambda x: shape


@overload(micro)
def _micro(kc, a, lda, b, ldb, t):
    mod = _module(a.dtype)
    fn, nr = mod.micro_direct, mod.NR
    return lambda kc, a, lda, b, ldb, t: fn(kc, 1, a, lda, b, ldb, t, nr)


@overload(micro_seg)
def _micro_seg(kc, nseg, sa, sb, a, lda, b, ldb, t):
    fn = _module(a.dtype).micro_direct_seg
    return lambda kc, nseg, sa, sb, a, lda, b, ldb, t: fn(kc, nseg, sa, sb, a, lda, b, ldb, t)


@overload(micro_t)
def _micro_t(kc, nt, a, lda, b, ldb, c, ldc):
    fn = _module(a.dtype).micro_direct_t
    return lambda kc, nt, a, lda, b, ldb, c, ldc: fn(kc, nt, a, lda, b, ldb, c, ldc)


@overload(store)
def _store(t, c, ldc, alpha, beta, first, last, bias, act):
    fn = _module(t.dtype).store_c
    return lambda t, c, ldc, alpha, beta, first, last, bias, act: fn(t, c, ldc, alpha, beta, first, last, bias,
                                                                     act)


@overload(store_edge)
def _store_edge(t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act):
    fn = _module(t.dtype)._store
    return (lambda t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act:
            fn(t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act))
