"""Residual: a block plus a shortcut on the same input, y = block(x) + x (He et al. 2016)."""
from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module
from .branches import Branches


class Residual(Branches):
    """``Residual(block, shortcut=None)``: y = block(x) + shortcut(x), the shortcut the identity
    by default (the lecture's shortcut connections; a ResNet block). Give a ``shortcut`` (e.g. a
    1x1 ``Conv2D`` with the block's stride) when the block changes the shape. Backward hands dy
    to both and sums their input gradients, so the identity path carries dy back unchanged.
    Parameters are named "block.<...>" and "shortcut.<...>" in one flat buffer, as ``Concat``'s.
    """

    def __init__(self, block: Module, shortcut: Module | None = None) -> None:
        super().__init__([("block", block)] + ([("shortcut", shortcut)] if shortcut is not None else []))
        self.block, self.shortcut = block, shortcut

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.block.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        if not isinstance(s, np.ndarray) or y.shape != s.shape or y.dtype != s.dtype:
            what = "input" if self.shortcut is None else "shortcut output"
            raise ValueError(f"Residual: the block's output {y.dtype}{y.shape} must match the {what} "
                             f"{getattr(s, 'dtype', type(s).__name__)}{getattr(s, 'shape', '')}; give a shortcut "
                             f"that maps the input to the block's output shape")
        self._y_spec = (y.shape, y.dtype)
        return y + s

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if self._y_spec is None:
            raise RuntimeError("Residual.backward called before forward")
        check_array(dy, "Residual output gradient", dtype=self._y_spec[1], shape=self._y_spec[0])
        dy = np.ascontiguousarray(dy)
        block = self.block.backward(dy)
        return self._sum_input_grads([block, dy if self.shortcut is None else self.shortcut.backward(dy)])

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        out = tuple(self.block.output_shape(input_shape))
        other = tuple(input_shape) if self.shortcut is None else tuple(self.shortcut.output_shape(input_shape))
        if out != other:
            raise ValueError(f"Residual: the block's per-sample output {out} must match the "
                             f"{'input' if self.shortcut is None else 'shortcut output'} {other}")
        return out
