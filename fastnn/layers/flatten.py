"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...)."""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_array
from ..module import Module


class Flatten(Module):
    """Reshape each sample to a vector; the backward pass restores the input shape."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, "Flatten input")
        if x.ndim < 1:
            raise ValueError(f"Flatten input: expected a batch axis, got shape {x.shape}")
        out_shape = (len(x), math.prod(x.shape[1:]))
        self._shape, self._dtype, self._out_shape = x.shape, x.dtype, out_shape
        return x.reshape(out_shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        check_array(dy, "Flatten output gradient", dtype=self._dtype, shape=self._out_shape)
        return dy.reshape(self._shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(input_shape, dtype=np.int64)),)
