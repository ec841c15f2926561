"""Real CUDA device arrays (CuPy, Numba) into fastnn's entry points: each must be refused with a
TypeError that names the array's package and says to copy it to the host (.ci/gpu-host runs it)."""
import cupy as cp
import numpy as np
from numba import cuda

import fastnn as fnn
from fastnn.sysinfo import cuda_status

print("cuda_status:", cuda_status())
host = np.ones((4, 4), np.float32)
failures = 0
for package, x in (("cupy", cp.ones((4, 4), cp.float32)), ("numba", cuda.to_device(host))):
    calls = {"Dense": lambda: fnn.Dense(4, 2)(x), "matmul": lambda: fnn.matmul(x, host),
             "SGD": lambda: fnn.optim.SGD((x, x), lr=0.1),
             "softmax_cross_entropy": lambda: fnn.losses.softmax_cross_entropy(x, np.zeros(4, np.int64))}
    for name, call in calls.items():
        try:
            call()
            message = "no error"
        except TypeError as e:
            message = str(e)
        ok = f"{package}." in message and "CUDA device memory" in message
        failures += not ok
        print("ok  " if ok else "FAIL", package, name, message[:160])
raise SystemExit(failures)
