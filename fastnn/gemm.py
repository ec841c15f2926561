"""``fastnn.matmul`` (defined here, in fastnn.gemm): C = act(alpha * op(A) @ op(B) + beta * C + bias) on the CPU kernels.

op(X) is X or X.T (``trans_a``/``trans_b``). Operands may be C- or Fortran-ordered (read
through strides, no copy); other layouts are copied first. ``out`` may be any writeable
array of the right shape and dtype (non-contiguous ones are computed in a copy and written
back). The block sizes come from fastnn.kernels.matmul.blocks (``fastnn tune``).
"""
from __future__ import annotations

import numbers
import threading

import numba
import numpy as np
from numba.core.errors import TypingError

from .checks import check_activation, check_bool, type_name
from .flat import aligned_zeros
from .kernels.affinity import keep_off
from .kernels.activation import ACTIVATIONS
from .kernels.matmul import blocks as _blocks
from .kernels.matmul import module_for
from .kernels.matmul.fast import options_into, plain_into, serial_into, trans_a_into
from .kernels.matmul import settings as _settings
from .kernels.matmul.blocks import DIRECT_MN, SMALL_K, SMALL_MNK
from .kernels.parallel import parallel_safe_here

#: products with m*n*k*itemsize at least this use the thread team (when more than one thread is
#: set): fp64 from 128^3, fp32 from about 161^3. Measured here, 2 threads against 1 (medians of
#: 5 rounds): fp32 128^3 0.82x, 160^3 0.90x, 192^3 1.10x, 128x256x128 1.27x; fp64 128^3 1.12x
PARALLEL_WORK = 8 * 128 ** 3
#: products with m*n below this run in the calling thread (the direct kernel) at any k. Zen 4,
#: 2 threads on the packed path against 1 on the direct one: 0.5-0.7x at 32x4096x32 and fp64
#: 96x2048x16, 1.07-1.16x at 64x1024x64, 1.45-1.7x from 128x1024x128 on
PARALLEL_MN = 96 * 96

_EMPTY = {"f": np.empty(0, np.float32), "d": np.empty(0, np.float64)}
_ONE = {"f": np.float32(1), "d": np.float64(1)}
_ZERO = {"f": np.float32(0), "d": np.float64(0)}
_ACT = dict(ACTIVATIONS)
#: the dtypes whose small-product entries (kernels/matmul/fast.py) are compiled with SLP
_FAST: set = set()
#: dtypes whose serial_into (kernels/matmul/fast.py) was compiled inside the SLP scope
_SERIAL: set = set()
_ND = np.ndarray
_compiled: set = set()
_local = threading.local()
#: ndarray subclasses whose meaning a kernel would drop: matrix's * and shapes, a masked array's mask
_REFUSED = (np.matrix, np.ma.MaskedArray)


#: the generated module of a dtype's register tile (kernels/matmul/__init__.py)
kernel_module = module_for


def _call(fn, key, *args):
    """fn(*args), compiled (or loaded) with SLP on at its first call. Each kernel sees one Numba
    type per dtype: the operands are 1-D, C-contiguous and writeable (_readable)."""
    if key in _compiled:
        return fn(*args)
    with _settings.slp_scope():
        out = fn(*args)
    _compiled.add(key)
    return out


class _Memory:
    """An array interface over another array's memory, marked writeable (for _readable)."""

    def __init__(self, x: np.ndarray):
        face = x.__array_interface__
        self.__array_interface__ = {**face, "data": (face["data"][0], False)}
        self.base = x


def _readable(x: np.ndarray) -> np.ndarray:
    """x, or a writeable alias of a read-only x's memory, for kernels that only read it. Numba
    types a read-only array apart: each GEMM kernel compiled once more for read-only operands
    (15-25 s each, with SLP), for a product of microseconds."""
    return x if x.flags.writeable else np.asarray(_Memory(x))


def _flat(x: np.ndarray):
    """(1-D view from x's first element over its whole span, then its strides) in elements,
    read through strides without a copy; None when a stride is negative or not a whole
    number of elements."""
    size = x.itemsize
    if x.size == 0 or any(s < 0 or s % size for s in x.strides):
        return None
    strides = tuple(s // size for s in x.strides)
    span = sum((d - 1) * s for d, s in zip(x.shape, strides)) + 1
    return (np.lib.stride_tricks.as_strided(x, (span,), (size,)), *strides)


def _native(x: np.ndarray) -> np.ndarray:
    """x in the machine's byte order (a converted copy of a byte-swapped array)."""
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def _scalars(alpha, beta, where: str) -> tuple[float, float]:
    """alpha and beta as floats; a TypeError naming what came for anything but a real number."""
    for name, x in (("alpha", alpha), ("beta", beta)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise TypeError(f"{where}: {name} must be a real number, got {type(x).__name__} {x!r}")
        if isinstance(x, numbers.Integral) and abs(x) > 2 ** 1024 - 2 ** 970:    # float() would overflow
            raise ValueError(f"{where}: {name} must be a real number a float holds, got an int of "
                             f"{int(x).bit_length()} bits")
    return float(alpha), float(beta)


def _thread_count(threads, where: str) -> int:
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"{where}: threads must be None or an int >= 1, got {threads!r}")
    return int(threads)


def _operand(x: np.ndarray, trans: bool):
    """(flat, row stride, col stride, rows, cols) of op(x), in elements."""
    if trans:
        x = x.T
    if x.flags.c_contiguous:
        return x.reshape(-1), x.shape[1], 1, x.shape[0], x.shape[1]
    if x.flags.f_contiguous:
        return x.T.reshape(-1), 1, x.shape[0], x.shape[0], x.shape[1]
    view = _flat(x)
    if view is None:
        x = np.ascontiguousarray(x)
        return x.reshape(-1), x.shape[1], 1, x.shape[0], x.shape[1]
    return view + x.shape


def free_packing_buffers() -> None:
    """Drop the packing buffers this thread keeps between calls (one set per dtype, thread
    count and block sizes: a sweep over block sizes, ``fastnn.tune``, leaves hundreds of MB)."""
    _local.__dict__.pop("buffers", None)


def _buffers(dt, threads: int, b: _blocks.Blocks):
    key = (dt.char, threads, b)
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    buf = cache.get(key)
    if buf is None:
        per = -(-b.mc * b.kc // 16) * 16
        ap = aligned_zeros(threads * per, dt).reshape(threads, per)
        bp = aligned_zeros(b.nc * b.kc, dt)
        tiles = aligned_zeros(threads * b.mr * b.nr, dt).reshape(threads, b.mr * b.nr)
        buf = cache[key] = (ap, bp, tiles)
    return buf


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *, trans_a: bool = False,
           trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0, bias: np.ndarray | None = None,
           activation: str | None = None, threads: int | None = None) -> np.ndarray:
    """``out = activation(alpha * op(a) @ op(b) + beta * out + bias)``; returns ``out``.

    a, b: 2-D float32 or float64 arrays of one dtype; op(a): (M, K), op(b): (K, N).
    out: (M, N) of that dtype, or None for a new array (then ``beta`` must be 0).
    trans_a, trans_b: True or False (anything else is a TypeError).
    bias: (N,) or None. activation: None, "linear" (none), "relu", "tanh" or "sigmoid".
    threads: Numba threads for this call, an int >= 1 (default: numba.get_num_threads(); at
    most NUMBA_NUM_THREADS are used).
    ``out`` may overlap ``a``, ``b`` or ``bias`` (e.g. ``x = W x`` in place): the product is
    then computed into a temporary first, as NumPy does. As in BLAS, ``beta = 0`` does not read
    ``out`` and ``alpha = 0`` reads neither ``a`` nor ``b`` (a NaN there does not propagate).
    """
    if threads is not None and (type(threads) is not int or threads < 1):     # a plain int passes at no cost
        threads = _thread_count(threads, "matmul")
    if type(alpha) is not float or type(beta) is not float:                  # floats pass at no cost
        alpha, beta = _scalars(alpha, beta, "matmul")
    if type(a) is _ND and type(b) is _ND and a.dtype in _FAST:
        # Fast path for small products, where Python and dispatch are the cost. Plain products
        # go to kernels/matmul/fast.py, whose Numba typing checks layouts and shapes; b's and
        # out's dtypes are checked here to be a's (`is`: a byte-swapped float64 is not it), since
        # Numba's dispatch fingerprint ignores byte order: once an unaligned array has been typed,
        # a byte-swapped one would reach a native kernel. Entries are compiled with SLP for the
        # dtypes in _FAST. A weight gradient a.T @ b
        # (+ out) goes to trans_a_into (a read transposed in place) when small, or in one thread
        # with K <= DIRECT_T_K and M*N <= DIRECT_T_MN. With other options, small transposed
        # operands are copied row-major and options_into (typed the same way, 7 arguments) checks
        # the rest.
        # Whatever a kernel declines (not small, other layouts or types) goes the general way.
        # (Float literals: Python's float == float is a specialized fast compare, float == int
        # is not. Each dtype read costs ~15 ns: the plain path reads a's only, ~0.1 us less.)
        # (`trans_a is False`, `type(trans_a) is bool`: only Python's bools take the fast paths;
        # _matmul refuses the rest, so a truthy "N" or "False" never transposes.)
        if (bias is None and activation is None and alpha == 1.0 and beta == 0.0 and trans_a is False
                and trans_b is False and type(a) is type(b) is _ND and b.dtype is a.dtype):
            try:
                if out is None:
                    (m, k), (k2, n) = a.shape, b.shape
                    if k == k2:                    # else no (M, N) array (it may not fit): _matmul says why
                        c = np.empty((m, n), a.dtype)
                        if plain_into(a, b, c):
                            return c
                elif type(out) is _ND and out.dtype is a.dtype and plain_into(a, b, out):
                    return out
            except (TypingError, ValueError):      # ValueError: an operand not 2-D (_matmul says so)
                pass
        elif (type(trans_a) is bool and type(trans_b) is bool and type(a) is type(b) is _ND and b.dtype is a.dtype
              and a.ndim == 2 and b.ndim == 2
              and alpha != 0.0
              and (bias is None or (type(bias) is np.ndarray and bias.dtype is a.dtype and bias.ndim == 1
                                    and bias.size))
              and (activation is None or type(activation) is str)):
            if (trans_a and not trans_b and bias is None and activation is None and alpha == 1.0 and type(out) is _ND
                    and out.dtype is a.dtype
                    and (a.size * b.shape[1] * a.itemsize < PARALLEL_WORK or (threads or numba.get_num_threads()) == 1
                        or not parallel_safe_here())
                    and trans_a_into(a, b, out, beta)):          # X.T @ dY (+ C) in one thread: no copy of X.T
                return out
            if ((trans_a or trans_b) and a.size * b.shape[0 if trans_b else 1] <= SMALL_MNK     # M*K*N
                    and a.shape[0 if trans_a else 1] == b.shape[1 if trans_b else 0]):   # else _matmul says why
                a = np.ascontiguousarray(a.T) if trans_a else a
                b = np.ascontiguousarray(b.T) if trans_b else b
                trans_a = trans_b = False
            if not trans_a and not trans_b and a.flags.c_contiguous and b.flags.c_contiguous:
                args = (_EMPTY[a.dtype.char] if bias is None else bias, float(alpha), float(beta),
                        _ACT.get(activation, -1))
                if out is None:
                    if beta == 0 and a.shape[1] == b.shape[0]:
                        c = np.empty((a.shape[0], b.shape[1]), a.dtype)
                        if options_into(a, b, c, *args):
                            return c
                elif type(out) is np.ndarray and out.dtype is a.dtype and options_into(a, b, out, *args):
                    return out
    if type(a) is _ND and type(b) is _ND and b.dtype is a.dtype:     # native, one dtype
        # Not small, below the threads' thresholds: the serial path (the direct kernel where
        # M*N <= DIRECT_MN, else the packed driver) through one typed entry (its Numba typing
        # and checks instead of ~10 us of Python below).
        if (a.dtype in _SERIAL and trans_a is False and trans_b is False and a.ndim == 2 and b.ndim == 2
                and a.shape[1] == b.shape[0] and alpha != 0.0
                and (a.shape[0] * a.shape[1] * b.shape[1] * a.itemsize < PARALLEL_WORK
                     or a.shape[0] * b.shape[1] < PARALLEL_MN)
                and (bias is None or (type(bias) is _ND and bias.dtype is a.dtype and bias.shape == (b.shape[1],)))
                and (activation is None or type(activation) is str)):
            c = out if out is not None else np.empty((a.shape[0], b.shape[1]), a.dtype) if beta == 0 else None
            if type(c) is _ND and c.dtype is a.dtype:
                blk = _blocks.blocks_for(a.dtype.char)
                if serial_into(a, b, c, _EMPTY[a.dtype.char] if bias is None else bias, float(alpha), float(beta),
                               _ACT.get(activation, -1), blk.mc, blk.kc, blk.nc, *_buffers(a.dtype, 1, blk)):
                    return c
    return _matmul(a, b, out, trans_a, trans_b, alpha, beta, bias, activation, threads)


def _matmul(a, b, out, trans_a, trans_b, alpha, beta, bias, activation, threads):
    """fastnn.matmul's general path: every check, any layout (matmul keeps the fast paths in a
    small frame: a Python frame costs per local variable, ~80 ns a call with these here)."""
    if not all(isinstance(x, np.ndarray) and not isinstance(x, _REFUSED) for x in (a, b)):
        raise TypeError(f"matmul: expected numpy.ndarray operands, got {type_name(a)} and {type_name(b)}")
    trans_a, trans_b = check_bool(trans_a, "matmul: trans_a"), check_bool(trans_b, "matmul: trans_b")
    a, b = _native(a), _native(b)
    dt = a.dtype
    if dt != b.dtype or dt.char not in "fd":
        raise TypeError(f"matmul: expected two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul: expected 2-D operands, got shapes {a.shape} and {b.shape}")
    fa, rsa, csa, m, k = _operand(a, trans_a)
    fb, rsb, csb, k2, n = _operand(b, trans_b)
    if m * n * k <= SMALL_MNK and (csa != 1 or csb != 1):    # direct path: row-major
        fa, rsa, csa, m, k = _operand(np.ascontiguousarray(a.T if trans_a else a), False)
        fb, rsb, csb, k2, n = _operand(np.ascontiguousarray(b.T if trans_b else b), False)
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is {m}x{k}, op(b) is {k2}x{n} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    act = check_activation(activation, "matmul")
    if bias is None:
        bias = _EMPTY[dt.char]
    elif (not isinstance(bias, np.ndarray) or isinstance(bias, _REFUSED) or bias.dtype.newbyteorder("=") != dt
          or bias.shape != (n,)):
        raise ValueError(f"matmul: bias must be a {dt} array of shape ({n},), got "
                         f"{type_name(bias)} {getattr(bias, 'dtype', '')} {getattr(bias, 'shape', '')}")
    elif not bias.flags.c_contiguous or not bias.dtype.isnative:
        bias = np.ascontiguousarray(bias, dt)
    if out is None:
        if beta != 0:
            raise ValueError("matmul: beta != 0 needs an out array to accumulate into")
        out = np.empty((m, n), dt)
    elif (not isinstance(out, np.ndarray) or isinstance(out, _REFUSED) or out.dtype.newbyteorder("=") != dt
          or out.shape != (m, n)):
        raise ValueError(f"matmul: out must be a {dt} array of shape ({m}, {n}), got "
                         f"{type_name(out)} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    elif not out.flags.writeable:
        raise ValueError("matmul: out is read-only")
    if m == 0 or n == 0:
        return out
    rows = _flat(out) if not out.flags.c_contiguous and k and alpha != 0 else None
    if not out.dtype.isnative or any(np.may_share_memory(out, x) for x in (a, b, bias)):   # byte-swapped, or
        work = np.array(out, dt, order="C") if beta != 0 else np.empty((m, n), dt)       # read while written
        c, ldc = work.reshape(-1), n
    elif rows is not None and rows[2] == 1 and rows[1] >= n:      # rows of a wider array: write in place
        work, (c, ldc, _) = out, rows
    else:
        work = out if out.flags.c_contiguous else np.ascontiguousarray(out)
        c, ldc = work.reshape(-1), n
    alpha_ = _ONE[dt.char] if alpha == 1 else dt.type(alpha)      # dt.type() costs ~0.4 us a call
    beta_ = _ZERO[dt.char] if beta == 0 else dt.type(beta)
    if k == 0 or alpha == 0:      # C = beta C (+ bias, act); as in BLAS, alpha = 0 reads neither A nor B
                                  # (a NaN there does not propagate), and beta = 0 does not read C
        if beta == 0:
            c[...] = 0
        else:
            c *= beta_
        if bias.size or act:
            from .kernels.activation import bias_act_forward_serial

            bias_act_forward_serial(work, bias, act)
    else:
        _gemm(m, n, k, alpha_, _readable(fa), rsa, csa, _readable(fb), rsb, csb, beta_, c, ldc, _readable(bias),
              act, dt, threads)
    if work is not out:
        out[...] = work
    return out


def _gemm(m, n, k, alpha, fa, rsa, csa, fb, rsb, csb, beta, c, ldc, bias, act, dt, threads):
    mod = kernel_module(dt)
    mnk = m * n * k
    nthreads = 1
    if mnk * dt.itemsize >= PARALLEL_WORK and m * n >= PARALLEL_MN:   # get_num_threads() costs ~1 us
        nthreads = numba.get_num_threads() if threads is None else threads
        nthreads = min(nthreads, numba.config.NUMBA_NUM_THREADS) if parallel_safe_here() else 1
    parallel = nthreads > 1
    if csa == 1 and csb == 1 and (mnk <= SMALL_MNK or (not parallel and m * n <= DIRECT_MN)):
        blk = _blocks.blocks_for(dt.char)
        work = np.empty((blk.mr + blk.nr) * min(k, SMALL_K) + blk.mr * blk.nr, dt)     # the module's small_work
        _call(mod.gemm_small, ("small", mod, dt.char), m, n, k, alpha, fa, rsa, fb, rsb, beta,
              c, ldc, bias, act, work)
        if dt not in _FAST:
            _register_fast(dt)
        if mnk > SMALL_MNK and not parallel and dt not in _SERIAL:       # serial_into takes these next time
            _register_serial(dt, blk)
        return
    blk = _blocks.blocks_for(dt.char)
    mc, kc = _balanced(m, k, blk)
    # Few rows, or row blocks the threads cannot share evenly: the threads split each block's
    # columns instead (each packs the block's A itself). 2 threads, gemm_cpu with and without
    # the split, medians of 5 rounds: 3 or 5 blocks gained 1.0-1.5x (fp64 128x1024x1024 38.8 ->
    # 58.6 GFLOP/s, fp32 300x512x512 95 -> 119); 2, 9 and 18 blocks lost up to 17 % or held.
    nmb = -(-m // mc)
    uneven = -(-nmb // nthreads) * nthreads >= 1.15 * nmb
    nsplit = nthreads if parallel and (m < nthreads * blk.mr * 8 or uneven) else 1
    ap, bp, tiles = _buffers(dt, numba.config.NUMBA_NUM_THREADS if parallel else 1, blk)
    args = (m, n, k, alpha, fa, rsa, csa, fb, rsb, csb, beta, c, ldc, bias, act, mc, kc, blk.nc, nsplit,
            4 * nthreads if parallel else 1, ap, bp, tiles)
    if parallel:
        keep_off(nthreads)
        old = numba.get_num_threads()
        if old != nthreads:
            numba.set_num_threads(nthreads)
        try:
            _call(mod.gemm_cpu, ("cpu", mod, dt.char), *args)
        finally:
            if old != nthreads:
                numba.set_num_threads(old)
    else:
        _call(mod.gemm_serial, ("serial", mod, dt.char), *args)
        if dt not in _SERIAL:
            _register_serial(dt, blk)


def _register_fast(dt: np.dtype) -> None:
    """Compile a dtype's small-product entries inside the SLP scope (1 x 1 products) and let
    fastnn.matmul's fast section use them for that dtype."""
    one = np.ones((1, 1), dt)
    with _settings.slp_scope():
        options_into(one, one, one.copy(), _EMPTY[dt.char], 1.0, 0.0, 0)
        plain_into(one, one, one.copy())
        trans_a_into(one, one, one.copy(), 1.0)
    _FAST.add(dt)


def _register_serial(dt: np.dtype, blk: _blocks.Blocks) -> None:
    """Compile the typed serial entry inside the SLP scope (a 1 x 1 product: declined) and let
    fastnn.matmul's fast section use it for this dtype."""
    one = np.ones((1, 1), dt)
    with _settings.slp_scope():
        serial_into(one, one, one.copy(), _EMPTY[dt.char], 1.0, 0.0, 0, blk.mc, blk.kc, blk.nc, *_buffers(dt, 1, blk))
    _SERIAL.add(dt)


def _balanced(m: int, k: int, blk: _blocks.Blocks) -> tuple[int, int]:
    """(MC, KC) for this product: the table's blocks evened out (a multiple of MR), so no
    thin last block of rows or of K."""
    return -(-(-(-m // -(-m // blk.mc))) // blk.mr) * blk.mr, -(-k // -(-k // blk.kc))


def batched_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *, trans_a: bool = False,
                   trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0, bias: np.ndarray | None = None,
                   activation: str | None = None, threads: int | None = None) -> np.ndarray:
    """``out[g] = activation(alpha * op(a[g]) @ op(b[g]) + beta * out[g] + bias[g])`` for every
    group g; returns ``out``.

    a: (G, M, K), or (G, K, M) with trans_a; b: (G, K, N), or (G, N, K) with trans_b; out:
    (G, M, N) or None (then ``beta`` must be 0); bias: (G, N) or None; one float dtype;
    trans_a, trans_b: True or False.
    Any non-negative strides are read in place (e.g. ``x.reshape(n, G, k).transpose(1, 0, 2)``,
    the column blocks of a block-diagonal layer); ``out`` needs unit column stride to be
    written in place. One call runs every group, one group at a time per thread (``threads``,
    default numba.get_num_threads()), each on the packed GEMM: no Python per group.
    """
    if not all(isinstance(x, np.ndarray) and not isinstance(x, _REFUSED) for x in (a, b)):
        raise TypeError(f"batched_matmul: expected numpy.ndarray operands, got {type_name(a)} and {type_name(b)}")
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 3:
            raise ValueError(f"batched_matmul: {name} must be a 3-D numpy array (groups, rows, cols), got shape "
                             f"{x.shape}")
    trans_a, trans_b = check_bool(trans_a, "batched_matmul: trans_a"), check_bool(trans_b, "batched_matmul: trans_b")
    if threads is not None:
        threads = _thread_count(threads, "batched_matmul")
    alpha, beta = _scalars(alpha, beta, "batched_matmul")
    a, b = _native(a), _native(b)
    dt = a.dtype
    if dt != b.dtype or dt.char not in "fd":
        raise TypeError(f"batched_matmul: expected two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    G = a.shape[0]
    m, k = a.shape[2:0:-1] if trans_a else a.shape[1:]
    k2, n = b.shape[2:0:-1] if trans_b else b.shape[1:]
    if b.shape[0] != G or k != k2:
        raise ValueError(f"batched_matmul: op(a) is {G} x {m}x{k}, op(b) is {b.shape[0]} x {k2}x{n} "
                         f"(trans_a={trans_a}, trans_b={trans_b}): groups and inner dimensions must agree")
    if out is None:
        if beta != 0:
            raise ValueError("batched_matmul: beta != 0 needs an out array to accumulate into")
        out = np.empty((G, m, n), dt)
    elif (not isinstance(out, np.ndarray) or isinstance(out, _REFUSED) or out.dtype.newbyteorder("=") != dt
          or out.shape != (G, m, n)):
        raise ValueError(f"batched_matmul: out must be a {dt} array of shape ({G}, {m}, {n}), got "
                         f"{type_name(out)} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    elif not out.flags.writeable:
        raise ValueError("batched_matmul: out is read-only")
    if bias is not None and (not isinstance(bias, np.ndarray) or isinstance(bias, _REFUSED)
                             or bias.dtype.newbyteorder("=") != dt or bias.shape != (G, n)):
        raise ValueError(f"batched_matmul: bias must be a {dt} array of shape ({G}, {n}), got "
                         f"{type_name(bias)} {getattr(bias, 'dtype', '')} {getattr(bias, 'shape', '')}")
    act = check_activation(activation, "batched_matmul")
    if not out.dtype.isnative or any(x is not None and np.may_share_memory(out, x) for x in (a, b, bias)):
        work = np.array(out, dt) if beta != 0 else None                # byte-swapped, or read while written
        work = batched_matmul(a, b, work, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias,
                              activation=activation, threads=threads)
        out[...] = work
        return out
    views = [_flat(x) for x in (a, b, out)]
    if G < 2 or k == 0 or alpha == 0 or None in views or views[2][3] != 1:
        for g in range(G):                 # nothing to batch, or a layout the driver cannot read
            matmul(a[g], b[g], out[g], trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                   bias=None if bias is None else bias[g], activation=activation, threads=threads)
        return out
    if m == 0 or n == 0:
        return out
    (fa, ga, ra, ca), (fb, gb, rb, cb), (fc, gc, ldc, _) = views
    rsa, csa = (ca, ra) if trans_a else (ra, ca)
    rsb, csb = (cb, rb) if trans_b else (rb, cb)
    fa, fb = _readable(fa), _readable(fb)
    fbias = _readable(np.ascontiguousarray(bias, dt).reshape(-1)) if bias is not None else _EMPTY[dt.char]
    blk = _blocks.blocks_for(dt.char)
    mc, kc = _balanced(m, k, blk)
    nthreads = numba.get_num_threads() if threads is None else threads
    nthreads = min(nthreads, numba.config.NUMBA_NUM_THREADS, G) if parallel_safe_here() else 1
    ap, bps, tiles = _group_buffers(dt, numba.config.NUMBA_NUM_THREADS if nthreads > 1 else 1, blk)
    mod = kernel_module(dt)
    args = (G, m, n, k, dt.type(alpha), fa, rsa, csa, ga, fb, rsb, csb, gb, dt.type(beta), fc, ldc, gc, fbias,
            n, act, mc, kc, blk.nc, ap, bps, tiles)
    if nthreads > 1:
        keep_off(nthreads)
        old = numba.get_num_threads()
        numba.set_num_threads(nthreads)
        try:
            _call(mod.gemm_cpu_groups, ("cpu_groups", mod, dt.char), *args)
        finally:
            numba.set_num_threads(old)
    else:
        _call(mod.gemm_serial_groups, ("serial_groups", mod, dt.char), *args)
    return out


def _group_buffers(dt, threads: int, b: _blocks.Blocks):
    """Per-thread packing buffers of the batched driver: each thread packs its own B."""
    key = (dt.char, threads, b, "groups")
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    if key not in cache:
        ap, _, tiles = _buffers(dt, threads, b)
        cache[key] = (ap, aligned_zeros(threads * b.nc * b.kc, dt).reshape(threads, b.nc * b.kc), tiles)
    return cache[key]


def describe() -> str:
    """One line for ``fastnn info``: which micro-kernel runs and why."""
    from .kernels.local.tiles import tile_for
    from .sysinfo import jit_features, simd_width_bits

    parts = []
    for ch in "fd":
        b = _blocks.blocks_for(ch)
        narrow = tile_for(ch, b.nr // 2)
        local = f", the local layers' also {narrow.mr}x{narrow.nr}" if narrow is not None else ""
        parts.append(f"{np.dtype(ch).name} {b.mr}x{b.nr} (MC {b.mc}, KC {b.kc}, NC {b.nc}, {b.source}{local})")
    bits, features = simd_width_bits(), jit_features()
    if numba.config.CPU_NAME not in (None, "host"):
        why = (f"NUMBA_CPU_NAME={numba.config.CPU_NAME}: Numba compiles for that CPU, not this one, and may emit "
               "no FMA (kernels.matmul.settings.check_micro_kernel counts them)")
    elif bits >= 512 and not _settings.wide_vectors():
        why = f"256-bit FMA tiles on an AVX-512 CPU: {_settings.width_note()}"
    elif bits >= 512:
        why = "512-bit FMA tiles (AVX-512); " + _settings.width_note()
    elif bits == 256 and {"+avx2", "+fma"} <= features:
        why = "256-bit FMA tiles (AVX2+FMA)"
    elif bits == 256:
        why = "256-bit vectors without FMA (AVX only): expect NumPy's BLAS to be faster"
    else:
        why = "no AVX2: scalar code, expect NumPy's BLAS to be faster"
    return "; ".join(parts) + f"; {why}; SLP vectorizer on only while fastnn compiles these kernels"
