"""What this machine offers fastnn: CPU, SIMD width, caches, cores, Numba, MPI, CUDA."""
from __future__ import annotations

import os
import platform
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from .memory import allocator_status


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jit_features() -> set[str]:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES where set, else this host's."""
    import llvmlite.binding as llvm
    import numba

    features = numba.config.CPU_FEATURES                  # "" (e.g. NUMBA_CPU_NAME=generic): none at all
    return set((llvm.get_host_cpu_features().flatten() if features is None else features).split(",")) - {""}


def jit_cpu_name() -> str:
    """The CPU Numba compiles for (LLVM's name): NUMBA_CPU_NAME where set, else this host's."""
    import llvmlite.binding as llvm
    import numba

    name = numba.config.CPU_NAME
    return llvm.get_host_cpu_name() if name in (None, "host") else name


def simd_width_bits() -> int:
    """Widest vector register the JIT may use (from the features Numba compiles for)."""
    features = jit_features()
    for bits, flag in ((512, "+avx512f"), (256, "+avx2"), (256, "+avx"), (128, "+sse2"), (128, "+neon")):
        if flag in features:
            return bits
    return 64


def cache_sizes() -> dict[str, str]:
    """Cache level/type -> size as the kernel reports it, e.g. {"L1d": "32K", "L3": "32768K"}."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[f"L{level}{suffix}"] = size
    return out


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def numba_threading() -> tuple[str, str, int]:
    """(numba version, threading layer actually in use, thread count)."""
    import numba
    import numpy as np

    from fastnn.kernels.reduce import sumsq_cpu

    sumsq_cpu(np.zeros(16, np.float32), np.zeros(1, np.int64), np.full(1, 16, np.int64), np.zeros(1))
    return numba.__version__, numba.threading_layer(), numba.get_num_threads()


def mpi_status() -> str:
    try:
        from mpi4py import MPI
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return f"not usable ({type(e).__name__}: {e}); pip install fastnn[mpi]"
    beside = Path(sys.executable).parent / "mpiexec"
    launcher = shutil.which("mpiexec") or (str(beside) if beside.exists() else "no mpiexec found")
    text = MPI.Get_library_version().replace("\0", "")          # Open MPI ends it with a NUL byte
    version = " ".join((text.splitlines() or ["unknown MPI"])[0].split())
    return f"{version}, mpiexec: {launcher}"


def cuda_status() -> str:
    try:
        from numba import cuda

        if cuda.is_available():
            return ", ".join(d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in cuda.gpus)
        return "no CUDA GPU"
    except Exception as e:  # noqa: BLE001
        return f"not usable ({type(e).__name__})"


@lru_cache(maxsize=None)
def cpu_ghz() -> tuple[float, str]:
    """(clock in GHz, where it came from): cpufreq's maximum where the kernel exposes it, else
    a timed chain of dependent integer multiply-adds (4 cycles each on x86: imul 3 + add 1),
    which sees the turbo clock a VM's /proc/cpuinfo hides; the larger of that and cpuinfo.
    Measured once per process, so every peak a run reports uses one clock."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    listed = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                listed = max(listed, float(line.split(":", 1)[1]) / 1e3)
    except (OSError, ValueError):
        pass
    measured = _measure_ghz() if platform.machine() in ("x86_64", "AMD64") else 0.0
    return (measured, "measured (imul+add chain)") if measured > listed else (listed, "/proc/cpuinfo")


def _measure_ghz() -> float:
    from numba import njit

    @njit(cache=False)
    def chain(n, a, b):
        x = b
        for _ in range(n):
            x = x * a + b
        return x

    n = 20_000_000
    chain(10, 3, 1)
    best = min(_timed(chain, n) for _ in range(3))
    return 4 * n / best / 1e9


def _timed(fn, n) -> float:
    import time

    t = time.perf_counter()
    fn(n, 3, 1)
    return time.perf_counter() - t


def peak_gflops(dtype, threads: int | None = None) -> tuple[float, str]:
    """Theoretical FLOP/s peak: GHz x SIMD lanes x FMA units (2 on x86 cores with FMA) x 2 x cores."""
    import numpy as np

    ghz, source = cpu_ghz()
    lanes = max(simd_width_bits(), 64) // 8 // np.dtype(dtype).itemsize
    features = jit_features()
    # x86 without FMA: one multiply and one add port; NEON's FMA is not a separate feature
    units = 1 if "+sse2" in features and "+fma" not in features else 2
    if lanes * np.dtype(dtype).itemsize == 64 and jit_cpu_name() == "znver4":
        units = 1               # Zen 4 runs a 512-bit FMA on both of its 256-bit FMA pipes
    n = cores() if threads is None else threads
    return ghz * lanes * units * 2 * n, (f"{ghz:.2f} GHz ({source}) x {lanes} lanes x {units} FMA units x 2 "
                                         f"x {n} cores")


def report() -> list[tuple[str, str]]:
    """Rows of ``fastnn info``."""
    try:
        version, layer, threads = numba_threading()
    except (ValueError, ImportError) as e:      # e.g. NUMBA_THREADING_LAYER=tbb without tbb installed
        import numba

        version, layer, threads = numba.__version__, f"not usable ({str(e).splitlines()[0]})", \
            numba.config.NUMBA_NUM_THREADS
    caches = ", ".join(f"{k} {v}" for k, v in cache_sizes().items()) or "unknown"
    return [("CPU", cpu_model()), ("SIMD width", f"{simd_width_bits()} bits"), ("caches", caches),
            ("cores", str(cores())), ("numba", f"{version}, threading layer {layer}, {threads} threads"),
            ("matmul", _matmul_status()), ("allocator", allocator_status()), ("OpenMP wait", _omp_wait_status()),
            ("threads", _affinity_status()), ("kernel cache", _kernel_cache_status()),
            ("MPI", mpi_status()), ("CUDA", cuda_status())]


def _kernel_cache_status() -> str:
    """Where Numba keeps fastnn's compiled kernels (the locator Numba picks first)."""
    from .kernels import cache_dir

    if cache_dir.FALLBACK:
        return (f"{cache_dir.FALLBACK} (set by fastnn: the install and the user's cache directory are read-only; "
                "set NUMBA_CACHE_DIR to keep it elsewhere)")
    if os.environ.get("NUMBA_CACHE_DIR"):
        return f"{os.environ['NUMBA_CACHE_DIR']} (NUMBA_CACHE_DIR)"
    here = Path(cache_dir.__file__).parent / "__pycache__"
    if cache_dir.writable(here):
        return f"{here} (beside the kernels)"
    return f"{cache_dir.user_cache()} (Numba's user-wide)"


def _omp_wait_status() -> str:
    import fastnn

    if fastnn.SPINCOUNT_SET:
        return "GOMP_SPINCOUNT=20000 (set by fastnn: idle threads spin briefly, then sleep)"
    mine = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    if mine:
        return ", ".join(f"{k}={v}" for k, v in mine.items()) + " (yours, left alone)"
    return ("libgomp's default spin: Numba's OpenMP threads started before import fastnn, too late for its "
            "GOMP_SPINCOUNT=20000 (import fastnn first)")


def _affinity_status() -> str:
    from .kernels import affinity

    try:
        return affinity.describe()
    except (ValueError, ImportError) as e:      # no usable threading layer
        return f"not pinned ({str(e).splitlines()[0]})"


def _matmul_status() -> str:
    from .gemm import describe

    return describe()
