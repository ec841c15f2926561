"""fastnn: compiled-kernel neural-network training on flat parameter buffers.

    import fastnn as fnn
    model = fnn.Sequential(fnn.Dense(64, 128, activation="relu"), fnn.Dense(128, 10))
    opt = fnn.optim.Adam(model, lr=1e-3)
"""
import os

# Numba's OpenMP (libgomp) threads wait between parallel kernels. The default spins about
# 300,000 rounds, which beside OpenBLAS's own waiting threads steals their cores (measured:
# 10x slower training of a small MLP on 2 cores); pure passive waiting (OMP_WAIT_POLICY=PASSIVE)
# costs a futex wake-up of 50-130 us per parallel region (measured: a 2-thread matmul slower
# than 1 thread). A short spin keeps back-to-back kernels at ~2 us a region and then sleeps.
# Set only when the user chose neither, and while libgomp has not read its environment yet
# (Numba starts its OpenMP threads at the first parallel kernel or numba.set_num_threads).
from .kernels.env import openmp_started

#: whether fastnn set GOMP_SPINCOUNT (fastnn info reports it)
SPINCOUNT_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ and not openmp_started()
if SPINCOUNT_SET:
    os.environ["GOMP_SPINCOUNT"] = "20000"

# before any kernel is decorated: a read-only install with no writable home gets a cache
# directory of the user's own (Numba otherwise refuses every cache=True kernel)
from .kernels.cache_dir import ensure_writable_cache  # noqa: E402

ensure_writable_cache()

# before any module below decorates a kernel: the first @njit creates Numba's code generator,
# which fixes the CPU feature string for the rest of the process
from .kernels.matmul.settings import apply_process_settings  # noqa: E402

apply_process_settings()  # full-width vectors on AVX-512 while Numba has compiled nothing yet (no-op on AVX2)

from . import checkpoint, data, distributed, losses, models, optim, random, schedules, train  # noqa: E402
from .layers import Dense, Dropout, Flatten, ReLU, Sequential, Sigmoid, Tanh  # noqa: E402
from .layers import (AvgPool2D, BatchNorm, BlockDiagonalDense, Concat, Conv2D, GlobalAvgPool2D,  # noqa: E402
                     LocallyConnected1D, LocallyConnected2D, MaxPool2D, Residual)
from .gemm import batched_matmul, matmul  # noqa: E402
from .memory import keep_freed_memory  # noqa: E402
from .module import Module  # noqa: E402
from .random import manual_seed  # noqa: E402

keep_freed_memory()  # glibc keeps freed activations for the next step instead of faulting them in again

__version__ = "0.1.0"
__all__ = ["AvgPool2D", "BatchNorm", "BlockDiagonalDense", "Concat", "Conv2D", "GlobalAvgPool2D", "LocallyConnected1D",
           "LocallyConnected2D", "MaxPool2D", "Dense", "Dropout", "Flatten", "Module", "ReLU", "Residual", "Sequential",
           "Sigmoid", "Tanh", "checkpoint", "data", "distributed", "losses", "models", "batched_matmul",
           "manual_seed", "matmul", "optim", "random", "schedules", "train"]
