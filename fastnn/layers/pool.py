"""Pooling layers over NHWC images: MaxPool2D, AvgPool2D, GlobalAvgPool2D."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.local.pool import (avgpool_backward_cpu, avgpool_backward_serial, avgpool_forward_cpu,
                                       avgpool_forward_serial, maxpool_backward_cpu, maxpool_backward_serial,
                                       maxpool_forward_cpu, maxpool_forward_serial, sum_dtype)
from fastnn.kernels.parallel import pick

from ..checks import check_array
from ..module import Module
from ._spatial import check_padding, geometry, out_size, pair, stride_arg


class _Pool2D(Module):
    """``stride`` (torch's name) or ``strides`` (Keras's) defaults to the kernel size."""

    def __init__(self, kernel_size=2, stride=None, padding="valid", *, strides=None) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = pair(stride_arg(stride, strides, name, default=self.kernel_size), f"{name} stride")
        self.padding = check_padding(padding, name)
        if isinstance(self.padding, tuple) and any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel {self.kernel_size}")
        self._x = self._y = self._geo = None

    def _geometry(self, hw):
        name = type(self).__name__
        (oh, pt), (ow, pl) = (out_size(hw[a], self.kernel_size[a], self.stride[a], 1, self.padding, a, name)
                              for a in (0, 1))
        return (oh, ow), geometry(self.stride, (pt, pl), (1, 1), self.kernel_size, (oh, ow), hw)

    def _check(self, x):
        what = f"{type(self).__name__} input"
        check_array(x, what)
        if x.ndim != 4:
            raise ValueError(f"{what}: expected NHWC shape (N, H, W, C), got {x.shape}")
        return np.ascontiguousarray(x)

    def _check_dy(self, dy):
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_array(dy, f"{type(self).__name__} output gradient", dtype=self._y.dtype, shape=self._y.shape)
        return np.ascontiguousarray(dy)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, (None, None, None))
        (oh, ow), _ = self._geometry(tuple(input_shape[:2]))
        return (oh, ow, input_shape[2])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kernel_size}, stride={self.stride}, padding={self.padding!r})"


class MaxPool2D(_Pool2D):
    """Maximum over each window (padding never wins; NaN propagates)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        (oh, ow), geo = self._geometry(x.shape[1:3])
        y = np.empty((x.shape[0], oh, ow, x.shape[3]), x.dtype)
        idx = np.empty(y.shape, np.int32)
        pick(maxpool_forward_cpu, maxpool_forward_serial, x.size)(x, y, idx, geo)
        self._x, self._y, self._geo, self._idx = x, y, geo, idx
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = self._check_dy(dy)
        dx = np.empty_like(self._x)
        pick(maxpool_backward_cpu, maxpool_backward_serial, dx.size)(dy, self._idx, dx)
        return dx


class AvgPool2D(_Pool2D):
    """Mean over each window. ``count_include_pad``: whether zero padding counts in the mean's
    divisor (then every window divides by KH*KW). The default follows the padding's convention:
    counted for an explicit int padding, as torch's ``AvgPool2d`` (``count_include_pad=True``);
    not counted for ``"same"``, as Keras's ``AveragePooling2D`` (only the window's pixels inside
    the image). ``"valid"`` has no padding, so both agree."""

    def __init__(self, kernel_size=2, stride=None, padding="valid", *, strides=None,
                 count_include_pad: bool | None = None) -> None:
        super().__init__(kernel_size, stride, padding, strides=strides)
        if count_include_pad is not None and not isinstance(count_include_pad, (bool, np.bool_)):
            raise TypeError(f"AvgPool2D count_include_pad: expected True, False or None, got {count_include_pad!r}")
        self.count_include_pad = (isinstance(self.padding, tuple) if count_include_pad is None
                                  else bool(count_include_pad))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        (oh, ow), geo = self._geometry(x.shape[1:3])
        y = np.empty((x.shape[0], oh, ow, x.shape[3]), x.dtype)
        acc = np.empty(0, sum_dtype(x.dtype, int(geo[6] * geo[7])))     # the sum's dtype
        pick(avgpool_forward_cpu, avgpool_forward_serial, x.size)(x, y, geo, self.count_include_pad, acc)
        self._x, self._y, self._geo = x, y, geo
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = self._check_dy(dy)
        dx = np.empty_like(self._x)
        pick(avgpool_backward_cpu, avgpool_backward_serial, dx.size)(dy, dx, self._geo, self.count_include_pad)
        return dx

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, count_include_pad={self.count_include_pad})"


class GlobalAvgPool2D(Module):
    """(N, H, W, C) -> (N, C): the mean over all pixels of each channel."""

    def __init__(self) -> None:
        super().__init__()
        self._shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(x, "GlobalAvgPool2D input")
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool2D input: expected NHWC shape (N, H, W, C), got {x.shape}")
        if x.shape[1] * x.shape[2] == 0:
            raise ValueError(f"GlobalAvgPool2D input: expected at least one pixel (H, W >= 1), got {x.shape}")
        self._shape, self._dtype = x.shape, x.dtype
        return x.mean(axis=(1, 2), dtype=sum_dtype(x.dtype, x.shape[1] * x.shape[2])).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError("GlobalAvgPool2D.backward called before forward")
        n, h, w, c = self._shape
        check_array(dy, "GlobalAvgPool2D output gradient", dtype=self._dtype, shape=(n, c))
        return np.ascontiguousarray(np.broadcast_to((dy / (h * w))[:, None, None, :], self._shape))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._expect_input(input_shape, (None, None, None))
        return (input_shape[-1],)
