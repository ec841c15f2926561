"""Fused Adam / AdamW / AMSGrad step: one pass over (p, g, m, v[, vmax]), in place.

Math    (Kingma & Ba 2015, Algorithm 1; torch.optim.Adam/AdamW semantics)
        g  = grad_scale * g + l2 * p                   (l2 = weight_decay for Adam, 0 for AdamW)
        p  = p * decay                                 (decay = 1 - lr*weight_decay for AdamW, else 1)
        m  = lerp(m, g, 1 - beta1)
        v  = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                            (amsgrad only; v below reads vmax)
        p  = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
        step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t), both float64 on the host.
Shapes  p, g, m, v: 1-D, contiguous, same length and float dtype; vmax same or length 0.
        starts, stops, groups: int64[c] chunks (kernels/chunks.py); hp: dtype-of-p[G, N_HP]
        with columns HP_* below, from adam_hparams().
Oracle  tests/reference.py::adam_ref (plain NumPy, float64) and torch.optim.Adam(fused=True).
Threads adam_step_cpu runs chunks in parallel (prange); adam_step_serial, same arguments,
        runs them in the calling thread, for buffers too small to pay for waking threads.
Bench   python bench/bench_optim.py   (GB/s at 28 bytes/param, against torch and a triad)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

(HP_GRAD_SCALE, HP_ONE_MINUS_BETA1, HP_BETA2, HP_ONE_MINUS_BETA2, HP_EPS, HP_L2, HP_DECAY,
 HP_STEP_SIZE, HP_BC2_SQRT) = range(9)
N_HP = 9


def adam_hparams(groups: list[dict], step: int, decoupled: bool, grad_scale: float, dtype: np.dtype) -> np.ndarray:
    """Per-group kernel scalars for step ``step`` (1-based), computed in float64 then cast.

    ``grad_scale`` multiplies every gradient (global-norm clipping); a group's
    ``maximize`` flips its sign.
    """
    hp = np.empty((len(groups), N_HP), dtype=np.float64)
    for k, grp in enumerate(groups):
        hp[k, HP_GRAD_SCALE] = -grad_scale if grp["maximize"] else grad_scale
        beta1, beta2 = grp["betas"]
        lr, wd = grp["lr"], grp["weight_decay"]
        hp[k, HP_ONE_MINUS_BETA1] = 1.0 - beta1
        hp[k, HP_BETA2] = beta2
        hp[k, HP_ONE_MINUS_BETA2] = 1.0 - beta2
        hp[k, HP_EPS] = grp["eps"]
        hp[k, HP_L2] = 0.0 if decoupled else wd
        hp[k, HP_DECAY] = 1.0 - lr * wd if decoupled else 1.0
        hp[k, HP_STEP_SIZE] = lr / (1.0 - beta1**step)
        hp[k, HP_BC2_SQRT] = np.sqrt(1.0 - beta2**step)
    return hp.astype(dtype)


@njit(inline="always", error_model="numpy")
def _adam_chunk(p, g, m, v, vmax, hp, k, amsgrad):
    gsc = hp[k, HP_GRAD_SCALE]
    w1 = hp[k, HP_ONE_MINUS_BETA1]
    b2 = hp[k, HP_BETA2]
    w2 = hp[k, HP_ONE_MINUS_BETA2]
    eps = hp[k, HP_EPS]
    l2 = hp[k, HP_L2]
    decay = hp[k, HP_DECAY]
    step_size = hp[k, HP_STEP_SIZE]
    bc2_sqrt = hp[k, HP_BC2_SQRT]
    if amsgrad:
        for i in range(p.shape[0]):
            pi = p[i]
            gi = gsc * g[i] + l2 * pi
            pi = pi * decay
            mi = m[i] + w1 * (gi - m[i])
            vi = b2 * v[i] + w2 * gi * gi
            vm = max(vmax[i], vi)
            m[i] = mi
            v[i] = vi
            vmax[i] = vm
            p[i] = pi - step_size * mi / (np.sqrt(vm) / bc2_sqrt + eps)
    else:
        for i in range(p.shape[0]):
            pi = p[i]
            gi = gsc * g[i] + l2 * pi
            pi = pi * decay
            mi = m[i] + w1 * (gi - m[i])
            vi = b2 * v[i] + w2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = pi - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def adam_step_cpu(p, g, m, v, vmax, starts, stops, groups, hp, amsgrad):
    for c in prange(starts.shape[0]):
        lo, hi = starts[c], stops[c]
        _adam_chunk(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi], hp, groups[c], amsgrad)


@njit(cache=True, error_model="numpy", nogil=True)
def adam_step_serial(p, g, m, v, vmax, starts, stops, groups, hp, amsgrad):
    for c in range(starts.shape[0]):
        lo, hi = starts[c], stops[c]
        _adam_chunk(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi], hp, groups[c], amsgrad)
