"""``fastnn tune``: time the GEMM over a grid of cache blocks and store the best per dtype.

The register tile (MR x NR) is fixed by the SIMD width; KC and MC are swept around the
analytic defaults of fastnn.kernels.matmul.blocks (NC stays analytic: with a 32 MB L3 it
rarely binds at layer sizes), one thread, median of ``repeats`` timed runs per point, on a
square product of size ``n``. The winners go to ``blocks.table_path()`` and every later
process reads them. The sweep itself is returned for the benchmark's heatmap.
"""
from __future__ import annotations

import time

import numpy as np

from .files import check_writable
from .kernels.matmul import blocks

#: the KC values and the multiples of the analytic MC that tune sweeps
KCS = (96, 128, 192, 256, 384, 512)
MC_FACTORS = (0.25, 0.5, 1, 1.5, 2)
#: the product sizes tune times: below the largest KC, every larger KC runs the same single
#: K block and the winner is noise; above MAX_N the operands alone take gigabytes
MIN_N, MAX_N = max(KCS), 8192


def sweep(dtype, n: int = 1024, repeats: int = 3, kcs=KCS, mc_factors=MC_FACTORS, progress=None) -> list[dict]:
    """GFLOP/s of an n x n x n product for each (KC, MC) around the analytic defaults."""
    from . import gemm
    from .kernels.matmul.settings import slp_scope

    dt = np.dtype(dtype)
    base = blocks.analytic(dt)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dt)
    b = rng.standard_normal((n, n)).astype(dt)
    c = np.empty((n, n), dt)
    mod = gemm.kernel_module(dt)
    one, zero, empty = dt.type(1), dt.type(0), np.empty(0, dt)
    rows = []
    for kc in kcs:
        for f in mc_factors:
            mc = max(base.mr, int(round(base.mc * f / base.mr)) * base.mr)
            blk = blocks.Blocks(base.mr, base.nr, mc, kc, base.nc)
            ap, bp, tiles = gemm._buffers(dt, 1, blk)
            args = (n, n, n, one, a.reshape(-1), n, 1, b.reshape(-1), n, 1, zero, c.reshape(-1), n, empty, 0,
                    mc, kc, base.nc, 1, 1, ap, bp, tiles)
            with slp_scope():
                mod.gemm_serial(*args)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                mod.gemm_serial(*args)
                times.append(time.perf_counter() - t)
            rows.append({"dtype": dt.name, "n": n, "mr": base.mr, "nr": base.nr, "kc": kc, "mc": mc, "nc": base.nc,
                         "gflops": 2 * n ** 3 / float(np.median(times)) / 1e9})
            if progress is not None:
                progress.update(1)
    return rows


def tune(n: int = 1024, repeats: int = 3, write: bool = True, progress: bool = True) -> tuple[dict, list[dict]]:
    """Sweep fp32 and fp64, write the table (unless ``write`` is False); returns (table, sweep).
    Bad arguments and a table folder that cannot be written fail before the sweep starts."""
    from tqdm import tqdm

    from . import gemm

    if type(n) is not int or not MIN_N <= n <= MAX_N or type(repeats) is not int or repeats < 1:
        raise ValueError(f"tune: expected an int n in [{MIN_N}, {MAX_N}] (a smaller product cannot tell the KC "
                         f"candidates up to {max(KCS)} apart) and an int repeats >= 1, got n={n!r}, repeats={repeats!r}")
    if write:
        check_writable(blocks.table_path().parent, "the block table", "; set FASTNN_CACHE_DIR to a writable folder")

    table, everything = {}, []
    try:
        with tqdm(total=2 * len(KCS) * len(MC_FACTORS), desc="fastnn tune", disable=not progress) as bar:
            for dt in (np.float32, np.float64):
                rows = sweep(dt, n, repeats, progress=bar)
                best = max(rows, key=lambda r: r["gflops"])
                table[np.dtype(dt).name] = blocks.Blocks(best["mr"], best["nr"], best["mc"], best["kc"], best["nc"],
                                                         "tuned")
                everything += rows
    finally:
        gemm.free_packing_buffers()     # every candidate's: the table's are made again on first use
    if write:
        blocks.save(table)
    return table, everything
