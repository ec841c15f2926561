"""Loss functions returning (loss, gradient with respect to the prediction)."""
from __future__ import annotations

import numpy as np

from .checks import check_array
from .kernels.softmax_xent import finish_rows, shift_rows


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer class labels, or against class
    probabilities (one-hot rows, soft labels), as torch's ``cross_entropy`` takes either.

    logits: (N, C) float; labels: (N,) integers in [0, C), or (N, C) floats t of the logits'
    dtype. Returns the loss (float64, averaged over the batch) and dlogits (N, C) =
    (softmax(logits) - onehot(labels)) / N, or (softmax(logits) * sum_j t_j - t) / N for
    probabilities (loss -sum t log softmax / N), computed with the max subtracted first so
    large logits do not overflow.
    """
    if isinstance(logits, np.ndarray) and logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy logits: expected shape (N, C), got {logits.shape}")
    check_array(logits, "softmax_cross_entropy logits", shape=(None, None))
    labels = np.asarray(labels)
    n, c = logits.shape
    if labels.dtype.kind == "f" and labels.ndim == 2:
        check_array(labels, "softmax_cross_entropy probabilities", dtype=logits.dtype, shape=logits.shape)
        return _with_probabilities(logits, labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy labels: expected integer class indices (N,) or class "
                        f"probabilities (N, C) of the logits' dtype, got {labels.dtype} of shape {labels.shape}")
    if labels.shape == (n, c) and c > 1:       # integer one-hot rows: named, not "expected shape (N,)"
        raise TypeError(f"softmax_cross_entropy labels: one-hot or probability rows (N, C) must be of the logits' "
                        f"dtype {logits.dtype}, got {labels.dtype}: pass labels.astype({logits.dtype}), or class "
                        "indices labels.argmax(axis=1)")
    if labels.shape == (n, 1) and c > 1:
        raise ValueError(f"softmax_cross_entropy labels: expected shape ({n},), got ({n}, 1): pass labels.ravel()")
    check_array(labels, "softmax_cross_entropy labels", dtype=labels.dtype, shape=(n,))
    if n == 0:
        raise ValueError("softmax_cross_entropy: expected a non-empty batch, got 0 samples")
    x = np.ascontiguousarray(logits)
    lab = np.ascontiguousarray(labels, np.int64)           # a uint64 past int64's range turns negative
    grad = np.empty((n, c), x.dtype)
    picked = np.empty(n, np.float64)
    bad = shift_rows(x, lab, grad, picked)
    if bad >= 0:
        raise ValueError(f"softmax_cross_entropy labels: expected values in [0, {c}), got {labels[bad]}")
    np.exp(grad, out=grad)
    return float(finish_rows(grad, lab, picked)), grad


def _with_probabilities(logits: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """softmax_cross_entropy against (N, C) class probabilities t (NumPy: the integer-label
    kernel has no such row)."""
    n = len(logits)
    if n == 0:
        raise ValueError("softmax_cross_entropy: expected a non-empty batch, got 0 samples")
    s = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(s)
    z = e.sum(axis=1, keepdims=True)
    loss = -np.sum(t * (s - np.log(z)), dtype=np.float64) / n
    return float(loss), (e / z * t.sum(axis=1, keepdims=True) - t) / logits.dtype.type(n)


def mean_squared_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over all elements of (pred - target)^2; returns (loss, dpred = 2 (pred - target) / size)."""
    check_array(pred, "mean_squared_error prediction")
    check_array(target, "mean_squared_error target", dtype=pred.dtype, shape=pred.shape)
    if pred.size == 0:
        raise ValueError("mean_squared_error: expected a non-empty batch, got 0 elements")
    diff = np.subtract(pred, target, out=np.empty(pred.shape, pred.dtype))   # an array even at shape ()
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    return loss, np.multiply(diff, pred.dtype.type(2.0 / pred.size), out=diff)
