"""Module semantics a PyTorch user relies on: copies, nesting, moving buffers, modes, repr."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fastnn as fnn
from fastnn.flat import ALIGN_BYTES


def _model(dtype=np.float64):
    return fnn.Sequential(fnn.Dense(3, 4, activation="relu", dtype=dtype), fnn.Dense(4, 2, dtype=dtype))


def _train_step(model, opt, x):
    y = model(x)
    model.backward(fnn.losses.mean_squared_error(y, np.zeros_like(y))[1])
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("what", ["pair", "optimizer"])
def test_a_copied_optimizer_steps_its_copied_model_like_the_original(how, what):
    """copy.deepcopy((model, opt)) gave an optimizer that refused to step: the copied model
    rebuilt its buffers, and the copy's params still pointed at copies of the old ones."""
    model = _model()
    opt = fnn.optim.Adam(model, lr=0.1, amsgrad=True)
    x = np.random.default_rng(0).standard_normal((5, 3))
    _train_step(model, opt, x)                                        # state buffers hold values
    copy_of = (lambda o: copy.deepcopy(o)) if how == "deepcopy" else (lambda o: pickle.loads(pickle.dumps(o)))
    clone_opt = copy_of(opt) if what == "optimizer" else copy_of((model, opt))[1]
    clone = clone_opt._model
    assert clone is not model and clone_opt.params is clone.flat.data and clone_opt.grads is clone.flat.grad
    for v in clone_opt.state.values():
        assert v.ctypes.data % ALIGN_BYTES == 0
    for _ in range(3):
        for m, o in ((model, opt), (clone, clone_opt)):
            _train_step(m, o, x)
    np.testing.assert_array_equal(clone.flat.data, model.flat.data)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_trains_like_the_original(how):
    """Copied one by one, each parameter view came back an array of its own: the copy's
    backward wrote where its optimizer did not read, and the step went where its layers did
    not look, so it never trained (and a checkpoint loaded into it changed nothing)."""
    original = _model()
    x = np.random.default_rng(0).standard_normal((5, 3))
    _train_step(original, fnn.optim.SGD(original, lr=0.1), x)        # the copy starts mid-training
    clone = copy.deepcopy(original) if how == "deepcopy" else pickle.loads(pickle.dumps(original))
    flat = clone.flat
    assert flat.data is not original.flat.data and flat.data.ctypes.data % ALIGN_BYTES == 0
    for _, m in clone.modules():
        for n, v in m.params.items():
            assert np.shares_memory(v, flat.data) and np.shares_memory(m.grads[n], flat.grad)
    opts = [fnn.optim.SGD(m, lr=0.1) for m in (original, clone)]
    for _ in range(3):
        for m, opt in zip((original, clone), opts):
            _train_step(m, opt, x)
    np.testing.assert_array_equal(clone.flat.data, original.flat.data)
    np.testing.assert_array_equal(clone(x), original(x))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_layer_copied_out_of_a_model_is_a_model_of_its_own(how):
    """Copying a model's layer (torch's copy.deepcopy(model[0])) raised AttributeError: the copy
    took its model along, whose buffer was rebuilt before the layer's own state came back."""
    original = fnn.Sequential(_model(), fnn.Dense(2, 1, dtype=np.float64))
    x = np.random.default_rng(0).standard_normal((5, 3))
    original(x)
    original.backward(np.ones((5, 1)))                             # gradients to copy too
    inner = original.layers[0]
    clone = copy.deepcopy(inner) if how == "deepcopy" else pickle.loads(pickle.dumps(inner))
    assert [n for n, _ in clone.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    for (n, v), (_, g) in zip(clone.named_parameters(), clone.named_gradients()):
        np.testing.assert_array_equal(v, dict(inner.named_parameters())[n])
        np.testing.assert_array_equal(g, dict(inner.named_gradients())[n])
        assert np.shares_memory(v, clone.flat.data) and np.shares_memory(g, clone.flat.grad)
    before = original.flat.data.copy()
    _train_step(clone, fnn.optim.SGD(clone, lr=0.1), x)
    reused = fnn.Sequential(copy.deepcopy(original.layers[1]))     # free to join another model
    np.testing.assert_array_equal(reused.layers[0].params["weight"], original.layers[1].params["weight"])
    np.testing.assert_array_equal(original.flat.data, before)


def test_a_shallow_copy_leaves_the_original_and_its_optimizer_as_they_were():
    """copy.copy(model) rebuilt the buffer that the original shares with it: the original's
    optimizer then refused to step (its parameters had moved)."""
    model = _model()
    opt = fnn.optim.SGD(model, lr=0.1)
    flat = model.flat.data
    handle = copy.copy(model)
    assert model.flat.data is flat and handle.flat is model.flat and handle.layers[0] is model.layers[0]
    _train_step(model, opt, np.ones((2, 3)))
    np.testing.assert_array_equal(handle.flat.data, flat)


def test_nesting_a_model_keeps_its_accumulated_gradients():
    inner = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    inner(np.ones((2, 3)))
    inner.backward(np.ones((2, 2)))
    before = {n: g.copy() for n, g in inner.named_gradients()}
    fnn.Sequential(inner, fnn.Dense(2, 1, dtype=np.float64))
    for n, g in inner.named_gradients():
        np.testing.assert_array_equal(g, before[n])
    assert before["0.weight"].sum() == 12.0          # x.T @ dy: 2 in each of 3 x 2 entries


@pytest.mark.parametrize("moves", ["same buffer", "grad onto data", "data onto grad"])
def test_rehome_refuses_parameters_and_gradient_in_one_memory(moves):
    m = _model()
    before = m.flat.data.copy()
    buf = np.zeros(m.flat.data.size)
    kwargs = {"same buffer": {"data": buf, "grad": buf}, "grad onto data": {"grad": m.flat.data},
              "data onto grad": {"data": m.flat.grad}}[moves]
    with pytest.raises(ValueError, match="rehome: expected the parameters and the gradient in separate memory"):
        m.rehome(**kwargs)
    np.testing.assert_array_equal(m.flat.data, before)


def test_train_mode_must_be_a_bool():
    """A string "False" was stored as the mode and, being truthy, left dropout dropping."""
    m = fnn.Sequential(fnn.Dropout(0.5, seed=0), fnn.Dense(8, 2))
    with pytest.raises(TypeError, match="train mode: expected True or False, got str 'False'"):
        m.train("False")
    assert m.layers[0].training is True
    m.train(np.bool_(False))
    x = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(m.layers[0](x), x)


def test_load_state_dict_names_the_parameter_of_a_ragged_value():
    m = fnn.Sequential(fnn.Dense(3, 2))
    before = m.flat.data.copy()
    with pytest.raises(ValueError, match=r"load_state_dict: 0.weight: expected real numbers of shape \(3, 2\)"):
        m.load_state_dict({"0.weight": [[1, 2], [3], [5, 6]], "0.bias": [1, 2]})
    np.testing.assert_array_equal(m.flat.data, before)


def test_an_optimizer_refuses_a_torch_style_list_of_tensors():
    """SGD([b0, b1]) took b1 for b0's gradient and moved b0 with every gradient zero."""
    m = fnn.Sequential(fnn.Dense(3, 4), fnn.Dense(4, 4))
    before = m.flat.data.copy()
    with pytest.raises(TypeError, match=r"got a list of 2 \(a list of tensors, as torch.optim takes\?\): pass the model"):
        fnn.optim.SGD([m.layers[0].params["bias"], m.layers[1].params["bias"]], lr=0.1)
    np.testing.assert_array_equal(m.flat.data, before)


def test_summary_prints_numpy_integer_shapes_as_ints():
    rows = fnn.Sequential(fnn.ReLU(), fnn.Dense(4, 2)).summary(input_shape=(np.int64(4),), print_fn=None)
    assert rows[0]["output_shape"] == (4,) and type(rows[0]["output_shape"][0]) is int


def test_nested_containers_print_indented():
    model = fnn.Sequential(fnn.Sequential(fnn.Dense(3, 4), fnn.ReLU()), fnn.Concat(fnn.Dense(4, 2), fnn.Dense(4, 1)))
    assert repr(model).splitlines() == [
        "Sequential(",
        "  (0): Sequential(",
        "    (0): Dense(3, 4, dtype=float32)",
        "    (1): ReLU()",
        "  )",
        "  (1): Concat(",
        "    (0): Dense(4, 2, dtype=float32)",
        "    (1): Dense(4, 1, dtype=float32)",
        "  )",
        ")",
    ]


def test_info_drops_the_nul_byte_that_ends_open_mpis_version(monkeypatch):
    """Open MPI's Get_library_version ends with a NUL byte, which `fastnn info` printed."""
    from mpi4py import MPI as mpi          # make test installs it (fastnn[mpi])

    from fastnn.sysinfo import mpi_status

    monkeypatch.setattr(mpi, "Get_library_version", lambda: "Open MPI v4.1.6, package: Debian OpenMPI\0")
    assert mpi_status().startswith("Open MPI v4.1.6, package: Debian OpenMPI, mpiexec: ")


def test_replacing_a_parameter_array_is_refused_since_the_optimizer_would_never_see_it():
    """m[0].params["weight"] = w (torch's layer.weight = Parameter(w)) left the layer reading w
    while the optimizer updated the flat buffer: that weight silently never trained."""
    model = _model()
    layer = model.layers[0]
    w = np.full((3, 4), 0.5)
    for views in (layer.params, layer.grads):
        for change in (lambda v: v.__setitem__("weight", w), lambda v: v.update(weight=w),
                       lambda v: v.pop("weight"), lambda v: v.setdefault("other", w), lambda v: v.clear()):
            with pytest.raises(TypeError, match=r"write into them in place, e.g. layer.params\['weight'\]\[...\]"):
                change(views)
    layer.params["weight"][...] = w                              # the way that reaches the buffer
    assert np.shares_memory(layer.params["weight"], model.flat.data) and (model.flat.data[:12] == 0.5).all()
    clone = pickle.loads(pickle.dumps(model))
    with pytest.raises(TypeError, match="write into them in place"):
        clone.layers[0].params["weight"] = w
    np.testing.assert_array_equal(clone.layers[0].params["weight"], w)
    view = layer.params["weight"]          # the manual-SGD idiom wrote in place, then raised TypeError
    layer.params["weight"] -= 0.25
    layer.grads["weight"] += 1
    assert layer.params["weight"] is view and (model.flat.data[:12] == 0.25).all() and (model.flat.grad[:12] == 1).all()
    with pytest.raises(TypeError, match="write into them in place"):
        layer.params["weight"] = layer.params["weight"].copy()
    with pytest.raises(TypeError, match="write into them in place"):
        layer.params["new"] = view


def test_a_second_backward_without_a_forward_is_refused():
    """Two forwards, then two backwards (torch's way with two graphs) paired the first gradient
    with the second forward's activations, silently; a repeated backward summed the gradient twice."""
    model = _model()
    rng = np.random.default_rng(0)
    x1, x2, d = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    model(x1)
    model(x2)
    model.backward(d)                                      # the most recent forward's (x2's) gradient
    want = model.flat.grad.copy()
    with pytest.raises(RuntimeError, match="backward without a complete forward since the last backward"):
        model.backward(d)
    np.testing.assert_array_equal(model.flat.grad, want)
    model.zero_grad()
    model.forward(x2)
    with pytest.raises(ValueError, match=r"Dense output gradient: expected shape \(5, 2\), got \(5, 1\)"):
        model.backward(d[:, :1])                           # refused on its shape before anything is written
    model.backward(d)                                      # and may be retried
    np.testing.assert_array_equal(model.flat.grad, want)
    model(x1)
    with pytest.raises(ValueError, match=r"Dense input: expected shape \(N, 3\), got \(5, 2\)"):
        model(x1[:, :2])                                   # fails in the first layer
    with pytest.raises(RuntimeError, match="none ran, or the last one failed"):
        model.backward(d)


class _Scale(fnn.Module):
    """A user's own layer: forward and backward only, with an option each."""

    def forward(self, x, times=2):
        self._times = times
        return times * x

    def backward(self, dy, *, extra=0):
        return self._times * dy + extra


@pytest.mark.parametrize("build", [
    lambda: fnn.Dense(3, 2, dtype=np.float64),
    lambda: fnn.Concat(fnn.Dense(3, 1, dtype=np.float64), fnn.Dense(3, 1, dtype=np.float64)),
    lambda: fnn.Residual(fnn.Dense(3, 2, dtype=np.float64), fnn.Dense(3, 2, dtype=np.float64)),
    lambda: fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64), _Scale())])
def test_every_kind_of_model_refuses_a_second_backward(build):
    """The guard was Sequential's alone: a Concat, a Residual or a bare layer summed the gradient
    twice on a repeated backward."""
    model = build()
    d = np.ones((4, 2))
    model(np.ones((4, 3)))
    model.backward(d)
    want = model.flat.grad.copy()
    with pytest.raises(RuntimeError, match=f"{type(model).__name__}.backward without a complete forward"):
        model.backward(d)
    np.testing.assert_array_equal(model.flat.grad, want)
    scale = _Scale()
    with pytest.raises(RuntimeError, match="_Scale.backward without a complete forward"):
        scale.backward(d)
    scale(d)
    np.testing.assert_array_equal(scale.backward(d), 2 * d)
    scale.forward(d, 3)                                 # the guard passes a layer's own arguments on
    np.testing.assert_array_equal(scale.backward(d, extra=1), 3 * d + 1)
    scale(d)
    clone = pickle.loads(pickle.dumps(scale))           # pickled between its forward and backward
    np.testing.assert_array_equal(clone.backward(d), 2 * d)


def test_a_layer_that_skips_modules_init_still_pairs():
    class Bare(fnn.Module):
        def __init__(self):     # no super().__init__(): it had worked before the guard
            pass

        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    bare = Bare()
    bare(np.ones(2))
    np.testing.assert_array_equal(bare.backward(np.ones(2)), 1)


@pytest.mark.parametrize("run_part, path", [(lambda m, x: m[0](x), "0"), (lambda m, x: m[:-1](x), "0"),
                                            (lambda m, x: m[1].layers[0](x[:, :4]), "1.0")])
def test_a_layer_run_on_its_own_between_forward_and_backward_is_refused(run_part, path):
    """model(x1), then model[0](x2) or model[:-1](x2), then model.backward: layer 0 differentiated
    x2's activations and layer 1 x1's, silently (torch keeps each forward's own graph)."""
    rng = np.random.default_rng(0)
    model = fnn.Sequential(fnn.Dense(3, 4, activation="relu", dtype=np.float64),
                           fnn.Sequential(fnn.Dense(4, 4, dtype=np.float64), fnn.ReLU()),
                           fnn.Dense(4, 2, dtype=np.float64))
    x1, x2, d = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    model(x1)
    model.backward(d)
    want = model.flat.grad.copy()
    model.zero_grad()
    model(x1)
    run_part(model, np.hstack([x2, x2]) if path == "1.0" else x2)
    with pytest.raises(RuntimeError, match=f"layer {path!r} .* ran a forward of its own after this model's forward"):
        model.backward(d)
    assert not model.flat.grad.any()
    model(x1)
    model.backward(d)
    np.testing.assert_array_equal(model.flat.grad, want)


class _Block(fnn.Module):
    """A user's own module as torch's are written: sub-layers in attributes (one in a list), a
    parameter of its own, forward and backward by hand."""

    def __init__(self):
        super().__init__()
        self.fc1 = fnn.Dense(4, 5, activation="tanh", dtype=np.float64)
        self.rest = [fnn.Dense(5, 3, dtype=np.float64)]
        self.create_params({"scale": np.array([1.5, -0.5, 2.0])})

    def forward(self, x):
        self._y = self.rest[0](self.fc1(x))
        return self._y * self.params["scale"]

    def backward(self, dy):
        self.grads["scale"] += (dy * self._y).sum(axis=0)
        return self.fc1.backward(self.rest[0].backward(dy * self.params["scale"]))


@pytest.mark.parametrize("nested", [False, True])
def test_a_modules_sub_layers_in_attributes_are_part_of_the_model(nested):
    """Sub-layers held in attributes were not registered: not in the flat buffer, the optimizer,
    state_dict or checkpoints, so training left them as they were, silently."""
    rng = np.random.default_rng(0)
    block = _Block()
    model = fnn.Sequential(block, fnn.Dense(3, 2, dtype=np.float64)) if nested else block
    p = "0." if nested else ""
    names = [f"{p}scale", f"{p}fc1.weight", f"{p}fc1.bias", f"{p}rest.0.weight", f"{p}rest.0.bias"]
    assert [n for n, _ in model.named_parameters()][:5] == names
    assert list(model.state_dict())[:5] == names
    first = {n: v.copy() for n, v in model.named_parameters()}
    opt = fnn.optim.SGD(model, lr=0.1)
    assert model.flat.data.size >= model.num_params == sum(v.size for v in first.values())
    x = rng.normal(size=(6, 4))
    dy = rng.normal(size=(6, 2 if nested else 3))
    model(x)
    model.backward(dy)
    grads = {n: g.copy() for n, g in model.named_gradients()}
    opt.step()
    for n, v in model.named_parameters():       # every parameter stepped: w - lr * g, by finite differences' g
        np.testing.assert_allclose(v, first[n] - 0.1 * grads[n], rtol=1e-12, atol=1e-15)
    assert all(np.any(g != 0) for g in grads.values())
    w = first[f"{p}fc1.weight"]
    i = (1, 2)

    def loss(delta):
        model.load_state_dict({**first, f"{p}fc1.weight": w + delta}, strict=False)
        return float(np.sum(model.eval()(x) * dy))
    e = np.zeros_like(w)
    e[i] = 1e-6
    np.testing.assert_allclose(grads[f"{p}fc1.weight"][i], (loss(e) - loss(-e)) / 2e-6, rtol=1e-6)
    if nested:
        with pytest.raises(TypeError, match="define _Block.output_shape"):
            model.summary(input_shape=(4,))


def test_a_module_that_skips_modules_init_is_named_when_a_model_adopts_it():
    class Bare(fnn.Module):
        def __init__(self):
            self.k = 2.0

    with pytest.raises(TypeError, match=r"layer '0' \(Bare\) .* must call super\(\).__init__\(\)"):
        fnn.Sequential(Bare(), fnn.Dense(3, 2))


def test_create_params_names_what_it_expected():
    layer = fnn.Module()
    layer.create_params({"w": np.zeros(2, np.float32)})
    assert layer.dtype == np.float32 and layer.params["w"].dtype == np.float32
    with pytest.raises(ValueError, match="has parameters already"):
        layer.create_params({"b": np.zeros(2)})
    with pytest.raises(ValueError, match="without dots"):
        fnn.Module().create_params({"a.b": np.zeros(2)})
    with pytest.raises(TypeError, match="expected real numbers"):
        fnn.Module().create_params({"w": np.array(["x"])})
    with pytest.raises(TypeError, match="non-empty dict"):
        fnn.Module().create_params({})


class _Net(fnn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = fnn.Dense(4, 8, activation="relu"), fnn.Dense(8, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def backward(self, dy):
        return self.body.backward(self.head.backward(dy))


def test_a_sub_layer_replaced_after_gathering_joins_the_next_optimizer():
    """torch's fine-tuning idiom, net.head = Dense(...) then a new optimizer: the new head trained."""
    net = _Net()
    fnn.optim.Adam(net)
    net.head = fnn.Dense(8, 3)
    opt = fnn.optim.SGD(net, lr=0.1)
    assert np.shares_memory(net.head.params["weight"], net.flat.data) and net.flat.data is opt.params
    w = net.head.params["weight"].copy()
    net(np.ones((2, 4), np.float32))
    net.backward(np.ones((2, 3), np.float32))
    opt.step()
    assert not np.array_equal(net.head.params["weight"], w)


class _Wrapper(fnn.Module):
    def __init__(self):
        super().__init__()
        self.net = fnn.Sequential(fnn.Dense(4, 2, dtype=np.float64))


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copy_of_a_wrapper_trained_through_its_inner_model_keeps_its_optimizer(how):
    """A module holding a Sequential, stepped by the Sequential's optimizer: the copy gathered
    the inner model's parameters into the wrapper, away from the copied optimizer."""
    w = _Wrapper()
    opt = fnn.optim.SGD(w.net, lr=0.5)
    w2, opt2 = pickle.loads(pickle.dumps((w, opt))) if how == "pickle" else copy.deepcopy((w, opt))
    w2.net.flat.grad[...] = 1.0
    before = w2.net.flat.data.copy()
    opt2.step()
    np.testing.assert_allclose(w2.net.flat.data, before - 0.5 * (w2.net.flat.grad != 0))


def test_a_layer_held_again_in_an_attribute_is_one_layer_as_torch_counts_it():
    """Tied weights (a decoder keeping the encoder in an attribute) were refused as a layer used twice."""
    class TiedDecoder(fnn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, x):
            self._x = x
            return x @ self.enc.params["weight"].T

        def backward(self, dy):
            self.enc.grads["weight"] += dy.T @ self._x
            return dy @ self.enc.params["weight"]

    enc = fnn.Dense(6, 3, bias=False, dtype=np.float64)
    model = fnn.Sequential(enc, TiedDecoder(enc))
    assert [n for n, _ in model.named_parameters()] == ["0.weight"] and model.num_params == 18
    x = np.random.default_rng(0).standard_normal((5, 6))
    model(x)
    model.backward(np.ones((5, 6)))
    w, dy = enc.params["weight"], np.ones((5, 6))
    want = x.T @ (dy @ w) + dy.T @ (x @ w)             # d/dW of sum(dy * (x W W^T)), both uses of W (6, 3)
    np.testing.assert_allclose(enc.grads["weight"], want, rtol=1e-12)
    with pytest.raises(ValueError, match="layer '2' is the same object as layer '0'"):
        fnn.Sequential(enc2 := fnn.Dense(3, 3), fnn.ReLU(), enc2)       # a container running it twice


def test_create_params_takes_the_sub_layers_dtype():
    """np.ones(n) is float64: next to float32 sub-layers the layer became float64 and every
    model of it was refused."""
    class Scaled(fnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fnn.Dense(3, 3)
            self.create_params({"scale": np.ones(3)})

    block = Scaled()
    assert block.dtype == np.float32 and block.params["scale"].dtype == np.float32
    fnn.Sequential(block, fnn.Dense(3, 2))
    with pytest.raises(TypeError, match=r"share one dtype, got float32 \(layers '0'\), float64 \(layers '1'\)"):
        fnn.Sequential(fnn.Dense(3, 3), fnn.Dense(3, 3, dtype=np.float64))


class _Twice(fnn.Module):
    """Runs one sub-layer twice in its forward: its activations are the second run's only."""

    def __init__(self):
        super().__init__()
        self.fc = fnn.Dense(3, 3, dtype=np.float64)

    def forward(self, x):
        return self.fc(self.fc(x))

    def backward(self, dy):
        return self.fc.backward(self.fc.backward(dy))


def _snapshots_at_hooks(model, x, dy):
    """(offset, gradient at that moment) for each report of the gradient hook during a backward."""
    seen = []
    model.register_grad_ready_hook(lambda offset: seen.append((offset, model.flat.grad.copy())))
    model(x)
    model.backward(dy)
    return seen


@pytest.mark.parametrize("build, replace", [
    (lambda: fnn.Sequential(_Block(), fnn.Dense(3, 2, dtype=np.float64)), False),
    (lambda: fnn.Sequential(_Block(), fnn.Dense(3, 2, dtype=np.float64)), True),
    (lambda: _Block(), False),
    (lambda: fnn.Residual(fnn.Sequential(fnn.Dense(4, 4, dtype=np.float64), fnn.ReLU()),
                          fnn.Dense(4, 4, dtype=np.float64)), False),
    (lambda: fnn.Concat(fnn.Dense(4, 2, dtype=np.float64), fnn.Dense(4, 1, dtype=np.float64)), False)])
def test_the_gradient_hooks_report_only_final_gradients_for_every_kind_of_model(build, replace):
    """Only a Sequential told the hooks (data parallelism's bucket reducer) that a backward began
    and ended; and a Sequential whose layer was replaced kept the old buffer's offsets, handing
    buckets to the reducer before their gradients were written."""
    rng = np.random.default_rng(0)
    model = build()
    if replace:
        model[0].fc1 = fnn.Sequential(fnn.Dense(4, 16, activation="tanh", dtype=np.float64),   # gathered again:
                                      fnn.Dense(16, 5, dtype=np.float64))                      # offsets move
    model.flat
    x = rng.normal(size=(3, 4))
    dy = rng.normal(size=model.eval()(x).shape)
    model.train()
    seen = _snapshots_at_hooks(model, x, dy)
    assert seen[0][0] == model.flat.grad.size and not seen[0][1].any()       # a backward begins, none written
    assert seen[-1][0] == 0
    if isinstance(model, fnn.Sequential):     # reports as its layers finish (the others: whole backward)
        assert any(0 < offset < model.flat.grad.size for offset, _ in seen), [offset for offset, _ in seen]
    final = model.flat.grad
    for offset, grad in seen:
        np.testing.assert_array_equal(grad[offset:], final[offset:])


def test_a_layer_run_twice_in_one_forward_is_refused_at_its_second_backward():
    """Once gathered into a model, the layer's backward ran unchecked: the second use's activations
    served both backwards, a wrong gradient, silently."""
    model = fnn.Sequential(_Twice(), fnn.Dense(3, 1, dtype=np.float64))
    model(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="Dense.backward: the layer ran twice in the model's last forward"):
        model.backward(np.ones((2, 1)))
    fnn.Sequential(_Block(), fnn.Dense(3, 1, dtype=np.float64))      # each once: fine
    m = fnn.Sequential(fnn.Dense(3, 3, dtype=np.float64), fnn.Dense(3, 1, dtype=np.float64))
    m(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"Dense output gradient: expected shape \(2, 1\), got \(2, 2\)"):
        m.backward(np.ones((2, 2)))        # refused in the last layer
    m.backward(np.ones((2, 1)))            # and retried


def test_sub_layers_in_a_list_with_other_items_or_in_a_dict_are_registered():
    """A list holding a None beside its layers (an optional BatchNorm) or a dict of layers was
    skipped whole: those layers never trained."""
    class Heads(fnn.Module):
        def __init__(self):
            super().__init__()
            self.norms = [None, fnn.Dense(2, 2)]
            self.heads = {"a": fnn.Dense(2, 1), "b": fnn.Dense(2, 3)}

    names = [n for n, _ in Heads().named_parameters()]
    assert names == ["norms.1.weight", "norms.1.bias", "heads.a.weight", "heads.a.bias", "heads.b.weight",
                     "heads.b.bias"]


def test_a_sub_model_differentiated_twice_for_one_forward_adds_both_gradients():
    """torch's retain_graph: a trunk run once and backpropagated once per head gives the gradient
    of the sum (refused for a while as 'ran twice')."""
    class TwoHeads(fnn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = fnn.Sequential(fnn.Dense(3, 4, activation="tanh", dtype=np.float64))
            self.a, self.b = fnn.Dense(4, 1, dtype=np.float64), fnn.Dense(4, 1, dtype=np.float64)

        def forward(self, x):
            h = self.trunk(x)
            return np.concatenate([self.a(h), self.b(h)], axis=1)

        def backward(self, dy):
            return self.trunk.backward(self.a.backward(dy[:, :1])) + self.trunk.backward(self.b.backward(dy[:, 1:]))

    model = TwoHeads()
    fnn.optim.SGD(model, lr=0.1)
    x, dy = np.random.default_rng(0).normal(size=(5, 3)), np.random.default_rng(1).normal(size=(5, 2))
    model(x)
    model.backward(dy)
    got = {n: g.copy() for n, g in model.named_gradients()}
    h = model.trunk.layers[0]
    g = dy[:, :1] @ model.a.params["weight"].T + dy[:, 1:] @ model.b.params["weight"].T
    t = np.tanh(x @ h.params["weight"] + h.params["bias"])
    np.testing.assert_allclose(got["trunk.0.weight"], x.T @ (g * (1 - t * t)), rtol=1e-12)


def test_a_subclass_backward_calling_super_tells_the_hooks_once():
    """Both wrapped backwards took the model's path: 'a backward begins' twice, which data
    parallelism refuses as a second backward before step()."""
    class MySeq(fnn.Sequential):
        def backward(self, dy):
            return super().backward(dy)

    model = MySeq(fnn.Dense(3, 4, dtype=np.float64), fnn.Dense(4, 2, dtype=np.float64))
    seen = [offset for offset, _ in _snapshots_at_hooks(model, np.ones((2, 3)), np.ones((2, 2)))]
    assert seen[0] == model.flat.grad.size and seen.count(model.flat.grad.size) == 1 and seen[-1] == 0


def test_a_backward_that_failed_after_some_layers_finished_needs_a_new_forward():
    """Retried, the layers that had finished added their gradients a second time."""
    class Flaky(fnn.ReLU):
        fail = True

        def backward(self, dy):
            if Flaky.fail:
                Flaky.fail = False
                raise ValueError("flaky")       # an Exception: the last layer's finished backward decides
            return super().backward(dy)

    model = fnn.Sequential(fnn.Dense(3, 4, dtype=np.float64), Flaky(), fnn.Dense(4, 2, dtype=np.float64))
    _retry_is_refused(model, np.ones((2, 3)), np.ones((2, 2)), ValueError)


def _retry_is_refused(model, x, dy, error):
    """model's backward fails with ``error`` after writing gradients; retried, it is refused."""
    model(x)
    with pytest.raises(error):
        model.backward(dy)
    with pytest.raises(RuntimeError, match="none ran, or the last one failed"):
        model.backward(dy)


def test_a_list_of_data_is_not_read_through():
    """children() read every item of every list attribute: a growing log made each zero_grad slower."""
    class Logged(fnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fnn.Dense(2, 2)
            self.log = [0.0, fnn.Dense(2, 2)]       # data first: not a list of layers

    assert [n for n, _ in Logged().children()] == ["fc"]


def test_a_slice_runs_forward_and_backward_after_the_models_forward():
    """model(x) for the outputs, then model[:-1] forward and backward for the features' gradient."""
    model = fnn.Sequential(fnn.Dense(3, 4, activation="relu", dtype=np.float64), fnn.Dense(4, 2, dtype=np.float64))
    x = np.random.default_rng(0).normal(size=(5, 3))
    model(x)
    features = model[:-1]
    h = features(x)
    dx = features.backward(np.ones_like(h))
    w, b = model[0].params["weight"], model[0].params["bias"]
    np.testing.assert_allclose(dx, ((x @ w + b) > 0) @ w.T, rtol=1e-12)


def test_a_layer_run_on_its_own_after_its_models_forward_starts_a_forward_of_its_own():
    """A layer of a model run alone (after predict, or twice in a row) was refused as 'ran twice
    in the model's last forward'."""
    enc = fnn.Dense(3, 4, dtype=np.float64)
    model = fnn.Sequential(enc, fnn.Dense(4, 2, dtype=np.float64))
    x = np.random.default_rng(0).normal(size=(5, 3))
    fnn.train.predict(model, x)
    for _ in range(2):
        enc(x)
        np.testing.assert_allclose(enc.backward(np.ones((5, 4))), np.ones((5, 4)) @ enc.params["weight"].T)


def test_another_threads_forward_does_not_hide_a_layer_run_twice():
    """The run counter was global: a forward in another thread between the two runs of a layer
    made its backward pass, with the second run's activations for both."""
    import threading

    other = fnn.Sequential(fnn.Dense(3, 3, dtype=np.float64))

    class Twice(_Twice):
        def forward(self, x):
            h = self.fc(x)
            t = threading.Thread(target=lambda: other(np.ones((2, 3))))
            t.start()
            t.join()
            return self.fc(h)

    model = fnn.Sequential(Twice(), fnn.Dense(3, 1, dtype=np.float64))
    model(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="ran twice in the model's last forward"):
        model.backward(np.ones((2, 1)))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_keeps_a_layer_that_ran_after_its_models_forward_refused(how):
    """Copies numbered every forward 0: a layer's own later forward no longer showed, and the copy's
    backward mixed two batches' activations."""
    model = fnn.Sequential(fnn.Dense(3, 4, dtype=np.float64), fnn.Dense(4, 2, dtype=np.float64))
    model(np.ones((2, 3)))
    model[:1](np.zeros((2, 3)))
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    with pytest.raises(RuntimeError, match="ran a forward of its own after this model's forward"):
        clone.backward(np.ones((2, 2)))
    clone(np.ones((2, 3)))
    clone.backward(np.ones((2, 2)))


class _Interrupt(BaseException):
    """As KeyboardInterrupt, an exception that is no Exception (without stopping pytest)."""


def test_an_interrupted_backward_of_a_module_with_its_own_parameters_needs_a_new_forward():
    """Its own gradient was written before a sub-layer was interrupted; a retry added it twice."""
    class Scaled(fnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fnn.Dense(3, 3, dtype=np.float64)
            self.create_params({"scale": np.ones(3)})

        def forward(self, x):
            self._y = self.fc(x)
            return self._y * self.params["scale"]

        def backward(self, dy):
            self.grads["scale"] += (dy * self._y).sum(axis=0)
            raise _Interrupt

    _retry_is_refused(Scaled(), np.ones((2, 3)), np.ones((2, 3)), _Interrupt)


def test_a_container_subclass_holding_a_layer_beside_its_children_is_named():
    """A Sequential subclass's extra layer in an attribute was never registered: the optimizer
    never stepped it, silently."""
    class MyNet(fnn.Sequential):
        def __init__(self):
            super().__init__(fnn.Dense(3, 4), fnn.ReLU())
            self.head = fnn.Dense(4, 2)
            self.last = self.layers[0]          # one of its layers again: fine

    with pytest.raises(TypeError, match=r"MyNet holds Dense in its attribute 'head', which is none of its "
                                        r"Sequential children \['0', '1'\]"):
        fnn.optim.SGD(MyNet(), lr=0.1)
    for model in (fnn.Residual(fnn.Dense(3, 3), fnn.Dense(3, 3)), fnn.Concat(fnn.Dense(3, 3), fnn.Dense(3, 3))):
        fnn.optim.SGD(model, lr=0.1)


def test_parameters_are_the_views_in_buffer_order():
    model = _model()
    views = model.parameters()
    assert [v.shape for v in views] == [(3, 4), (4,), (4, 2), (2,)]
    assert all(v is w for v, (_, w) in zip(views, model.named_parameters()))
    assert all(np.shares_memory(v, model.flat.data) for v in views)
    opt = fnn.optim.SGD(model, lr=0.1, param_groups=[{"params": views[1::2], "weight_decay": 0.0}])
    assert opt.param_groups[1]["params"] == ["0.bias", "1.bias"]


def test_a_sequential_reports_each_layers_gradients_as_soon_as_they_are_final():
    """After layer i's backward, every gradient from layer i's first parameter on is final: the
    reports (data parallelism starts reducing there) come one per layer, not a layer late."""
    model = fnn.Sequential(fnn.Dense(3, 4, dtype=np.float64), fnn.Dense(4, 5, dtype=np.float64),
                           fnn.Dense(5, 2, dtype=np.float64))
    seen = []
    model.register_grad_ready_hook(seen.append)
    model(np.ones((2, 3)))
    model.backward(np.ones((2, 2)))
    starts = [model.flat.slots[f"{i}.weight"].start for i in range(3)]
    assert seen == [model.flat.grad.size, *starts[::-1], 0], (seen, starts)     # begin, each layer, end
