"""fastnn.matmul's entries for small and for serial packed products, typed by Numba instead
of by Python.

Math    plain_into(a, b, c) -> bool:  c = a @ b, True; or nothing written, False
        options_into(a, b, c, bias, alpha, beta, act) -> bool: c = act(alpha a @ b + beta c +
        bias), True; or nothing written, False
        trans_a_into(a, b, c, beta) -> bool: c = a.T @ b + beta c for beta 0 or 1 (a: K x M), the
        dense layer's weight gradient, A read transposed in place (small products, and those
        of K <= DIRECT_T_K and M*N <= DIRECT_T_MN); or nothing written, False
        serial_into(a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles) -> bool: the
        same for products that are not small, through the packed serial driver (gemm_serial)
        with the caller's block table and buffers
        a: (M, K), b: (K, N), c: (M, N), C-contiguous, aligned, writeable 2-D arrays of one
        float dtype, bias (N,) or (0,) likewise, M*N*K <= SMALL_MNK and K <= SMALL_K; the
        generated small_into does the work (no packing of full panels, no threads); for
        serial_into the product is not small and the generated serial_into packs.
Why     At n <= 64 a product costs 1-7 us and Python's checks and Numba's dispatch are a good
        part of the call (measured: ~1.1 us of checks in fastnn.matmul's general fast path).
        At 128^3 the packed product takes ~55-70 us and fastnn.matmul's general path added
        ~10-15 us of Python (operand views, overlap checks, block sizes, buffers).
        Here the checks are Numba's typing: each argument-type combination compiles once, to
        the kernel for the types above and to a constant False / None for any other (other
        dtypes, layouts, ranks, read-only arrays), which sends fastnn.matmul down its general
        path (where errors are raised). Numba 0.68 types an unaligned array as aligned (it is
        computed in place, correctly on x86) and its dispatch fingerprint ignores byte order,
        so the caller checks that the operands are ndarrays of one dtype object (`is`).
SLP     The kernel must be compiled inside settings.slp_scope(); fastnn.matmul calls these
        only for dtypes it has compiled that way (gemm._FAST, gemm._SERIAL). The types it compiles there are
        the only ones that reach the kernel: any other compiles (outside the scope) to the
        constant decline, so no kernel is ever compiled without SLP here.
Oracle  tests/test_matmul.py (every small shape and the fallbacks against NumPy).
Bench   fastnn bench matmul   (the n <= 64 and 128^3 rows)
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from . import module_for


def _fits(*arrays) -> bool:
    """True for C-contiguous 2-D float32/float64 arrays of one dtype, all writeable."""
    return (all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" and x.mutable and x.aligned
                for x in arrays)
            and arrays[0].dtype in (types.float32, types.float64)
            and all(x.dtype == arrays[0].dtype for x in arrays))


def _fits_bias(bias, a) -> bool:
    """True for a C-contiguous, aligned, writeable 1-D array of a's dtype."""
    return (isinstance(bias, types.Array) and bias.ndim == 1 and bias.layout == "C" and bias.mutable
            and bias.aligned and bias.dtype == a.dtype)


def _into(a, b, c):
    """Typed by the overload below."""


def _options(a, b, c, bias, alpha, beta, act):
    """Typed by the overload below."""


def _serial(a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles):
    """Typed by the overload below."""


def _trans_a(a, b, c, beta):
    """Typed by the overload below."""


@overload(_into)
def _into_typed(a, b, c):
    if not _fits(a, b, c):
        return lambda a, b, c: False
    kernel = module_for(np.dtype(str(c.dtype))).small_into
    return lambda a, b, c: kernel(a, b, c, np.empty(0, c.dtype), 1.0, 0.0, 0)


@overload(_options)
def _options_typed(a, b, c, bias, alpha, beta, act):
    if not (_fits(a, b, c) and _fits_bias(bias, a) and isinstance(alpha, types.Float)
            and isinstance(beta, types.Float) and isinstance(act, types.Integer)):
        return lambda a, b, c, bias, alpha, beta, act: False
    kernel = module_for(np.dtype(str(c.dtype))).small_into
    return lambda a, b, c, bias, alpha, beta, act: kernel(a, b, c, bias, alpha, beta, act)


@overload(_serial)
def _serial_typed(a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles):
    if not (_fits(a, b, c) and _fits_bias(bias, a) and isinstance(alpha, types.Float)
            and isinstance(beta, types.Float) and all(isinstance(x, types.Integer) for x in (act, mcb, kcb, ncb))
            and _fits(ap, tiles, tiles) and ap.dtype == a.dtype and _fits_bias(bp, a)):
        return lambda a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles: False
    kernel = module_for(np.dtype(str(c.dtype))).serial_into
    return lambda a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles: kernel(
        a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles)


@overload(_trans_a)
def _trans_a_typed(a, b, c, beta):
    if not (_fits(a, b, c) and isinstance(beta, types.Float)):
        return lambda a, b, c, beta: False
    kernel = module_for(np.dtype(str(c.dtype))).small_t_into
    return lambda a, b, c, beta: kernel(a, b, c, beta)


@njit(cache=True)
def plain_into(a, b, c):
    """c = a @ b for small row-major operands; False (nothing written) otherwise."""
    return _into(a, b, c)


@njit(cache=True)
def options_into(a, b, c, bias, alpha, beta, act):
    """c = act(alpha a @ b + beta c + bias) for small row-major operands; False (nothing
    written) otherwise (small_into's checks, and the types above)."""
    return _options(a, b, c, bias, alpha, beta, act)


@njit(cache=True)
def trans_a_into(a, b, c, beta):
    """c = a.T @ b + beta c (beta 0 or 1) for row-major a (K x M), b (K x N), c (M x N), small or
    of K <= DIRECT_T_K and M*N <= DIRECT_T_MN, A read transposed in place; False (nothing
    written) otherwise (small_t_into's checks, and the types above)."""
    return _trans_a(a, b, c, beta)


@njit(cache=True, nogil=True)        # other Python threads run while it multiplies, as gemm_serial let them
def serial_into(a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles):
    """c = act(alpha a @ b + beta c + bias) for row-major operands through the packed serial
    driver with blocks of at most mcb x kcb x ncb and its buffers ap (T, MC*KC), bp (NC*KC,),
    tiles (T, MR*NR); False (nothing written) otherwise (serial_into's checks, and the types
    above)."""
    return _serial(a, b, c, bias, alpha, beta, act, mcb, kcb, ncb, ap, bp, tiles)
