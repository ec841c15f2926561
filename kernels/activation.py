"""Fused bias + activation (forward) and activation derivative (backward), row-parallel.

Math    forward   y = act(y + b)                 in place, y: (n, k), b: (k,)
        backward  dx = dy * act'(y)              from the activation's *output* y:
                  relu' = [y > 0], tanh' = 1 - y^2, sigmoid' = y (1 - y), identity' = 1
                  (relu as torch's threshold_backward: dx = 0 where y <= 0 even for an infinite or
                  NaN dy, which dy * 0 would make NaN; dx = dy where y is NaN)
Shapes  y, dy, dx: 2-D C-contiguous (n, k), same float dtype; b: (k,) or (0,) for no bias.
        act: one of ACTIVATIONS' codes.
Oracle  tests/test_kernels.py against NumPy (np.maximum, np.tanh, 1/(1+exp(-x))).
Threads ``*_cpu`` runs rows in parallel, ``*_serial`` (same arguments) in the calling thread.
Bench   covered by the dense layers of the training step in bench/bench_train.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import overload
from numba.np.numpy_support import as_dtype

ACTIVATIONS = {None: 0, "linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def zero_like(x):
    """0 of scalar x's type (typed by the overload below; x * 0 would be NaN at x = +-inf)."""


def one_like(x):
    """1 of scalar x's type."""


def _constant_like(value):
    def typed(x):
        c = as_dtype(x).type(value)
        return lambda x: c
    return typed


overload(zero_like, inline="always")(_constant_like(0))
overload(one_like, inline="always")(_constant_like(1))


@njit(inline="always")
def _act(x, act):
    if act == 1:
        return max(x, zero_like(x))
    if act == 2:
        return np.tanh(x)
    if act == 3:
        return 1 / (1 + np.exp(-x))
    return x


@njit(inline="always")
def _dact(y, act):
    if act == 2:
        return 1 - y * y
    if act == 3:
        return y * (1 - y)
    return one_like(y)


@njit(inline="always")
def _bias_act_row(y, b, act):
    if b.shape[0] > 0:
        for j in range(y.shape[0]):
            y[j] = _act(y[j] + b[j], act)
    else:
        for j in range(y.shape[0]):
            y[j] = _act(y[j], act)


@njit(inline="always")
def _act_backward_row(dy, y, act, dx):
    if act == 1:
        for j in range(y.shape[0]):
            dx[j] = zero_like(dy[j]) if y[j] <= 0 else dy[j]
    else:
        for j in range(y.shape[0]):
            dx[j] = dy[j] * _dact(y[j], act)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def bias_act_forward_cpu(y, b, act):
    for r in prange(y.shape[0]):
        _bias_act_row(y[r], b, act)


@njit(cache=True, error_model="numpy", nogil=True)
def bias_act_forward_serial(y, b, act):
    for r in range(y.shape[0]):
        _bias_act_row(y[r], b, act)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def act_backward_cpu(dy, y, act, dx):
    for r in prange(y.shape[0]):
        _act_backward_row(dy[r], y[r], act, dx[r])


@njit(cache=True, error_model="numpy", nogil=True)
def act_backward_serial(dy, y, act, dx):
    for r in range(y.shape[0]):
        _act_backward_row(dy[r], y[r], act, dx[r])
