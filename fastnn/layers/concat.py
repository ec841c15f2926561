"""Concat: parallel branches on the same input, outputs joined on the channel (last) axis."""
from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module
from .sequential import _format_rows


class Concat(Module):
    """``Concat(branch0, branch1, ...)``: y = concatenate([b(x) for b in branches], axis=-1).

    An Inception module is four branches concatenated on channels. The backward pass splits
    the output gradient by channels and sums the branches' input gradients. Like
    ``Sequential`` it gathers every parameter below into one flat buffer (named
    "<branch>.<layer>.<param>"); ``summary`` lists the branches' parameters and
    multiply-adds, and inside a ``Sequential`` the module is one row with their totals.
    """

    def __init__(self, *branches: Module) -> None:
        super().__init__()
        if not branches:
            raise ValueError("Concat: expected at least one branch, got none")
        for i, b in enumerate(branches):
            if not isinstance(b, Module):
                raise TypeError(f"Concat: branch {i} must be a fastnn Module, got {type(b).__name__}")
        self.branches = list(branches)
        self._adopt_children()
        self._splits = None

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), b) for i, b in enumerate(self.branches)]

    @property
    def input_grad(self) -> bool:
        return self.__dict__.get("_input_grad", True)

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        """Off (a model's first layer): every branch skips its input gradient too (each
        branch's first layer with parameters, as ``Sequential``), not only the sum."""
        for b in self.branches:
            b.input_grad = value
        self._input_grad = value

    def forward(self, x: np.ndarray) -> np.ndarray:
        outs = [b.forward(x) for b in self.branches]
        lead = outs[0].shape[:-1]
        for i, o in enumerate(outs):
            if o.shape[:-1] != lead:
                raise ValueError(f"Concat: branch {i} output shape {o.shape} does not match branch 0's "
                                 f"{outs[0].shape} except on the last (channel) axis")
        self._splits = np.cumsum([o.shape[-1] for o in outs])[:-1]
        y = np.concatenate(outs, axis=-1)
        self._y_shape, self._dtype = y.shape, y.dtype
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._splits is None:
            raise RuntimeError("Concat.backward called before forward")
        check_array(dy, "Concat output gradient", dtype=self._dtype, shape=self._y_shape)   # before any branch adds
        dx = None
        for b, d in zip(self.branches, np.split(dy, self._splits, axis=-1)):
            g = b.backward(np.ascontiguousarray(d))
            if self.input_grad and g is not None:     # None: the branch's own input_grad is off, a stop
                dx = g if dx is None else dx + g      # as in Sequential: nothing flows back through it
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = [b.output_shape(input_shape) for b in self.branches]
        if any(s[:-1] != shapes[0][:-1] for s in shapes):
            raise ValueError(f"Concat: the branches' outputs must differ only in the last axis, got {shapes} "
                             f"for input {tuple(input_shape)}")
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return sum(b.macs(input_shape) for b in self.branches)

    def summary(self, input_shape: tuple[int, ...], print_fn=print) -> list[dict]:
        """One row per branch (output shape, parameters, multiply-adds per sample) and the total."""
        rows = [{"name": n, "type": type(b).__name__, "output_shape": b.output_shape(input_shape),
                 "params": b.num_params, "macs": b.macs(input_shape)} for n, b in self.children()]
        rows.append({"name": "total", "type": "", "output_shape": self.output_shape(input_shape),
                     "params": self.num_params, "macs": self.macs(input_shape)})
        if print_fn is not None:
            print_fn(_format_rows(rows))
        return rows
