"""Layers: forward against NumPy, backward against central finite differences (float64)."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from reference import numerical_grad


def _check_grads(model, x, atol=1e-6):
    """d(sum(y * w))/d(x and every parameter) by backward equals finite differences."""
    w = np.random.default_rng(9).standard_normal(model(x).shape)
    loss = lambda: float(np.sum(model(x) * w))  # noqa: E731
    model.zero_grad()
    model(x)
    dx = model.backward(w.copy())
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=atol, rtol=1e-5)
    for name, p in model.named_parameters():
        analytic = dict(model.named_gradients())[name].copy()
        np.testing.assert_allclose(analytic, numerical_grad(loss, p), atol=atol, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 4), (7, 2, 9)])
def test_dense_gradients(activation, shape):
    n, i, o = shape
    fnn.manual_seed(0)
    layer = fnn.Dense(i, o, activation=activation, dtype=np.float64)
    layer.params["bias"][...] = np.random.default_rng(1).standard_normal(o)
    x = np.random.default_rng(2).standard_normal((n, i))
    _check_grads(layer, x)


def test_dense_forward_matches_numpy():
    fnn.manual_seed(0)
    layer = fnn.Dense(6, 4, activation="relu")
    layer.params["bias"][...] = 0.3
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    want = np.maximum(x @ layer.params["weight"] + layer.params["bias"], 0)
    np.testing.assert_allclose(layer(x), want, rtol=1e-6)
    x_nc = np.asfortranarray(x)
    np.testing.assert_allclose(layer(x_nc), want, rtol=1e-6)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("rows", [5, 70_000])        # 70,000 x 2 outputs: the parallel column sums
def test_dense_backward_matches_numpy_float64(activation, rows):
    """dW = x^T dz, db = column sums of dz, dx = dz W^T, with dz = dy * act'(z), to 1e-12."""
    fnn.manual_seed(0)
    layer = fnn.Dense(3, 2, activation=activation, dtype=np.float64)
    layer.params["bias"][...] = [0.1, -0.2]
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((rows, 3)), rng.standard_normal((rows, 2))
    y = layer(x)
    dz = dy * (y > 0) if activation == "relu" else dy
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dz @ layer.params["weight"].T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], x.T @ dz, rtol=1e-12, atol=1e-12 * np.sqrt(rows))
    np.testing.assert_allclose(layer.grads["bias"], dz.sum(axis=0), rtol=1e-12, atol=1e-12 * np.sqrt(rows))


@pytest.mark.parametrize("cls,fn", [(fnn.ReLU, lambda x: np.maximum(x, 0)), (fnn.Tanh, np.tanh),
                                    (fnn.Sigmoid, lambda x: 1 / (1 + np.exp(-x)))])
def test_activation_layers(cls, fn):
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from ReLU's kink
    layer = cls()
    np.testing.assert_allclose(layer(x), fn(x), rtol=1e-12)
    _check_grads(layer, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_blocks_an_infinite_gradient_at_dead_units_as_torch(dtype):
    # torch's threshold_backward: dx = 0 where y <= 0 whatever dy is (dy * 0 would be NaN for an
    # infinite or NaN dy), dx = dy elsewhere
    x = np.array([[-1.0, 0.0, 2.0, -3.0], [1.0, -2.0, 0.0, 4.0]], dtype)
    dy = np.array([[np.inf, np.nan, 5.0, -np.inf], [np.inf, np.nan, -np.inf, 7.0]], dtype)
    want = np.where(np.maximum(x, 0) <= 0, dtype(0), dy)
    layer = fnn.ReLU()
    layer(x)
    np.testing.assert_array_equal(layer.backward(dy.copy()), want)
    dense = fnn.Dense(4, 4, activation="relu", dtype=dtype)
    dense.params["weight"][...] = np.eye(4, dtype=dtype)
    dense.params["bias"][...] = 0
    dense.zero_grad()
    dense(x)
    dense.backward(dy.copy())                  # the fused activation's gradient sums into the bias's
    np.testing.assert_array_equal(dense.grads["bias"], want.sum(axis=0))


LAYERS_WITH_DTYPE = [lambda dtype: fnn.Dense(3, 2, dtype=dtype),
                     lambda dtype: fnn.Conv2D(2, 3, 3, dtype=dtype),
                     lambda dtype: fnn.BlockDiagonalDense(4, 6, groups=2, dtype=dtype),
                     lambda dtype: fnn.LocallyConnected2D(2, 3, 3, input_shape=(5, 5), dtype=dtype),
                     lambda dtype: fnn.LocallyConnected1D(2, 3, 3, input_length=6, dtype=dtype),
                     lambda dtype: fnn.BatchNorm(3, dtype=dtype)]


@pytest.mark.parametrize("make", LAYERS_WITH_DTYPE)
def test_dtype_none_is_float32_as_in_torch_and_keras(make):
    layer = make(None)                         # np.dtype(None) is float64
    assert layer.dtype == np.float32 and all(p.dtype == np.float32 for p in layer.params.values())


@pytest.mark.parametrize("make", LAYERS_WITH_DTYPE)
@pytest.mark.parametrize("dtype", [np.int32, "float16", "no such type"])
def test_a_parameter_dtype_other_than_float32_or_64_is_refused_before_drawing_weights(make, dtype):
    fnn.manual_seed(5)
    with pytest.raises(TypeError, match=r"(Dense|Conv2D|BlockDiagonalDense|LocallyConnected[12]D|BatchNorm) dtype: "
                                        r"expected float32 or float64, got (int32|float16|'no such type')"):
        make(dtype)
    drawn = fnn.random.generator().random()
    fnn.manual_seed(5)
    assert fnn.random.generator().random() == drawn        # the refused layer drew nothing


def test_model_gradients_end_to_end():
    fnn.manual_seed(3)
    model = fnn.Sequential(fnn.Flatten(), fnn.Dense(6, 5, activation="tanh", dtype=np.float64), fnn.ReLU(),
                           fnn.Dense(5, 4, activation="sigmoid", dtype=np.float64), fnn.Dense(4, 3, dtype=np.float64))
    x = np.random.default_rng(4).standard_normal((3, 2, 3))
    _check_grads(model, x)


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    loss, grad = fnn.losses.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(6), labels])), rel=1e-12)
    num = numerical_grad(lambda: fnn.losses.softmax_cross_entropy(logits, labels)[0], logits)
    np.testing.assert_allclose(grad, num, atol=1e-8)
    big, _ = fnn.losses.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    assert big == pytest.approx(1000.0)


def test_softmax_cross_entropy_takes_class_probabilities_as_torch():
    rng = np.random.default_rng(0)
    logits, t = rng.standard_normal((6, 4)), rng.random((6, 4))          # rows need not sum to 1
    loss, grad = fnn.losses.softmax_cross_entropy(logits, t)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-np.sum(t * logp) / 6, rel=1e-12)
    np.testing.assert_allclose(grad, numerical_grad(lambda: fnn.losses.softmax_cross_entropy(logits, t)[0], logits),
                               atol=1e-8)
    labels = rng.integers(0, 4, 6)
    one_hot = fnn.losses.softmax_cross_entropy(logits.astype(np.float32), np.eye(4, dtype=np.float32)[labels])
    by_label = fnn.losses.softmax_cross_entropy(logits.astype(np.float32), labels)
    assert one_hot[0] == pytest.approx(by_label[0], rel=1e-6) and one_hot[1].dtype == np.float32
    np.testing.assert_allclose(one_hot[1], by_label[1], atol=1e-7)
    big, _ = fnn.losses.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert big == pytest.approx(1000.0)
    with pytest.raises(TypeError, match="probabilities: expected dtype float32, got float64"):
        fnn.losses.softmax_cross_entropy(logits.astype(np.float32), t)
    with pytest.raises(ValueError, match=r"probabilities: expected shape \(6, 4\), got \(6, 3\)"):
        fnn.losses.softmax_cross_entropy(logits, t[:, :3])
    with pytest.raises(ValueError, match=r"expected shape \(6,\), got \(6, 1\): pass labels.ravel\(\)"):
        fnn.losses.softmax_cross_entropy(logits, labels[:, None])       # as Keras's datasets ship labels


def test_softmax_cross_entropy_names_integer_one_hot_rows():
    """np.eye(C, dtype=int)[y], one-hot rows as README says they are taken, but of integers:
    refused as "expected shape (N,)", which did not say that the rows must be floats."""
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"one-hot or probability rows \(N, C\) must be of the logits' dtype "
                                        r"float32, got int64: pass labels.astype\(float32\)"):
        fnn.losses.softmax_cross_entropy(logits, np.eye(4, dtype=np.int64)[[0, 3, 1]])


def _xent_ref(logits, labels):
    """Softmax cross-entropy and its gradient in float64 NumPy, the formulas as written."""
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    rows = np.arange(len(x))
    grad = p.copy()
    grad[rows, labels] -= 1
    return -np.mean(np.log(p[rows, labels])), grad / len(x)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (64, 10), (3, 9), (37, 1000)])
def test_softmax_cross_entropy_matches_numpy(dtype, rtol, shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    logits = (5 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    loss, grad = fnn.losses.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = _xent_ref(logits, labels)
    assert grad.dtype == dtype and grad.shape == shape
    assert loss == pytest.approx(ref_loss, rel=rtol, abs=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=rtol * np.abs(ref_grad).max())
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=10 * rtol / shape[0])


def test_softmax_cross_entropy_label_dtypes_and_layouts():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 12))[:, ::2]                  # strided rows
    labels = rng.integers(0, 6, 6)
    want = _xent_ref(logits, labels)
    for lab in (labels.astype(np.uint8), labels.astype(np.int32), labels.astype(">i8"), list(labels)):
        loss, grad = fnn.losses.softmax_cross_entropy(logits, lab)
        assert loss == pytest.approx(want[0], rel=1e-13)
        np.testing.assert_allclose(grad, want[1], rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_nonfinite_logits():
    labels = np.array([1, 0])
    for bad in (np.nan, np.inf):
        loss, _ = fnn.losses.softmax_cross_entropy(np.array([[bad, 1.0], [1.0, 2.0]]), labels)
        assert np.isnan(loss)
    loss, grad = fnn.losses.softmax_cross_entropy(np.array([[-np.inf, 1.0], [1.0, 2.0]]), labels)
    assert loss == pytest.approx(_xent_ref(np.array([[-50.0, 1.0], [1.0, 2.0]]), labels)[0], rel=1e-12)
    assert grad[0, 0] == 0


@pytest.mark.parametrize("labels, shown", [(np.array([0, 5], np.uint64), "5"), (np.array([2 ** 63 + 5, 0], np.uint64),
                                           str(2 ** 63 + 5)), (np.array([0, -1], np.int8), "-1")])
def test_softmax_cross_entropy_label_out_of_range(labels, shown):
    with pytest.raises(ValueError, match=rf"expected values in \[0, 5\), got {shown}$"):
        fnn.losses.softmax_cross_entropy(np.zeros((2, 5), np.float32), labels)


def test_mean_squared_error_gradient():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, grad = fnn.losses.mean_squared_error(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2))
    np.testing.assert_allclose(grad, numerical_grad(lambda: fnn.losses.mean_squared_error(pred, target)[0], pred),
                               atol=1e-8)


def test_dropout_is_seeded_scaled_and_identity_in_eval():
    x = np.ones((200, 50), np.float32)
    a, b = fnn.Dropout(0.3, seed=7), fnn.Dropout(0.3, seed=7)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((ya == 0).mean() - 0.3) < 0.02
    np.testing.assert_array_equal(a.backward(x), ya)
    a.eval()
    np.testing.assert_array_equal(a(x), x)


def test_flat_buffer_views_and_sequential_ownership():
    fnn.manual_seed(0)
    d0, d1 = fnn.Dense(4, 3), fnn.Dense(3, 2)
    w0 = d0.params["weight"].copy()
    model = fnn.Sequential(d0, d1)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    np.testing.assert_array_equal(d0.params["weight"], w0)
    for _, v in model.named_parameters():
        assert np.shares_memory(v, model.flat.data) and v.ctypes.data % 64 == 0
    for _, g in model.named_gradients():
        assert np.shares_memory(g, model.flat.grad)
    assert model.num_params == 4 * 3 + 3 + 3 * 2 + 2
    with pytest.raises(ValueError, match="already belongs"):
        fnn.Sequential(d0)
    with pytest.raises(AttributeError, match="part of a larger model"):
        d0.flat


def test_a_refused_model_leaves_its_layers_free():
    a, b, c = fnn.Dense(2, 2), fnn.Dense(2, 2), fnn.Dense(2, 2)
    fnn.Sequential(c)
    with pytest.raises(ValueError, match="layer 2 \\(Dense\\) already belongs to another model"):
        fnn.Sequential(a, b, c)
    fnn.Sequential(a, b)


@pytest.mark.parametrize("layer, x, dy", [
    (fnn.Dropout(0.5, seed=0), np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)),
    (fnn.Dropout(0.5, seed=0), np.ones((4, 3), np.float32), np.ones((4, 3), np.float64)),
    (fnn.Flatten(), np.ones((2, 3, 4), np.float32), np.ones((4, 6), np.float32)),
    (fnn.Flatten(), np.ones((2, 3, 4), np.float32), np.ones((2, 12), np.float64)),
    (fnn.GlobalAvgPool2D(), np.ones((2, 3, 3, 4)), np.ones((2, 4), np.float32)),
])
def test_output_gradient_of_the_wrong_shape_or_dtype_is_refused(layer, x, dy):
    layer(x)
    with pytest.raises((ValueError, TypeError), match="output gradient: expected"):
        layer.backward(dy)


@pytest.mark.parametrize("layer", [fnn.ReLU(), fnn.Tanh(), fnn.Sigmoid(), fnn.Flatten(), fnn.Dropout(0.3, seed=0),
                                   fnn.BlockDiagonalDense(4, 6, groups=2), fnn.Dense(4, 6)])
def test_an_empty_batch_goes_through(layer):
    y = layer(np.ones((0, 4), np.float32))
    assert y.shape[0] == 0
    assert layer.backward(np.ones(y.shape, np.float32)).shape == (0, 4)


def test_dropout_backward_without_a_mask_still_checks_its_input():
    """In eval mode or with p = 0 backward is the identity: it returned whatever came (a string,
    a gradient of another shape), and before any forward raised nothing."""
    for d in (fnn.Dropout(0.5).eval(), fnn.Dropout(0.0)):
        with pytest.raises(RuntimeError, match="Dropout.backward without a complete forward"):
            d.backward(np.ones((2, 3), np.float32))
        d(np.zeros((2, 3), np.float32))
        with pytest.raises(TypeError, match="Dropout output gradient: expected a numpy.ndarray, got str"):
            d.backward("junk")
        with pytest.raises(ValueError, match=r"Dropout output gradient: expected shape \(2, 3\), got \(5, 7\)"):
            d.backward(np.ones((5, 7), np.float32))
        with pytest.raises(TypeError, match="Dropout output gradient: expected dtype float32, got float64"):
            d.backward(np.ones((2, 3)))
        dy = np.ones((2, 3), np.float32)
        assert d.backward(dy) is dy


def test_summary_checks_that_the_shapes_fit():
    """As Keras does when it builds a model: a layer given the wrong per-sample input says so."""
    with pytest.raises(ValueError, match=r"Dense: expected a per-sample input of shape \(100,\), got \(256,\)"):
        fnn.Sequential(fnn.Conv2D(1, 4, 3, padding="same"), fnn.Flatten(), fnn.Dense(100, 10)).summary(
            input_shape=(8, 8, 1), print_fn=None)
    with pytest.raises(ValueError, match=r"Conv2D: expected a per-sample input of shape \(any, any, 3\)"):
        fnn.Sequential(fnn.Conv2D(3, 4, 3)).summary(input_shape=(8, 8, 1), print_fn=None)
    with pytest.raises(ValueError, match=r"LocallyConnected2D: expected a per-sample input of shape \(6, 6, 2\)"):
        fnn.Sequential(fnn.LocallyConnected2D(2, 3, 3, input_shape=(6, 6))).summary(input_shape=(6, 5, 2),
                                                                                      print_fn=None)
    rows = fnn.Sequential(fnn.Conv2D(1, 4, 3, padding="same"), fnn.Flatten(), fnn.Dense(256, 10)).summary(
        input_shape=(8, 8, 1), print_fn=None)
    assert rows[-1]["params"] == 40 + 2570


def test_a_layer_used_twice_in_one_model_is_rejected():
    """Its cached forward input would be overwritten by the second use, so backward would be
    wrong: refused before any parameter moves."""
    d = fnn.Dense(3, 3)
    w = d.params["weight"].copy()
    with pytest.raises(ValueError, match="layer '1' is the same object as layer '0'"):
        fnn.Sequential(d, d)
    np.testing.assert_array_equal(d.params["weight"], w)
    fnn.Sequential(d)


def test_rehome_moves_every_parameter_and_gradient_view():
    model = fnn.Sequential(fnn.Dense(3, 4, dtype=np.float64), fnn.Sequential(fnn.Dense(4, 2, dtype=np.float64)))
    x = np.ones((2, 3))
    y0 = model(x).copy()
    model.backward(np.ones((2, 2)))
    once, params = model.flat.grad.copy(), model.flat.data.copy()
    data, grad = np.zeros(once.size + 8)[4:-4], np.zeros(once.size + 8)[4:-4]
    model.rehome(data=data, grad=grad)
    assert model.flat.grad is grad and model.flat.data is data
    np.testing.assert_array_equal(grad, once)
    np.testing.assert_array_equal(data, params)
    for (_, g), (_, p) in zip(model.named_gradients(), model.named_parameters()):
        assert np.shares_memory(g, grad) and np.shares_memory(p, data)
    np.testing.assert_array_equal(model(x), y0)
    model.backward(np.ones((2, 2)))
    np.testing.assert_allclose(grad, 2 * once)
    data[:] = 0
    assert not model(x).any()  # the layers read the new buffer
    with pytest.raises(ValueError, match=r"rehome grad: expected a contiguous, writeable float64\(\d+,\) buffer, "
                                         r"got float32"):
        model.rehome(data=np.zeros(once.size), grad=np.zeros(once.size, np.float32))
    with pytest.raises(ValueError, match="rehome data: .*contiguous=False"):
        model.rehome(data=np.zeros(2 * once.size)[::2])
    read_only = np.zeros(once.size)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="rehome grad: .*writeable=False"):   # data used to move, grad not
        model.rehome(data=np.zeros(once.size), grad=read_only)
    assert model.flat.grad is grad and model.flat.data is data  # nothing moved on error


def test_state_dict_round_trip_between_models():
    fnn.manual_seed(0)
    a = fnn.Sequential(fnn.Dense(3, 4, activation="relu"), fnn.Sequential(fnn.Dense(4, 2)))
    fnn.manual_seed(1)
    b = fnn.Sequential(fnn.Dense(3, 4, activation="relu"), fnn.Sequential(fnn.Dense(4, 2)))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    state = a.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]
    assert not any(np.shares_memory(v, a.flat.data) for v in state.values())  # a snapshot
    assert not np.array_equal(a(x), b(x))
    assert b.load_state_dict(state) == ([], [])
    np.testing.assert_array_equal(b(x), a(x))
    a.flat.data[:] += 1  # changing a later changes neither the snapshot nor b
    np.testing.assert_array_equal(state["0.bias"], b.layers[0].params["bias"])
    assert not np.array_equal(a(x), b(x))


def test_load_state_dict_casts_and_checks_everything_first():
    model = fnn.Sequential(fnn.Dense(3, 4), fnn.Dense(4, 2))
    state = {n: np.full(v.shape, 0.5, np.float64) for n, v in model.named_parameters()}
    model.load_state_dict(state)
    assert model.flat.data.dtype == np.float32 and np.all(model.layers[1].params["weight"] == 0.5)
    before = model.flat.data.copy()
    for bad, exc, match in [
            ({**state, "1.weight": np.zeros((2, 4))}, ValueError, r"1.weight: expected shape \(4, 2\), got \(2, 4\)"),
            ({k: v for k, v in state.items() if k != "0.bias"}, KeyError, r"1 missing \['0.bias'\]"),
            ({**state, "2.weight": np.zeros(1)}, KeyError, r"1 unexpected \['2.weight'\]"),
            ({**state, "1.bias": np.array(["a", "b"])}, TypeError, "1.bias: expected real numbers, got dtype <U1"),
            ({**state, "1.bias": np.array([1e300, 0.0])}, ValueError,
             "1.bias: values beyond the range of the model's float32"),
            ({**state, "1.bias": np.array([np.nan, 1e300])}, ValueError,      # a NaN beside used to hide it
             "1.bias: values beyond the range of the model's float32")]:
        bad = {**bad, "0.weight": np.zeros((3, 4))}  # a valid entry that must not land either
        with pytest.raises(exc, match=match):
            model.load_state_dict(bad)
        np.testing.assert_array_equal(model.flat.data, before)
    partial = {"1.bias": np.array([1.0, 2.0]), "extra": np.zeros(3)}
    assert model.load_state_dict(partial, strict=False) == (["0.weight", "0.bias", "1.weight"], ["extra"])
    np.testing.assert_array_equal(model.layers[1].params["bias"], [1.0, 2.0])


@pytest.mark.parametrize("make, shape", [
    (lambda: fnn.Dense(3, 2, dtype=np.float64), (2, 3)),
    (lambda: fnn.Conv2D(3, 5, 3, padding="same", dtype=np.float64), (4, 6, 7, 3)),
    (lambda: fnn.Conv2D(4, 16, 3, padding="same", dtype=np.float64), (2, 9, 19, 4)),
    (lambda: fnn.LocallyConnected2D(3, 5, 3, input_shape=(6, 7), dtype=np.float64), (4, 6, 7, 3)),
    (lambda: fnn.BatchNorm(3, dtype=np.float64), (8, 3)),
    (lambda: fnn.BlockDiagonalDense(6, 4, 2, dtype=np.float64), (5, 6))])
def test_backward_accumulates_until_zero_grad(make, shape):
    """Gradients add up over backwards (torch's .grad): every layer's weight gradient kernels."""
    fnn.manual_seed(0)
    model = fnn.Sequential(make())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(model(x).shape)
    model.backward(dy)
    once = model.flat.grad.copy()
    assert once.any()
    model(x)
    model.backward(dy)
    np.testing.assert_allclose(model.flat.grad, 2 * once, rtol=1e-13, atol=1e-13)
    model.zero_grad()
    assert not model.flat.grad.any()


def test_summary_rows():
    model = fnn.Sequential(fnn.Dense(64, 128, activation="relu"), fnn.Dropout(0.1), fnn.Dense(128, 10))
    lines = []
    rows = model.summary(print_fn=lines.append)
    assert [(r["name"], r["output_shape"], r["params"], r["macs"]) for r in rows] == [
        ("0", (128,), 64 * 128 + 128, 64 * 128), ("1", (128,), 0, 0), ("2", (10,), 1290, 1280),
        ("total", (10,), 8320 + 1290, 8192 + 1280)]
    assert "9,610" in lines[0]
    nested = fnn.Sequential(fnn.Sequential(fnn.Dense(5, 3)), fnn.ReLU())
    assert nested.summary(print_fn=None)[-1] == {"name": "total", "type": "", "output_shape": (3,),
                                                 "params": 18, "macs": 15}


@pytest.mark.parametrize("first, sample", [(lambda: fnn.LocallyConnected2D(3, 5, 3, input_shape=(6, 7)), (6, 7, 3)),
                                           (lambda: fnn.LocallyConnected1D(3, 5, 3, input_length=9), (9, 3)),
                                           (lambda: fnn.BlockDiagonalDense(4, 6, groups=2), (4,))])
def test_summary_starts_from_any_first_layer_that_fixes_the_input_shape(first, sample):
    layer = first()                          # the locally connected layers fix it, but were not asked
    model = fnn.Sequential(layer, fnn.Flatten())
    rows = model.summary(print_fn=None)
    assert rows == model.summary(sample, print_fn=None)
    assert rows[0]["macs"] == layer.macs(sample) > 0
    with pytest.raises(ValueError, match="does not fix the input shape"):
        fnn.Sequential(fnn.Flatten(), first()).summary(print_fn=None)
    for branched in (fnn.Concat(first(), first()), fnn.Residual(first(), first())):   # as Sequential
        rows = branched.summary(print_fn=None)
        assert rows == branched.summary(sample, print_fn=None) and rows[-1]["macs"] == 2 * layer.macs(sample)
        assert fnn.Sequential(branched, fnn.Flatten()).summary(print_fn=None)[0]["macs"] == 2 * layer.macs(sample)
    with pytest.raises(ValueError, match="does not fix the input shape"):
        fnn.Concat(fnn.Flatten(), fnn.ReLU()).summary(print_fn=None)


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m(np.ones((2, 5), np.float32)), ValueError, r"expected shape \(N, 4\), got \(2, 5\)"),
    (lambda m: m(np.ones((2, 4), np.float64)), TypeError, "expected dtype float32, got float64"),
    (lambda m: m([[1.0] * 4]), TypeError, "numpy.ndarray"),
    (lambda m: fnn.losses.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])), ValueError, r"\[0, 3\), got 3"),
    (lambda m: fnn.losses.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])), TypeError, "integer"),
    (lambda m: fnn.losses.softmax_cross_entropy(np.ones((2, 3)), np.array([0])), ValueError, r"expected shape \(2,\)"),
    (lambda m: fnn.Dense(3, 2, activation="gelu"), ValueError, "activation"),
    (lambda m: fnn.Sequential(fnn.Dense(2, 2), fnn.Dense(2, 2, dtype=np.float64)), TypeError, "one dtype"),
    (lambda m: fnn.Dense(2, 2).backward(np.ones((1, 2), np.float32)), RuntimeError,
     "Dense.backward without a complete forward"),
    (lambda m: fnn.Dense(2.5, 2), TypeError, "Dense in_features: expected an int >= 1, got float 2.5"),
    (lambda m: fnn.Dense(2, 0), ValueError, "Dense out_features: expected an int >= 1, got 0"),
    (lambda m: fnn.Conv2D("3", 4, 3), TypeError, "Conv2D in_channels: expected an int >= 1, got str '3'"),
    (lambda m: fnn.BlockDiagonalDense(4, 4, True), TypeError,
     "BlockDiagonalDense groups: expected an int >= 1, got bool"),
    (lambda m: fnn.LocallyConnected2D(1, -1, 3, input_shape=(4, 4)), ValueError, "LocallyConnected2D out_channels"),
    (lambda m: fnn.LocallyConnected1D(2, 3, 3, input_length=8, padding=(0, 2)), TypeError,
     r"LocallyConnected1D padding: expected an int or a string, got \(0, 2\)"),
    (lambda m: fnn.Conv2D(3, 4, 3, stride=2, strides=1), ValueError,
     "Conv2D: got stride=2 and strides=1; give one of them"),
    (lambda m: fnn.LocallyConnected2D(1, 1, 3, input_shape=(8, 8), stride=1, strides=2), ValueError,
     "LocallyConnected2D: got stride=1 and strides=2"),
    (lambda m: fnn.LocallyConnected1D(1, 1, 3, input_length=8, stride=3, strides=2), ValueError,
     "LocallyConnected1D: got stride=3 and strides=2"),
    (lambda m: fnn.LocallyConnected2D(1, 1, 3, input_shape=(8, 8), tied_bias="no"), TypeError,
     "LocallyConnected2D tied_bias: expected True or False, got str 'no'"),
    (lambda m: fnn.Dropout("0.5"), TypeError, "Dropout: expected a number 0 <= p < 1, got str '0.5'"),
    (lambda m: fnn.Dense(3, 2, bias="no"), TypeError, "Dense bias: expected True or False, got str 'no'"),
    (lambda m: fnn.Conv2D(1, 2, 3, bias="no"), TypeError, "Conv2D bias: expected True or False, got str 'no'"),
    (lambda m: fnn.BlockDiagonalDense(4, 6, groups=2, bias=0), TypeError, "BlockDiagonalDense bias: .* got int 0"),
    (lambda m: fnn.Dropout(False), TypeError, "got bool False"),
    (lambda m: fnn.Dropout(np.array([0.2, 0.3])), TypeError, "got ndarray"),
    (lambda m: fnn.Concat(fnn.Conv2D(3, 4, 1), fnn.Conv2D(3, 4, 3)).output_shape((5, 5, 3)), ValueError,
     r"Concat: the branches' outputs must differ only in the last axis, got \[\(5, 5, 4\), \(3, 3, 4\)\]"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    model = fnn.Sequential(fnn.Dense(4, 3))
    with pytest.raises(exc, match=match):
        call(model)


F64 = np.float64
FIRST_LAYERS = [  # (first layer, input shape without the batch)
    (lambda: fnn.Dense(4, 3, activation="relu", dtype=F64), (4,)),
    (lambda: fnn.BlockDiagonalDense(4, 6, groups=2, activation="relu", dtype=F64), (4,)),
    (lambda: fnn.Conv2D(2, 3, 3, padding="same", activation="relu", dtype=F64), (5, 6, 2)),
    (lambda: fnn.LocallyConnected2D(2, 3, 2, input_shape=(4, 5), activation="tanh", dtype=F64), (4, 5, 2)),
    (lambda: fnn.LocallyConnected1D(2, 3, 2, input_length=6, dtype=F64), (6, 2)),
]


@pytest.mark.parametrize("lead, shape", [([fnn.Flatten], (3, 2)), ([fnn.ReLU], (6,)),
                                         ([fnn.Flatten, lambda: fnn.Dropout(0.0)], (3, 2))])
def test_input_grad_off_reaches_past_parameter_free_first_layers(lead, shape):
    model = fnn.Sequential(*[make() for make in lead], fnn.Dense(6, 2, dtype=F64))
    x, dy = np.random.default_rng(0).standard_normal((4, *shape)), np.ones((4, 2))
    model(x)
    assert model.backward(dy).shape == x.shape
    full = model.flat.grad.copy()
    model.zero_grad()
    model.input_grad = False
    assert model.layers[-1].input_grad is False
    model(x)
    assert model.backward(dy) is None
    np.testing.assert_array_equal(model.flat.grad, full)


def test_torchs_positional_bias_is_named_and_repr_shows_no_bias():
    with pytest.raises(ValueError, match=r"got False \(bias is a keyword argument: bias=False"):
        fnn.Dense(64, 10, False)
    assert repr(fnn.Dense(4, 3, bias=False)) == "Dense(4, 3, bias=False, dtype=float32)"
    assert repr(fnn.Dense(4, 3, "relu")) == "Dense(4, 3, activation='relu', dtype=float32)"


def test_a_slice_switches_its_layers_mode_as_torch():
    model = fnn.Sequential(fnn.Dense(4, 3, dtype=F64), fnn.Dropout(0.5, seed=1), fnn.Dense(3, 2, dtype=F64))
    x = np.random.default_rng(1).standard_normal((5, 4))
    head = model[:-1]
    assert head.eval() is head and not model.layers[1].training and model.layers[2].training
    np.testing.assert_array_equal(head(x), model.layers[0](x))              # dropout off
    head.train()
    assert model.layers[1].training


def test_a_slice_of_a_sequential_runs_its_layers():
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(4, 3, activation="relu", dtype=F64), fnn.Dense(3, 3, dtype=F64), fnn.ReLU(),
                           fnn.Dense(3, 2, dtype=F64))
    x = np.random.default_rng(1).standard_normal((5, 4))
    head = model[:2]
    assert len(head) == 2 and head[1] is model.layers[1] and len(model[1:][1:]) == 2
    want = np.maximum(x @ model.layers[0].params["weight"] + model.layers[0].params["bias"], 0)
    want = want @ model.layers[1].params["weight"] + model.layers[1].params["bias"]
    np.testing.assert_allclose(head(x), want, rtol=1e-12)
    np.testing.assert_allclose(model[2:](head(x)), model(x), rtol=1e-12)
    dy = np.ones((5, 3))
    head.backward(dy)                            # gradients land in the model's buffer
    np.testing.assert_allclose(model.layers[1].grads["bias"], dy.sum(0))
    assert model[-1:][0] is model.layers[-1]
    inner = model[1:][:2]                        # a slice of a slice is a runnable slice
    h = np.maximum(x @ model.layers[0].params["weight"] + model.layers[0].params["bias"], 0)
    np.testing.assert_allclose(inner(h), np.maximum(h @ model.layers[1].params["weight"]
                                                    + model.layers[1].params["bias"], 0), rtol=1e-12)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: fnn.ReLU()(np.array(1.0)), ValueError, r"ReLU input: expected a batch axis, got shape \(\)"),
    (lambda: fnn.Sequential(fnn.Dense(4, 2)).summary(input_shape=4, print_fn=None), TypeError,
     "summary: input_shape must be a tuple of ints .*got int 4"),
    (lambda: fnn.models.as_images(np.ones(16, np.float32)), ValueError, r"as_images input: expected shape \(N, N\)"),
    (lambda: fnn.models.as_images([[1.0] * 4]), TypeError, "as_images input: expected a numpy.ndarray"),
])
def test_more_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_flatten_keeps_no_parameter_buffer():
    f = fnn.Flatten()
    f(np.ones((2, 3, 1), np.float32))
    with pytest.raises(AttributeError, match="Flatten has no parameters"):   # was its output shape, a tuple
        f.flat


@pytest.mark.parametrize("first, shape", FIRST_LAYERS)
def test_first_layer_can_skip_the_input_gradient(first, shape):
    fnn.manual_seed(0)
    model = fnn.Sequential(first(), fnn.Flatten(), fnn.Dense(int(np.prod(first().output_shape(shape))), 2, dtype=F64))
    x, dy = np.random.default_rng(0).standard_normal((5, *shape)), np.ones((5, 2))
    model(x)
    assert model.backward(dy) is not None
    full = model.flat.grad.copy()
    model.zero_grad()
    model.input_grad = False
    model(x)
    assert model.backward(dy) is None
    np.testing.assert_array_equal(model.flat.grad, full)


def test_model_load_state_dict_wants_a_mapping():
    model = fnn.Sequential(fnn.Dense(2, 2))
    with pytest.raises(TypeError, match="expected a mapping of parameter name to array, got list"):
        model.load_state_dict([1, 2])


class _DeviceArray:
    """Stands in for a CuPy array: a type named ``ndarray`` from another package, with
    ``__cuda_array_interface__`` (the real CuPy check runs where a GPU is lent)."""
    __module__ = "cupy._core.core"
    __qualname__ = "ndarray"
    shape, dtype = (4, 4), np.dtype(np.float32)
    __cuda_array_interface__ = {"shape": (4, 4), "typestr": "<f4", "data": (0, False), "version": 3}


@pytest.mark.parametrize("call", [
    lambda x: fnn.Dense(4, 2)(x),
    lambda x: fnn.losses.softmax_cross_entropy(x, np.zeros(4, np.int64)),
    lambda x: fnn.optim.SGD((x, x), lr=0.1),
    lambda x: fnn.matmul(x, np.ones((4, 4), np.float32)),
    lambda x: fnn.matmul(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32), out=x),
    lambda x: fnn.batched_matmul(x, np.ones((1, 4, 4), np.float32)),
    lambda x: fnn.Sequential(fnn.Dense(4, 2)).rehome(data=x),
])
def test_a_cuda_device_array_is_named_with_its_package_and_how_to_copy_it(call):
    """A CuPy array came back as "expected a numpy.ndarray, got ndarray": the message named
    neither the package nor the device (design: mixed host/device inputs are a clear error)."""
    with pytest.raises((TypeError, ValueError), match=r"cupy\.ndarray \(an array in CUDA device memory.*asnumpy"):
        call(_DeviceArray())
    with pytest.raises((TypeError, ValueError)) as info:
        call([[1.0] * 4] * 4)
    assert "CUDA" not in str(info.value)


@pytest.mark.parametrize("seed, exc", [(None, TypeError), (True, TypeError), (1.5, TypeError), ("3", TypeError),
                                       (-1, ValueError)])
def test_manual_seed_refuses_what_is_not_a_seed(seed, exc):
    """None reseeded from fresh entropy without a word (runs were silently irreproducible); True
    was seed 1; "3", 1.5 and -1 failed with NumPy's messages naming no argument."""
    fnn.manual_seed(5)
    want = fnn.random.generator().random()
    fnn.manual_seed(5)
    with pytest.raises(exc, match="manual_seed seed: expected an int >= 0"):
        fnn.manual_seed(seed)
    assert fnn.random.generator().random() == want          # the generator was left as it was


def test_activation_grad_reads_a_non_contiguous_output():
    """A transposed 3-D output: the rows of its C-order copy were written, and the gradient
    returned was the uninitialised array beside them."""
    from fastnn.layers.activations import activation_grad

    rng = np.random.default_rng(0)
    y = np.tanh(rng.standard_normal((3, 4, 5))).transpose(0, 2, 1)
    dy = rng.standard_normal((3, 5, 4))
    np.testing.assert_allclose(activation_grad(dy, y, 2), dy * (1 - y * y), rtol=1e-12)


def test_mean_squared_error_of_a_scalar_returns_an_array_gradient():
    """Shape () came back as a NumPy scalar, which backward refuses as not an array."""
    loss, grad = fnn.losses.mean_squared_error(np.array(1.0), np.array(3.0))
    assert loss == 4.0 and isinstance(grad, np.ndarray) and grad.shape == () and grad == -4.0
    pred, target = np.ones((4, 6), np.float32)[:, ::2], np.zeros((4, 3), np.float32)
    loss, grad = fnn.losses.mean_squared_error(pred, target)
    assert grad.dtype == np.float32 and grad.shape == (4, 3)
    np.testing.assert_allclose(grad, 2 * pred / pred.size)


def _torch_bn(bn, x_shape):
    """torch's BatchNorm1d (N, C) or BatchNorm2d (NCHW), float64, with bn's settings and weights."""
    import torch  # the peer: fastnn[bench], which make test installs (a missing torch fails, not skips)
    cls = torch.nn.BatchNorm1d if len(x_shape) == 2 else torch.nn.BatchNorm2d
    t = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats).double()
    if bn.affine:
        with torch.no_grad():
            t.weight[:] = torch.from_numpy(bn.params["weight"].copy())
            t.bias[:] = torch.from_numpy(bn.params["bias"].copy())
    return torch, t


def _nchw(a):
    return a if a.ndim == 2 else a.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3, 3), (2, 1, 1, 3)])
@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"momentum": 0.3, "eps": 1e-3}, {"affine": False},
                                     {"track_running_stats": False}])
def test_batchnorm_matches_torch_in_training_and_eval(shape, options):
    """Three training steps (output, input and parameter gradients, running statistics and the
    batch count) then eval mode, against torch.nn.BatchNorm1d/2d on the same values."""
    bn = fnn.BatchNorm(shape[-1], dtype=np.float64, **options)
    if bn.affine:
        bn.params["weight"][...] = [1.5, 0.5, 2.0]
        bn.params["bias"][...] = [0.1, -0.2, 0.3]
    torch, t = _torch_bn(bn, shape)
    rng = np.random.default_rng(0)
    for step in range(3):
        x, dy = rng.standard_normal(shape) * (step + 1) + step, rng.standard_normal(shape)
        tx = torch.from_numpy(_nchw(x).copy()).requires_grad_()
        ty = t(tx)
        ty.backward(torch.from_numpy(_nchw(dy).copy()))
        bn.zero_grad()
        y = bn(x)
        np.testing.assert_allclose(_nchw(y), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(_nchw(bn.backward(dy)), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
        if bn.affine:
            np.testing.assert_allclose(bn.grads["weight"], t.weight.grad.numpy(), rtol=1e-12)
            np.testing.assert_allclose(bn.grads["bias"], t.bias.grad.numpy(), rtol=1e-12)
            t.zero_grad()
    if bn.track_running_stats:
        np.testing.assert_allclose(bn.buffers["running_mean"], t.running_mean.numpy(), rtol=1e-13)
        np.testing.assert_allclose(bn.buffers["running_var"], t.running_var.numpy(), rtol=1e-13)
        assert bn.buffers["num_batches_tracked"] == t.num_batches_tracked.item() == 3
    else:
        assert bn.buffers == {} and t.running_mean is None
    bn.eval()
    t.eval()
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    tx = torch.from_numpy(_nchw(x).copy()).requires_grad_()
    ty = t(tx)
    ty.backward(torch.from_numpy(_nchw(dy).copy()))
    np.testing.assert_allclose(_nchw(bn(x)), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(_nchw(bn.backward(dy)), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_by_finite_differences(training):
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Conv2D(2, 3, 3, padding="same", dtype=np.float64), fnn.BatchNorm(3, dtype=np.float64),
                           fnn.ReLU(), fnn.Flatten(), fnn.Dense(4 * 3 * 3, 2, dtype=np.float64),
                           fnn.BatchNorm(2, momentum=None, dtype=np.float64))
    model[1].params["weight"][...] = [0.5, 1.5, -1.0]
    model[5].params["bias"][...] = [0.2, -0.3]
    x = np.random.default_rng(1).standard_normal((5, 4, 3, 2))
    if not training:                    # running statistics of a few batches first
        for s in range(3):
            model(x * (s + 1))
        model.eval()
    _check_grads(model, x, atol=1e-7)


def test_batchnorm_float32_statistics_sum_in_float64():
    """A channel of mean 1e4 and spread 1 over 2**16 values: float32 sums would lose the spread."""
    x = (1e4 + np.random.default_rng(0).standard_normal((1 << 16, 2))).astype(np.float32)
    y = fnn.BatchNorm(2)(x)
    np.testing.assert_allclose(y.mean(axis=0, dtype=np.float64), 0, atol=1e-3)
    np.testing.assert_allclose(y.std(axis=0, dtype=np.float64), 1, rtol=1e-3)


def test_batchnorm_buffers_are_in_state_dict_and_checkpoints_not_trained(tmp_path):
    fnn.manual_seed(0)
    make = lambda: fnn.Sequential(fnn.Dense(4, 3), fnn.BatchNorm(3), fnn.Dense(3, 2))  # noqa: E731
    model, twin = make(), make()
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    for s in range(3):
        model(x + s)
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert model.num_params == 4 * 3 + 3 + 3 + 3 + 3 * 2 + 2          # the weight and bias only
    state = model.state_dict()
    assert list(state)[-3:] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    twin.load_state_dict(state)
    np.testing.assert_array_equal(twin.eval()(x), model.eval()(x))
    with pytest.raises(TypeError, match="load_state_dict: 1.num_batches_tracked: expected integers, got dtype float64"):
        twin.load_state_dict({**state, "1.num_batches_tracked": np.array(2.5)})
    with pytest.raises(ValueError, match=r"load_state_dict: 1.num_batches_tracked: expected integers in "
                                         r"-9223372036854775808..9223372036854775807 \(the int64 it is kept in\), "
                                         r"got values from 9223372036854775808 to 9223372036854775808"):
        twin.load_state_dict({**state, "1.num_batches_tracked": np.array(2**63, np.uint64)})    # wrapped to -2**63
    path = fnn.checkpoint.save(tmp_path / "bn.npz", model)
    other = make()
    fnn.checkpoint.load(path, other)
    for (n, a), (_, b) in zip(model.named_buffers(), other.named_buffers()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    untracked = fnn.Sequential(fnn.Dense(4, 3), fnn.BatchNorm(3, track_running_stats=False), fnn.Dense(3, 2))
    with pytest.raises(ValueError, match=r"checkpoint of a different model: buffers \[\['1.running_mean', \[3\]\]"):
        fnn.checkpoint.load(path, untracked)                            # the same parameters, no buffers


def test_batchnorm_refuses_bad_input():
    with pytest.raises(ValueError, match=r"BatchNorm: expected more than 1 value per channel when training, got "
                                         r"input of shape \(1, 3\)"):
        fnn.BatchNorm(3)(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="this looks like NCHW"):
        fnn.BatchNorm(3)(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm momentum: expected a number in \[0, 1\] or None, got 1.5"):
        fnn.BatchNorm(3, momentum=1.5)
    for eps in (0, -1):
        with pytest.raises(ValueError, match=f"BatchNorm eps: expected a finite number > 0, got {eps}"):
            fnn.BatchNorm(3, eps=eps)
    with pytest.raises(TypeError, match="BatchNorm num_features: expected an int >= 1"):
        fnn.BatchNorm(3.0)
    bn = fnn.BatchNorm(3)
    with pytest.raises(RuntimeError, match="BatchNorm.backward without a complete forward"):
        bn.backward(np.ones((2, 3), np.float32))
    bn(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm output gradient: expected shape \(2, 3\), got \(3, 2\)"):
        bn.backward(np.ones((3, 2), np.float32))
    assert fnn.BatchNorm(3).eval()(np.ones((1, 3), np.float32)).shape == (1, 3)     # eval takes one sample


def test_batchnorm_gives_the_same_bits_on_any_number_of_threads(monkeypatch):
    """The statistics' chunks depend on the rows alone: the serial kernels, or the parallel
    ones on 1 or 2 threads, give one result."""
    import numba

    from fastnn.layers import batchnorm

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread on this machine (NUMBA_NUM_THREADS=1): no 2-thread run to compare")
    x = np.random.default_rng(0).standard_normal((4096, 5)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    for kernel, threads in ((lambda par, ser, n: ser, 2), (lambda par, ser, n: par, 1),
                            (lambda par, ser, n: par, 2)):
        monkeypatch.setattr(batchnorm, "pick", kernel)
        numba.set_num_threads(threads)
        try:
            bn = fnn.BatchNorm(5)
            results.append((bn(x), bn.backward(dy), bn.grads["weight"].copy(), bn.buffers["running_var"].copy()))
        finally:
            numba.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_batchnorm_a_non_finite_batch_leaves_the_running_statistics():
    """torch's turn NaN for good (eval mode then gives NaN for every input); the step of such a
    batch is skipped or refused, so the statistics stay as the weights do."""
    import warnings

    bn = fnn.BatchNorm(2, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((8, 2))
    bn(x)
    before = {n: b.copy() for n, b in bn.buffers.items()}
    bad = x.copy()
    bad[3, 0], bad[5, 1] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # NaN and Inf pass silently, as in torch
        y = bn(bad)
        bn.backward(np.ones_like(y))
    assert np.isnan(y[:, 0]).all() and not np.isfinite(y[:, 1]).all()
    for n, b in bn.buffers.items():
        np.testing.assert_array_equal(b, before[n], err_msg=n)


def test_batchnorm_statistics_over_rows_that_do_not_split_evenly_match_torch():
    """601 rows, an outlier in the last: the threaded statistics' chunks must cover every row."""
    import torch  # the peer: fastnn[bench], which make test installs (a missing torch fails, not skips)
    x = np.random.default_rng(0).standard_normal((601, 3))
    x[-1] = 50.0
    bn = fnn.BatchNorm(3, dtype=np.float64)
    t = torch.nn.BatchNorm1d(3).double()
    np.testing.assert_allclose(bn(x), t(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(bn.buffers["running_mean"], t.running_mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(bn.buffers["running_var"], t.running_var.numpy(), rtol=1e-13)


def test_batchnorm_takes_an_empty_batch_in_training_as_torch():
    bn = fnn.BatchNorm(4)
    y = bn(np.zeros((0, 4), np.float32))
    assert y.shape == (0, 4) and bn.backward(y).shape == (0, 4)
    assert int(bn.buffers["num_batches_tracked"]) == 0
