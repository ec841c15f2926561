"""Conv2D: local connectivity plus weight sharing (the lecture's CNN), NHWC, grouped."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.local.conv2d import (conv2d_forward_cpu, conv2d_forward_serial, conv2d_input_grad_cpu,
                                         conv2d_input_grad_serial, conv2d_weight_grad_cpu, conv2d_weight_grad_serial)
from fastnn.kernels.reduce import add_column_sums

from .. import random
from ..checks import check_activation, check_array, check_bool, check_int, param_dtype
from ..module import Module
from .activations import activation_grad
from ._spatial import check_nhwc, check_padding, geometry, out_size, pair, stride_arg, threads_for, weight_bound


class Conv2D(Module):
    """``y = act(conv(x, weight) + bias)`` over NHWC images (cross-correlation, as torch/Keras).

    ``weight`` (KH, KW, in_channels // groups, out_channels) -- Keras's kernel layout
    (torch's (out, in/groups, KH, KW) is ``weight.transpose(3, 2, 0, 1)``); ``bias``
    (out_channels,). ``padding``: "valid", "same" (output ceil(H / stride)) or an int/pair
    of explicit zero padding (torch's ``padding=``). ``groups`` splits the channels into
    independent convolutions (output channels ``g*O/G ...`` see input channels ``g*C/G ...``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=None, padding="valid", dilation=1,
                 groups: int = 1, activation: str | None = None, *, bias: bool = True, strides=None,
                 dtype: np.dtype | type = np.float32):
        super().__init__()
        stride = stride_arg(stride, strides, "Conv2D")
        in_channels = check_int(in_channels, "Conv2D in_channels", 1)
        out_channels = check_int(out_channels, "Conv2D out_channels", 1)
        groups = check_int(groups, "Conv2D groups", 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2D: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        act = check_activation(activation, "Conv2D")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size")
        self.stride = pair(stride, "Conv2D stride")
        self.dilation = pair(dilation, "Conv2D dilation")
        self.padding = check_padding(padding, "Conv2D")
        self.activation, self._act = activation, act
        self.dtype = param_dtype(dtype, "Conv2D")
        kh, kw = self.kernel_size
        cg = self.in_channels // self.groups
        bound = weight_bound(kh * kw * cg, self.out_channels // self.groups * kh * kw, activation)
        w = random.generator().uniform(-bound, bound, (kh, kw, cg, self.out_channels))
        values = {"weight": w.astype(self.dtype)}
        if check_bool(bias, f"{type(self).__name__} bias"):
            values["bias"] = np.zeros(self.out_channels, self.dtype)
        self._create_params(values)
        self._x = self._y = self._geo = None

    def _geometry(self, hw: tuple[int, int]):
        (oh, pt), (ow, pl) = (out_size(hw[a], self.kernel_size[a], self.stride[a], self.dilation[a], self.padding,
                                       a, "Conv2D") for a in (0, 1))
        return (oh, ow), geometry(self.stride, (pt, pl), self.dilation, self.kernel_size, (oh, ow), hw)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_nhwc(x, "Conv2D input", self.in_channels, self.dtype)
        (oh, ow), geo = self._geometry(x.shape[1:3])
        n = x.shape[0]
        y = np.empty((n, oh, ow, self.out_channels), self.dtype)
        b = self.params.get("bias", np.empty(0, self.dtype))
        k = self.params["weight"][..., 0].size
        chunks = threads_for(y.size // self.out_channels * k)
        fn = conv2d_forward_cpu if chunks > 1 else conv2d_forward_serial
        fn(x, self.params["weight"], b, y, geo, self._act, self.groups, chunks)
        self._x, self._y, self._geo = x, y, geo
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError("Conv2D.backward called before forward")
        check_array(dy, "Conv2D output gradient", dtype=self.dtype, shape=self._y.shape)
        dy = np.ascontiguousarray(dy)
        dz = activation_grad(dy, self._y, self._act)
        x = self._x
        k = self.params["weight"][..., 0].size
        chunks = threads_for(dz.size // self.out_channels * k)
        (conv2d_weight_grad_cpu if chunks > 1 else conv2d_weight_grad_serial)(
            x, dz, self.grads["weight"], self._geo, self.groups, chunks)
        if "bias" in self.grads:
            add_column_sums(dz.reshape(-1, self.out_channels), self.grads["bias"])
        if not self.input_grad:
            return None
        dx = np.empty_like(x)
        (conv2d_input_grad_cpu if chunks > 1 else conv2d_input_grad_serial)(
            dz, self.params["weight"], dx, self._geo, chunks)
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, (None, None, self.in_channels))
        (oh, ow), _ = self._geometry(tuple(input_shape[:2]))
        return (oh, ow, self.out_channels)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        oh, ow, _ = self.output_shape(input_shape)
        return oh * ow * self.params["weight"].size

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        grp = f", groups={self.groups}" if self.groups > 1 else ""
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}{grp}{act}, "
                f"dtype={self.dtype})")
