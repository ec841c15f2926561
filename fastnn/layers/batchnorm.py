"""BatchNorm: batch normalization over every axis but the last (channels-last).

Math    training: mean_c, var_c over the N*H*W values of channel c (biased var);
        xhat = (x - mean) / sqrt(var + eps); y = weight * xhat + bias.
        running_mean <- (1 - m) running_mean + m mean; running_var <- (1 - m) running_var
        + m var * n / (n - 1) (unbiased), m = momentum, or 1 / num_batches_tracked when None.
        eval: the running statistics stand for mean and var (with track_running_stats).
        backward (batch statistics): dxhat = dy * weight;
        dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps);
        dweight = sum(dy * xhat), dbias = sum(dy) over every axis but the last.
Shapes  x, y: (N, C) as torch's BatchNorm1d, or (N, H, W, C) images as BatchNorm2d on NHWC
        (Keras's BatchNormalization(axis=-1), whose momentum is 1 - m and epsilon eps).
How     kernels/batchnorm.py on the (N*H*W, C) view: one pass for the statistics (float64 sums),
        one for y; backward one pass for its two sums, one for dx. x is kept, not xhat. Numba's
        threads from kernels/parallel.py's PARALLEL_MIN_ELEMENTS values.
Oracle  torch.nn.BatchNorm1d/2d (tests/test_layers.py), finite differences.
"""
from __future__ import annotations

import math

import numpy as np

from fastnn.kernels.batchnorm import (affine2_cpu, affine2_serial, affine_cpu, affine_serial, two_sums_cpu,
                                      two_sums_serial)
from fastnn.kernels.parallel import pick

from ..checks import check_array, check_bool, check_int, check_real, param_dtype
from ..module import Module

#: rows per chunk of the per-channel sums, at least: the chunk count depends on the rows alone
#: (results equal at any thread count), at most MAX_CHUNKS chunks
ROWS_PER_CHUNK, MAX_CHUNKS = 256, 64


def _sums(u: np.ndarray, us: np.ndarray, v: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum(u - us), sum((u - us) * (v - vs))) over the rows of (M, C) arrays, in float64."""
    k = max(1, min(MAX_CHUNKS, len(u) // ROWS_PER_CHUNK))
    partial = np.empty((k, 2, u.shape[1]))
    pick(two_sums_cpu, two_sums_serial, u.size if k > 1 else 0)(u, us, v, vs, partial)
    total = partial.sum(axis=0)
    return total[0], total[1]


class BatchNorm(Module):
    """Normalize each channel (the last axis) by its batch statistics in training and by the
    running statistics in eval mode, then scale and shift (``affine``: ``weight`` ones and
    ``bias`` zeros, parameters in the model's flat buffer). ``running_mean``, ``running_var``
    and ``num_batches_tracked`` are buffers: in ``state_dict`` and checkpoints, not trained.
    Arguments as torch's ``BatchNorm1d``/``BatchNorm2d``. Unlike torch, a batch whose statistics
    are not finite (a NaN or Inf input) leaves the running statistics as they were: its step is
    skipped or refused (``nonfinite=``), and eval mode keeps working."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, dtype: np.dtype | type = np.float32) -> None:
        super().__init__()
        self.num_features = check_int(num_features, "BatchNorm num_features", 1)
        self.eps = float(check_real(eps, "BatchNorm eps", None, math.inf))
        if not self.eps > 0:
            raise ValueError(f"BatchNorm eps: expected a finite number > 0, got {eps}")
        if momentum is not None:
            momentum = float(check_real(momentum, "BatchNorm momentum (None: a cumulative average)", 0.0, math.inf))
            if momentum > 1:
                raise ValueError(f"BatchNorm momentum: expected a number in [0, 1] or None, got {momentum}")
        self.momentum = momentum
        self.dtype = param_dtype(dtype, "BatchNorm")
        self.affine = check_bool(affine, "BatchNorm affine")
        self.track_running_stats = check_bool(track_running_stats, "BatchNorm track_running_stats")
        c = self.num_features
        if self.affine:
            self._create_params({"weight": np.ones(c, self.dtype), "bias": np.zeros(c, self.dtype)})
        if self.track_running_stats:
            self.buffers = {"running_mean": np.zeros(c, self.dtype), "running_var": np.ones(c, self.dtype),
                            "num_batches_tracked": np.zeros((), np.int64)}
        self._saved = None          # (x as (M, C), mean, 1 / std, batch statistics used, shape) of the last forward
        #: values of each channel in one sample of the last input (1 for (N, C), H*W for NHWC):
        #: training needs more than one per batch (fit checks its batches against it)
        self.values_per_sample: int | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        c = self.num_features
        check_array(x, "BatchNorm input", dtype=self.dtype)
        if x.ndim < 2 or x.shape[-1] != c:
            hint = (" (this looks like NCHW; fastnn images are NHWC: use x.transpose(0, 2, 3, 1))"
                    if x.ndim == 4 and x.shape[1] == c else "")
            raise ValueError(f"BatchNorm input: expected shape (N, ..., {c}) with the {c} channels last, got "
                             f"{x.shape}{hint}")
        xs = np.ascontiguousarray(x).reshape(-1, c)
        n = xs.shape[0]
        self.values_per_sample = int(np.prod(x.shape[1:-1]))
        batch = self.training or not self.track_running_stats
        if batch and self.training and n == 1:
            raise ValueError(f"BatchNorm: expected more than 1 value per channel when training, got input "
                             f"of shape {x.shape}")
        with np.errstate(invalid="ignore", over="ignore"):    # NaN and Inf propagate, as in torch
            if batch and n:
                shift = xs[0].astype(np.float64)          # a sample of each channel: no cancellation in the variance
                s0, s1 = _sums(xs, shift, xs, shift)
                mean = shift + s0 / n
                var = np.maximum(s1 / n - (s0 / n) ** 2, 0.0)
            elif batch:                                   # an empty batch: nothing to normalize or track
                mean, var = np.zeros(c), np.ones(c)
            else:
                mean = self.buffers["running_mean"].astype(np.float64)
                var = self.buffers["running_var"].astype(np.float64)
            inv_std = 1.0 / np.sqrt(var + self.eps)
            w, b = self._weight_bias()
            y = np.empty_like(xs)
            pick(affine_cpu, affine_serial, xs.size)(xs, *self._cast(mean, w * inv_std, b), y)
        if self.training and self.track_running_stats and n and np.isfinite(mean).all() and np.isfinite(var).all():
            self._update_running(mean, var, n)
        self._saved = (xs, mean, inv_std, batch, x.shape)
        return y.reshape(x.shape)

    def _weight_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """weight and bias in float64 (ones and zeros without ``affine``)."""
        if not self.affine:
            return np.ones(self.num_features), np.zeros(self.num_features)
        return self.params["weight"].astype(np.float64), self.params["bias"].astype(np.float64)

    def _cast(self, *vectors: np.ndarray) -> list[np.ndarray]:
        return [v.astype(self.dtype) for v in vectors]

    def _update_running(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        b = self.buffers
        b["num_batches_tracked"] += 1
        m = 1.0 / float(b["num_batches_tracked"]) if self.momentum is None else self.momentum
        b["running_mean"][...] = (1 - m) * b["running_mean"] + m * mean
        b["running_var"][...] = (1 - m) * b["running_var"] + m * var * (n / (n - 1))

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        xs, mean, inv_std, batch, shape = self._saved
        check_array(dy, "BatchNorm output gradient", dtype=self.dtype, shape=shape)
        dys = np.ascontiguousarray(dy).reshape(xs.shape)
        n = len(xs)
        if not (self.affine or (self.input_grad and batch)):     # eval, no parameters: dx = dy / std
            return None if not self.input_grad else (dys * (inv_std.astype(self.dtype))).reshape(shape)
        if n == 0:
            return np.empty(shape, self.dtype) if self.input_grad else None
        with np.errstate(invalid="ignore", over="ignore"):    # NaN and Inf propagate, as in torch
            s_dy, s_dyx = _sums(dys, np.zeros(len(mean)), xs, mean)  # sum(dy), sum(dy * (x - mean))
            if self.affine:
                self.grads["weight"][...] += s_dyx * inv_std
                self.grads["bias"][...] += s_dy
            if not self.input_grad:
                return None
            w, _ = self._weight_bias()
            a = w * inv_std
            s, b = (-a * inv_std ** 2 * s_dyx / n, -a * s_dy / n) if batch else (np.zeros_like(a), np.zeros_like(a))
            dx = np.empty_like(dys)
            pick(affine2_cpu, affine2_serial, dys.size)(dys, a.astype(self.dtype), xs, *self._cast(mean, s, b), dx)
        return dx.reshape(shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not input_shape or input_shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm: expected a per-sample input with {self.num_features} channels last, got "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """One multiply-add per value (the normalization folded into a scale and a shift)."""
        return int(np.prod(input_shape, dtype=np.int64))

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats})")
