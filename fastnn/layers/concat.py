"""Concat: parallel branches on the same input, outputs joined on the channel (last) axis."""
from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module
from .branches import Branches


class Concat(Branches):
    """``Concat(branch0, branch1, ...)``: y = concatenate([b(x) for b in branches], axis=-1).

    An Inception module is four branches concatenated on channels. The backward pass splits
    the output gradient by channels and sums the branches' input gradients. Like
    ``Sequential`` it gathers every parameter below into one flat buffer (named
    "<branch>.<layer>.<param>"); ``summary`` lists the branches' parameters and
    multiply-adds, and inside a ``Sequential`` the module is one row with their totals.
    """

    def __init__(self, *branches: Module) -> None:
        super().__init__([(str(i), b) for i, b in enumerate(branches)])
        self._splits = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        outs = [b.forward(x) for b in self.branches]
        lead = outs[0].shape[:-1]
        for i, o in enumerate(outs):
            if o.shape[:-1] != lead:
                raise ValueError(f"Concat: branch {i} output shape {o.shape} does not match branch 0's "
                                 f"{outs[0].shape} except on the last (channel) axis")
        splits = np.cumsum([o.shape[-1] for o in outs])[:-1]
        y = np.concatenate(outs, axis=-1)
        self._splits, self._y_spec = splits, (y.shape, y.dtype)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._splits is None:
            raise RuntimeError("Concat.backward called before forward")
        # checked before any branch adds to its gradients
        check_array(dy, "Concat output gradient", dtype=self._y_spec[1], shape=self._y_spec[0])
        return self._sum_input_grads(b.backward(np.ascontiguousarray(d))
                                     for b, d in zip(self.branches, np.split(dy, self._splits, axis=-1)))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = [b.output_shape(input_shape) for b in self.branches]
        if any(s[:-1] != shapes[0][:-1] for s in shapes):
            raise ValueError(f"Concat: the branches' outputs must differ only in the last axis, got {shapes} "
                             f"for input {tuple(input_shape)}")
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))
