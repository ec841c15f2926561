"""Shared helpers of the spatial layers: argument checks, padding arithmetic, NHWC checks."""
from __future__ import annotations

import numba
import numpy as np

from ..checks import check_array


def pair(value, what: str, *, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        raise TypeError(f"{what}: expected an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in vals):
        raise ValueError(f"{what}: expected values >= {minimum}, got {value!r}")
    return int(vals[0]), int(vals[1])


def stride_arg(stride, strides, what: str, default=1):
    """The stride given as ``stride`` (torch's name) or ``strides`` (Keras's), ``default`` when
    neither is. Both given is an error unless they mean the same pair (2 and (2, 2) do); each is
    checked as an int or a pair of ints >= 1 then. Returns the value as given, for the caller's
    own checks."""
    if stride is not None and strides is not None:
        if pair(stride, f"{what} stride") != pair(strides, f"{what} strides"):
            raise ValueError(f"{what}: got stride={stride!r} and strides={strides!r}; give one of them")
    return next((s for s in (stride, strides) if s is not None), default)


def check_padding(padding, what: str):
    """'valid', 'same' (either case, as Keras), or explicit symmetric zero padding (an int or a
    pair, torch style)."""
    if isinstance(padding, str):
        padding = padding.lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"{what}: padding must be 'valid', 'same' or an int, got {padding!r}")
        return padding
    return pair(padding, f"{what} padding", minimum=0)


def out_size(size: int, k: int, stride: int, dilation: int, padding, axis: int, what: str) -> tuple[int, int]:
    """(output size, zero padding before) along one axis; raises when the (dilated) kernel
    does not fit the padded input."""
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        before = max((out - 1) * stride + k_eff - size, 0) // 2
        return out, before
    pad = 0 if padding == "valid" else padding[axis]
    if size + 2 * pad < k_eff:
        extent = f"kernel extent {k_eff} (kernel {k}, dilation {dilation})" if dilation != 1 else f"kernel {k}"
        raise ValueError(f"{what}: {extent} is larger than the "
                         f"padded input {size + 2 * pad} (size {size}, padding {pad}) along {'hw'[axis]}")
    return (size + 2 * pad - k_eff) // stride + 1, pad


def check_nhwc(x, what: str, channels: int, dtype, spatial: tuple[int, int] | None = None) -> np.ndarray:
    """x must be (N, H, W, channels) of ``dtype``; points out NCHW input when it can tell."""
    check_array(x, what, dtype=dtype)
    if x.ndim != 4:
        raise ValueError(f"{what}: expected NHWC shape (N, H, W, {channels}), got {x.shape}")
    if x.shape[3] != channels:
        hint = (" (this looks like NCHW; fastnn images are NHWC: use x.transpose(0, 2, 3, 1))"
                if x.shape[1] == channels else "")
        raise ValueError(f"{what}: expected {channels} channels on the last axis (NHWC), got shape {x.shape}{hint}")
    if spatial is not None and tuple(x.shape[1:3]) != tuple(spatial):
        raise ValueError(f"{what}: expected spatial size {tuple(spatial)} (fixed at construction), "
                         f"got {tuple(x.shape[1:3])}")
    return np.ascontiguousarray(x)


def geometry(stride, pad_before, dilation, kernel, out_hw, in_hw) -> np.ndarray:
    """The kernels' int64 geometry vector (sh, sw, pt, pl, dh, dw, KH, KW, OH, OW, H, W)."""
    return np.array([*stride, *pad_before, *dilation, *kernel, *out_hw, *in_hw], dtype=np.int64)


def threads_for(work: int) -> int:
    """Chunks to split a kernel call into: all threads for big work (then pinned:
    kernels/affinity.py), 1 (serial) for small."""
    from fastnn.kernels.affinity import keep_off
    from fastnn.kernels.parallel import PARALLEL_MIN_ELEMENTS

    if work < PARALLEL_MIN_ELEMENTS:
        return 1
    threads = numba.get_num_threads()
    if threads > 1:
        keep_off(threads)
    return threads


def weight_bound(fan_in: int, fan_out: int, activation) -> float:
    """He-uniform bound for ReLU, Glorot-uniform otherwise (as Dense)."""
    return float(np.sqrt(6.0 / fan_in if activation == "relu" else 6.0 / (fan_in + fan_out)))
