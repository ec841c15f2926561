"""Locally connected layers: a convolution without weight sharing (one weight per output
position), computed by the gather + micro-GEMM kernels of fastnn.kernels.local.lc2d."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.local.lc2d import (lc2d_forward_cpu, lc2d_forward_serial, lc2d_input_grad_cpu,
                                       lc2d_input_grad_serial, lc2d_weight_grad_cpu, lc2d_weight_grad_serial)
from fastnn.kernels.reduce import add_column_sums

from .. import random
from ..checks import cast_in_range, check_activation, check_array, check_bool, check_int, param_dtype
from ..module import Module
from .activations import activation_grad
from ._spatial import check_nhwc, check_padding, geometry, out_size, pair, stride_arg, threads_for, weight_bound


class LocallyConnected2D(Module):
    """``y[n, oh, ow, :] = act(b + sum over the window at (oh, ow) of x * weight[oh, ow])``, NHWC.

    Like ``Conv2D`` but every output position has its own weights (untied), so the input's
    spatial size is fixed at construction: ``input_shape=(H, W)``.

    Parameters: ``weight`` (OH, OW, KH, KW, in_channels, out_channels); ``bias``
    (OH, OW, out_channels) untied (default, as Keras) or (out_channels,) with
    ``tied_bias=True``. ``padding`` is "valid", "same" (TensorFlow's rule: output
    ceil(H / stride)) or an int/pair of explicit zero padding; ``dilation`` spaces the taps.
    ``get_keras_weights``/``set_keras_weights`` convert from/to Keras 2's
    ``LocallyConnected2D(implementation=1)`` layout: kernel (OH*OW, KH*KW*in, out), bias
    (OH, OW, out) -- the same memory order as ``weight``.

    Forward and backward never build the im2col matrix: patches are gathered per output
    position into per-thread scratch; the input gradient is gathered per input pixel
    (deterministic, no atomics).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_shape, stride=None, padding="valid",
                 dilation=1, activation: str | None = None, *, bias: bool = True, tied_bias: bool = False,
                 strides=None, dtype: np.dtype | type = np.float32):
        super().__init__()
        name = type(self).__name__
        stride = stride_arg(stride, strides, name)
        in_channels = check_int(in_channels, f"{name} in_channels", 1)
        out_channels = check_int(out_channels, f"{name} out_channels", 1)
        act = check_activation(activation, name)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = pair(stride, f"{name} stride")
        self.dilation = pair(dilation, f"{name} dilation")
        self.padding = check_padding(padding, name)
        self.input_shape = pair(input_shape, f"{name} input_shape")
        (oh, pt), (ow, pl) = (out_size(self.input_shape[a], self.kernel_size[a], self.stride[a], self.dilation[a],
                                       self.padding, a, name) for a in (0, 1))
        self.out_hw, self._pad = (oh, ow), (pt, pl)
        self.activation, self._act = activation, act
        self.tied_bias = check_bool(tied_bias, f"{name} tied_bias")
        self.dtype = param_dtype(dtype, name)
        kh, kw = self.kernel_size
        k = kh * kw * self.in_channels
        bound = weight_bound(k, self.out_channels, activation)
        values = {"weight": random.generator().uniform(-bound, bound, (oh, ow, kh, kw, self.in_channels,
                                                                        self.out_channels)).astype(self.dtype)}
        if check_bool(bias, f"{type(self).__name__} bias"):
            values["bias"] = np.zeros((self.out_channels,) if tied_bias else (oh, ow, self.out_channels), self.dtype)
        self._create_params(values)
        self._geo = geometry(self.stride, self._pad, self.dilation, self.kernel_size, self.out_hw, self.input_shape)
        self._x = self._y = None

    # -- shapes ------------------------------------------------------------------------
    @property
    def _pkc(self) -> tuple[int, int, int]:
        kh, kw = self.kernel_size
        return self.out_hw[0] * self.out_hw[1], kh * kw * self.in_channels, self.out_channels

    def _bias2d(self) -> np.ndarray:
        b = self.params.get("bias")
        if b is None:
            return np.empty((0, self.out_channels), self.dtype)
        return b.reshape(-1, self.out_channels)

    # -- running -----------------------------------------------------------------------
    def _forward4(self, x: np.ndarray) -> np.ndarray:
        P, K, O = self._pkc
        n = x.shape[0]
        y = np.empty((n, *self.out_hw, O), self.dtype)
        chunks = threads_for(n * P * K)
        fn = lc2d_forward_cpu if chunks > 1 else lc2d_forward_serial
        fn(x, self.params["weight"].reshape(P, K, O), self._bias2d(), y.reshape(n, P, O), self._geo, self._act,
           chunks)
        self._x, self._y = x, y
        return y

    def _backward4(self, dy: np.ndarray) -> np.ndarray:
        P, K, O = self._pkc
        x = self._x
        n = x.shape[0]
        dy = np.ascontiguousarray(dy)
        dz = activation_grad(dy, self._y, self._act)
        chunks = threads_for(n * P * K)
        wgrad = lc2d_weight_grad_cpu if chunks > 1 else lc2d_weight_grad_serial
        wgrad(x, dz.reshape(n, P, O), self.grads["weight"].reshape(P, K, O), self._geo, chunks)
        if "bias" in self.grads:
            gb = self.grads["bias"]
            add_column_sums(dz.reshape(n * P, O) if self.tied_bias else dz.reshape(n, P * O), gb.reshape(-1))
        if not self.input_grad:
            return None
        dx = np.empty_like(x)
        igrad = lc2d_input_grad_cpu if chunks > 1 else lc2d_input_grad_serial
        igrad(dz.reshape(n, P, O), self.params["weight"].reshape(P, K, O), dx, self._geo, chunks)
        return dx

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_nhwc(x, f"{type(self).__name__} input", self.in_channels, self.dtype, self.input_shape)
        return self._forward4(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_array(dy, f"{type(self).__name__} output gradient", dtype=self.dtype, shape=self._y.shape)
        return self._backward4(dy)

    # -- Keras 2 interchange -----------------------------------------------------------
    def get_keras_weights(self) -> list[np.ndarray]:
        """[kernel (OH*OW, KH*KW*in, out), bias (OH, OW, out)] as Keras 2's
        ``LocallyConnected2D(implementation=1)`` stores them (a tied bias is broadcast)."""
        P, K, O = self._pkc
        out = [self.params["weight"].reshape(P, K, O).copy()]
        if "bias" in self.params:
            out.append(np.broadcast_to(self.params["bias"], (*self.out_hw, O)).copy())
        return out

    def _keras_bias_shape(self) -> tuple[int, ...]:
        return (*self.out_hw, self.out_channels)

    def set_keras_weights(self, weights: list[np.ndarray]) -> None:
        """Load Keras 2 ``implementation=1`` weights: [kernel (OH*OW, KH*KW*in, out)[, bias (OH, OW, out)]]."""
        P, K, O = self._pkc
        where = f"{type(self).__name__}.set_keras_weights"
        want = 2 if "bias" in self.params else 1
        expected = f"a list of {want} arrays (kernel{', bias' if want == 2 else ''})"
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{where}: expected {expected}, got {type(weights).__name__}")
        if len(weights) != want:
            raise ValueError(f"{where}: expected {expected}, got {len(weights)} arrays")
        shapes = {"kernel": (P, K, O), "bias": self._keras_bias_shape()}
        arrays = []
        for what, w in zip(shapes, weights):
            try:
                w = np.asarray(w)
            except ValueError:           # a ragged nested list: NumPy's "inhomogeneous shape"
                raise ValueError(f"{where}: expected {what} shape {shapes[what]} (Keras implementation=1 "
                                 "layout), got a ragged nested sequence (rows of different lengths)") from None
            if w.dtype.kind not in "iuf":
                raise TypeError(f"{where}: expected a real-valued {what}, got dtype {w.dtype}")
            arrays.append(w)
        kernel = cast_in_range(arrays[0], self.dtype, f"{where}: kernel")
        if kernel.shape != shapes["kernel"]:
            raise ValueError(f"{where}: expected kernel shape {shapes['kernel']} (Keras implementation=1 layout), "
                             f"got {kernel.shape}")
        b = None
        if want == 2:
            b, shape = cast_in_range(arrays[1], self.dtype, f"{where}: bias"), shapes["bias"]
            if b.shape != shape:
                raise ValueError(f"{where}: expected bias shape {shape} (Keras implementation=1 layout), "
                                 f"got {b.shape}")
            b = b.reshape(*self.out_hw, O)
            if self.tied_bias:
                if not np.array_equal(b, np.broadcast_to(b[:1, :1], b.shape), equal_nan=True):   # NaN ties too
                    raise ValueError(f"{type(self).__name__}.set_keras_weights: the Keras bias differs between "
                                     "positions; build the layer with tied_bias=False")
                b = b[0, 0]
        self.params["weight"][...] = kernel.reshape(self.params["weight"].shape)   # all checked: now write
        if b is not None:
            self.params["bias"][...] = b

    # -- description -------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (*self.input_shape, self.in_channels)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, self.sample_shape)
        return (*self.out_hw, self.out_channels)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        P, K, O = self._pkc
        return P * K * O

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_shape={self.input_shape}, stride={self.stride}, padding={self.padding!r}, "
                f"dilation={self.dilation}{act}, tied_bias={self.tied_bias}, dtype={self.dtype})")


class LocallyConnected1D(LocallyConnected2D):
    """Untied 1-D local connectivity over (N, L, in_channels) sequences (channels last).

    ``weight`` (OL, K, in_channels, out_channels); ``bias`` (OL, out_channels) untied or
    (out_channels,) tied. Keras 2 ``LocallyConnected1D(implementation=1)`` layout: kernel
    (OL, K*in, out), bias (OL, out). Computed as a 2-D layer of height 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, input_length: int,
                 stride: int | None = None, padding="valid", dilation: int = 1, activation: str | None = None, *,
                 bias: bool = True, tied_bias: bool = False, strides=None, dtype: np.dtype | type = np.float32):
        for v, what in ((kernel_size, "kernel_size"), (input_length, "input_length"), (stride, "stride"),
                        (strides, "strides"), (dilation, "dilation"), (padding, "padding")):
            if isinstance(v, (tuple, list)):
                kind = "an int or a string" if what == "padding" else "an int"
                raise TypeError(f"LocallyConnected1D {what}: expected {kind}, got {v!r}")
        kernel_size, input_length, stride, dilation = (
            check_int(v, f"LocallyConnected1D {what}", 1) for v, what in (
                (kernel_size, "kernel_size"), (input_length, "input_length"),
                (stride_arg(stride, strides, "LocallyConnected1D"), "stride"), (dilation, "dilation")))
        if not isinstance(padding, str):
            padding = (0, pair(padding, "LocallyConnected1D padding", minimum=0)[0])
        super().__init__(in_channels, out_channels, (1, kernel_size), (1, input_length), (1, stride), padding,
                         (1, dilation), activation, bias=bias, tied_bias=tied_bias, dtype=dtype)
        # drop the height-1 axes: weight (OL, K, in, out), untied bias (OL, out)
        shapes = {"weight": (self.out_hw[1], kernel_size, self.in_channels, self.out_channels),
                  "bias": (self.out_channels,) if tied_bias else (self.out_hw[1], self.out_channels)}
        self._create_params({n: v.reshape(shapes[n]) for n, v in self.params.items()})

    @property
    def input_length(self) -> int:
        return self.input_shape[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        what = "LocallyConnected1D input"
        check_array(x, what, dtype=self.dtype)
        if x.ndim != 3 or x.shape[2] != self.in_channels or x.shape[1] != self.input_length:
            hint = " (channels must be last: (N, L, C))" if x.ndim == 3 and x.shape[1] == self.in_channels else ""
            raise ValueError(f"{what}: expected shape (N, {self.input_length}, {self.in_channels}), "
                             f"got {x.shape}{hint}")
        x = np.ascontiguousarray(x)
        return self._forward4(x[:, None])[:, 0]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError("LocallyConnected1D.backward called before forward")
        check_array(dy, "LocallyConnected1D output gradient", dtype=self.dtype, shape=self._y[:, 0].shape)
        dx = self._backward4(dy[:, None])
        return None if dx is None else dx[:, 0]

    def get_keras_weights(self) -> list[np.ndarray]:
        """[kernel (OL, K*in, out), bias (OL, out)] as Keras 2 ``LocallyConnected1D(implementation=1)``."""
        out = super().get_keras_weights()
        return out[:1] + [b.reshape(self.out_hw[1], self.out_channels) for b in out[1:]]

    def _keras_bias_shape(self) -> tuple[int, ...]:
        return (self.out_hw[1], self.out_channels)

    def set_keras_weights(self, weights: list[np.ndarray]) -> None:
        """Load Keras 2 ``implementation=1`` weights: [kernel (OL, K*in, out)[, bias (OL, out)]]."""
        super().set_keras_weights(weights)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.input_length, self.in_channels)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, self.sample_shape)
        return (self.out_hw[1], self.out_channels)

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"LocallyConnected1D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[1]}, "
                f"input_length={self.input_length}, stride={self.stride[1]}, padding={self.padding!r}, "
                f"dilation={self.dilation[1]}{act}, tied_bias={self.tied_bias}, dtype={self.dtype})")
