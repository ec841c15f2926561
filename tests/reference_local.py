"""Plain NumPy loop references for the local layers (obviously correct, slow), float64.

Every function takes NHWC arrays and explicit geometry (stride, padding before/after,
dilation) and loops over output positions and taps one at a time.
"""
from __future__ import annotations

import numpy as np


def _pad(x, pads, value=0.0):
    (pt, pb), (pl, pr) = pads
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def lc2d_ref(x, w, b, stride, pads, dilation):
    """y[n, oh, ow, o] = b[oh, ow, o]
                        + sum_{kh, kw, c} xpad[n, oh*sh + kh*dh, ow*sw + kw*dw, c] w[oh, ow, kh, kw, c, o]."""
    OH, OW, KH, KW, C, O = w.shape
    xp = _pad(x.astype(np.float64), pads)
    y = np.zeros((x.shape[0], OH, OW, O))
    for oh in range(OH):
        for ow in range(OW):
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride[0] + kh * dilation[0], ow * stride[1] + kw * dilation[1]
                    y[:, oh, ow] += xp[:, ih, iw] @ w[oh, ow, kh, kw]
    if b is not None:
        y += b
    return y


def lc2d_input_grad_ref(dy, w, x_shape, stride, pads, dilation):
    """dx of lc2d_ref: each output position's dy scattered back through its taps (the adjoint
    of the loop above), then the padding cut off."""
    OH, OW, KH, KW, C, O = w.shape
    (pt, pb), (pl, pr) = pads
    n, h, wd, _ = x_shape
    dxp = np.zeros((n, h + pt + pb, wd + pl + pr, C))
    for oh in range(OH):
        for ow in range(OW):
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride[0] + kh * dilation[0], ow * stride[1] + kw * dilation[1]
                    dxp[:, ih, iw] += dy[:, oh, ow].astype(np.float64) @ w[oh, ow, kh, kw].T
    return dxp[:, pt:pt + h, pl:pl + wd]


def lc2d_weight_grad_ref(x, dy, w_shape, stride, pads, dilation):
    """dw of lc2d_ref: each position's patch times its dy, summed over the samples."""
    OH, OW, KH, KW, C, O = w_shape
    xp = _pad(x.astype(np.float64), pads)
    dw = np.zeros(w_shape)
    for oh in range(OH):
        for ow in range(OW):
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride[0] + kh * dilation[0], ow * stride[1] + kw * dilation[1]
                    dw[oh, ow, kh, kw] = xp[:, ih, iw].T @ dy[:, oh, ow].astype(np.float64)
    return dw


def conv2d_ref(x, w, b, stride, pads, dilation, groups=1):
    """Grouped cross-correlation with weight (KH, KW, C/groups, O), by loops over taps."""
    KH, KW, Cg, O = w.shape
    N, H, W, C = x.shape
    Og = O // groups
    xp = _pad(x.astype(np.float64), pads)
    OH = (xp.shape[1] - (KH - 1) * dilation[0] - 1) // stride[0] + 1
    OW = (xp.shape[2] - (KW - 1) * dilation[1] - 1) // stride[1] + 1
    y = np.zeros((N, OH, OW, O))
    for oh in range(OH):
        for ow in range(OW):
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride[0] + kh * dilation[0], ow * stride[1] + kw * dilation[1]
                    for g in range(groups):
                        og, cg = slice(g * Og, (g + 1) * Og), slice(g * Cg, (g + 1) * Cg)
                        y[:, oh, ow, og] += xp[:, ih, iw, cg] @ w[kh, kw, :, og]
    if b is not None:
        y += b
    return y


def conv2d_grads_ref(x, w, dy, stride, pads, dilation):
    """(dw, dx) of conv2d_ref with one group: each output pixel's dy times its patch summed into
    dw, and scattered back through its taps into dx (the adjoint of the loop above)."""
    KH, KW, C, O = w.shape
    N, OH, OW, _ = dy.shape
    (pt, pb), (pl, pr) = pads
    xp = _pad(x.astype(np.float64), pads)
    dxp = np.zeros_like(xp)
    dw = np.zeros((KH, KW, C, O))
    for oh in range(OH):
        for ow in range(OW):
            g = dy[:, oh, ow].astype(np.float64)
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride[0] + kh * dilation[0], ow * stride[1] + kw * dilation[1]
                    dw[kh, kw] += xp[:, ih, iw].T @ g
                    dxp[:, ih, iw] += g @ w[kh, kw].T
    return dw, dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]


def pool_ref(x, kernel, stride, pads, kind, include_pad=False):
    """Max (padding never wins) or average over each window (``include_pad``: zero padding
    counts in the divisor, which is then the kernel's area)."""
    N, H, W, C = x.shape
    (pt, pb), (pl, pr) = pads
    OH = (H + pt + pb - kernel[0]) // stride[0] + 1
    OW = (W + pl + pr - kernel[1]) // stride[1] + 1
    y = np.zeros((N, OH, OW, C))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * stride[0] - pt, ow * stride[1] - pl
            win = x[:, max(h0, 0):min(h0 + kernel[0], H), max(w0, 0):min(w0 + kernel[1], W)].astype(np.float64)
            if kind == "max":
                y[:, oh, ow] = win.max(axis=(1, 2))
            else:
                y[:, oh, ow] = win.sum(axis=(1, 2)) / (kernel[0] * kernel[1] if include_pad else win[0, ..., 0].size)
    return y


def same_pads(size, k, stride, dilation=1):
    """TensorFlow's 'same' padding (before, after) along one axis."""
    k_eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2
