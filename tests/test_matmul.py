"""fastnn.matmul against NumPy: shapes that break tilings, transposes, alpha/beta, epilogue,
layouts, threads, block tables; the generated kernel files and their assembly."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastnn
from fastnn import gemm as mm
from fastnn.kernels.matmul import blocks, generate
from fastnn.kernels.matmul import settings as mm_settings
from reference import matmul_ref

DTYPES = [np.float32, np.float64]


def tol(dtype, k):
    return (3e-6 if dtype == np.float32 else 1e-14) * max(1.0, np.sqrt(k)) * 4


def check(got, want, dtype, k):
    """Within a few hundred ulps x sqrt(K) of the largest entry: summation-order error only
    (a dropped K term of these O(1) operands is off by ~1, far outside)."""
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(dtype, k) * scale)


def operands(rng, m, k, n, dtype, trans_a=False, trans_b=False):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


SIZES = [1, 2, 7, 31, 33, 63, 65, 257]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(m, k, n) for m, k, n in zip(SIZES, SIZES[::-1], SIZES[3:] + SIZES[:3])]
                         + [(5, 1, 9), (65, 1, 33), (257, 65, 7), (1, 257, 1), (33, 300, 65), (1, 5000, 1), (2, 4097, 3)])
def test_shapes_against_numpy(dtype, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = operands(rng, m, k, n, dtype)
    check(fastnn.matmul(a, b), matmul_ref(a, b), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,k,n", [(7, 33, 65), (130, 257, 70)])
def test_transposes_alpha_beta(dtype, trans_a, trans_b, m, k, n):
    rng = np.random.default_rng(1)
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    out = c0.copy()
    got = fastnn.matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=-2.0)
    assert got is out
    check(out, matmul_ref(a, b, c0, trans_a, trans_b, alpha=0.5, beta=-2.0), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("m,k,n", [(9, 20, 35), (70, 300, 50)])
def test_fused_bias_activation(dtype, activation, m, k, n):
    rng = np.random.default_rng(2)
    a, b = operands(rng, m, k, n, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    got = fastnn.matmul(a, b, bias=bias, activation=activation)
    check(got, matmul_ref(a, b, bias=bias, activation=activation), dtype, k)


def test_beta_zero_ignores_nan_in_out():
    a, b = np.ones((8, 4), np.float32), np.ones((4, 20), np.float32)
    out = np.full((8, 20), np.nan, np.float32)
    np.testing.assert_array_equal(fastnn.matmul(a, b, out), np.full((8, 20), 4, np.float32))
    a, b = np.ones((300, 200), np.float32), np.ones((200, 90), np.float32)
    out = np.full((300, 90), np.nan, np.float32)
    np.testing.assert_array_equal(fastnn.matmul(a, b, out), np.full((300, 90), 200, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_b_against_its_layout(dtype):
    """pack_b's panels q0..q1-1 of B[p0:p0+kc, c0:c0+nc] (row-major B read through a row stride
    wider than the block, so p0, c0 and rs all matter): bp[q*NR*kc + p*NR + j] = B[p0+p,
    c0+q*NR+j] for j < nc - q*NR, zero past; nothing outside those panels written."""
    blk = blocks.blocks_for(np.dtype(dtype).char)
    mod = mm.kernel_module(np.dtype(dtype))
    NR = blk.nr
    wide = np.arange(40 * 200, dtype=dtype).reshape(40, 200) + 1
    for kc, nc, p0, c0 in [(1, NR, 0, 0), (7, 3 * NR + 5, 2, 5), (9, 5 * NR, 3, 17), (17, NR - 1, 1, 0),
                           (33, 2 * NR, 0, 9)]:
        npan = -(-nc // NR)
        want = np.zeros((npan, kc, NR), dtype)
        for q in range(npan):
            w = min(NR, nc - q * NR)
            want[q, :, :w] = wide[p0:p0 + kc, c0 + q * NR:c0 + q * NR + w]
        for q0, q1 in [(0, npan), (1, npan), (0, npan - 1), (npan // 2, npan)]:
            bp = np.full(npan * NR * kc + 64, -7, dtype)
            mod.pack_b(wide.reshape(-1), 200, 1, p0, c0, q0, q1, nc, kc, bp)
            got = bp[:npan * NR * kc].reshape(npan, kc, NR)
            np.testing.assert_array_equal(got[q0:q1], want[q0:q1], err_msg=f"kc={kc} nc={nc} q={q0}:{q1}")
            assert (got[:q0] == -7).all() and (got[q1:] == -7).all() and (bp[npan * NR * kc:] == -7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_dimensions(dtype):
    z = fastnn.matmul(np.ones((0, 3), dtype), np.ones((3, 4), dtype))
    assert z.shape == (0, 4)
    assert fastnn.matmul(np.ones((3, 5), dtype), np.ones((5, 0), dtype)).shape == (3, 0)
    out = np.full((3, 4), 2, dtype)
    fastnn.matmul(np.ones((3, 0), dtype), np.ones((0, 4), dtype), out, beta=0.5, bias=np.ones(4, dtype))
    np.testing.assert_array_equal(out, np.full((3, 4), 2.0, dtype))
    np.testing.assert_array_equal(fastnn.matmul(np.ones((3, 0), dtype), np.ones((0, 4), dtype)), np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_and_out(dtype):
    rng = np.random.default_rng(3)
    big_a = rng.standard_normal((80, 90)).astype(dtype)
    big_b = rng.standard_normal((100, 60)).astype(dtype)
    a, b = big_a[::2, 3:70:3], big_b[1:47:2, ::2]          # strided views, neither C nor F
    out_base = np.zeros((40, 60), dtype)
    out = out_base[:, ::2]
    fastnn.matmul(a, b, out)
    check(out, matmul_ref(a, b), dtype, a.shape[1])
    assert not out_base[:, 1::2].any()
    af = np.asfortranarray(rng.standard_normal((150, 140)).astype(dtype))
    bf = np.asfortranarray(rng.standard_normal((140, 130)).astype(dtype))
    check(fastnn.matmul(af, bf), matmul_ref(af, bf), dtype, 140)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(20, 30, 10), (150, 140, 130)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_column_blocks_of_wider_arrays(dtype, m, k, n, trans_a, trans_b):
    """Column blocks (as BlockDiagonalDense slices them) are read and written in place."""
    rng = np.random.default_rng(m + k)
    wide_a = rng.standard_normal((k, m + 9) if trans_a else (m, k + 9)).astype(dtype)
    wide_b = rng.standard_normal((n, k + 5) if trans_b else (k, n + 5)).astype(dtype)
    a = wide_a[:, 4:4 + m] if trans_a else wide_a[:, 4:4 + k]
    b = wide_b[:, 2:2 + k] if trans_b else wide_b[:, 2:2 + n]
    out_base = rng.standard_normal((m, n + 7)).astype(dtype)
    before = out_base.copy()
    out = out_base[:, 3:3 + n]
    fastnn.matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, beta=0.5)
    want = matmul_ref(a.T if trans_a else a, b.T if trans_b else b, before[:, 3:3 + n], beta=0.5)
    check(out, want, dtype, k)
    np.testing.assert_array_equal(out_base[:, :3], before[:, :3])
    np.testing.assert_array_equal(out_base[:, 3 + n:], before[:, 3 + n:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_product_by_random_vector(dtype):
    rng = np.random.default_rng(4)
    m, k, n = 700, 600, 530
    a, b = operands(rng, m, k, n, dtype)
    c = fastnn.matmul(a, b)
    v = rng.standard_normal(n)
    want = a.astype(np.float64) @ (b.astype(np.float64) @ v)
    # each entry of c is off by ~tol * max|c|; c @ v sums n of them with random signs
    np.testing.assert_allclose(c @ v, want, rtol=0, atol=tol(dtype, k) * np.abs(c).max() * np.sqrt(n))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m, k, n", [(200, 150, 170), (128, 1024, 300)])     # 4 row blocks; 3: columns split
def test_thread_counts_agree(threads, m, k, n):
    rng = np.random.default_rng(5)
    a, b = operands(rng, m, k, n, np.float64)
    bias = rng.standard_normal(n)
    before = numba.get_num_threads()
    got = fastnn.matmul(a, b, bias=bias, activation="relu", threads=threads)
    check(got, matmul_ref(a, b, bias=bias, activation="relu"), np.float64, k)
    assert numba.get_num_threads() == before


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40),
       mcb=st.integers(1, 5), kc=st.integers(1, 17), ncb=st.integers(1, 4), nsplit=st.integers(1, 3),
       bsplit=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), first_beta=st.sampled_from([0.0, 1.5]))
def test_random_shapes_and_block_tables(m, k, n, mcb, kc, ncb, nsplit, bsplit, dtype, first_beta):
    """The packed driver over random block sizes (multiples of MR and NR, as the table stores)."""
    rng = np.random.default_rng(m * 7 + k * 11 + n)
    blk = blocks.blocks_for(np.dtype(dtype).char)
    mod = mm.kernel_module(dtype)
    a, b = operands(rng, m, k, n, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    c = c0.copy()
    mc, nc = mcb * blk.mr, ncb * blk.nr
    ap = np.zeros((1, mc * kc), dtype)
    bp = np.zeros(nc * kc, dtype)
    tiles = np.zeros((1, blk.mr * blk.nr), dtype)
    t = np.dtype(dtype).type
    with mm_settings.slp_scope():
        mod.gemm_serial(m, n, k, t(1.0), a.reshape(-1), k, 1, b.reshape(-1), n, 1, t(first_beta), c.reshape(-1), n,
                        np.empty(0, dtype), 0, mc, kc, nc, nsplit, bsplit, ap, bp, tiles)
    check(c, matmul_ref(a, b, c0, beta=first_beta), dtype, k)


@pytest.mark.parametrize("kw", [{}, {"alpha": 2.0}, {"bias": np.ones(10**6, np.float32)}])
def test_mismatched_inner_dimensions_are_named_before_any_output_is_made(kw):
    """The fast and serial paths made the (M, N) output before the kernel compared the inner
    dimensions: a mismatch whose output could not fit raised NumPy's MemoryError (3.6 TiB)."""
    fastnn.matmul(np.ones((8, 8), np.float32), np.ones((8, 8), np.float32), **{k: v[:8] if k == "bias" else v
                                                                              for k, v in kw.items()})
    a, b = np.ones((10**6, 2), np.float32), np.ones((3, 10**6), np.float32)
    with pytest.raises(ValueError, match=r"inner dimensions differ: op\(a\) is 1000000x2, op\(b\) is 3x1000000"):
        fastnn.matmul(a, b, **kw)


def test_errors_name_what_was_expected():
    f32 = np.ones((3, 4), np.float32)
    fastnn.matmul(f32, f32.T)              # compiles the small-product fast path: errors must pass it
    with pytest.raises(ValueError, match="inner dimensions"):
        fastnn.matmul(f32, f32)
    for kw in ({"trans_a": True}, {"trans_b": True}, {"trans_a": True, "activation": "relu"}):
        ok = fastnn.matmul(f32.T if "trans_a" in kw else f32, f32 if "trans_b" in kw else f32.T.copy(), **kw)
        assert ok.shape == (3, 3)           # compiles the transposed entries first
        with pytest.raises(ValueError, match=f"op\\(a\\) is .*trans_a={'trans_a' in kw}, trans_b={'trans_b' in kw}"):
            fastnn.matmul(f32, np.ones((5, 6), np.float32), **kw)
    with pytest.raises(TypeError, match="float32 or two float64"):
        fastnn.matmul(f32, np.ones((4, 2)))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fastnn.matmul([[1.0]], f32)
    with pytest.raises(ValueError, match="2-D"):
        fastnn.matmul(np.ones(4, np.float32), f32)
    with pytest.raises(ValueError, match="bias"):
        fastnn.matmul(f32, f32.T, bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="activation"):
        fastnn.matmul(f32, f32.T, activation="gelu")
    with pytest.raises(ValueError, match="out must be"):
        fastnn.matmul(f32, f32.T, np.ones((3, 3)))
    with pytest.raises(ValueError, match="beta"):
        fastnn.matmul(f32, f32.T, beta=1.0)
    with pytest.raises(ValueError, match="out must be"):
        fastnn.matmul(f32, f32.T, np.ones((3, 4), np.float32))
    frozen = np.ones((3, 3), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastnn.matmul(f32, f32.T, frozen)
    np.testing.assert_array_equal(frozen, 1)
    for out in (np.full((3, 3, 1), -7, np.float32), np.full(9, -7, np.float32)):   # the warm fast path too
        with pytest.raises(ValueError, match=r"out must be a float32 array of shape \(3, 3\)"):
            fastnn.matmul(f32, f32.T, out, alpha=2.0)
        assert np.all(out == -7)
    for bias in (np.ones((3, 1), np.float32), np.ones((1, 3), np.float32), np.float32(1)):
        with pytest.raises(ValueError, match=r"bias must be a float32 array of shape \(3,\)"):
            fastnn.matmul(f32, f32.T, bias=bias)
    with pytest.raises(TypeError, match="numpy.ndarray operands, got matrix"), pytest.warns(PendingDeprecationWarning):
        fastnn.matmul(np.matrix(f32), f32.T)


def test_batched_errors_name_what_was_expected():
    a = np.ones((3, 4, 5), np.float32)
    frozen = np.zeros((3, 4, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="batched_matmul: out is read-only"):
        fastnn.batched_matmul(a, a, frozen, trans_b=True)
    for g in (0, 3):
        with pytest.raises(ValueError, match="batched_matmul: activation must be"):
            fastnn.batched_matmul(a[:g], a[:g], trans_b=True, activation="gelu")
    with pytest.raises(TypeError, match="batched_matmul: expected numpy.ndarray operands, got matrix and ndarray"), \
            pytest.warns(PendingDeprecationWarning):
        fastnn.batched_matmul(np.matrix(a[0]), a, trans_b=True)
    with pytest.raises(TypeError, match="batched_matmul: expected numpy.ndarray operands, got ndarray and list"):
        fastnn.batched_matmul(a, a.tolist())            # as matmul refuses a list (it said "must be a 3-D" array)
    with pytest.raises(ValueError, match=r"batched_matmul: b must be a 3-D numpy array \(groups, rows, cols\), got "
                                         r"shape \(4, 5\)"):
        fastnn.batched_matmul(a, a[0])
    for name in ("alpha", "beta"):                      # float() raised a bare OverflowError
        for f in (fastnn.matmul, fastnn.batched_matmul):
            with pytest.raises(ValueError, match=f"{name} must be a real number a float holds, got an int of 1329"):
                f(a, a, np.zeros_like(a), **{name: -10 ** 400})
    f64 = a.astype(np.float64)
    assert fastnn.batched_matmul(f64, f64, trans_b=True, alpha=2 ** 1000)[0, 0, 0] == 5 * 2.0 ** 1000   # one it holds


def test_a_byte_swapped_out_is_written_as_numpy_writes_it():
    rng = np.random.default_rng(0)
    for m, k, n in ((7, 5, 2), (200, 300, 100)):                  # the direct and the packed paths
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        out = np.ones((m, n), ">f8")
        assert fastnn.matmul(a, b, out, beta=0.5) is out and out.dtype == ">f8"
        np.testing.assert_allclose(out, a @ b + 0.5, rtol=1e-12, atol=1e-12)
    out = np.ones((2, 7, 2), ">f8")
    ab = rng.standard_normal((2, 7, 5)), rng.standard_normal((2, 5, 2))
    fastnn.batched_matmul(*ab, out, beta=1.0)
    np.testing.assert_allclose(out, np.matmul(*ab) + 1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [512, 4096])
def test_the_direct_path_is_as_accurate_as_blas_at_large_k(k):
    """Small M, N with long K: the error stays within a small factor of OpenBLAS's (the direct
    kernel's one running sum over all of K was about 10x worse at K = 4096; it now sums K in
    runs of SMALL_K and adds each run's tile into C, as the packed path adds its K blocks)."""
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(5):
        a, b = rng.random((6, k), np.float32), rng.random((k, 16), np.float32)
        exact = a.astype(np.float64) @ b
        errs.append([np.max(np.abs(x - exact) / exact) for x in (fastnn.matmul(a, b), a @ b)])
    ours, blas = np.median(errs, axis=0)
    assert ours <= 3 * blas, (ours, blas)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, extra_cols", [(2, -3), (1, 2), (0, 0)])
@pytest.mark.parametrize("fused", [False, True])
def test_the_direct_path_over_k_runs_and_remainders(dtype, rows, extra_cols, fused):
    """gemm_small with K over several SMALL_K runs (each run's tile added into C), rest rows,
    and last columns through the narrow tile (at most NR/2 of them) or the NR-wide one."""
    from fastnn.kernels.matmul.blocks import SMALL_K

    blk = blocks.blocks_for(np.dtype(dtype).char)
    m = 2 * blk.mr + rows + (rows > 0)
    n = blk.nr + blk.nr // 2 + extra_cols if extra_cols else 2 * blk.nr
    k = 2 * SMALL_K + 5
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    want = matmul_ref(a, b)
    out = c0.copy()
    if fused:
        fastnn.matmul(a, b, out, alpha=0.5, beta=-1.5, bias=bias, activation="relu", threads=1)
        want = np.maximum(0.5 * want - 1.5 * c0 + bias, 0)
    else:
        fastnn.matmul(a, b, out, threads=1)
    check(out, want, dtype, k)


def test_generated_files_match_generator():
    for mr, nr in generate.SHAPES:
        assert generate.path_for(mr, nr).read_text() == generate.module_source(mr, nr), (
            f"{generate.path_for(mr, nr).name} is stale: run python -m fastnn.kernels.matmul.generate")


def test_block_defaults_from_caches():
    b = blocks.analytic(np.float32, simd_bits=256, caches={"L1d": "32K", "L2": "512K", "L3": "32768K"})
    assert (b.mr, b.nr, b.kc, b.mc) == (6, 16, 512, 126) and b.nc % 16 == 0
    assert b.mc * b.kc * 4 <= 256 << 10
    b = blocks.analytic(np.float64, simd_bits=512, caches={"L1d": "48K", "L2": "2048K", "L3": "300M"})
    assert (b.mr, b.nr, b.kc) == (8, 16, 384) and b.kc * b.nr * 8 <= 48 << 10 and b.mc * b.kc * 8 <= 1 << 20


def test_slp_setting_is_restored_for_user_code():
    before = numba.config.SLP_VECTORIZE
    with mm_settings.slp_scope():
        assert numba.config.SLP_VECTORIZE == 1
    assert numba.config.SLP_VECTORIZE == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_micro_kernel_assembly_full_width_fmas_no_spills(dtype):
    from fastnn.sysinfo import jit_features, simd_width_bits

    bits = simd_width_bits()
    if bits < 256 or "+fma" not in jit_features():
        pytest.skip(f"the assembly check is for the AVX2/AVX-512 FMA micro-kernels; this CPU has {bits}-bit vectors"
                    f"{'' if '+fma' in jit_features() else ' and no FMA'}")
    r = mm_settings.check_micro_kernel(mm.kernel_module(dtype), dtype)
    reg = "zmm_fma" if mm_settings.wide_vectors() else "ymm_fma"
    blk = blocks.blocks_for(np.dtype(dtype).char)
    lanes = (512 if reg == "zmm_fma" else 256) // 8 // np.dtype(dtype).itemsize
    assert r[reg] >= blk.mr * blk.nr // lanes, r
    assert r["spills"] == 0, r


def test_import_applies_the_settings_before_numba_creates_its_code_generator():
    """The first @njit fixes Numba's CPU features for the process; a module that import fastnn
    loaded before the settings ran used to do it first, so on Intel AVX-512 the kernels stayed at
    256 bits and on Zen 4 they were 512-bit while fastnn tiled for 256."""
    import subprocess
    import sys

    code = ("import fastnn, json\nfrom fastnn.kernels.matmul import settings\n"
            "print(json.dumps([settings._STATE['late'], settings.wide_vectors()]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    late, wide = json.loads(r.stdout)
    assert late is False
    if "NUMBA_CPU_FEATURES" not in os.environ:
        import llvmlite.binding as llvm

        assert wide == ("+avx512f" in llvm.get_host_cpu_features().flatten().split(","))


SLP_PROBE = r"""
import json, os, numba, numpy as np, fastnn
from numba.core import event
from numba.core.caching import NullCache
from fastnn import gemm as mm
from fastnn.kernels.matmul import settings

compiled = []                                  # (function, SLP setting as its compilation ended)


class Listener(event.Listener):
    def on_start(self, e):
        pass

    def on_end(self, e):
        fn = e.data["dispatcher"].py_func
        if fn.__module__ == mod.__name__:      # the generated GEMM kernels (not the typed declines)
            compiled.append((fn.__name__, numba.config.SLP_VECTORIZE))


mod = mm.kernel_module(np.dtype(np.float32))
event.register("numba:compile", Listener())
mod.gemm_small._cache = NullCache()            # what follows really compiles (and is not cached)
os.environ["NUMBA_FASTNN_PROBE"] = "1"         # an environment change: Numba's compiler reloads its config
a, b = np.random.rand(64, 96).astype(np.float32), np.random.rand(96, 64).astype(np.float32)
np.testing.assert_allclose(fastnn.matmul(a, b, alpha=2.0), 2 * (a @ b), rtol=1e-5)   # the small path
first = len(compiled)
a.flags.writeable = False                      # read-only operands: another Numba type, never a kernel's
np.testing.assert_allclose(fastnn.matmul(a, b, alpha=2.0), 2 * (a @ b), rtol=1e-5)
b.flags.writeable = False
np.testing.assert_allclose(fastnn.matmul(a, b, np.empty((64, 64), np.float32), bias=np.ones(64, np.float32)[::-1]),
                           a @ b + 1, rtol=1e-5)
read_only = compiled[first:]
os.environ["NUMBA_FASTNN_PROBE"] = "2"
from fastnn.kernels.matmul import fast
for d in (fast.serial_into, mod.serial_into, mod.gemm_serial):
    d._cache = NullCache()                     # the serial packed path and its typed entry, compiled here
c = np.random.rand(128, 128).astype(np.float32)
for _ in range(2):                             # direct, M*N <= DIRECT_MN: the general path (registers the entry),
    np.testing.assert_allclose(fastnn.matmul(c, c), c @ c, rtol=1e-4)       # then the entry
wide, tall = np.random.rand(288, 32).astype(np.float32), np.random.rand(32, 288).astype(np.float32)
np.testing.assert_allclose(fastnn.matmul(wide, tall), wide @ tall, rtol=1e-4)   # the entry's packed path
print(json.dumps({"compiled": compiled, "read_only": read_only, "micro": settings.check_micro_kernel(mod, np.float32)}))
"""


def test_every_kernel_variant_is_compiled_with_slp():
    """Kernels compiled at run time compile with SLP: a read-only operand once compiled its own
    kernel outside the SLP scope (3.5 instead of 71 GFLOP/s at 64x96x64), and now reaches the
    kernels as a writeable alias, compiling none (it compiled 15-25 s of kernels per dtype). A
    NUMBA_* variable changed after import makes Numba's compiler reload its config, which used
    to reset SLP inside the scope (the micro-kernel then compiled to 96 scalar FMAs and 238
    spills)."""
    import subprocess
    import sys

    from fastnn.sysinfo import jit_features, simd_width_bits

    if simd_width_bits() < 256 or "+fma" not in jit_features():
        pytest.skip(f"the SLP check counts vector FMAs, which only AVX2/AVX-512 CPUs with FMA have; this CPU has "
                    f"{simd_width_bits()}-bit vectors{'' if '+fma' in jit_features() else ' and no FMA'} (it runs "
                    "on this project's CI machines)")
    r = subprocess.run([sys.executable, "-c", SLP_PROBE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert all([name, 1] in got["compiled"] for name in ("gemm_small", "serial_into", "gemm_serial")), got
    assert all(slp == 1 for _, slp in got["compiled"]), got
    assert got["read_only"] == [], got
    assert got["micro"]["scalar_fma"] == 0 and got["micro"]["spills"] == 0, got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul_on_column_blocks(dtype, trans_a, trans_b, threads):
    """Groups of column blocks of wider arrays (as BlockDiagonalDense reads them), in place."""
    rng = np.random.default_rng(7)
    G, m, k, n = 3, 37, 70, 40
    wide_a = rng.standard_normal((k, G * m) if trans_a else (m, G * k)).astype(dtype)
    a = wide_a.reshape(wide_a.shape[0], G, -1).transpose(1, 0, 2)
    b = rng.standard_normal((G, n, k) if trans_b else (G, k, n)).astype(dtype)
    wide_out = rng.standard_normal((m, G * n)).astype(dtype)
    c0 = wide_out.reshape(m, G, n).transpose(1, 0, 2).copy()
    out = wide_out.reshape(m, G, n).transpose(1, 0, 2)
    bias = rng.standard_normal((G, n)).astype(dtype)
    got = fastnn.batched_matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=-1.0, bias=bias,
                                activation="relu", threads=threads)
    assert got is out
    for g in range(G):
        check(wide_out[:, g * n:(g + 1) * n], matmul_ref(a[g], b[g], c0[g], trans_a, trans_b, alpha=0.5, beta=-1.0,
                                                         bias=bias[g], activation="relu"), dtype, k)


def test_batched_matmul_errors_and_single_group():
    f32 = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        fastnn.batched_matmul(f32, f32)
    with pytest.raises(ValueError, match="3-D"):
        fastnn.batched_matmul(f32[0], f32[0].T)
    with pytest.raises(ValueError, match="bias"):
        fastnn.batched_matmul(f32, f32, trans_b=True, bias=np.ones(3, np.float32))
    one = np.random.default_rng(0).standard_normal((1, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(fastnn.batched_matmul(one, one, trans_b=True)[0], one[0] @ one[0].T, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 37])
def test_small_products_of_whole_tiles(dtype, k):
    """Whole MR x NR tiles of a plain small product are written straight into C (no tile
    buffer, no work array); with alpha, beta or a bias they go through the tile and the store."""
    blk = blocks.blocks_for(np.dtype(dtype).char)
    m, n = 2 * blk.mr, 2 * blk.nr
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    want = matmul_ref(a, b)
    out = np.full((m, n), np.nan, dtype)
    assert fastnn.matmul(a, b, out) is out
    check(out, want, dtype, k)
    check(fastnn.matmul(a, b), want, dtype, k)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    out = c0.copy()
    fastnn.matmul(a, b, out, alpha=0.5, beta=2.0, bias=bias, activation="relu")
    check(out, np.maximum(0.5 * want + 2.0 * c0 + bias, 0), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_plain_products_of_every_layout_and_the_errors(dtype):
    """The Numba-typed entries for small plain products (kernels/matmul/fast.py) compute only
    C-contiguous, writeable, same-dtype 2-D operands; everything else must still come out
    right (or raise the general path's errors), never half-written."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 9)).astype(dtype)
    b = rng.standard_normal((9, 5)).astype(dtype)
    want = matmul_ref(a, b)
    check(fastnn.matmul(a, b), want, dtype, 9)                       # registers the dtype's fast entries
    ro_a, ro_b = a.copy(), b.copy()
    ro_a.setflags(write=False)
    ro_b.setflags(write=False)
    out = np.full((7, 5), np.nan, dtype)
    for x, y in ((ro_a, ro_b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)), (a[:, :], b[::1])):
        check(fastnn.matmul(x, y), want, dtype, 9)
        out[...] = np.nan
        check(fastnn.matmul(x, y, out), want, dtype, 9)
    strided = np.full((7, 10), np.nan, dtype)[:, ::2]
    assert fastnn.matmul(a, b, strided) is strided
    check(strided, want, dtype, 9)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(TypeError, match="two float32 or two float64"):
        fastnn.matmul(a, b.astype(other))
    with pytest.raises(ValueError, match="out must be"):
        fastnn.matmul(a, b, np.empty((7, 5), other))
    ro_out = np.zeros((7, 5), dtype)
    ro_out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fastnn.matmul(a, b, ro_out)
    assert not ro_out.any()
    with pytest.raises(ValueError, match="inner dimensions"):
        fastnn.matmul(a, b[:8])
    with pytest.raises(ValueError, match="2-D"):
        fastnn.matmul(a[0], b)
    for x, y in ((a, b[:, 0]), (a, b[:, 0].copy()), (a[0], b[None, :, 0])):
        with pytest.raises(ValueError, match="2-D"):
            fastnn.matmul(x, y)
    for bad in (np.int64, object):                                 # Numba: a decline, or no type at all
        with pytest.raises(TypeError, match="two float32 or two float64"):
            fastnn.matmul(a.astype(bad), b.astype(bad))
        with pytest.raises(ValueError, match="out must be"):
            fastnn.matmul(a, b, np.zeros((7, 5), bad))
    with pytest.raises(ValueError, match="bias must be"):          # an empty bias is not "no bias"
        fastnn.matmul(a, b, bias=np.zeros(0, dtype))
    for kw in ({"alpha": "2"}, {"beta": None}, {"alpha": True}, {"alpha": 1j}):
        with pytest.raises(TypeError, match=r"(alpha|beta) must be a real number, got"):
            fastnn.matmul(a, b, np.zeros((7, 5), dtype), **kw)
        with pytest.raises(TypeError, match=r"(alpha|beta) must be a real number, got"):
            fastnn.batched_matmul(a[None], b[None], **kw)
    check(fastnn.matmul(a, b, alpha=np.float32(2), beta=0), 2 * want, dtype, 9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_serial_packed_products_take_the_typed_entry(dtype, monkeypatch):
    """Products past the direct path and below the threads' threshold, row-major and
    writeable, go through kernels/matmul/fast.py's serial_into (no Python driver); anything
    else it declines comes out right, or with the general path's errors."""
    rng = np.random.default_rng(11)
    a, b = operands(rng, 100, 90, 110, dtype)
    bias = rng.standard_normal(110).astype(dtype)
    c0 = rng.standard_normal((100, 110)).astype(dtype)
    check(fastnn.matmul(a, b), matmul_ref(a, b), dtype, 90)          # registers the dtype's entry
    assert np.dtype(dtype) in mm._SERIAL

    def general(*args):
        raise AssertionError("took the general driver")

    monkeypatch.setattr(mm, "_gemm", general)
    check(fastnn.matmul(a, b), matmul_ref(a, b), dtype, 90)
    out = c0.copy()
    assert fastnn.matmul(a, b, out, alpha=0.5, beta=-1.0, bias=bias, activation="relu") is out
    check(out, matmul_ref(a, b, c0, alpha=0.5, beta=-1.0, bias=bias, activation="relu"), dtype, 90)
    monkeypatch.undo()
    ro_a = a.copy()
    ro_a.setflags(write=False)
    for x, y in ((ro_a, b), (a, np.asfortranarray(b)), (a[:, ::-1][:, ::-1], b)):
        check(fastnn.matmul(x, y), matmul_ref(a, b), dtype, 90)
    sq = rng.standard_normal((100, 100)).astype(dtype)
    want = sq @ sq
    fastnn.matmul(sq, sq, out=sq)                                    # out overlaps: declined, temporary
    check(sq, want, dtype, 100)
    for wrong in (bias[:5], bias[:0], bias.astype(np.float16)):      # the entry declines, the general path says
        with pytest.raises(ValueError, match="bias must be"):
            fastnn.matmul(a, b, bias=wrong)
    check(fastnn.matmul(a, b, bias=bias.astype(bias.dtype.newbyteorder())), matmul_ref(a, b, bias=bias), dtype, 90)
    with pytest.raises(ValueError, match="activation must be"):
        fastnn.matmul(a, b, activation="swish")
    ro_out = np.zeros((100, 110), dtype)
    ro_out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fastnn.matmul(a, b, ro_out)
    assert not ro_out.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [8, 40, 100, 300])
def test_out_overlapping_an_operand_gives_numpys_result(dtype, n):
    """x = W x in place (out is an operand), also with beta reading the old out and with the
    bias inside out: computed through a temporary, as np.matmul(a, b, out=a) is."""
    rng = np.random.default_rng(5)
    a, b = operands(rng, n, n, n, dtype)
    want = a @ b
    fastnn.matmul(a, b, out=a)
    check(a, want, dtype, n)
    a, b = operands(rng, n, n, n, dtype)
    want = 0.5 * (a @ b) + 2.0 * b
    fastnn.matmul(a, b, out=b, alpha=0.5, beta=2.0)
    check(b, want, dtype, n)
    a, b = operands(rng, n, n, n, dtype)
    c = rng.standard_normal((n + 1, n)).astype(dtype)
    want = np.maximum(a @ b + c[0], 0)
    fastnn.matmul(a, b, out=c[1:], bias=c[0], activation="relu")
    check(c[1:], want, dtype, n)
    g = rng.standard_normal((3, n, n)).astype(dtype)
    want = g @ g
    fastnn.batched_matmul(g, g, out=g)
    check(g, want, dtype, n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inner_dimension_writes_zeros_whatever_out_held(dtype):
    """K = 0: C = beta C (+ bias, act); beta = 0 does not read C (BLAS), so NaN in it is gone."""
    out = np.full((3, 4), np.nan, dtype)
    np.testing.assert_array_equal(fastnn.matmul(np.ones((3, 0), dtype), np.ones((0, 4), dtype), out), 0)
    got = fastnn.matmul(np.ones((64, 0), dtype), np.ones((0, 64), dtype), bias=np.full(64, -1, dtype),
                        activation="relu")
    np.testing.assert_array_equal(got, np.zeros((64, 64)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(5, 7, 3), (130, 90, 110), (300, 200, 260)])   # small, serial, threaded
def test_alpha_zero_reads_neither_a_nor_b(dtype, m, k, n):
    """As in BLAS: alpha = 0 gives C = beta C (+ bias, act) without reading A or B, so a NaN
    there does not propagate (it did, through 0 * NaN); the shapes are still checked."""
    a = np.full((m, k), np.nan, dtype)
    b = np.full((k, n), np.inf, dtype)
    c0 = np.random.default_rng(0).standard_normal((m, n)).astype(dtype)
    bias = np.linspace(-1, 1, n).astype(dtype)
    for trans in (False, True):
        x, y = (a.T.copy().T, b.T.copy().T) if trans else (a, b)         # Fortran order: the general path
        out = c0.copy()
        assert fastnn.matmul(x, y, out, alpha=0.0, beta=0.5, bias=bias, activation="relu") is out
        np.testing.assert_allclose(out, np.maximum(0.5 * c0 + bias, 0), rtol=1e-6)
        np.testing.assert_array_equal(fastnn.matmul(x, y, alpha=0.0), 0)
    wide = np.full((m, n + 3), 7.0, dtype)                      # rows of a wider array: only its first n columns
    fastnn.matmul(a, b, wide[:, :n], alpha=0.0)
    assert not wide[:, :n].any() and (wide[:, n:] == 7).all()
    groups = fastnn.batched_matmul(np.stack([a, a]), np.stack([b, b]), alpha=0.0, bias=np.stack([bias, bias]))
    np.testing.assert_array_equal(groups, np.broadcast_to(bias, (2, m, n)))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        fastnn.matmul(a, b[1:], alpha=0.0)


@pytest.mark.parametrize("n, k", [(4, 1), (300, 1), (300, 200)])
def test_relu_of_minus_infinity_is_zero_on_every_tile(n, k):
    """Full tiles (the unrolled store) and edge tiles (the generic epilogue) agree with
    np.maximum: rows of +-inf (a column of them times a row of ones) and -1 become 0 and inf."""
    a = np.zeros((n, k), np.float32)
    a[:, 0] = 1.0
    a[[0, 1, n - 1], 0] = -np.inf, -1.0, np.inf
    b = np.zeros((k, n), np.float32)
    b[0] = 1.0
    got = fastnn.matmul(a, b, activation="relu")
    np.testing.assert_array_equal(got, np.maximum(a @ b, 0))
    assert not np.signbit(got).any()


def test_byte_swapped_operands_are_read_and_do_not_break_later_calls():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((200, 150)).astype(np.float32)
    b = rng.standard_normal((150, 120)).astype(np.float32)
    swapped = fastnn.matmul(a.astype(">f4"), b.astype(">f4"), bias=np.ones(120, ">f4"))
    assert swapped.dtype == np.float32 and swapped.dtype.isnative
    check(swapped, a @ b + 1, np.float32, 150)
    check(fastnn.matmul(a, b), a @ b, np.float32, 150)
    check(fastnn.batched_matmul(a[None].astype(">f4"), b[None], threads=1)[0], a @ b, np.float32, 150)
    for n in (8, 64, 120):          # the small fast path too, with only b swapped, and a swapped out
        x, y = a[:n, :n].copy(), b[:n, :n].copy()
        check(fastnn.matmul(x, y.astype(">f4")), x @ y, np.float32, n)
        out = np.zeros((n, n), ">f4")
        assert fastnn.matmul(x, y, out) is out
        check(out, x @ y, np.float32, n)


@pytest.mark.parametrize("threads", [0, -1, 2.7, "2", True, None])
def test_thread_count_must_be_a_positive_int(threads):
    a = np.ones((200, 200), np.float32)
    if threads is None:     # None: the default thread count
        np.testing.assert_array_equal(fastnn.matmul(a, a, threads=threads), a @ a)     # 200.0: exact
        return
    for small in (False, True):
        x = a[:4, :4] if small else a
        with pytest.raises(ValueError, match=f"threads must be None or an int >= 1, got {threads!r}"):
            fastnn.matmul(x, x, threads=threads)
    with pytest.raises(ValueError, match="threads must be None or an int >= 1"):
        fastnn.batched_matmul(a[None], a[None], threads=threads)


@pytest.mark.parametrize("entry, why", [
    ({"kc": 256.0}, "expected ints"), ({"kc": 100_000_000}, "expected ints"), ({"mc": True}, "expected ints"),
    ({"nc": 60_000, "kc": 60_000}, "at most"), (None, "JSONDecodeError"), ("deep", "RecursionError")])
def test_a_bad_block_table_falls_back_with_a_warning(tmp_path, monkeypatch, entry, why):
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    blocks.blocks_for.cache_clear()
    default = blocks.analytic(np.float32)
    path = blocks.table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json" if entry is None else "[" * 200_000 if entry == "deep" else
                    json.dumps({"float32": {**asdict(default), "source": "tuned", **entry}}))
    try:
        with pytest.warns(RuntimeWarning, match=f"ignoring the block table {path}.*{why}"):
            got = blocks.blocks_for("f")
        assert (got.mc, got.kc, got.nc, got.source) == (default.mc, default.kc, default.nc, "analytic")
    finally:
        blocks.blocks_for.cache_clear()


def test_block_table_folder(tmp_path, monkeypatch):
    """$FASTNN_CACHE_DIR (~ expanded), else an absolute $XDG_CACHE_HOME (a relative one is
    ignored, as the XDG spec says), else ~/.cache; no home at all means no table, not a crash."""
    monkeypatch.delenv("FASTNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert blocks.table_path().parent == tmp_path / "home" / ".cache" / "fastnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert blocks.table_path().parent == tmp_path / "xdg" / "fastnn"
    monkeypatch.setenv("FASTNN_CACHE_DIR", "~/tables")
    assert blocks.table_path().parent == tmp_path / "home" / "tables"
    monkeypatch.delenv("FASTNN_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")

    monkeypatch.setenv("FASTNN_CACHE_DIR", "tables")        # each working directory would have its own
    with pytest.raises(ValueError, match="FASTNN_CACHE_DIR: expected a full path .*, got 'tables'"):
        blocks.table_path()
    blocks.blocks_for.cache_clear()
    with pytest.warns(RuntimeWarning, match="ignoring the block table .*FASTNN_CACHE_DIR: expected a full path"):
        assert blocks.blocks_for("f").source == "analytic"
    blocks.blocks_for.cache_clear()
    monkeypatch.setenv("FASTNN_CACHE_DIR", "~nosuchuser-fastnn/cache")     # nobody's home to expand to
    with pytest.raises(FileNotFoundError, match="no folder for the block table .*set FASTNN_CACHE_DIR"):
        blocks.table_path()
    monkeypatch.delenv("FASTNN_CACHE_DIR")

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(blocks.Path, "home", staticmethod(no_home))
    with pytest.raises(FileNotFoundError, match="no folder for the block table .*set FASTNN_CACHE_DIR"):
        blocks.table_path()
    blocks.blocks_for.cache_clear()
    try:
        assert blocks.blocks_for("f").source == "analytic"
        a = np.ones((200, 200), np.float32)
        np.testing.assert_allclose(fastnn.matmul(a, a), a @ a)
    finally:
        blocks.blocks_for.cache_clear()


def test_a_table_for_another_register_tile_is_ignored_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    default = blocks.analytic(np.float32)
    mr, nr = (6, 16) if (default.mr, default.nr) == (8, 32) else (8, 32)
    blocks.save({"float32": blocks.Blocks(mr, nr, 64, 256, 2048, "tuned")})
    try:
        with pytest.warns(RuntimeWarning, match=f"tuned for a {mr}x{nr} float32 register tile, this process compiles "
                                                f"{default.mr}x{default.nr}"):
            assert blocks.blocks_for("f").source == "analytic"
    finally:
        blocks.blocks_for.cache_clear()


def test_concurrent_table_writers_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    """A second writer saving while the first is about to rename its file (two `fastnn tune`
    runs): both finish and the table is whole (a fixed temporary name made the first fail)."""
    import os

    path = tmp_path / "table.json"
    first = blocks.Blocks(6, 16, 120, 256, 4096, "tuned")
    second = blocks.Blocks(6, 16, 60, 128, 2048, "tuned")
    rename = os.replace

    def replace_after_another_save(src, dst):
        monkeypatch.setattr(os, "replace", rename)
        blocks.save({"float32": second}, path)
        rename(src, dst)
    monkeypatch.setattr(os, "replace", replace_after_another_save)
    blocks.save({"float32": first}, path)
    assert json.loads(path.read_text())["float32"]["mc"] == 120
    assert [q.name for q in tmp_path.iterdir()] == ["table.json"]
    blocks.blocks_for.cache_clear()


def test_info_reports_what_the_jit_targets(monkeypatch):
    from fastnn import sysinfo

    monkeypatch.setattr(sysinfo, "jit_features", lambda: {"+avx", "+sse2"})
    assert "256-bit vectors without FMA (AVX only)" in mm.describe()
    assert sysinfo.peak_gflops(np.float32, 1)[1].endswith("x 8 lanes x 1 FMA units x 2 x 1 cores")
    monkeypatch.setattr(sysinfo, "jit_features", lambda: {"+neon", "+fp-armv8"})     # NEON: FMA is built in
    assert sysinfo.peak_gflops(np.float32, 1)[1].endswith("x 4 lanes x 2 FMA units x 2 x 1 cores")
    monkeypatch.setattr(sysinfo, "jit_features", lambda: {"+avx512f", "+avx2", "+fma", "+sse2"})
    for cpu, units in (("znver4", 1), ("sapphirerapids", 2)):
        monkeypatch.setattr(sysinfo, "jit_cpu_name", lambda: cpu)
        assert sysinfo.peak_gflops(np.float64, 1)[1].endswith(f"x 8 lanes x {units} FMA units x 2 x 1 cores")
    monkeypatch.undo()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")              # what NUMBA_CPU_NAME=generic sets
    assert sysinfo.jit_features() == set() and sysinfo.simd_width_bits() == 64
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    assert "NUMBA_CPU_NAME=generic: Numba compiles for that CPU, not this one" in mm.describe()


def test_atomic_write_is_done_once_renamed_even_if_the_folder_cannot_be_synced(tmp_path, monkeypatch):
    """A folder with write but no read permission: the rename is the write; fsync of the
    folder is best effort and must not turn a finished save into an error."""
    import os

    from fastnn import files

    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    real_open = os.open

    def no_read_on_folders(path, flags, *mode):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)
    monkeypatch.setattr(files.os, "open", no_read_on_folders)
    assert files.atomic_write(target, lambda f: f.write(b"new")) == target
    assert target.read_bytes() == b"new" and sorted(q.name for q in tmp_path.iterdir()) == ["t.bin"]


def test_info_survives_a_missing_threading_layer(monkeypatch):
    from fastnn import sysinfo

    def missing():
        raise ValueError("No threading layer could be loaded.\nHINT: install tbb")
    monkeypatch.setattr(sysinfo, "numba_threading", missing)
    row = dict(sysinfo.report())["numba"]
    assert "threading layer not usable (No threading layer could be loaded.)" in row


def test_bench_refuses_an_unwritable_out_folder_before_running(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    blocker = tmp_path / "file"
    blocker.write_text("")
    script = Path(__file__).resolve().parents[1] / "bench" / "bench_matmul.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--out", str(blocker / "sub")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"--out: cannot write the results in {blocker / 'sub'}" in out.stderr and "bench matmul" not in out.stderr


def test_tune_refuses_bad_arguments_and_an_unwritable_folder_before_sweeping(tmp_path, monkeypatch, capsys):
    from fastnn import cli

    for argv in (["tune", "--n", "0"], ["tune", "--n", "511"], ["tune", "--n", "200000"], ["tune", "--repeats", "0"]):
        assert cli.main(argv) == 2
        assert "expected an int n in [512, 8192]" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(blocker / "sub"))
    assert cli.main(["tune", "--n", "512", "--repeats", "1"]) == 2
    assert f"cannot write the block table in {blocker / 'sub'}" in capsys.readouterr().err


def test_tune_sweeps_both_dtypes_and_frees_every_candidates_buffers():
    """The sweep left a packing-buffer set per candidate block size in the calling thread:
    about 520 MB after n=1024, until the thread ended."""
    from fastnn.tune import KCS, MC_FACTORS, tune

    table, rows = tune(512, 1, write=False, progress=False)
    assert set(table) == {"float32", "float64"} and all(b.source == "tuned" for b in table.values())
    assert len(rows) == 2 * len(KCS) * len(MC_FACTORS) and all(r["gflops"] > 0 for r in rows)
    assert not getattr(mm._local, "buffers", {})
    a = np.random.default_rng(0).standard_normal((300, 200))
    np.testing.assert_allclose(mm.matmul(a, a.T), a @ a.T, rtol=1e-12, atol=1e-12)


def test_masked_arrays_are_refused_rather_than_read_without_their_mask():
    """A first call ended in Numba's internal typing error; once warm, the mask was dropped."""
    masked = np.ma.array([[1.0, 100.0], [1.0, 1.0]], mask=[[0, 1], [0, 0]])
    plain = np.ones((2, 2))
    for _ in range(2):              # the second time with the kernels warm
        with pytest.raises(TypeError, match="matmul: expected numpy.ndarray operands, got MaskedArray and ndarray"):
            mm.matmul(masked, plain)
        mm.matmul(plain, plain)
    for call in (lambda: mm.matmul(plain, plain, out=np.ma.zeros((2, 2))),
                 lambda: mm.matmul(plain, plain, bias=np.ma.zeros(2)),
                 lambda: mm.batched_matmul(plain[None], plain[None], out=np.ma.zeros((1, 2, 2)))):
        with pytest.raises(ValueError, match="must be a float64 array of shape .*, got MaskedArray"):
            call()
    with pytest.raises(TypeError, match="batched_matmul: expected numpy.ndarray operands, got MaskedArray"):
        mm.batched_matmul(masked[None], plain[None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (4, 64, 10), (128, 64, 10), (64, 64, 128), (63, 33, 65),
                                     (130, 40, 33), (5, 1100, 3), (40, 600, 12), (301, 64, 299), (1000, 128, 10)])
def test_weight_gradients_read_a_transposed_in_place(dtype, m, k, n, monkeypatch):
    """A small a.T @ b + beta out (beta 0 or 1: a dense layer's weight gradient), or one with
    K <= DIRECT_T_K and M*N <= DIRECT_T_MN in one thread, goes to the typed trans_a_into:
    full tiles, the last rows and columns, the narrow C computed transposed, K past one run
    of SMALL_K; nothing else is called."""
    rng = np.random.default_rng(m * k * n)
    a, b = operands(rng, m, k, n, dtype, trans_a=True)
    fastnn.matmul(a[:1, :1].copy(), b[:1, :1].copy())                  # registers the dtype's entries
    monkeypatch.setattr(mm, "_gemm", lambda *args: pytest.fail("took the general driver"))
    monkeypatch.setattr(mm, "options_into", lambda *args: pytest.fail("took the copying path"))
    for beta in (0.0, 1.0):
        c0 = rng.standard_normal((m, n)).astype(dtype)
        out = c0.copy()
        out[0, 0] = np.nan if beta == 0 else out[0, 0]                 # beta 0 never reads out
        assert fastnn.matmul(a, b, out, trans_a=True, beta=beta, threads=1) is out
        check(out, matmul_ref(a, b, c0, trans_a=True, beta=beta), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_products_the_entry_declines_come_out_right(dtype):
    rng = np.random.default_rng(5)
    a, b = operands(rng, 40, 30, 10, dtype, trans_a=True)
    c0 = rng.standard_normal((40, 10)).astype(dtype)
    ro = a.copy()
    ro.setflags(write=False)
    for x, kwargs in ((a, dict(beta=0.5)), (a, dict(beta=1.0, alpha=2.0)), (ro, dict(beta=1.0)),
                      (np.asfortranarray(a), dict(beta=1.0)), (a, dict(beta=1.0, bias=c0[0]))):
        out = c0.copy()
        fastnn.matmul(x, b, out, trans_a=True, **kwargs)
        check(out, matmul_ref(a, b, c0, trans_a=True, **kwargs), dtype, 30)
    a, b = operands(rng, 520, 64, 520, dtype, trans_a=True)          # M*N past DIRECT_T_MN: packed
    ones = np.ones((520, 520), dtype)
    out = fastnn.matmul(a, b, ones.copy(), trans_a=True, beta=1.0, threads=1)
    check(out, matmul_ref(a, b, ones, trans_a=True, beta=1.0), dtype, 64)
    sq = rng.standard_normal((30, 30)).astype(dtype)
    want = sq.T @ sq + sq
    fastnn.matmul(sq, sq, sq, trans_a=True, beta=1.0)                   # out is an operand: a temporary
    check(sq, want, dtype, 30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_byte_swapped_b_or_out_after_an_unaligned_array_is_converted(dtype):
    """Numba's dispatch fingerprint ignores byte order: once an unaligned out had been typed,
    a big-endian out or b reached the native kernel (out[0, 0] = -1.2e+47; a trans_a out
    raised a raw TypingError)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 8)).astype(dtype), rng.random((8, 8)).astype(dtype)
    size = np.dtype(dtype).itemsize
    unaligned = np.zeros(64 * size + 1, np.uint8)[1:].view(dtype).reshape(8, 8)
    fastnn.matmul(a, b, unaligned)
    fastnn.matmul(a, b, unaligned, trans_a=True)
    swapped = np.dtype(dtype).newbyteorder(">" if np.little_endian else "<")
    want = a.astype(np.float64) @ b
    for kw, bb, ref in (({}, b, want), ({"trans_a": True}, b, a.T.astype(np.float64) @ b)):
        out = np.zeros((8, 8), swapped)
        assert fastnn.matmul(a, bb, out, **kw) is out
        check(out.astype(dtype), ref, dtype, 8)
    check(fastnn.matmul(a, b.astype(swapped)), want, dtype, 8)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")      # np.matrix itself
def test_matrix_out_is_refused_by_name():
    f32 = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="matmul: out must be a float32 array of shape"):
        fastnn.matmul(f32, f32.T.copy(), np.matrix(np.zeros((4, 4), np.float32)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [8, 100, 300])            # small, serial packed, threaded sizes
def test_transpose_flags_must_be_true_or_false(dtype, n):
    """A truthy non-bool ("N", BLAS's "no transpose", or "False") transposed the operand silently
    (a square product came back as a.T @ b); a falsy one (0, None) passed in the fast paths only."""
    rng = np.random.default_rng(12)
    a, b = operands(rng, n, n, n, dtype)
    check(fastnn.matmul(a, b, trans_a=np.True_), matmul_ref(a.T, b), dtype, n)     # NumPy's bools are bools
    for kw in ({"trans_a": "N"}, {"trans_b": "False"}, {"trans_a": 1}, {"trans_b": 0}, {"trans_a": None},
               {"trans_a": "N", "bias": np.ones(n, dtype)}, {"trans_b": "T", "alpha": 2.0}):
        name = next(k for k in kw if k.startswith("trans"))
        with pytest.raises(TypeError, match=f"^matmul: {name}: expected True or False, got"):
            fastnn.matmul(a, b, **kw)
        with pytest.raises(TypeError, match=f"^batched_matmul: {name}: expected True or False, got"):
            fastnn.batched_matmul(a[None], b[None], **{k: v[None] if k == "bias" else v for k, v in kw.items()})


def test_activation_errors_name_every_accepted_activation():
    f32 = np.ones((3, 3), np.float32)
    check(fastnn.matmul(f32, f32, activation="linear"), matmul_ref(f32, f32), np.float32, 3)     # accepted
    accepted = r"activation must be one of \['linear', 'relu', 'sigmoid', 'tanh'\] or None, got 'gelu'"
    with pytest.raises(ValueError, match="^matmul: " + accepted):
        fastnn.matmul(f32, f32, activation="gelu")
    with pytest.raises(ValueError, match="^batched_matmul: " + accepted):
        fastnn.batched_matmul(f32[None], f32[None], activation="gelu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_transposed_b_over_several_k_blocks(dtype):
    """Packing B^T restarts at each KC block of K: a product with K over two blocks."""
    rng = np.random.default_rng(3)
    k = 2 * blocks.blocks_for(np.dtype(dtype).char).kc + 100
    a, b = operands(rng, 200, k, 200, dtype, trans_b=True)
    for threads in (1, 2):
        check(fastnn.matmul(a, b, trans_b=True, threads=threads), matmul_ref(a, b, trans_b=True), dtype, k)


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3), (3, 2)), ((2, 0), (0, 2))])
def test_alpha_zero_or_k_zero_still_applies_the_activation(a_shape, b_shape):
    """C = act(alpha*A@B + beta*C) with nothing to multiply: the activation still applies, with
    or without a bias."""
    c0 = np.array([[-1.0, 2.0], [3.0, -4.0]])
    for bias in (None, np.array([0.5, -0.5])):
        out = c0.copy()
        fastnn.matmul(np.ones(a_shape), np.ones(b_shape), out, alpha=0.0, beta=1.0, bias=bias, activation="relu")
        np.testing.assert_array_equal(out, np.maximum(c0 + (0 if bias is None else bias), 0))


def test_batched_fallbacks_take_each_groups_own_bias():
    """alpha = 0, and an out whose columns are strided, run group by group: each with its bias."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 3, 4)), rng.standard_normal((3, 4, 5))
    bias = rng.standard_normal((3, 5))
    np.testing.assert_array_equal(fastnn.batched_matmul(a, b, alpha=0.0, bias=bias),
                                  np.broadcast_to(bias[:, None], (3, 3, 5)))
    wide = np.zeros((3, 3, 10))
    out = wide[:, :, ::2]
    fastnn.batched_matmul(a, b, out, bias=bias)
    np.testing.assert_allclose(out, a @ b + bias[:, None, :], rtol=1e-13, atol=1e-13)
