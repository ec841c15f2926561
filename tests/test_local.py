"""Local layers (issue 4): locally connected 1-D/2-D, Conv2D, pooling, BlockDiagonalDense,
Concat. Each against the plain loops of tests/reference_local.py on awkward shapes, backward
against finite differences (float64, tiny inputs), and the relations between the layers."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from reference import numerical_grad
from reference_local import conv2d_ref, lc2d_input_grad_ref, lc2d_ref, pool_ref, same_pads

RNG = np.random.default_rng


def _check_grads(model, x, atol=1e-6):
    """d(sum(y * r))/d(x and every parameter) by backward equals central finite differences."""
    r = RNG(9).standard_normal(model(x).shape)
    loss = lambda: float(np.sum(model(x) * r))  # noqa: E731
    model.zero_grad()
    model(x)
    dx = model.backward(r.copy())
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=atol, rtol=1e-5, err_msg="input")
    grads = dict(model.named_gradients())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(grads[name].copy(), numerical_grad(loss, p), atol=atol, rtol=1e-5, err_msg=name)


def _pads(padding, size, k, stride, dilation):
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return same_pads(size, k, stride, dilation)
    return (padding, padding)


def _randomize(layer, seed=1):
    for i, (_, p) in enumerate(layer.named_parameters()):
        p[...] = RNG(seed + i).standard_normal(p.shape) * 0.5


# (N, H, W, C, O, kernel, stride, padding, dilation): 1x1 images, kernel equal to the input,
# strides larger than the kernel, odd sizes, 'same', explicit padding, dilation.
LC_CASES = [
    (2, 1, 1, 3, 2, 1, 1, "valid", 1),
    (3, 5, 4, 2, 3, (5, 4), 1, "valid", 1),
    (2, 7, 6, 3, 2, 2, 3, "valid", 1),
    (5, 5, 7, 3, 5, 3, (2, 1), "same", 1),
    (2, 6, 5, 2, 3, 3, 1, 1, (2, 1)),
    (3, 4, 9, 1, 1, (1, 3), (1, 2), "same", (1, 2)),
    # output channels a multiple of the matmul tile's NR (16 fp32, 8 fp64 on AVX2): the
    # in-place register-tile path, with border positions and N % MR leftover samples
    (13, 5, 4, 2, 16, 3, 1, "same", 1),
    (7, 6, 5, 3, 8, 2, (1, 2), 1, (2, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", LC_CASES)
def test_lc2d_forward_matches_loops(case, dtype):
    n, h, w, c, o, k, s, pad, d = case
    layer = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w), stride=s, padding=pad, dilation=d, dtype=dtype)
    _randomize(layer)
    x = RNG(0).standard_normal((n, h, w, c)).astype(dtype)
    kk, ss, dd = (fnn.layers._spatial.pair(v, "") for v in (k, s, d))
    pads = [_pads(pad, (h, w)[a], kk[a], ss[a], dd[a]) for a in (0, 1)]
    want = lc2d_ref(x, layer.params["weight"], layer.params["bias"], ss, pads, dd)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer(x), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", LC_CASES)
def test_lc2d_gradients(case):
    n, h, w, c, o, k, s, pad, d = case
    layer = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w), stride=s, padding=pad, dilation=d,
                                   activation="tanh", dtype=np.float64)
    _randomize(layer)
    _check_grads(layer, RNG(0).standard_normal((min(n, 2), h, w, c)))



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    (13, 5, 6, 16, 3, 3, 1, "same", 1),      # unit strides, C a multiple of NR: the in-place dy path
    (8, 5, 5, 16, 16, 3, 1, "same", 1),      # O a multiple of the vector: weight blocks transposed in registers
    (6, 4, 5, 16, 2, (2, 3), 1, "valid", 1),  # N = MR: no leftover samples
    (7, 6, 3, 16, 4, 3, 1, 2, 1),            # padding wider than the kernel reach: taps cut on both sides
    (9, 5, 6, 16, 3, 3, 2, "same", 1),       # stride 2: the gathered path
])
def test_lc2d_input_gradient_matches_loops(case, dtype):
    n, h, w, c, o, k, s, pad, d = case
    layer = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w), stride=s, padding=pad, dilation=d, dtype=dtype)
    _randomize(layer)
    x = RNG(0).standard_normal((n, h, w, c)).astype(dtype)
    dy = RNG(1).standard_normal(layer(x).shape).astype(dtype)
    kk, ss, dd = (fnn.layers._spatial.pair(v, "") for v in (k, s, d))
    pads = [_pads(pad, (h, w)[a], kk[a], ss[a], dd[a]) for a in (0, 1)]
    want = lc2d_input_grad_ref(dy, layer.params["weight"], x.shape, ss, pads, dd)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer.backward(dy), want, rtol=tol, atol=tol)

def test_lc2d_tied_bias_relu_and_batch_blocks():
    # a batch larger than one packed block of rows exercises the block loop and the tile edges
    layer = fnn.LocallyConnected2D(3, 5, 2, input_shape=(3, 4), tied_bias=True, activation="relu",
                                   dtype=np.float64)
    _randomize(layer)
    assert layer.params["bias"].shape == (5,)
    x = RNG(0).standard_normal((300, 3, 4, 3))
    want = np.maximum(lc2d_ref(x, layer.params["weight"], layer.params["bias"], (1, 1), [(0, 0)] * 2, (1, 1)), 0)
    np.testing.assert_allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    small = fnn.LocallyConnected2D(2, 3, 2, input_shape=(3, 3), tied_bias=True, activation="relu", dtype=np.float64)
    _randomize(small)
    xs = RNG(1).standard_normal((2, 3, 3, 2))
    xs[np.abs(xs) < 0.05] = 0.3
    _check_grads(small, xs)


def test_lc_with_equal_position_weights_is_a_convolution():
    conv = fnn.Conv2D(3, 4, 3, stride=2, padding="same", dtype=np.float64)
    _randomize(conv)
    lc = fnn.LocallyConnected2D(3, 4, 3, input_shape=(7, 6), stride=2, padding="same", tied_bias=True,
                                dtype=np.float64)
    lc.params["weight"][...] = conv.params["weight"]          # broadcast over (OH, OW)
    lc.params["bias"][...] = conv.params["bias"]
    x = RNG(0).standard_normal((3, 7, 6, 3))
    np.testing.assert_allclose(lc(x), conv(x), rtol=1e-12, atol=1e-12)
    dy = RNG(1).standard_normal(conv(x).shape)
    conv(x)
    np.testing.assert_allclose(lc.backward(dy), conv.backward(dy), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lc.grads["weight"].sum(axis=(0, 1)), conv.grads["weight"], rtol=1e-10)


def test_1x1_tied_lc_is_a_dense_layer_per_pixel():
    dense = fnn.Dense(4, 3, dtype=np.float64)
    _randomize(dense)
    lc = fnn.LocallyConnected2D(4, 3, 1, input_shape=(5, 2), tied_bias=True, dtype=np.float64)
    lc.params["weight"][...] = dense.params["weight"]
    lc.params["bias"][...] = dense.params["bias"]
    x = RNG(0).standard_normal((3, 5, 2, 4))
    np.testing.assert_allclose(lc(x), dense(x.reshape(-1, 4)).reshape(3, 5, 2, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer_fn", [
    lambda: fnn.LocallyConnected2D(3, 5, 3, input_shape=(6, 5), padding="same"),
    lambda: fnn.Conv2D(3, 6, 3, stride=2, padding=1, groups=3),
    lambda: fnn.MaxPool2D(3, 2, padding="same"),
    lambda: fnn.AvgPool2D(2),
])
def test_batch_invariance(layer_fn):
    """Sample i's output is the same whatever else is in the batch (and wherever it sits)."""
    fnn.manual_seed(0)
    layer = layer_fn()
    x = RNG(0).standard_normal((13, 6, 5, 3)).astype(np.float32)
    full = layer(x)
    for i in (0, 5, 12):
        np.testing.assert_allclose(layer(x[i:i + 1])[0], full[i], rtol=2e-6, atol=1e-6)
    perm = RNG(1).permutation(13)
    np.testing.assert_allclose(layer(x[perm]), full[perm], rtol=2e-6, atol=1e-6)


def test_lc1d_matches_loops_and_keras_layout():
    layer = fnn.LocallyConnected1D(3, 4, 3, input_length=9, stride=2, padding="same", dtype=np.float64)
    _randomize(layer)
    assert layer.params["weight"].shape == (5, 3, 3, 4) and layer.params["bias"].shape == (5, 4)
    x = RNG(0).standard_normal((2, 9, 3))
    pads = [(0, 0), same_pads(9, 3, 2)]
    want = lc2d_ref(x[:, None], layer.params["weight"][None, :, None], layer.params["bias"][None], (1, 2), pads,
                    (1, 1))[:, 0]
    np.testing.assert_allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    kernel, bias = layer.get_keras_weights()
    assert kernel.shape == (5, 9, 4) and bias.shape == (5, 4)
    other = fnn.LocallyConnected1D(3, 4, 3, input_length=9, stride=2, padding="same", dtype=np.float64)
    other.set_keras_weights([kernel, bias])
    np.testing.assert_array_equal(other(x), layer(x))
    with pytest.raises(ValueError, match=r"expected bias shape \(5, 4\) .*, got \(1, 5, 4\)"):
        other.set_keras_weights([kernel, bias[None]])
    _check_grads(fnn.LocallyConnected1D(2, 3, 2, input_length=5, dtype=np.float64), RNG(3).standard_normal((2, 5, 2)))


def test_tied_bias_round_trips_a_nan_bias_through_the_keras_layout():
    layer = fnn.LocallyConnected2D(2, 3, 3, input_shape=(5, 5), tied_bias=True, dtype=np.float64)
    layer.params["bias"][1] = np.nan
    kernel, bias = layer.get_keras_weights()
    layer.set_keras_weights([kernel, bias])          # NaN == NaN at every position: still tied
    assert np.isnan(layer.params["bias"][1])
    bias[0, 0, 0] += 1
    with pytest.raises(ValueError, match="the Keras bias differs between positions"):
        layer.set_keras_weights([kernel, bias])


def test_keras_mode1_layout():
    """Keras 2 implementation=1: y[:, p] = patch(p).flatten() (order kh, kw, c) @ kernel[p] + bias[oh, ow]."""
    layer = fnn.LocallyConnected2D(2, 3, (2, 3), input_shape=(4, 5), stride=(2, 1), dtype=np.float64)
    rng = RNG(0)
    kernel, bias = rng.standard_normal((2 * 3, 2 * 3 * 2, 3)), rng.standard_normal((2, 3, 3))
    layer.set_keras_weights([kernel, bias])
    x = rng.standard_normal((2, 4, 5, 2))
    y = layer(x)
    for oh in range(2):
        for ow in range(3):
            patch = x[:, oh * 2:oh * 2 + 2, ow:ow + 3, :].reshape(2, -1)
            np.testing.assert_allclose(y[:, oh, ow], patch @ kernel[oh * 3 + ow] + bias[oh, ow], rtol=1e-12)
    k2, b2 = layer.get_keras_weights()
    np.testing.assert_array_equal(k2, kernel)
    np.testing.assert_array_equal(b2, bias)
    with pytest.raises(ValueError, match="implementation=1"):
        layer.set_keras_weights([kernel[:-1], bias])
    for bad, error, match in [
            ([kernel * 2, bias[:1]], ValueError, r"expected bias shape \(2, 3, 3\) .*, got \(1, 3, 3\)"),
            ([kernel * 2, np.ascontiguousarray(bias.transpose(2, 0, 1))], ValueError,    # 18 values, other layout
             r"expected bias shape \(2, 3, 3\) .*, got \(3, 2, 3\)"),
            ([kernel * 2, bias.reshape(-1)], ValueError, r"got \(18,\)"),
            ([kernel * 2], ValueError, "expected a list of 2 arrays"), ([], ValueError, "got 0 arrays"),
            ([kernel * 2, bias, bias], ValueError, "expected a list of 2 arrays"),
            ((kernel * 2).astype(complex), TypeError, "expected a list of 2 arrays"),
            ([(kernel * 2).astype(complex), bias], TypeError, "real-valued kernel, got dtype complex128"),
            ([kernel > 0, bias], TypeError, "real-valued kernel, got dtype bool")]:
        with pytest.raises(error, match=match):        # all checked before the kernel is written
            layer.set_keras_weights(bad)
        np.testing.assert_array_equal(layer.get_keras_weights()[0], kernel)
    single = fnn.LocallyConnected2D(2, 3, (2, 3), input_shape=(4, 5), stride=(2, 1))      # float32
    before = single.get_keras_weights()[0]
    for huge in ([kernel * 1e300, bias], [kernel, bias * 1e300]):    # was stored as inf, with a warning
        with pytest.raises(ValueError, match="(kernel|bias): values beyond the range of the model's float32"):
            single.set_keras_weights(huge)
        np.testing.assert_array_equal(single.get_keras_weights()[0], before)
    tied = fnn.LocallyConnected2D(2, 3, (2, 3), input_shape=(4, 5), stride=(2, 1), tied_bias=True, dtype=np.float64)
    before = tied.get_keras_weights()[0]
    with pytest.raises(ValueError, match="tied_bias=False"):
        tied.set_keras_weights([kernel, bias])
    np.testing.assert_array_equal(tied.get_keras_weights()[0], before)


CONV_CASES = [  # (N, H, W, C, O, kernel, stride, padding, dilation, groups)
    (2, 1, 1, 2, 3, 1, 1, "valid", 1, 1),
    (2, 5, 4, 3, 2, (5, 4), 1, "valid", 1, 1),
    (2, 7, 6, 2, 3, 2, 3, "valid", 1, 1),
    (2, 7, 6, 3, 4, 3, (2, 1), 1, 1, 1),        # one group, stride along h only: the input gradient's runs
    (3, 5, 7, 4, 6, 3, (2, 1), "same", 1, 2),
    (2, 6, 5, 3, 3, 3, 1, 2, (2, 1), 3),
    (2, 9, 8, 4, 4, 3, 2, "same", 1, 4),
    # one group and O a multiple of the matmul tile's NR: the in-place register-tile kernels
    # (padded copy, output lines of OW % MR != 0 pixels, strides, dilation along h)
    (3, 9, 19, 4, 16, 3, 1, "same", 1, 1),
    (2, 10, 52, 2, 8, (3, 2), (2, 3), 1, (2, 1), 1),
    # ... and on gathered patches where the output lines are narrow (or w is dilated)
    (3, 7, 6, 4, 16, 3, 1, "same", 1, 1),
    (2, 8, 9, 3, 8, (2, 3), (1, 2), 1, (1, 2), 1),
    # O filling half or more of a multiple of NR, not all: the weight gradient on dy widened
    # with zero columns (in place, then gathered)
    (2, 6, 17, 4, 20, 3, 1, "same", 1, 1),
    (2, 5, 6, 4, 12, 3, 1, "same", 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_loops(case, dtype):
    n, h, w, c, o, k, s, pad, d, g = case
    layer = fnn.Conv2D(c, o, k, stride=s, padding=pad, dilation=d, groups=g, dtype=dtype)
    _randomize(layer)
    x = RNG(0).standard_normal((n, h, w, c)).astype(dtype)
    kk, ss, dd = (fnn.layers._spatial.pair(v, "") for v in (k, s, d))
    pads = [_pads(pad, (h, w)[a], kk[a], ss[a], dd[a]) for a in (0, 1)]
    want = conv2d_ref(x, layer.params["weight"], layer.params["bias"], ss, pads, dd, g)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer(x), want, rtol=tol, atol=tol)
    assert layer.output_shape((h, w, c)) == want.shape[1:]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case):
    n, h, w, c, o, k, s, pad, d, g = case
    layer = fnn.Conv2D(c, o, k, stride=s, padding=pad, dilation=d, groups=g, activation="sigmoid",
                       dtype=np.float64)
    _randomize(layer)
    _check_grads(layer, RNG(0).standard_normal((2, h, w, c)))


def test_conv2d_large_batch_uses_every_weight_part():
    layer = fnn.Conv2D(3, 5, 3, padding="same", dtype=np.float64)
    _randomize(layer)
    x = RNG(0).standard_normal((40, 6, 7, 3))
    dy = RNG(1).standard_normal((40, 6, 7, 5))
    layer.zero_grad()
    layer(x)
    layer.backward(dy)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 3, 5))
    for kh in range(3):
        for kw in range(3):
            want[kh, kw] = np.einsum("nhwc,nhwo->co", xp[:, kh:kh + 6, kw:kw + 7], dy)
    np.testing.assert_allclose(layer.grads["weight"], want, rtol=1e-10)


POOL_CASES = [  # (H, W, kernel, stride, padding)
    (1, 1, 1, 1, "valid"),
    (4, 5, (4, 5), 1, "valid"),
    (7, 6, 2, 3, "valid"),
    (7, 5, 3, 2, "same"),
    (6, 6, 3, 1, 1),
]


@pytest.mark.parametrize("kernels", ["serial", "parallel"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_loops_and_gradients(case, kind, kernels, monkeypatch):
    from fastnn.kernels import parallel

    if kernels == "parallel":          # these inputs are below the parallel threshold
        monkeypatch.setattr(parallel, "PARALLEL_MIN_ELEMENTS", 1)
        monkeypatch.setattr(fnn.layers.pool, "pick", lambda par, ser, n: par)
    h, w, k, s, pad = case
    cls = fnn.MaxPool2D if kind == "max" else fnn.AvgPool2D
    layer = cls(k, s, padding=pad)
    x = RNG(0).permutation(2 * h * w * 3).reshape(2, h, w, 3) / 7.0     # distinct values: no max ties
    kk, ss = (fnn.layers._spatial.pair(v, "") for v in (k, s))
    pads = [_pads(pad, (h, w)[a], kk[a], ss[a], 1) for a in (0, 1)]
    ref = pool_ref(x, kk, ss, pads, kind, include_pad=isinstance(pad, int))    # torch's count for an int
    np.testing.assert_allclose(layer(x), ref, rtol=1e-12)
    np.testing.assert_allclose(layer(x.astype(np.float32)), ref, rtol=1e-6)
    _check_grads(layer, x)


@pytest.mark.parametrize("include", [True, False, None])
@pytest.mark.parametrize("case", [(6, 6, 3, 1, 1), (7, 5, 3, 2, 1), (5, 8, (3, 5), (2, 3), (1, 2))])
def test_avg_pool_counts_padding_as_torch(case, include):
    """torch.nn.functional.avg_pool2d (NCHW) is the reference: count_include_pad True (its
    default, and fastnn's for an int padding) divides every window by the kernel's area, False
    by the pixels inside the image; gradients are checked by finite differences."""
    import torch  # the peer: fastnn[bench], which make test installs (a missing torch fails, not skips)
    h, w, k, s, pad = case
    x = RNG(3).standard_normal((2, h, w, 3))
    layer = fnn.AvgPool2D(k, s, padding=pad, count_include_pad=include)
    assert layer.count_include_pad is (include is not False)
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), k, s, pad,
                                         count_include_pad=include is not False)
    np.testing.assert_allclose(layer(x), ref.numpy().transpose(0, 2, 3, 1), rtol=1e-12)
    _check_grads(layer, x)


def test_avg_pool_same_padding_excludes_padding_unless_asked():
    """Keras's "same" leaves padding out of the mean; count_include_pad=True divides by the area."""
    x = np.ones((1, 3, 3, 1))
    np.testing.assert_array_equal(fnn.AvgPool2D(3, 1, padding="same")(x), np.ones((1, 3, 3, 1)))
    y = fnn.AvgPool2D(3, 1, padding="same", count_include_pad=True)(x)[0, :, :, 0]
    np.testing.assert_allclose(y, np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]) / 9, rtol=1e-15)
    with pytest.raises(TypeError, match="AvgPool2D count_include_pad: expected True, False or None, got 'yes'"):
        fnn.AvgPool2D(2, count_include_pad="yes")


def test_maxpool_propagates_nan_and_global_avg_pool():
    x = np.zeros((1, 2, 2, 1))
    x[0, 1, 0, 0] = np.nan
    assert np.isnan(fnn.MaxPool2D(2)(x)).all()
    gap = fnn.GlobalAvgPool2D()
    x = RNG(0).standard_normal((3, 4, 5, 2))
    np.testing.assert_allclose(gap(x), x.mean(axis=(1, 2)))
    _check_grads(gap, x)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_block_diagonal_dense_is_dense_with_block_diagonal_matrix(groups):
    bd = fnn.BlockDiagonalDense(8, 12, groups, activation="tanh", dtype=np.float64)
    _randomize(bd)
    dense = fnn.Dense(8, 12, activation="tanh", dtype=np.float64)
    dense.params["weight"][...] = bd.to_dense()
    dense.params["bias"][...] = bd.params["bias"]
    x = RNG(0).standard_normal((5, 8))
    np.testing.assert_allclose(bd(x), dense(x), rtol=1e-12)
    dy = RNG(1).standard_normal((5, 12))
    bd.zero_grad(), dense.zero_grad()
    bd(x), dense(x)
    np.testing.assert_allclose(bd.backward(dy), dense.backward(dy), rtol=1e-12)
    for g in range(groups):
        si, so = slice(g * 8 // groups, (g + 1) * 8 // groups), slice(g * 12 // groups, (g + 1) * 12 // groups)
        np.testing.assert_allclose(bd.grads["weight"][g], dense.grads["weight"][si, so], rtol=1e-12)
    np.testing.assert_allclose(bd.grads["bias"], dense.grads["bias"], rtol=1e-12)
    np.testing.assert_allclose(dense.grads["bias"], (dy * (1 - dense(x) ** 2)).sum(axis=0), rtol=1e-12)
    assert bd.macs((8,)) == 96 // groups and bd.num_params == 96 // groups + 12
    _check_grads(bd, x)


def test_block_diagonal_dense_lecture_example():
    """The lecture: W^T x with W 8x4 is 32 multiplications, W_A^T x_A + W_B^T x_B is 16."""
    model = fnn.Sequential(fnn.BlockDiagonalDense(8, 4, groups=2, bias=False))
    assert model.summary(print_fn=None)[0]["macs"] == 16
    assert fnn.Sequential(fnn.Dense(8, 4, bias=False)).summary(print_fn=None)[0]["macs"] == 32


def test_concat_inception_matches_googlenet_table():
    """GoogLeNet (Szegedy et al. 2015, Table 1), inception (3a) and (3b) at 28x28:
    159K / 128M and 380K / 304M (params in units of 1024, multiply-adds in millions)."""
    model = fnn.Sequential(fnn.models.inception(192, 64, 96, 128, 16, 32, 32, bias=False),
                           fnn.models.inception(256, 128, 128, 192, 32, 96, 64, bias=False))
    rows = model.summary(input_shape=(28, 28, 192), print_fn=None)
    assert rows[0]["output_shape"] == (28, 28, 256) and rows[1]["output_shape"] == (28, 28, 480)
    # the paper's K are units of 1024 rounded either way (3a: 159.5K, 3b: 379.0K), its M are 1e6 MACs
    assert abs(rows[0]["params"] / 1024 - 159) <= 1 and round(rows[0]["macs"] / 1e6) == 128
    assert abs(rows[1]["params"] / 1024 - 380) <= 1 and round(rows[1]["macs"] / 1e6) == 304
    assert len(model[0].summary((28, 28, 192), print_fn=None)) == 5


def test_concat_checks_the_gradient_before_any_branch_adds():
    model = fnn.Sequential(fnn.Concat(fnn.Dense(5, 3), fnn.Dense(5, 2)))
    model(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"Concat output gradient: expected shape \(4, 5\), got \(4, 6\)"):
        model.backward(np.ones((4, 6), np.float32))
    assert not model.flat.grad.any()
    model.input_grad = False
    model(np.ones((4, 5), np.float32))
    assert model.backward(np.ones((4, 5), np.float32)) is None


def test_a_branch_with_its_input_gradient_off_stops_the_gradient_there():
    """Concat added the branch's None to the others' sum: TypeError."""
    fnn.manual_seed(0)
    a, b = fnn.Dense(4, 3, dtype=np.float64), fnn.Dense(4, 2, activation="tanh", dtype=np.float64)
    model = fnn.Concat(a, b)
    b.input_grad = False
    x, dy = RNG(1).standard_normal((5, 4)), RNG(2).standard_normal((5, 5))
    model(x)
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, dy[:, :3] @ a.params["weight"].T, rtol=1e-12)   # branch a's alone
    assert b.grads["weight"].any()                                                 # b still learns
    a.input_grad = False
    model(x)
    assert model.backward(dy) is None


def test_concat_forward_backward():
    fnn.manual_seed(0)
    model = fnn.Concat(fnn.Conv2D(2, 3, 1, dtype=np.float64),
                       fnn.Sequential(fnn.Conv2D(2, 2, 3, padding="same", dtype=np.float64), fnn.ReLU()),
                       fnn.MaxPool2D(3, 1, padding="same"))
    x = RNG(0).standard_normal((2, 4, 3, 2))
    y = model(x)
    assert y.shape == (2, 4, 3, 7)
    np.testing.assert_allclose(y[..., :3], model.branches[0](x))
    _check_grads(model, x)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]


def test_small_cnn_end_to_end_gradients():
    fnn.manual_seed(0)
    f64 = np.float64
    model = fnn.Sequential(fnn.Conv2D(1, 2, 3, padding="same", activation="tanh", dtype=f64),
                           fnn.AvgPool2D(2),
                           fnn.LocallyConnected2D(2, 3, 2, input_shape=(2, 2), activation="tanh", dtype=f64),
                           fnn.Flatten(), fnn.Dense(3, 2, dtype=f64))
    _check_grads(model, RNG(0).standard_normal((2, 4, 4, 1)))
    assert model.summary(input_shape=(4, 4, 1), print_fn=None)[-1]["params"] == model.num_params


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="larger than the padded input"):
        fnn.LocallyConnected2D(1, 1, 5, input_shape=(4, 4))
    with pytest.raises(ValueError, match=r"kernel extent 7 \(kernel 3, dilation 3\) is larger than the padded input"):
        fnn.Conv2D(1, 1, 3, dilation=3)(np.zeros((1, 6, 6, 1), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2D.*: kernel 3 is larger than the padded input 2"):
        fnn.MaxPool2D(3)(np.zeros((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="stride"):
        fnn.Conv2D(1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="stride"):
        fnn.MaxPool2D(2, stride=-1)
    assert fnn.Conv2D(1, 1, 3, strides=2).stride == fnn.Conv2D(1, 1, 3, stride=2, strides=2).stride == (2, 2)
    assert fnn.LocallyConnected1D(1, 1, 3, input_length=8, strides=2).stride == (1, 2)
    assert fnn.Conv2D(1, 1, 3).stride == (1, 1)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        fnn.Conv2D(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        fnn.BlockDiagonalDense(8, 6, groups=3)
    with pytest.raises(ValueError, match="NCHW"):
        fnn.Conv2D(3, 4, 3)(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        fnn.Conv2D(3, 4, 3)(np.zeros((2, 8, 8, 5), np.float32))
    with pytest.raises(ValueError, match="spatial size"):
        fnn.LocallyConnected2D(1, 1, 3, input_shape=(5, 5))(np.zeros((1, 6, 6, 1), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        fnn.Conv2D(1, 1, 1)(np.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="padding must be"):
        fnn.Conv2D(1, 1, 1, padding="full")
    with pytest.raises(RuntimeError, match="LocallyConnected2D.backward without a complete forward"):
        fnn.LocallyConnected2D(1, 1, 1, input_shape=(2, 2)).backward(np.zeros((1, 2, 2, 1), np.float32))


def test_global_average_pool_of_empty_images_is_refused():
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D input: expected at least one pixel .* got \(1, 0, 3, 2\)"):
        fnn.GlobalAvgPool2D()(np.zeros((1, 0, 3, 2), np.float32))


def test_parallel_kernels_match_serial():
    """The prange variants (chunks of positions / pixels / rows) give the serial results."""
    from fastnn.kernels.local import conv2d, lc2d

    rng = RNG(0)
    x = rng.standard_normal((5, 7, 6, 3))
    geo = np.array([2, 1, 1, 1, 1, 2, 3, 2, 4, 5, 7, 6], np.int64)      # stride (2,1), pad 1, dilation (1,2)
    w = rng.standard_normal((20, 18, 4))
    b = rng.standard_normal((20, 4))
    dy = rng.standard_normal((5, 20, 4))
    outs = []
    x, w, b, dy = (a.astype(np.float32) for a in (x, w, b, dy))   # float32: the kernels the demo compiles
    for fwd, wg, ig, chunks in ((lc2d.lc2d_forward_serial, lc2d.lc2d_weight_grad_serial,
                                 lc2d.lc2d_input_grad_serial, 1),
                                (lc2d.lc2d_forward_cpu, lc2d.lc2d_weight_grad_cpu, lc2d.lc2d_input_grad_cpu, 3)):
        y, dw, dx = np.empty((5, 20, 4), np.float32), np.zeros_like(w), np.empty_like(x)
        fwd(x, w, b, y, geo, 1, chunks)
        wg(x, dy, dw, geo, chunks)
        ig(dy, w, dx, geo, chunks)
        outs.append((y, dw, dx))
    for a, c in zip(*outs):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
    wc = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    dyc = rng.standard_normal((5, 4, 5, 4)).astype(np.float32)
    outs = []
    for fwd, wg, ig, chunks in ((conv2d.conv2d_forward_serial, conv2d.conv2d_weight_grad_serial,
                                 conv2d.conv2d_input_grad_serial, 1),
                                (conv2d.conv2d_forward_cpu, conv2d.conv2d_weight_grad_cpu,
                                 conv2d.conv2d_input_grad_cpu, 3)):
        y, dw, dx = np.empty((5, 4, 5, 4), np.float32), np.zeros_like(wc), np.empty_like(x)
        fwd(x, wc, b[0], y, geo, 2, 1, chunks)
        wg(x, dyc, dw, geo, 1, chunks)
        ig(dyc, wc, dx, geo, chunks)
        outs.append((y, dw, dx))
    for a, c in zip(*outs):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer, shape, dtype", [
    (dict(in_channels=3, out_channels=8, kernel_size=5, stride=2), (19, 17, 31, 3), np.float32),
    (dict(in_channels=16, out_channels=4, kernel_size=5, stride=2, padding="same"), (6, 10, 26, 16), np.float64),
    (dict(in_channels=16, out_channels=16, kernel_size=5, padding="same"), (5, 13, 23, 16), np.float64)])
def test_conv2d_results_do_not_depend_on_the_chunk_count(layer, shape, dtype, monkeypatch):
    """Bit for bit at 1, 2 and 3 chunks (threads): chunks are cut at the register tile's rows,
    so every output row is summed by the same tile code (they used to differ in the last bit)."""
    import fastnn.layers.conv as conv

    x = RNG(3).standard_normal(shape).astype(dtype)
    results = []
    for chunks in (1, 2, 3):
        monkeypatch.setattr(conv, "threads_for", lambda work, c=chunks: c)
        fnn.manual_seed(0)
        net = fnn.Conv2D(**layer, dtype=dtype)
        y = net(x)
        dx = net.backward(np.cos(np.arange(y.size)).reshape(y.shape).astype(dtype))
        results.append((y, dx, net.grads["weight"].copy()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model, epochs", [("cnn", "30"), ("resnet", "8")])
def test_cli_trains_the_image_models_to_97_percent(tmp_path, capsys, model, epochs):
    """The CNN (locally connected) and the small ResNet (BatchNorm, shortcut connections) on
    the digits; the ResNet's checkpoint holds its BatchNorm statistics, and the test accuracy
    is measured in eval mode with them."""
    from fastnn.cli import main

    path = tmp_path / f"{model}.npz"
    assert main(["train", "--model", model, "--epochs", epochs, "--no-progress", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].split("%")[0])
    assert acc >= 97.0, out
    assert (model == "resnet") == any(k.startswith("buffer.") for k in np.load(path).files)


@pytest.mark.parametrize("layer", [fnn.AvgPool2D(512), fnn.GlobalAvgPool2D()])
def test_float32_average_over_a_large_window_keeps_float32_accuracy(layer):
    """A float32 sum one pixel at a time was 0.09975 for the mean of 512x512 x 0.1 (2.5e-3 off):
    the sums are float64, so the mean is the float64 mean rounded once."""
    x = np.random.default_rng(0).uniform(0.05, 0.15, (1, 512, 512, 3)).astype(np.float32)
    got = layer(x).reshape(-1)
    want = x.astype(np.float64).mean(axis=(1, 2)).reshape(-1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-7)


ACTIVATION_LAYERS = {
    "Dense": lambda act: fnn.Dense(3, 4, activation=act),
    "Conv2D": lambda act: fnn.Conv2D(3, 4, 3, activation=act),
    "BlockDiagonalDense": lambda act: fnn.BlockDiagonalDense(4, 4, 2, activation=act),
    "LocallyConnected1D": lambda act: fnn.LocallyConnected1D(1, 2, 3, input_length=8, activation=act),
    "LocallyConnected2D": lambda act: fnn.LocallyConnected2D(1, 2, 3, input_shape=(5, 5), activation=act),
}


@pytest.mark.parametrize("bad", [["relu"], {"relu": 1}, "gelu", 1])
@pytest.mark.parametrize("name", ACTIVATION_LAYERS)
def test_a_bad_activation_unhashable_included_is_a_clear_error(name, bad):
    msg = f"{name}: activation must be one of ['linear', 'relu', 'sigmoid', 'tanh'] or None, got {bad!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        ACTIVATION_LAYERS[name](bad)
    assert ACTIVATION_LAYERS[name]("relu").activation == "relu"


@pytest.mark.parametrize("layer, shape", [
    (lambda: fnn.LocallyConnected2D(1, 2, 2, input_shape=(3, 3)), "(4, 4, 2)"),
    (lambda: fnn.LocallyConnected1D(1, 2, 2, input_length=3), "(2, 2, 2)"),
])
def test_set_keras_weights_refuses_a_ragged_kernel_and_changes_nothing(layer, shape):
    layer = layer()
    _randomize(layer)
    before = {n: p.copy() for n, p in layer.named_parameters()}
    bias = layer.get_keras_weights()[1]
    with pytest.raises(ValueError, match=re.escape(
            f"{type(layer).__name__}.set_keras_weights: expected kernel shape {shape} (Keras implementation=1 "
            "layout), got a ragged nested sequence")):
        layer.set_keras_weights([[[1.0, 2.0], [3.0]], bias])
    with pytest.raises(ValueError, match=re.escape(f"expected bias shape {bias.shape}") + ".*ragged"):
        layer.set_keras_weights([layer.get_keras_weights()[0], [[1.0], [2.0, 3.0]]])
    for n, p in layer.named_parameters():
        np.testing.assert_array_equal(p, before[n], err_msg=n)


@pytest.mark.parametrize("seed, error, got", [(-1, ValueError, "got -1"), ("a", TypeError, "got str 'a'"),
                                              (1.5, TypeError, "got float 1.5"), (True, TypeError, "got bool True")])
def test_dropout_seed_must_be_a_non_negative_int(seed, error, got):
    with pytest.raises(error, match=re.escape(f"Dropout seed: expected an int >= 0, {got}")):
        fnn.Dropout(0.5, seed=seed)
    x = np.ones((4, 5), np.float32)
    np.testing.assert_array_equal(fnn.Dropout(0.5, seed=np.int64(3))(x), fnn.Dropout(0.5, seed=3)(x))
    fnn.manual_seed(0)
    a = fnn.Dropout(0.5, seed=None)(x)
    fnn.manual_seed(0)
    np.testing.assert_array_equal(fnn.Dropout(0.5)(x), a)


def test_stride_and_strides_that_mean_the_same_pair_are_accepted():
    assert fnn.Conv2D(3, 4, 3, stride=2, strides=(2, 2)).stride == (2, 2)
    assert fnn.Conv2D(3, 4, 3, stride=[1, 2], strides=(1, 2)).stride == (1, 2)
    assert fnn.LocallyConnected2D(1, 1, 3, input_shape=(8, 8), stride=(2, 2), strides=2).stride == (2, 2)
    with pytest.raises(ValueError, match=re.escape("Conv2D: got stride=2 and strides=(2, 1); give one of them")):
        fnn.Conv2D(3, 4, 3, stride=2, strides=(2, 1))
    with pytest.raises(ValueError, match="Conv2D strides: expected values >= 1"):
        fnn.Conv2D(3, 4, 3, stride=2, strides=(2, 0))
    with pytest.raises(TypeError, match=re.escape("LocallyConnected1D strides: expected an int, got (2, 2)")):
        fnn.LocallyConnected1D(1, 1, 3, input_length=8, stride=2, strides=(2, 2))


@pytest.mark.parametrize("cls", [fnn.MaxPool2D, fnn.AvgPool2D])
def test_pooling_takes_keras_strides(cls):
    x = RNG(0).standard_normal((2, 7, 6, 3)).astype(np.float32)
    layer = cls(3, strides=(2, 1))
    assert layer.stride == (2, 1) and cls(3, stride=2, strides=(2, 2)).stride == (2, 2)
    assert cls(3).stride == (3, 3)
    np.testing.assert_array_equal(layer(x), cls(3, stride=(2, 1))(x))
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: got stride=2 and strides=1; give one of them")):
        cls(3, stride=2, strides=1)
    with pytest.raises(ValueError, match=f"{cls.__name__} stride"):
        cls(2, strides=0)


def test_lc1d_repr_names_its_activation_as_lc2d_does():
    assert "activation='relu'" in repr(fnn.LocallyConnected1D(1, 2, 3, input_length=8, activation="relu"))
    assert "activation='relu'" in repr(fnn.LocallyConnected2D(1, 2, 3, input_shape=(5, 5), activation="relu"))
    assert "activation" not in repr(fnn.LocallyConnected1D(1, 2, 3, input_length=8))


def test_concat_first_in_a_model_skips_its_branches_input_gradients(monkeypatch):
    """model.input_grad = False (what fit sets) reaches each branch's first layer with
    parameters, as in a Sequential: an Inception module first in a model computed every
    branch's input gradient and their sum, then returned None."""
    import fastnn.layers.conv as conv

    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.models.inception(4, 2, 2, 3, 1, 2, 2, dtype=np.float64))
    x = RNG(0).standard_normal((2, 5, 5, 4))
    assert model.backward(np.ones_like(model(x))) is not None
    want = model.flat.grad.copy()
    calls, real = [], conv.conv2d_input_grad_serial
    monkeypatch.setattr(conv, "conv2d_input_grad_serial", lambda *a: (calls.append(a), real(*a)))
    model.zero_grad()
    model.input_grad = False
    assert model.backward(np.ones_like(model(x))) is None
    assert len(calls) == 2                   # only the 3x3 and 5x5 convolutions, inside their branches
    np.testing.assert_array_equal(model.flat.grad, want)
    model.input_grad = True
    assert model.backward(np.ones_like(model(x))).shape == x.shape


@pytest.mark.parametrize("arg, value, error, got", [
    ("kernel_size", 0, ValueError, "got 0"), ("input_length", 0, ValueError, "got 0"),
    ("stride", 0, ValueError, "got 0"), ("dilation", 0, ValueError, "got 0"),
    ("kernel_size", 3.0, TypeError, "got float 3.0")])
def test_lc1d_errors_name_the_value_given(arg, value, error, got):
    """Not the height-1 pair the layer builds from it ("input_shape ... got (1, 0)")."""
    kwargs = {"kernel_size": 3, "input_length": 8, arg: value}
    with pytest.raises(error, match=re.escape(f"LocallyConnected1D {arg}: expected an int >= 1, {got}")):
        fnn.LocallyConnected1D(2, 3, **kwargs)


def test_keras_defaults_pool_of_two_and_padding_in_either_case():
    x = RNG(3).standard_normal((2, 6, 7, 3))
    np.testing.assert_array_equal(fnn.MaxPool2D()(x), fnn.MaxPool2D(2, 2)(x))
    assert fnn.AvgPool2D().kernel_size == (2, 2)
    np.testing.assert_array_equal(fnn.MaxPool2D(3, padding="SAME")(x), fnn.MaxPool2D(3, padding="same")(x))
    conv = fnn.Conv2D(3, 4, 3, padding="Same", dtype=np.float64)
    assert conv.padding == "same" and conv(x).shape == (2, 6, 7, 4)
    with pytest.raises(ValueError, match="padding must be 'valid', 'same' or an int, got 'full'"):
        fnn.Conv2D(3, 4, 3, padding="full")


SHARED_INFERENCE = """
import sys, threading
import numpy as np
import fastnn as fnn

sys.setswitchinterval(1e-6)      # switch threads often: the race needs a switch inside forward
model = fnn.Sequential(fnn.MaxPool2D(2), fnn.Flatten(), fnn.Dropout(0.5)).eval()
big = np.random.default_rng(0).standard_normal((256, 32, 32, 16)).astype(np.float32)
small = big[:1].copy()
refs = {len(x): model(x).copy() for x in (big, small)}
bad = []
def run(x, n):
    for _ in range(n):
        bad.extend([] if np.array_equal(model(x), refs[len(x)]) else [len(x)])
threads = [threading.Thread(target=run, args=(big, 300)), threading.Thread(target=run, args=(small, 30000))]
for t in threads: t.start()
for t in threads: t.join()
print("wrong outputs:", len(bad))
"""


def test_one_model_runs_inference_from_two_threads():
    """MaxPool2D stored its index array on the layer and read it back for the kernel: a thread
    switch in between handed the kernel another thread's smaller array, and it wrote past its end
    (glibc's "free(): invalid size", a crash in 3 of 3 runs). In a child process: a crash must not
    take pytest down."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    r = subprocess.run([sys.executable, "-c", SHARED_INFERENCE], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["wrong", "outputs:", "0"], (r.returncode, r.stdout,
                                                                                    r.stderr[-2000:])


def test_maxpool_hands_its_kernel_the_index_array_of_its_own_call(monkeypatch):
    """The race above, made deterministic: another forward of the same layer runs where a thread
    switch could come (between making the index array and the kernel call). The kernel must
    still get an index array of its own output's shape (it writes without bounds checks)."""
    layer, small, big = fnn.MaxPool2D(2), np.ones((1, 4, 4, 2)), RNG(0).standard_normal((3, 4, 4, 2))
    real, inner = fnn.layers.pool.pick, []

    def switching_pick(parallel_kernel, serial_kernel, n):
        kernel = real(parallel_kernel, serial_kernel, n)
        if not inner:
            inner.append(small)
            layer(small)                        # "the other thread"

        def checked(*args):
            if len(args) == 4:                  # forward (x, y, idx, geo); backward is (dy, idx, dx)
                assert args[2].shape == args[1].shape, f"index array {args[2].shape} for an output {args[1].shape}"
            kernel(*args)
        return checked

    monkeypatch.setattr(fnn.layers.pool, "pick", switching_pick)
    y = layer(big)
    np.testing.assert_array_equal(y, pool_ref(big, (2, 2), (2, 2), [(0, 0), (0, 0)], "max"))
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)).sum(), y.size)


def _basic_block(c_in, c_out, stride=1):
    """A ResNet basic block's branch (conv-relu-conv) in float64."""
    return fnn.Sequential(fnn.Conv2D(c_in, c_out, 3, stride, padding=1, activation="relu", dtype=np.float64),
                          fnn.Conv2D(c_out, c_out, 3, padding=1, dtype=np.float64))


@pytest.mark.parametrize("projection", [False, True])
def test_residual_adds_the_shortcut_and_differentiates_both_paths(projection):
    """y = block(x) + x, or + shortcut(x) with a strided 1x1 projection; against the layers run
    on their own, and gradients by finite differences (the identity path carries dy back)."""
    fnn.manual_seed(0)
    block = _basic_block(2, 3 if projection else 2, 2 if projection else 1)
    shortcut = fnn.Conv2D(2, 3, 1, 2, dtype=np.float64) if projection else None
    model = fnn.Residual(block, shortcut)
    x = RNG(0).standard_normal((2, 5, 4, 2))
    want = block(x) + (shortcut(x) if projection else x)
    np.testing.assert_allclose(model(x), want, rtol=1e-13)
    _check_grads(model, x)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"] + \
        (["shortcut.weight", "shortcut.bias"] if projection else [])
    assert model.output_shape((5, 4, 2)) == ((3, 2, 3) if projection else (5, 4, 2))
    rows = model.summary((5, 4, 2), print_fn=None)
    assert [r["name"] for r in rows] == ["block"] + (["shortcut"] if projection else []) + ["total"]
    assert rows[-1]["params"] == model.num_params and rows[-1]["macs"] == block.macs((5, 4, 2)) + (
        shortcut.macs((5, 4, 2)) if projection else 0)


def test_residual_network_trains_in_one_buffer_and_copies():
    """Residual blocks inside a Sequential: one flat buffer, a first layer without input
    gradient, deepcopy keeps the structure, and SGD lowers the loss on a fixed batch."""
    import copy

    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Residual(_basic_block(3, 3)), fnn.Residual(_basic_block(3, 4, 2),
                                                                          fnn.Conv2D(3, 4, 1, 2, dtype=np.float64)),
                           fnn.GlobalAvgPool2D(), fnn.Dense(4, 5, dtype=np.float64))
    model.input_grad = False
    x, y = RNG(0).standard_normal((8, 6, 6, 3)), np.arange(8) % 5
    twin = copy.deepcopy(model)
    np.testing.assert_array_equal(twin(x), model(x))
    assert np.shares_memory(twin[1].block[0].params["weight"], twin.flat.data)
    assert not np.shares_memory(twin.flat.data, model.flat.data)
    opt = fnn.optim.SGD(model, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss, d = fnn.losses.softmax_cross_entropy(model(x), y)
        assert model.backward(d) is None
        opt.step()
        opt.zero_grad()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0], losses


def test_residual_refuses_a_block_that_changes_the_shape_without_a_shortcut():
    model = fnn.Residual(fnn.Conv2D(2, 3, 1, dtype=np.float64))
    with pytest.raises(ValueError, match=re.escape("Residual: the block's output float64(1, 4, 4, 3) must match the "
                                                   "input float64(1, 4, 4, 2); give a shortcut")):
        model(np.ones((1, 4, 4, 2)))
    with pytest.raises(ValueError, match=re.escape("Residual: the block's per-sample output (4, 4, 3) must match the "
                                                   "input (4, 4, 2)")):
        model.output_shape((4, 4, 2))
    with pytest.raises(TypeError, match="Residual: branch shortcut must be a fastnn Module, got function"):
        fnn.Residual(fnn.ReLU(), lambda x: x)
    with pytest.raises(RuntimeError, match="Residual.backward without a complete forward"):
        fnn.Residual(fnn.ReLU()).backward(np.ones(3))


def test_a_concat_pickled_before_the_branches_base_loads():
    """Its state held only ``branches`` (and the last output's shape and dtype): unpickling
    failed on the missing ``_named`` when the container gathered its layers."""
    fnn.manual_seed(0)
    model = fnn.Concat(fnn.Dense(3, 2, dtype=np.float64), fnn.Dense(3, 4, dtype=np.float64))
    import copy

    state = copy.deepcopy(model.__getstate__())         # the layers as a pickle brings them back
    del state["_named"], state["_y_spec"]
    old = object.__new__(fnn.Concat)
    old.__setstate__({**state, "_y_shape": None, "_dtype": None})
    x = np.ones((2, 3))
    np.testing.assert_array_equal(old(x), model(x))
    assert [n for n, _ in old.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("ending", ["ReLU layer", "fused tanh"])
def test_residual_over_a_block_ending_in_an_activation(ending):
    """The activation's derivative is read from its output: y = block(x) + x must be a new array,
    not the block's output with x added in place."""
    fnn.manual_seed(0)
    layers = [fnn.Dense(4, 4, dtype=np.float64), fnn.ReLU()] if ending == "ReLU layer" else \
        [fnn.Dense(4, 4, activation="tanh", dtype=np.float64)]
    block = fnn.Sequential(*layers)
    model = fnn.Residual(block)
    x = RNG(0).standard_normal((6, 4))
    np.testing.assert_allclose(model(x), block(x) + x, rtol=1e-15)
    _check_grads(model, x)


def test_maxpool_sends_a_tied_windows_gradient_to_its_first_maximum_as_torch():
    import torch  # the peer: fastnn[bench], which make test installs (a missing torch fails, not skips)
    x = np.ones((1, 4, 4, 1))
    x[0, 2:, 2:, 0] = [[3, 3], [0, 3]]
    pool = fnn.MaxPool2D(2)
    pool(x)
    dx = pool.backward(np.arange(1.0, 5.0).reshape(1, 2, 2, 1))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    torch.nn.functional.max_pool2d(tx, 2).backward(torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(dx[0, :, :, 0], tx.grad.numpy()[0, 0])
