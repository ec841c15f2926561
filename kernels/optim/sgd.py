"""Fused SGD step with momentum, dampening, Nesterov and L2 weight decay, in place.

Math    (the lecture's momentum: Delta <- mu*Delta - grad, theta <- theta + lr*Delta,
        with b = -Delta; torch.optim.SGD semantics)
        g = grad_scale * g + wd * p
        b = g                                   on the group's first step with momentum
        b = mu * b + (1 - dampening) * g        afterwards
        g = g + mu * b  (nesterov)   or   g = b
        p = p - lr * g
        Groups with mu == 0 keep no buffer and do p = p - lr * g.
Shapes  p, g: 1-D contiguous, same length and float dtype; buf same length, or length 0 when
        no group uses momentum. starts, stops, groups: int64[c] chunks (kernels/chunks.py);
        hp: dtype-of-p[G, N_HP] from sgd_hparams().
Oracle  tests/reference.py::sgd_ref (plain NumPy, float64) and torch.optim.SGD(fused=True).
Threads sgd_step_cpu runs chunks in parallel (prange); sgd_step_serial, same arguments, in the
        calling thread, for buffers too small to pay for waking threads.
Bench   python bench/bench_optim.py   (GB/s at 20 bytes/param with momentum)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

HP_GRAD_SCALE, HP_LR, HP_MOMENTUM, HP_ONE_MINUS_DAMPENING, HP_WD, HP_STARTED = range(6)
N_HP = 6


def sgd_hparams(groups: list[dict], grad_scale: float, started: list[bool], dtype: np.dtype) -> np.ndarray:
    """Per-group kernel scalars, computed in float64 then cast to the parameter dtype;
    ``started[k]``: group k's part of the momentum buffer holds a value."""
    hp = np.empty((len(groups), N_HP), dtype=np.float64)
    for k, grp in enumerate(groups):
        hp[k, HP_GRAD_SCALE] = -grad_scale if grp["maximize"] else grad_scale
        hp[k, HP_LR] = grp["lr"]
        hp[k, HP_MOMENTUM] = grp["momentum"]
        hp[k, HP_ONE_MINUS_DAMPENING] = 1.0 - grp["dampening"]
        hp[k, HP_WD] = grp["weight_decay"]
        hp[k, HP_STARTED] = started[k]
    return hp.astype(dtype)


@njit(inline="always", error_model="numpy")
def _sgd_chunk(p, g, buf, hp, k, nesterov):
    gsc = hp[k, HP_GRAD_SCALE]
    lr = hp[k, HP_LR]
    mu = hp[k, HP_MOMENTUM]
    w = hp[k, HP_ONE_MINUS_DAMPENING]
    wd = hp[k, HP_WD]
    if mu == 0:
        for i in range(p.shape[0]):
            p[i] = p[i] - lr * (gsc * g[i] + wd * p[i])
    elif hp[k, HP_STARTED] == 0:
        for i in range(p.shape[0]):
            gi = gsc * g[i] + wd * p[i]
            buf[i] = gi
            d = gi + mu * gi if nesterov else gi
            p[i] = p[i] - lr * d
    elif nesterov:
        for i in range(p.shape[0]):
            gi = gsc * g[i] + wd * p[i]
            bi = mu * buf[i] + w * gi
            buf[i] = bi
            p[i] = p[i] - lr * (gi + mu * bi)
    else:
        for i in range(p.shape[0]):
            gi = gsc * g[i] + wd * p[i]
            bi = mu * buf[i] + w * gi
            buf[i] = bi
            p[i] = p[i] - lr * bi


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def sgd_step_cpu(p, g, buf, starts, stops, groups, hp, nesterov):
    for c in prange(starts.shape[0]):
        lo, hi = starts[c], stops[c]
        _sgd_chunk(p[lo:hi], g[lo:hi], buf[lo:hi], hp, groups[c], nesterov)


@njit(cache=True, error_model="numpy", nogil=True)
def sgd_step_serial(p, g, buf, starts, stops, groups, hp, nesterov):
    for c in range(starts.shape[0]):
        lo, hi = starts[c], stops[c]
        _sgd_chunk(p[lo:hi], g[lo:hi], buf[lo:hi], hp, groups[c], nesterov)
