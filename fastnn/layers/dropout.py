"""Inverted dropout with its own seeded generator (saved in checkpoints)."""
from __future__ import annotations

import numbers

import numpy as np

from .. import random
from ..checks import check_array, check_int
from ..module import Module


class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by 1/(1-p);
    in eval mode, the identity. ``seed`` fixes the mask sequence; without it the layer's
    generator is spawned from ``fastnn.random``."""

    def __init__(self, p: float = 0.5, *, seed: int | None = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout: expected a number 0 <= p < 1, got {type(p).__name__} {p!r}")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: expected 0 <= p < 1, got {p}")
        self.p = float(p)
        if seed is not None:
            seed = check_int(seed, "Dropout seed", 0)
        self.rng = np.random.default_rng(seed) if seed is not None else random.generator().spawn(1)[0]
        self._mask: np.ndarray | None = None
        self._x_spec: tuple | None = None        # (dtype, shape) of the last input

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, "Dropout input")
        self._x_spec = (x.dtype, x.shape)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._mask = mask
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._x_spec is None:
            raise RuntimeError("Dropout.backward called before forward")
        dtype, shape = self._x_spec
        check_array(dy, "Dropout output gradient", dtype=dtype, shape=shape)
        return dy if self._mask is None else dy * self._mask      # eval mode or p = 0: the identity

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
