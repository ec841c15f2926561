"""Loss functions returning (loss, gradient with respect to the prediction)."""
from __future__ import annotations

import numpy as np

from .checks import check_array
from .kernels.softmax_xent import finish_rows, shift_rows


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer class labels.

    logits: (N, C) float; labels: (N,) integers in [0, C). Returns the loss (float64,
    averaged over the batch) and dlogits (N, C) = (softmax(logits) - onehot(labels)) / N,
    computed with the max subtracted first so large logits do not overflow.
    """
    if isinstance(logits, np.ndarray) and logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy logits: expected shape (N, C), got {logits.shape}")
    check_array(logits, "softmax_cross_entropy logits", shape=(None, None))
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy labels: expected integer class indices, got {labels.dtype}")
    check_array(labels, "softmax_cross_entropy labels", dtype=labels.dtype, shape=(len(logits),))
    n, c = logits.shape
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


def mean_squared_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over all elements of (pred - target)^2; returns (loss, dpred = 2 (pred - target) / size)."""
    check_array(pred, "mean_squared_error prediction")
    check_array(target, "mean_squared_error target", dtype=pred.dtype, shape=pred.shape)
    if pred.size == 0:
        raise ValueError("mean_squared_error: expected a non-empty batch, got 0 elements")
    diff = np.subtract(pred, target, out=np.empty(pred.shape, pred.dtype))   # an array even at shape ()
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    return loss, np.multiply(diff, pred.dtype.type(2.0 / pred.size), out=diff)
