"""What this machine offers fastnn: CPU, SIMD width, caches, cores, Numba, MPI, CUDA."""
from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_width_bits() -> int:
    """Widest vector register the JIT may use on this CPU (from LLVM's host features)."""
    import llvmlite.binding as llvm

    features = set(llvm.get_host_cpu_features().flatten().split(","))
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
    version = " ".join(MPI.Get_library_version().splitlines()[0].split())
    return f"{version}, mpiexec: {launcher}"


def cuda_status() -> str:
    try:
        from numba import cuda

        if cuda.is_available():
            return ", ".join(d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in cuda.gpus)
        return "no CUDA GPU"
    except Exception as e:  # noqa: BLE001
        return f"not usable ({type(e).__name__})"


def report() -> list[tuple[str, str]]:
    """Rows of ``fastnn info``."""
    version, layer, threads = numba_threading()
    caches = ", ".join(f"{k} {v}" for k, v in cache_sizes().items()) or "unknown"
    return [("CPU", cpu_model()), ("SIMD width", f"{simd_width_bits()} bits"), ("caches", caches),
            ("cores", str(cores())), ("numba", f"{version}, threading layer {layer}, {threads} threads"),
            ("MPI", mpi_status()), ("CUDA", cuda_status())]
