"""BlockDiagonalDense: ``groups`` independent dense blocks, the lecture's W_A x_A + W_B x_B."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.reduce import add_column_sums

from .. import random
from ..checks import check_activation, check_array, check_bool, check_int, param_dtype
from ..gemm import batched_matmul
from ..module import Module
from .activations import activation_grad


class BlockDiagonalDense(Module):
    """``y[:, g*o:(g+1)*o] = act(x[:, g*i:(g+1)*i] @ weight[g] + bias[g*o:(g+1)*o])``.

    Equal to a ``Dense`` layer whose (in, out) matrix is block-diagonal with the blocks
    ``weight[g]`` (shape (groups, in_features // groups, out_features // groups)), at
    1/groups of the multiply-adds and parameters (the lecture: 8x4 = 32 multiplications
    against 2 x (2x4) = 16). All blocks run in one ``fastnn.batched_matmul`` call on the
    column blocks of x and y read and written in place, one block per thread, bias and
    activation fused: no reshaping copies (torch's bmm needs x permuted to (groups, N, i)).
    """

    def __init__(self, in_features: int, out_features: int, groups: int, activation: str | None = None, *,
                 bias: bool = True, dtype: np.dtype | type = np.float32):
        super().__init__()
        in_features = check_int(in_features, "BlockDiagonalDense in_features", 1)
        out_features = check_int(out_features, "BlockDiagonalDense out_features", 1)
        groups = check_int(groups, "BlockDiagonalDense groups", 1)
        if in_features % groups or out_features % groups:
            raise ValueError(f"BlockDiagonalDense: groups={groups} must divide in_features={in_features} and "
                             f"out_features={out_features}")
        act = check_activation(activation, "BlockDiagonalDense")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.activation, self._act = activation, act
        self.dtype = param_dtype(dtype, "BlockDiagonalDense")
        bi, bo = self.in_features // groups, self.out_features // groups
        fan = 6.0 / bi if activation == "relu" else 6.0 / (bi + bo)
        w = random.generator().uniform(-np.sqrt(fan), np.sqrt(fan), (groups, bi, bo))
        values = {"weight": w.astype(self.dtype)}
        if check_bool(bias, f"{type(self).__name__} bias"):
            values["bias"] = np.zeros(self.out_features, self.dtype)
        self._create_params(values)
        self._x = self._y = None

    def _groups(self, a: np.ndarray) -> np.ndarray:
        """(groups, N, features/groups) view of a (N, features) array: its column blocks."""
        return a.reshape(a.shape[0], self.groups, a.shape[1] // self.groups).transpose(1, 0, 2)

    def _blocks(self):
        bi, bo = self.in_features // self.groups, self.out_features // self.groups
        return [(slice(g * bi, (g + 1) * bi), slice(g * bo, (g + 1) * bo)) for g in range(self.groups)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, "BlockDiagonalDense input", dtype=self.dtype, shape=(None, self.in_features))
        x = np.ascontiguousarray(x)
        w = self.params["weight"]
        y = np.empty((x.shape[0], self.out_features), self.dtype)
        bias = self.params.get("bias")
        batched_matmul(self._groups(x), w, self._groups(y), activation=self.activation,
                       bias=None if bias is None else bias.reshape(self.groups, -1))
        self._x, self._y = x, y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError("BlockDiagonalDense.backward called before forward")
        check_array(dy, "BlockDiagonalDense output gradient", dtype=self.dtype, shape=self._y.shape)
        dy = np.ascontiguousarray(dy)
        dz = activation_grad(dy, self._y, self._act)
        w, gw = self.params["weight"], self.grads["weight"]
        batched_matmul(self._groups(self._x), self._groups(dz), gw, trans_a=True, beta=1.0)
        dx = np.empty_like(self._x) if self.input_grad else None
        if dx is not None:
            batched_matmul(self._groups(dz), w, self._groups(dx), trans_b=True)
        if "bias" in self.grads:
            add_column_sums(dz, self.grads["bias"])
        return dx

    def to_dense(self) -> np.ndarray:
        """The equivalent (in_features, out_features) block-diagonal matrix of a Dense layer."""
        full = np.zeros((self.in_features, self.out_features), self.dtype)
        for g, (si, so) in enumerate(self._blocks()):
            full[si, so] = self.params["weight"][g]
        return full

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, self.sample_shape)
        return (self.out_features,)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return self.in_features * self.out_features // self.groups

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"BlockDiagonalDense({self.in_features}, {self.out_features}, groups={self.groups}{act}, "
                f"dtype={self.dtype})")
