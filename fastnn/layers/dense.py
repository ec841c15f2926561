"""Dense (fully connected) layer: y = act(x @ W + b), W of shape (in, out)."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.reduce import add_column_sums

from .. import random
from ..checks import check_activation, check_array, check_bool, check_int, param_dtype
from ..gemm import matmul
from ..module import Module
from .activations import activation_grad


class Dense(Module):
    """``y = activation(x @ weight + bias)``; x: (N, in_features), y: (N, out_features).

    ``weight`` is (in_features, out_features) as in Keras (``y = x @ W + b``); ``bias`` is
    (out_features,). The products run on ``fastnn.matmul``: forward with the bias and
    ``activation`` in {None, "relu", "tanh", "sigmoid"} fused into the tile write-back,
    backward ``x.T @ dz`` accumulated in place into the weight gradient (beta = 1). Weights start He-uniform for ReLU and
    Glorot-uniform otherwise, drawn from ``fastnn.random``; biases start at zero.
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = None, *,
                 bias: bool = True, dtype: np.dtype | type = np.float32):
        super().__init__()
        in_features = check_int(in_features, "Dense in_features", 1)
        out_features = check_int(out_features, "Dense out_features", 1)
        act = check_activation(activation, "Dense")
        self.in_features, self.out_features = in_features, out_features
        self.activation, self._act = activation, act
        self.dtype = param_dtype(dtype, "Dense")
        fan = 6.0 / in_features if activation == "relu" else 6.0 / (in_features + out_features)
        w = random.generator().uniform(-np.sqrt(fan), np.sqrt(fan), (in_features, out_features))
        values = {"weight": w.astype(self.dtype)}
        if check_bool(bias, f"{type(self).__name__} bias"):
            values["bias"] = np.zeros(out_features, self.dtype)
        self._create_params(values)
        self._x = self._y = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, "Dense input", dtype=self.dtype, shape=(None, self.in_features))
        y = matmul(x, self.params["weight"], bias=self.params.get("bias"), activation=self.activation)
        self._x, self._y = x, y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError("Dense.backward called before forward")
        check_array(dy, "Dense output gradient", dtype=self.dtype, shape=self._y.shape)
        dz = activation_grad(dy, self._y, self._act)
        matmul(self._x, dz, out=self.grads["weight"], trans_a=True, beta=1.0)
        if "bias" in self.grads:
            add_column_sums(dz, self.grads["bias"])
        return matmul(dz, self.params["weight"], trans_b=True) if self.input_grad else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, self.sample_shape)
        return (self.out_features,)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        return self.in_features * self.out_features

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        bias = "" if "bias" in self.params else ", bias=False"
        return f"Dense({self.in_features}, {self.out_features}{act}{bias}, dtype={self.dtype})"

