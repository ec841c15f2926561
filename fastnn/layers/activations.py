"""Elementwise activation layers, computed by the fused activation kernels."""
from __future__ import annotations

import math

import numpy as np

from fastnn.kernels.activation import (ACTIVATIONS, act_backward_cpu, act_backward_serial, bias_act_forward_cpu,
                                       bias_act_forward_serial)
from fastnn.kernels.parallel import pick

from ..checks import check_array
from ..module import Module

_NO_BIAS = {"f": np.empty(0, np.float32), "d": np.empty(0, np.float64)}


def activation_grad(dy: np.ndarray, y: np.ndarray, act: int) -> np.ndarray:
    """dL/dz = dy * act'(z), computed from the activation's output y (same shape as dy, rows
    along the first axis); ``dy`` itself when ``act`` is 0 (no activation). The one place
    every layer with a fused activation goes through on its way back."""
    if not act:
        return dy
    dz = np.empty(y.shape, y.dtype)                  # C order: rows(dz) below must be a view, not a copy
    if y.size:
        rows = lambda a: np.ascontiguousarray(a).reshape(len(y) if y.ndim > 1 else 1, -1)  # noqa: E731
        pick(act_backward_cpu, act_backward_serial, dz.size)(rows(dy), rows(y), act, rows(dz))
    return dz


class _Activation(Module):
    kind = "linear"

    def __init__(self) -> None:
        super().__init__()
        self._y = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, f"{type(self).__name__} input")
        if x.ndim < 1:
            raise ValueError(f"{type(self).__name__} input: expected a batch axis, got shape {x.shape}")
        y = np.array(x, order="C", copy=True)
        rows = y.reshape(len(y), math.prod(y.shape[1:]))
        pick(bias_act_forward_cpu, bias_act_forward_serial, y.size)(rows, _NO_BIAS[y.dtype.char], ACTIVATIONS[self.kind])
        self._y = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_array(dy, f"{type(self).__name__} output gradient", dtype=self._y.dtype, shape=self._y.shape)
        return activation_grad(dy, self._y, ACTIVATIONS[self.kind])


class ReLU(_Activation):
    """max(x, 0), elementwise."""

    kind = "relu"


class Tanh(_Activation):
    """tanh(x), elementwise."""

    kind = "tanh"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), elementwise."""

    kind = "sigmoid"
