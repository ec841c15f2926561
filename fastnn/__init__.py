"""fastnn: compiled-kernel neural-network training on flat parameter buffers.

    import fastnn as fnn
    model = fnn.Sequential(fnn.Dense(64, 128, activation="relu"), fnn.Dense(128, 10))
    opt = fnn.optim.Adam(model, lr=1e-3)
"""
import os

# Numba's OpenMP thread pool spins after every parallel kernel by default; beside OpenBLAS's
# own waiting threads on a small machine the two steal each other's cores (measured: 10x
# slower training of a small MLP on 2 cores). Passive waiting is set unless the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import checkpoint, data, distributed, losses, optim, random, schedules, train  # noqa: E402
from .layers import Dense, Dropout, Flatten, ReLU, Sequential, Sigmoid, Tanh  # noqa: E402
from .module import Module  # noqa: E402
from .random import manual_seed  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Dense", "Dropout", "Flatten", "Module", "ReLU", "Sequential", "Sigmoid", "Tanh", "checkpoint", "data", "distributed", "losses",
           "manual_seed", "optim", "random", "schedules", "train"]
