"""Loss functions returning (loss, gradient with respect to the prediction)."""
from __future__ import annotations

import numpy as np

from .checks import check_array


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
    if labels.min() < 0 or labels.max() >= c:
        bad = labels[(labels < 0) | (labels >= c)][0]
        raise ValueError(f"softmax_cross_entropy labels: expected values in [0, {c}), got {bad}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels], dtype=np.float64))
    grad = exp / total
    grad[rows, labels] -= 1
    grad /= n
    return loss, grad


def mean_squared_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over all elements of (pred - target)^2; returns (loss, dpred = 2 (pred - target) / size)."""
    check_array(pred, "mean_squared_error prediction")
    check_array(target, "mean_squared_error target", dtype=pred.dtype, shape=pred.shape)
    if pred.size == 0:
        raise ValueError("mean_squared_error: expected a non-empty batch, got 0 elements")
    diff = pred - target
    return float(np.mean(np.square(diff, dtype=np.float64))), diff * pred.dtype.type(2.0 / pred.size)
