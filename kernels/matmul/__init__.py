"""Cache- and register-blocked GEMM (GotoBLAS/BLIS structure) in Numba, fp32 and fp64.

- ``generate.py`` / ``template.py``  write ``gemm_<MR>x<NR>.py``: the micro-kernels, packing,
  macro-kernel, direct small-size path, and the serial/parallel drivers for one register tile.
- ``blocks.py``   the per-machine block table (MR, NR, MC, KC, NC): analytic defaults from the
  detected caches, or the table ``fastnn tune`` wrote.
- ``settings.py`` the Numba settings the fast path needs (SLP vectorizer scoped to these
  kernels, full-width vectors on AVX-512) and the assembly check behind ``fastnn info``.
- ``fast.py``     the entries for small plain products, typed by Numba.

The public entry is ``fastnn.matmul`` (fastnn/gemm.py).
"""
import importlib

import numpy as np

from .blocks import blocks_for

_modules: dict = {}


def module_for(dtype):
    """The generated gemm_<MR>x<NR> module of this dtype's register tile (blocks.blocks_for);
    imported once (importlib's lookup costs ~1 us, which a medium product notices)."""
    b = blocks_for(np.dtype(dtype).char)
    return module_of(b.mr, b.nr)


def module_of(mr: int, nr: int):
    """The generated module gemm_<mr>x<nr> (one of generate.SHAPES)."""
    mod = _modules.get((mr, nr))
    if mod is None:
        mod = _modules[(mr, nr)] = importlib.import_module(f"fastnn.kernels.matmul.gemm_{mr}x{nr}")
    return mod
