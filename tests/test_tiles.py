"""The local kernels on each register tile (kernels/local/tiles.py): Conv2D and
LocallyConnected2D whose channel counts pick fastnn.matmul's wide tile, the narrow one (half
its NR) or none, forward and both gradients against the NumPy loops of reference_local.py, in
float32 and float64. The channel counts cover both tiles on AVX2 (NR 16 / 8 fp32) and AVX-512
(32 / 16)."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn.kernels.local import conv2d
from fastnn.kernels.local.tiles import tile_for, wide_tile
from reference_local import conv2d_grads_ref, conv2d_ref, lc2d_input_grad_ref, lc2d_ref, lc2d_weight_grad_ref
from test_local import _pads, _randomize

RNG = np.random.default_rng
DTYPES = [np.float32, np.float64]
# (C, O); with 4 input channels a 3-wide kernel row is 12 values: the narrow tile's weight
# gradient then sums 4 rows at a time, not 8 (16 outputs are half a tile on AVX-512, 24 on AVX2)
CHANNELS = [(16, 16), (32, 32), (8, 48), (48, 8), (4, 16), (4, 24)]


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def _forward_backward(layer, x):
    """(y, dy, dx) of one forward and backward with a random output gradient, gradients zeroed."""
    y = layer(x)
    dy = RNG(1).standard_normal(y.shape).astype(x.dtype)
    layer.zero_grad()
    return y, dy, layer.backward(dy)


def test_tile_for_picks_the_widest_tile_whose_columns_divide():
    for dtype in DTYPES:
        wide = wide_tile(dtype)
        assert (tile_for(dtype, 3 * wide.nr).mr, tile_for(dtype, 3 * wide.nr).nr) == (wide.mr, wide.nr)
        half = tile_for(dtype, wide.nr // 2)
        assert half is None or (half.mr, half.nr) == (wide.mr, wide.nr // 2)
        assert tile_for(dtype, 3) is None
    narrow = tile_for(np.float32, wide_tile(np.float32).nr // 2)
    assert narrow is not None, "fp32 has a narrow tile"
    assert f"the local layers' also {narrow.mr}x{narrow.nr}" in fnn.gemm.describe()       # fastnn info


def test_half_a_tile_of_output_channels_runs_on_the_narrow_tile():
    nr = wide_tile(np.float32).nr
    x = np.zeros((2, 9, 19, 4), np.float32)
    layer = fnn.Conv2D(4, nr // 2, 3, padding="same")
    w, geo = layer.params["weight"], layer._geometry((9, 19))[1]
    path, tile = conv2d._path(x, w, geo, 1)
    assert (path, tile.nr) == ("inplace", nr // 2)
    # the weight gradient's kernel row of 3 x 4 values takes the narrow tile's 4-row kernel
    path, tile = conv2d._path(x, w, geo, 1, weight_grad=True)
    assert (path, tile.nr, tile.mt) == ("inplace", nr // 2, 4)


def test_transposed_for_takes_the_most_rows_that_divide():
    narrow = tile_for(np.float32, wide_tile(np.float32).nr // 2)
    assert narrow.mt == 8
    assert narrow.transposed_for(48) is narrow
    assert narrow.transposed_for(12).mt == 4
    assert narrow.transposed_for(6) is None


# (H, W, kernel, stride, padding, dilation): output lines wide enough for the in-place kernels
# (with OW % MR pixels left over), narrow lines (gathered patches), dilation along h, dilation
# along w, stride 2 (the input gradient the packed way), padding past the kernel's reach (the
# same), even kernels with 'same' padding longer after than before, and unequal explicit
# padding (the input gradient's transposed padding differs between h and w)
CONV_GEOMETRIES = [
    (9, 19, 3, 1, "same", 1),
    (7, 6, 3, 1, "same", 1),
    (10, 18, (3, 2), 1, 1, (2, 1)),
    (8, 9, (2, 3), 1, 1, (1, 2)),
    (9, 33, 3, 2, "same", 1),
    (5, 17, 3, 1, 3, 1),
    (8, 20, (2, 4), 1, "same", 1),
    (7, 16, (5, 3), 1, (1, 2), 1),
    (6, 8, 3, 1, (1, 3), 1),            # padding past the kernel's reach along w only
    (5, 20, 3, 1, "same", (1, 2)),      # dilation along w on output lines of 16 or more pixels
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv2d_forward_and_gradients_match_numpy(geometry, channels, dtype):
    h, w, k, s, pad, d = geometry
    c, o = channels
    layer = fnn.Conv2D(c, o, k, stride=s, padding=pad, dilation=d, dtype=dtype)
    _randomize(layer)
    x = RNG(0).standard_normal((3, h, w, c)).astype(dtype)
    kk, ss, dd = (fnn.layers._spatial.pair(v, "") for v in (k, s, d))
    pp = (pad, pad) if isinstance(pad, str) else fnn.layers._spatial.pair(pad, "")
    pads = [_pads(pp[a], (h, w)[a], kk[a], ss[a], dd[a]) for a in (0, 1)]
    weight = layer.params["weight"].astype(np.float64)
    y, dy, dx = _forward_backward(layer, x)
    np.testing.assert_allclose(y, conv2d_ref(x, weight, layer.params["bias"], ss, pads, dd), **_tol(dtype))
    dw, dx_want = conv2d_grads_ref(x, weight, dy, ss, pads, dd)
    np.testing.assert_allclose(layer.grads["weight"], dw, **_tol(dtype), err_msg="weight gradient")
    np.testing.assert_allclose(dx, dx_want, **_tol(dtype), err_msg="input gradient")


# (N, H, W, kernel, stride, padding): border positions and N % MR samples left over (13), and
# stride 2
LC_GEOMETRIES = [(13, 5, 4, 3, 1, "same"), (9, 7, 8, (2, 3), 2, "valid")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("geometry", LC_GEOMETRIES)
def test_lc2d_forward_and_gradients_match_numpy(geometry, channels, dtype):
    n, h, w, k, s, pad = geometry
    c, o = channels
    layer = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w), stride=s, padding=pad, dtype=dtype)
    _randomize(layer)
    x = RNG(0).standard_normal((n, h, w, c)).astype(dtype)
    kk, ss = (fnn.layers._spatial.pair(v, "") for v in (k, s))
    pads = [_pads(pad, (h, w)[a], kk[a], ss[a], 1) for a in (0, 1)]
    weight = layer.params["weight"].astype(np.float64)
    y, dy, dx = _forward_backward(layer, x)
    np.testing.assert_allclose(y, lc2d_ref(x, weight, layer.params["bias"], ss, pads, (1, 1)), **_tol(dtype))
    np.testing.assert_allclose(layer.grads["weight"], lc2d_weight_grad_ref(x, dy, weight.shape, ss, pads, (1, 1)),
                               **_tol(dtype), err_msg="weight gradient")
    np.testing.assert_allclose(dx, lc2d_input_grad_ref(dy, weight, x.shape, ss, pads, (1, 1)), **_tol(dtype),
                               err_msg="input gradient")
