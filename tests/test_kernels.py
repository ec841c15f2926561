"""Kernels against plain NumPy: chunking, reductions, fused bias + activation."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastnn.kernels import activation, reduce
from fastnn.kernels.activation import ACTIVATIONS
from fastnn.kernels.chunks import make_chunks

ACT_REF = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
           None: lambda x: x}
DACT_REF = {"relu": lambda y: (y > 0).astype(y.dtype), "tanh": lambda y: 1 - y * y,
            "sigmoid": lambda y: y * (1 - y), None: lambda y: np.ones_like(y)}


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 200), max_size=12), chunk=st.sampled_from([16, 32, 64]),
       groups=st.lists(st.integers(0, 2), min_size=12, max_size=12))
def test_chunks_cover_each_element_once_in_its_group(sizes, chunk, groups):
    segments, start = [], 0
    for s, gid in zip(sizes, groups):
        segments.append((start, start + s, gid))
        start += s
    starts, stops, gids = make_chunks(segments, chunk)
    owner = np.full(start, -1)
    for a, b, gid in zip(starts, stops, gids):
        assert 0 < b - a <= chunk
        assert (owner[a:b] == -1).all()
        owner[a:b] = gid
    want = np.concatenate([np.full(s, gid) for s, gid in zip(sizes, groups)] + [np.empty(0, int)])
    np.testing.assert_array_equal(owner, want)


def test_chunk_size_must_be_a_cache_line_multiple():
    with pytest.raises(ValueError, match="multiple of 16"):
        make_chunks([(0, 10, 0)], chunk=10)


@pytest.mark.parametrize("variant", ["cpu", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 100_003])
def test_sumsq(dtype, n, variant):
    kernel = getattr(reduce, f"sumsq_{variant}")
    g = np.random.default_rng(0).standard_normal(n).astype(dtype)
    starts, stops, _ = make_chunks([(0, n, 0)], 1024)
    sumsq = np.empty(len(starts))
    kernel(g, starts, stops, sumsq)
    assert sumsq.sum() == pytest.approx(np.sum(g.astype(np.float64) ** 2), rel=1e-12)
    if n > 10:
        g[3] = np.nan
        kernel(g, starts, stops, sumsq)
        assert np.isnan(sumsq.sum())
        g[3], g[9] = 1.0, -np.inf
        kernel(g, starts, stops, sumsq)
        assert not np.isfinite(sumsq.sum())


@pytest.mark.parametrize("variant", ["cpu", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 33), (64, 7)])
def test_bias_activation_forward_and_backward(dtype, act, shape, variant):
    bias_act_forward_cpu = getattr(activation, f"bias_act_forward_{variant}")
    act_backward_cpu = getattr(activation, f"act_backward_{variant}")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    y = x.copy()
    bias_act_forward_cpu(y, b, ACTIVATIONS[act])
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, ACT_REF[act](x + b), rtol=tol, atol=tol)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = np.empty_like(dy)
    act_backward_cpu(dy, y, ACTIVATIONS[act], dx)
    np.testing.assert_allclose(dx, dy * DACT_REF[act](y), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 3), (43264, 16), (5, 0)])
def test_add_column_sums(dtype, rows, cols):
    from fastnn.kernels.reduce import add_column_sums

    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, cols)).astype(dtype)
    out = rng.standard_normal(cols).astype(dtype)
    want = out.astype(np.float64) + a.astype(np.float64).sum(axis=0)
    add_column_sums(a, out)
    atol = (1e-4 if dtype == np.float32 else 1e-12) * max(1.0, np.sqrt(rows))
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("into", ["all", "one", "one+clear"])
def test_sum_rows_sums_in_rank_order_inside_the_range_only(dtype, ranks, into):
    from fastnn.kernels.shared_sum import CHUNK, sum_rows

    n = 2 * CHUNK + 37
    rng = np.random.default_rng(ranks)
    rows = rng.standard_normal((ranks, n)).astype(dtype)
    before = rows.copy()
    lo, hi = 5, CHUNK + 101
    first, last = (0, ranks) if into == "all" else (ranks - 1, ranks)
    clear = into.endswith("clear")
    sum_rows(rows, lo, hi, first, last, clear)
    want = before[0, lo:hi].copy()
    for k in range(1, ranks):
        want += before[k, lo:hi]  # the same adds in the same order: bitwise equal
    for k in range(ranks):
        other = np.zeros_like(want) if clear else before[k, lo:hi]
        np.testing.assert_array_equal(rows[k, lo:hi], want if first <= k < last else other)
    np.testing.assert_array_equal(rows[:, :lo], before[:, :lo])
    np.testing.assert_array_equal(rows[:, hi:], before[:, hi:])
    sum_rows(rows, 7, 7, 0, ranks, True)  # empty share
    np.testing.assert_array_equal(rows[:, :lo], before[:, :lo])


def test_prefetch_emits_a_prefetch_and_changes_nothing():
    from numba import njit

    from fastnn.kernels.prefetch import prefetch

    @njit
    def touch(a):
        for i in range(0, a.size, 16):
            prefetch(a, i)
        return a.sum()

    a = np.arange(100, dtype=np.float32)
    before = a.copy()
    assert touch(a) == before.sum()
    np.testing.assert_array_equal(a, before)
    asm = touch.inspect_asm(touch.signatures[0])
    if platform.machine() in ("x86_64", "AMD64"):
        assert "prefetch" in asm


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_copy_run_against_numpy_slices(dtype):
    from numba import njit, uint64

    from fastnn.kernels.copy import copy_run

    @njit
    def run(src, s0, dst, d0, n):
        copy_run(src, s0, dst, d0, n)

    @njit
    def run16(src, s0, dst, d0):            # a constant count: expanded inline
        copy_run(src, uint64(s0), dst, d0, 16)

    src = np.arange(100, dtype=dtype)
    for s0, d0, n in [(0, 0, 0), (3, 5, 1), (7, 2, 16), (1, 0, 99), (40, 60, 37)]:
        dst = np.full(120, -1, dtype)
        run(src, s0, dst, d0, n)
        np.testing.assert_array_equal(dst[d0:d0 + n], src[s0:s0 + n])
        assert (dst[:d0] == -1).all() and (dst[d0 + n:] == -1).all()
    dst = np.full(40, -1, dtype)
    run16(src, 77, dst, 9)
    np.testing.assert_array_equal(dst[9:25], src[77:93])
    assert (dst[:9] == -1).all() and (dst[25:] == -1).all()
    assert "memcpy" in run.inspect_llvm(run.signatures[0])
    dst = np.full(10, -1, dtype)
    run(src, 0, dst, 0, -3)                 # a negative count copies nothing
    assert (dst == -1).all()
    from numba.core.errors import TypingError

    readonly = np.zeros(10, dtype)
    readonly.flags.writeable = False
    for s, d in [(src[::2], dst), (src, np.zeros(20, dtype)[::2]), (src, readonly)]:
        with pytest.raises(TypingError, match="contiguous 1-D arrays and a writeable destination"):
            run(s, 0, d, 0, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block_against_numpy(dtype):
    from numba import njit

    from fastnn.kernels.transpose import lanes, transpose_block

    @njit
    def run(src, s0, lds, rows, dst, d0, ldd):
        transpose_block(src, s0, lds, rows, dst, d0, ldd)

    n = lanes(np.dtype(dtype).itemsize)
    src = np.arange(n * 21 + 5, dtype=dtype)
    dst = np.full(n * 30 + 7, -1, dtype)
    run(src, 3, 21, n, dst, 5, 30)
    s = np.lib.stride_tricks.as_strided(src[3:], (n, n), (21 * src.itemsize, src.itemsize))
    d = np.lib.stride_tricks.as_strided(dst[5:], (n, n), (30 * dst.itemsize, dst.itemsize))
    np.testing.assert_array_equal(d, s.T)
    outside = np.ones(dst.size, bool)
    for j in range(n):
        outside[5 + j * 30:5 + j * 30 + n] = False
    assert (dst[outside] == -1).all()
    # fewer rows than lanes, packed densely (row stride = rows): the block, then junk only in
    # the rows - n elements after it; the source past the last row is never needed
    for rows in range(1, n):
        src = np.arange(rows * 9, dtype=dtype)
        dst = np.full(n * rows + n + 3, -1, dtype)
        run(src, 0, 9, rows, dst, 2, rows)
        np.testing.assert_array_equal(dst[2:2 + n * rows].reshape(n, rows), src.reshape(rows, 9)[:, :n].T)
        assert (dst[:2] == -1).all() and (dst[2 + n * rows + n - rows:] == -1).all()


WORKQUEUE_THREADS = """
import threading
import numpy as np
import fastnn as fnn
from fastnn.kernels.parallel import parallel_safe_here

rng = np.random.default_rng(0)
a = rng.standard_normal((384, 384)).astype(np.float32)
ab = rng.standard_normal((4, 96, 384)).astype(np.float32)
bb = rng.standard_normal((4, 384, 384)).astype(np.float32)
x = rng.standard_normal((64, 16, 16, 16)).astype(np.float32)
ref = (fnn.matmul(a, a), fnn.batched_matmul(ab, bb), fnn.MaxPool2D(2)(x))
main_safe = parallel_safe_here()
bad, safe = [], []

def run(seed):
    safe.append(parallel_safe_here())
    model = fnn.Sequential(fnn.Dense(384, 512, activation="relu"), fnn.Dense(512, 10))
    opt = fnn.optim.Adam(model, lr=1e-3)
    for _ in range(20):
        got = (fnn.matmul(a, a), fnn.batched_matmul(ab, bb), fnn.MaxPool2D(2)(x))
        bad.extend(i for i, (g, r) in enumerate(zip(got, ref)) if not np.array_equal(g, r))
        model.backward(np.ones((384, 10), np.float32) * model(a)); opt.step(); opt.zero_grad()

threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
for t in threads: t.start()
run(3)
for t in threads: t.join()
print(main_safe, sorted(set(safe)), len(bad))
"""


def test_threads_share_numba_workqueue_layer_without_ending_the_process():
    """Numba's workqueue layer (where neither OpenMP nor TBB loads) ends the process when two
    threads launch parallel kernels at once ("Concurrent access has been detected"); there only
    the main thread runs them in parallel, and results stay those of one thread."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    env.update(NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", WORKQUEUE_THREADS], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["True", "[False,", "True]", "0"], (r.stdout, r.stderr[-2000:])
