"""Numba settings the GEMM fast path needs, applied deliberately and reported.

SLP      The micro-kernels hold their MR x NR tile in scalar variables that only LLVM's SLP
         vectorizer turns into vector FMAs. Numba turned SLP off by default (0.57, numba#8852:
         miscompilations elsewhere), and reads ``numba.config.SLP_VECTORIZE`` each time it
         optimizes a library. So ``slp_scope()`` switches it on only while fastnn compiles its
         own GEMM kernels (under Numba's compiler lock) and restores it: user code keeps the
         user's setting. Cached kernels were compiled inside the scope, so loading them is safe.
         Numba's compiler reloads its config from the environment when a NUMBA_* variable
         changed since the last compile, which would reset the setting mid-scope (measured:
         3.5 instead of 81 GFLOP/s, and cached so): the scope reloads first, then sets it.
Width    On AVX-512 CPUs LLVM's ``prefer-256-bit`` keeps vectorized code at ymm width. The
         feature string is fixed when Numba creates its code generator, once per process, so
         ``apply_process_settings()`` (run at ``import fastnn``) adds ``-prefer-256-bit`` only
         on AVX-512 hosts, only if the user set no NUMBA_CPU_FEATURES and only if Numba has
         not compiled yet. Otherwise the 256-bit tiles are used and ``status()`` says why.
"""
from __future__ import annotations

import contextlib
import functools
import re

import numba

_WIDTH_NOTE = ""
#: features: the CPU feature string fastnn chose (None: it chose none), set again after a
#: config reload; late: whether Numba's code generator existed when fastnn's settings ran
_STATE: dict = {"features": None, "late": None}


def _codegen_created() -> bool:
    from numba.core.registry import cpu_target

    return "_toplevel_target_context" in vars(cpu_target)


def apply_process_settings() -> None:
    """Full-width vectors on AVX-512 where that can still be chosen; a no-op elsewhere."""
    global _WIDTH_NOTE
    import llvmlite.binding as llvm

    _STATE["late"] = _codegen_created()
    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" not in features.split(","):
        _WIDTH_NOTE = ""
        return
    if numba.config.CPU_FEATURES is not None:
        _WIDTH_NOTE = "NUMBA_CPU_FEATURES set by the user: kept as is"
    elif _STATE["late"]:
        _WIDTH_NOTE = ("a Numba function was defined before fastnn was imported: its CPU features stay as they "
                       "were (import fastnn first)")
    else:
        numba.config.CPU_FEATURES = _STATE["features"] = features + ",-prefer-256-bit"
        _WIDTH_NOTE = "fastnn removed LLVM's prefer-256-bit (process-wide; import fastnn first to get it)"


def wide_vectors() -> bool:
    """True when compiled code uses 512-bit vectors: an AVX-512 host whose code generator runs
    without LLVM's prefer-256-bit, because fastnn removed it or because LLVM's tuning for this
    CPU never had it (AMD Zen 4); the latter is told by compiling a probe loop."""
    import llvmlite.binding as llvm

    feats = (numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()).split(",")
    if "+avx512f" not in feats or "+prefer-256-bit" in feats:
        return False
    return "-prefer-256-bit" in feats or _probe_emits_zmm()


@functools.lru_cache(maxsize=1)
def _probe_emits_zmm() -> bool:
    """Whether Numba's code generator, as this process created it, vectorizes a float32 loop
    with zmm registers (about 0.1 s of compiling, once)."""
    import numpy as np

    def axpy(x, y):
        for i in range(x.size):
            y[i] += np.float32(2.0) * x[i]

    fn = numba.njit(axpy)
    arr = numba.types.Array(numba.float32, 1, "C")
    fn.compile((arr, arr))
    return "%zmm" in fn.inspect_asm(fn.signatures[0])


@contextlib.contextmanager
def slp_scope():
    """SLP vectorization on for the compilations inside, back to the user's value after."""
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        numba.core.config.reload_config()       # so that the compiler's own reload changes nothing
        if _STATE["features"] is not None and numba.config.CPU_FEATURES is None and not _codegen_created():
            numba.config.CPU_FEATURES = _STATE["features"]
        old = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = old


def check_micro_kernel(module, dtype) -> dict:
    """Compile the module's packed micro-kernel afresh (uncached, inside ``slp_scope``) and
    count, in its hottest basic block, vector FMAs by register width and stack (spill) refs."""
    import numpy as np

    fn = numba.njit(fastmath={"contract"}, error_model="numpy", boundscheck=False)(module.micro.py_func)
    arr = numba.types.Array(numba.from_dtype(np.dtype(dtype)), 1, "C")
    with slp_scope():
        fn.compile((numba.int64, arr, arr, arr))
    asm = fn.inspect_asm(fn.signatures[0])
    blocks = re.split(r"\n(?=\.LBB\d+_\d+:)", asm)
    hot = max(blocks, key=lambda b: b.count("vfmadd"))
    fmas = re.findall(r"vfmadd\w*p[sd]\s+[^\n]*%([xyz])mm", hot)
    return {"zmm_fma": fmas.count("z"), "ymm_fma": fmas.count("y"), "xmm_fma": fmas.count("x"),
            "scalar_fma": len(re.findall(r"vfmadd\w+s[sd]\s", hot)), "spills": hot.count("(%rsp)"),
            "instructions": hot.count("\n")}


def width_note() -> str:
    return _WIDTH_NOTE
