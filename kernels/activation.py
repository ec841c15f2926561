"""Fused bias + activation (forward) and activation derivative (backward), row-parallel.

Math    forward   y = act(y + b)                 in place, y: (n, k), b: (k,)
        backward  dx = dy * act'(y)              from the activation's *output* y:
                  relu' = [y > 0], tanh' = 1 - y^2, sigmoid' = y (1 - y), identity' = 1
Shapes  y, dy, dx: 2-D C-contiguous (n, k), same float dtype; b: (k,) or (0,) for no bias.
        act: one of ACTIVATIONS' codes.
Oracle  tests/test_kernels.py against NumPy (np.maximum, np.tanh, 1/(1+exp(-x))).
Bench   covered by the Dense layer in bench/bench_train.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

ACTIVATIONS = {None: 0, "linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


@njit(inline="always")
def _act(x, act):
    if act == 1:
        return max(x, x * 0)
    if act == 2:
        return np.tanh(x)
    if act == 3:
        return 1 / (1 + np.exp(-x))
    return x


@njit(inline="always")
def _dact(y, act):
    if act == 1:
        return (y > 0) * (y * 0 + 1)
    if act == 2:
        return 1 - y * y
    if act == 3:
        return y * (1 - y)
    return y * 0 + 1


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def bias_act_forward_cpu(y, b, act):
    n, k = y.shape
    has_bias = b.shape[0] > 0
    for r in prange(n):
        for j in range(k):
            x = y[r, j] + b[j] if has_bias else y[r, j]
            y[r, j] = _act(x, act)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def act_backward_cpu(dy, y, act, dx):
    n, k = y.shape
    for r in prange(n):
        for j in range(k):
            dx[r, j] = dy[r, j] * _dact(y[r, j], act)
