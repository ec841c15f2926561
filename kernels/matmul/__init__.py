"""Cache- and register-blocked GEMM (GotoBLAS/BLIS structure) in Numba, fp32 and fp64.

- ``generate.py`` / ``template.py``  write ``gemm_<MR>x<NR>.py``: the micro-kernels, packing,
  macro-kernel, direct small-size path, and the serial/parallel drivers for one register tile.
- ``blocks.py``   the per-machine block table (MR, NR, MC, KC, NC): analytic defaults from the
  detected caches, or the table ``fastnn tune`` wrote.
- ``settings.py`` the Numba settings the fast path needs (SLP vectorizer scoped to these
  kernels, full-width vectors on AVX-512) and the assembly check behind ``fastnn info``.

The public entry is ``fastnn.matmul`` (fastnn/matmul.py).
"""
