"""Branches: the base of containers that run several sub-modules on the same input (Concat,
Residual), gathering their parameters into one flat buffer."""
from __future__ import annotations

import numpy as np

from ..module import Module
from .sequential import _format_rows, _summary_input


class Branches(Module):
    """Named branches on one input; subclasses join their outputs (``forward``) and hand each
    branch its share of the output gradient (``backward``)."""

    def __init__(self, named: list[tuple[str, Module]]) -> None:
        super().__init__()
        what = type(self).__name__
        if not named:
            raise ValueError(f"{what}: expected at least one branch, got none")
        for name, b in named:
            if not isinstance(b, Module):
                raise TypeError(f"{what}: branch {name} must be a fastnn Module, got {type(b).__name__}")
        self._named = named
        self.branches = [b for _, b in named]
        self._adopt_children()
        self._y_spec = None             # (shape, dtype) of the last output

    def children(self) -> list[tuple[str, Module]]:
        return list(self._named)

    def __setstate__(self, state: dict) -> None:
        """A Concat pickled before this base existed kept only its ``branches``."""
        state.setdefault("_named", [(str(i), b) for i, b in enumerate(state.get("branches", []))])
        state.setdefault("_y_spec", None)
        super().__setstate__(state)

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

    def _sum_input_grads(self, grads) -> np.ndarray | None:
        """dx: the sum of the branches' input gradients. None from a branch is a stop (its own
        input_grad is off: nothing flows back through it, as in Sequential)."""
        dx = None
        for g in grads:
            if self.input_grad and g is not None:
                dx = g if dx is None else dx + g
        return dx

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return sum(b.macs(input_shape) for b in self.branches)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return next((s for s in (b.sample_shape for b in self.branches) if s is not None), None)

    def summary(self, input_shape: tuple[int, ...] | None = None, print_fn=print) -> list[dict]:
        """One row per branch (output shape, parameters, multiply-adds per sample) and the total;
        ``input_shape`` per sample, as ``Sequential.summary`` takes it (None: a branch's)."""
        input_shape = _summary_input(self, input_shape)
        rows = [{"name": n, "type": type(b).__name__, "output_shape": b.output_shape(input_shape),
                 "params": b.num_params, "macs": b.macs(input_shape)} for n, b in self.children()]
        rows.append({"name": "total", "type": "", "output_shape": self.output_shape(input_shape),
                     "params": self.num_params, "macs": self.macs(input_shape)})
        if print_fn is not None:
            print_fn(_format_rows(rows))
        return rows
