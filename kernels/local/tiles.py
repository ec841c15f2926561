"""The matmul register tiles, borrowed by the local kernels: fastnn.matmul's micro-kernels.

Math    micro(tile, kc, a, lda, b, ldb, t):  t[i*NR + j] = sum_p a[i*lda + p] * b[p*ldb + j]
        (an MR x NR tile of A @ B read in place: A rows strided by lda, B rows by ldb);
        micro_seg(tile, kc, nseg, sa, sb, a, lda, b, ldb, t) the same over nseg runs of kc, the
        operands advanced by sa and sb per run (a patch's kernel rows, in place);
        micro_t(tile, kc, nt, a, lda, b, ldb, c, ldc) nt tiles of MT rows with A read transposed,
        added into C: c[(q*MT + i)*ldc + j] += sum_p a[p*lda + q*MT + i] * b[p*ldb + j] (a
        weight gradient summed over the samples p);
        store(tile, t, c, ldc, alpha, beta, first, last, bias, act) writes a full tile into C
        (row stride ldc) with the GEMM epilogue; store_edge(tile, t, c, ldc, r0, c0, mr, nr, ...)
        a partial one. tile_shape(tile) is (MR, NR), t_rows(tile) MT.
How     A kernel takes a ``Tile`` argument, which tile_for(dtype, n) picks in Python: its Numba
        type carries (MR, NR), so each name above, a Numba overload, inlines at compile time a
        call to the generated gemm_<MR>x<NR> module's micro_direct / micro_direct_seg /
        micro_direct_t / store_c / _store. The wide tile is fastnn.matmul's for the dtype
        (kernels/matmul/blocks.py: 6x16 fp32 and 6x8 fp64 on AVX2, 8x32 / 8x16 with AVX-512);
        the narrow one keeps MR and halves NR where that module is shipped (8x16 fp32 with
        AVX-512, 6x8 fp32 on AVX2), for channel counts the wide tile does not divide: 16
        channels on AVX-512 had gone the packed 4x2 way, or half of each tile was zeros. A
        narrow tile's row is one vector, so its transposed kernel runs 8 rows (micro_direct_t8)
        where the wide tile's runs MT = 4 rows of two vectors: 8 accumulators either way (4
        rows still where 8 do not divide the weight gradient's rows: Tile.transposed_for).
        Kernels that call these must be compiled inside settings.slp_scope()
        (``compile_with_slp``): the tile lives in scalar variables only SLP vectorizes.
Oracle  tests/test_tiles.py (Conv2D and LocallyConnected2D on each tile against NumPy loops)
        and tests/test_local.py (every local layer against plain loops)."""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import NativeValue, models, overload, register_model, typeof_impl, unbox

from ..matmul import blocks, module_of
from ..matmul.blocks import MT
from ..matmul.generate import SHAPES
from ..matmul.settings import slp_scope

_ready: set = set()


class Tile:
    """An MR x NR register tile of fastnn.matmul's generated modules, with MT rows for its
    transposed kernel, passed to a kernel so that it compiles with that module's micro-kernels."""

    __slots__ = ("mr", "nr", "mt")

    def __init__(self, mr: int, nr: int, mt: int = MT):
        self.mr, self.nr, self.mt = mr, nr, mt

    def __repr__(self) -> str:
        return f"Tile({self.mr}x{self.nr}, mt={self.mt})"

    def transposed_for(self, k: int) -> Tile | None:
        """This tile with the most rows of its transposed kernel (its MT, else the 4-row one)
        that divide k, the rows it sums a weight gradient over at once; None if neither does."""
        for mt in dict.fromkeys((self.mt, MT)):
            if k % mt == 0:
                return self if mt == self.mt else Tile(self.mr, self.nr, mt)
        return None


class TileType(types.Type):
    """Numba type of a Tile: the shape is part of the type, so each tile compiles its own code.
    Numba pickles it by name into the cache indexes of the kernels that take a Tile, and reads
    an index before it checks the source: renaming or moving this class breaks loading caches
    written before (clear kernels/**/__pycache__ then)."""

    def __init__(self, mr: int, nr: int, mt: int):
        self.mr, self.nr, self.mt = mr, nr, mt
        super().__init__(name=f"Tile({mr}x{nr}, mt={mt})")


@typeof_impl.register(Tile)
def _typeof_tile(val, c):
    return TileType(val.mr, val.nr, val.mt)


register_model(TileType)(models.OpaqueModel)


@unbox(TileType)
def _unbox_tile(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def tile_for(dtype, n: int) -> Tile | None:
    """The widest register tile for this dtype whose NR columns divide n (None: none does)."""
    b = blocks.blocks_for(np.dtype(dtype).char)
    if n % b.nr == 0:
        return Tile(b.mr, b.nr)
    if n % (b.nr // 2) == 0 and (b.mr, b.nr // 2) in SHAPES:
        return Tile(b.mr, b.nr // 2, 8)
    return None


def wide_tile(dtype) -> Tile:
    """fastnn.matmul's register tile for this dtype."""
    b = blocks.blocks_for(np.dtype(dtype).char)
    return Tile(b.mr, b.nr)


def _type_key(a):
    """What Numba's type of ``a`` depends on, found faster than numba.typeof (~10 us an array,
    7 arrays a kernel call: 0.3 ms of a 5 ms Conv2D step)."""
    if isinstance(a, np.ndarray):
        f = a.flags
        return a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned
    if isinstance(a, Tile):
        return Tile, a.mr, a.nr, a.mt
    return type(a)


def compile_with_slp(fn, args: tuple) -> None:
    """Compile the Numba function ``fn`` for these arguments' types with SLP on (once)."""
    key = (fn, tuple(_type_key(a) for a in args))
    if key not in _ready:
        with slp_scope():
            fn.compile(tuple(numba.typeof(a) for a in args))
        _ready.add(key)


def tile_shape(tile):
    """(MR, NR) of the tile."""


def t_rows(tile):
    """MT, the rows of the tile's transposed kernel (micro_t)."""


def micro(tile, kc, a, lda, b, ldb, t):
    """t[i*NR + j] = sum_p a[i*lda + p] * b[p*ldb + j] for i < MR, j < NR."""


def micro_seg(tile, kc, nseg, sa, sb, a, lda, b, ldb, t):
    """micro summed over nseg runs of kc: a advanced by sa, b by sb per run (registers hold the tile)."""


def micro_t(tile, kc, nt, a, lda, b, ldb, c, ldc):
    """c[(q*MT + i)*ldc + j] += sum_p a[p*lda + q*MT + i] * b[p*ldb + j] for q < nt."""


def store(tile, t, c, ldc, alpha, beta, first, last, bias, act):
    """A full tile into C with the epilogue (see the generated store_c)."""


def store_edge(tile, t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act):
    """The first mr x nr of a tile into C[r0:, c0:] with the epilogue (the generated _store)."""


@overload(tile_shape)
def _tile_shape(tile):
    shape = (tile.mr, tile.nr)
    return lambda tile: shape


@overload(t_rows)
def _t_rows(tile):
    mt = tile.mt
    return lambda tile: mt


@overload(micro)
def _micro(tile, kc, a, lda, b, ldb, t):
    mod = module_of(tile.mr, tile.nr)
    fn, nr = mod.micro_direct, mod.NR
    return lambda tile, kc, a, lda, b, ldb, t: fn(kc, 1, a, lda, b, ldb, t, nr)


@overload(micro_seg)
def _micro_seg(tile, kc, nseg, sa, sb, a, lda, b, ldb, t):
    fn = module_of(tile.mr, tile.nr).micro_direct_seg
    return lambda tile, kc, nseg, sa, sb, a, lda, b, ldb, t: fn(kc, nseg, sa, sb, a, lda, b, ldb, t)


@overload(micro_t)
def _micro_t(tile, kc, nt, a, lda, b, ldb, c, ldc):
    mod = module_of(tile.mr, tile.nr)
    fn = mod.micro_direct_t if tile.mt == mod.MT else mod.micro_direct_t8
    return lambda tile, kc, nt, a, lda, b, ldb, c, ldc: fn(kc, nt, a, lda, b, ldb, c, ldc)


@overload(store)
def _store(tile, t, c, ldc, alpha, beta, first, last, bias, act):
    fn = module_of(tile.mr, tile.nr).store_c
    return lambda tile, t, c, ldc, alpha, beta, first, last, bias, act: fn(t, c, ldc, alpha, beta, first, last,
                                                                           bias, act)


@overload(store_edge)
def _store_edge(tile, t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act):
    fn = module_of(tile.mr, tile.nr)._store
    return (lambda tile, t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act:
            fn(t, c, ldc, r0, c0, mr, nr, alpha, beta, first, last, bias, act))
