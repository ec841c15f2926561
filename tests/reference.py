"""Plain NumPy references, obviously correct and slow: the oracles the kernels are tested against.

Each optimizer reference takes a list of float64 tensors and their gradient sequence and
follows the paper / torch.optim documentation line by line, one tensor at a time.
"""
from __future__ import annotations

import numpy as np


def adam_ref(p: np.ndarray, grads: list[np.ndarray], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False, scales=None) -> np.ndarray:
    """Kingma & Ba Algorithm 1 with torch's L2 / decoupled decay and AMSGrad; returns final p."""
    p = p.astype(np.float64).copy()
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64) * (1.0 if scales is None else scales[t - 1])
        g = -g if maximize else g
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            v_hat = vmax / (1 - b2**t)
        else:
            v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def sgd_ref(p: np.ndarray, grads: list[np.ndarray], lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
            nesterov=False, maximize=False) -> np.ndarray:
    """torch.optim.SGD's documented algorithm (the lecture's momentum); returns final p."""
    p = p.astype(np.float64).copy()
    b = None
    for g in grads:
        g = g.astype(np.float64)
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function f at x (float64), one element at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * eps)
    return grad


def matmul_ref(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, trans_a=False, trans_b=False, alpha=1.0,
               beta=0.0, bias=None, activation=None) -> np.ndarray:
    """act(alpha * op(a) @ op(b) + beta * c + bias) in float64, one line per step."""
    a = np.asarray(a, np.float64).T if trans_a else np.asarray(a, np.float64)
    b = np.asarray(b, np.float64).T if trans_b else np.asarray(b, np.float64)
    y = alpha * (a @ b)
    if beta != 0:
        y = y + beta * np.asarray(c, np.float64)
    if bias is not None:
        y = y + bias
    if activation == "relu":
        y = np.maximum(y, 0)
    elif activation == "tanh":
        y = np.tanh(y)
    elif activation == "sigmoid":
        y = 1 / (1 + np.exp(-y))
    return y
