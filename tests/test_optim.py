"""Fused optimizers against the NumPy references and torch.optim, step by step."""
from __future__ import annotations

import numpy as np
import pytest
import torch  # the peer: fastnn[bench], which make test installs

import fastnn as fnn
from fastnn.flat import FlatBuffer
from reference import adam_ref, sgd_ref

SIZES = [1, 7, 1023, 1_000_003]
ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, maximize=True),
    dict(lr=1e-2, weight_decay=0.1, decoupled=True),
]
SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.5, maximize=True),
]


class _grad_seq:
    """A reproducible sequence of ``steps`` gradients of length n, generated as iterated (a
    list of 100 gradients of 10^6 elements would hold 800 MB)."""

    def __init__(self, n: int, steps: int, seed: int = 0):
        self.n, self.steps, self.seed = n, steps, seed

    def __iter__(self):
        base = np.random.default_rng(self.seed).standard_normal((4, self.n))
        return (base[t % 4] * np.cos(0.3 * t) + base[(t + 1) % 4] * np.sin(0.7 * t) for t in range(self.steps))

    def __getitem__(self, k):
        return list(self)[k]


def _run(make_opt, p0, grads, dtype):
    p, g = p0.astype(dtype), np.zeros(p0.size, dtype)
    opt = make_opt((p, g))
    for gr in grads:
        g[:] = gr
        assert opt.step()
    return p


def _adam(kw):
    kw = dict(kw)
    cls = fnn.optim.AdamW if kw.pop("decoupled", False) else fnn.optim.Adam
    kw.setdefault("weight_decay", 0.0)
    return lambda pair: cls(pair, **kw)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_adam_matches_reference_float64(n, case):
    kw = ADAM_CASES[case]
    steps = 100
    p0 = np.random.default_rng(1).standard_normal(n)
    grads = _grad_seq(n, steps)
    got = _run(_adam(kw), p0, grads, np.float64)
    np.testing.assert_allclose(got, adam_ref(p0, grads, **kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_sgd_matches_reference_float64(n, case):
    kw = SGD_CASES[case]
    steps = 100
    p0 = np.random.default_rng(1).standard_normal(n)
    grads = _grad_seq(n, steps)
    got = _run(lambda pair: fnn.optim.SGD(pair, **kw), p0, grads, np.float64)
    np.testing.assert_allclose(got, sgd_ref(p0, grads, **kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_adam_float32_close_to_reference(case):
    p0 = np.random.default_rng(2).standard_normal(1023)
    grads = _grad_seq(1023, 150, seed=3)
    got = _run(_adam(ADAM_CASES[case]), p0, grads, np.float32)
    np.testing.assert_allclose(got, adam_ref(p0, [g.astype(np.float32) for g in grads], **ADAM_CASES[case]),
                               rtol=1e-5, atol=1e-6)


def _torch_pair(make_fnn, make_torch, sizes, steps, dtype):
    rng = np.random.default_rng(4)
    fb = FlatBuffer({f"t{i}": (s,) for i, s in enumerate(sizes)}, dtype)
    fb.data[:] = 0
    tensors = []
    for i, s in enumerate(sizes):
        fb.view(f"t{i}")[...] = rng.standard_normal(s)
        tensors.append(torch.tensor(fb.view(f"t{i}").copy(), requires_grad=True))
    opt, topt = make_fnn((fb.data, fb.grad)), make_torch(tensors)
    for _ in range(steps):
        for i, s in enumerate(sizes):
            gi = rng.standard_normal(s).astype(dtype)
            fb.grad_view(f"t{i}")[...] = gi
            tensors[i].grad = torch.tensor(gi)
        opt.step()
        topt.step()
    return [(fb.view(f"t{i}"), t.detach().numpy()) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", [
    ("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, betas=(0.5, 0.9), maximize=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.5)),
])
def test_matches_torch_fused(name, kw, dtype):
    """Same inputs, same hyperparameters: the same trajectory as torch.optim (fused=True),
    over tensors of awkward sizes including zero-size ones, 120 steps."""
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        pairs = _torch_pair(lambda pair: getattr(fnn.optim, name)(pair, **kw),
                            lambda ts: getattr(torch.optim, name)(ts, fused=True, **kw),
                            [1, 0, 7, 1023, 0, 33], 120, dtype)
    finally:
        torch.set_default_dtype(torch.float32)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs, **tol)


def test_param_groups_exclude_biases_from_weight_decay():
    model = fnn.Sequential(fnn.Dense(5, 4, dtype=np.float64), fnn.Dense(4, 3, dtype=np.float64))
    biases = [v for n, v in model.named_parameters() if n.endswith("bias")]
    opt = fnn.optim.AdamW(model, lr=0.1, weight_decay=0.5, param_groups=[{"params": biases, "weight_decay": 0.0}])
    assert opt.param_groups[1]["params"] == ["0.bias", "1.bias"]
    before = {n: v.copy() for n, v in model.named_parameters()}
    opt.step()  # zero gradients: only decoupled weight decay moves parameters
    for n, v in model.named_parameters():
        if n.endswith("bias"):
            np.testing.assert_array_equal(v, before[n])
        else:
            np.testing.assert_allclose(v, before[n] * (1 - 0.1 * 0.5), rtol=1e-12)


def test_param_groups_by_name_and_per_group_lr():
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = fnn.optim.SGD(model, lr=1.0, param_groups=[{"params": ["0.bias"], "lr": 0.5}])
    model.flat.grad[:] = 1.0
    w, b = model[0].params["weight"].copy(), model[0].params["bias"].copy()
    opt.step()
    np.testing.assert_allclose(model[0].params["weight"], w - 1.0)
    np.testing.assert_allclose(model[0].params["bias"], b - 0.5)


@pytest.mark.parametrize("make", [fnn.optim.SGD, fnn.optim.Adam])
@pytest.mark.parametrize("edit, error, match", [
    (lambda groups: groups.pop(), ValueError, "expected the 2 groups this optimizer was made with, got 1"),
    (lambda groups: groups.append(dict(groups[0], params=[])), ValueError, "expected the 2 groups .* got 3"),
    (lambda groups: groups[1]["params"].append("0.weight"), ValueError,
     r"param_groups\[1\]\['params'\]: expected the parameters the group was made with \['0.bias'\]"),
    (lambda groups: groups.__setitem__(1, None), TypeError, "param_groups: expected a list of dicts")])
def test_a_group_popped_or_appended_is_refused_before_the_step(make, edit, error, match):
    """A popped group had the kernels read past their table of groups (Adam's bias went NaN, at
    random); an appended one was ignored, or an IndexError."""
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = make(model, lr=0.1, param_groups=[{"params": ["0.bias"], "lr": 0.5}])
    model.flat.grad[:] = 1.0
    saved = opt.state_dict()
    edit(opt.param_groups)
    before = model.flat.data.copy()
    for call in (opt.step, lambda: opt.load_state_dict(saved)):
        with pytest.raises(error, match=match):
            call()
    np.testing.assert_array_equal(model.flat.data, before)


@pytest.mark.parametrize("eps", [0.1, 0.0, 1e-46])  # eps = 0 made the padding 0 / (0 + 0) = NaN; 1e-46 is 0 in float32
@pytest.mark.parametrize("in_group", [False, True])
def test_padding_between_tensors_stays_zero(eps, in_group):
    """in_group: the eps is a later group's (the padding fix looked at group 0's only)."""
    model = fnn.Sequential(fnn.Dense(3, 5), fnn.Dense(5, 3))
    groups = [{"params": ["1.weight", "1.bias"], "eps": eps}] if in_group else []
    opt = fnn.optim.Adam(model, lr=0.1, weight_decay=0.1, eps=1e-8 if in_group else eps, param_groups=groups)
    real = np.zeros(model.flat.data.size, bool)
    for s in model.flat.slots.values():
        real[s.start:s.start + s.size] = True
    assert not real.all()
    for _ in range(3):
        model.flat.grad[real] = 1.0
        opt.step()
    assert not model.flat.data[~real].any()
    assert np.isfinite(model.flat.data[real]).all()


def test_clipping_by_global_norm():
    n = 1000
    p0 = np.random.default_rng(0).standard_normal(n)
    grads = [10 * g for g in _grad_seq(n, 20)]
    got = _run(lambda pair: fnn.optim.SGD(pair, lr=0.01, momentum=0.9, max_grad_norm=1.0), p0, grads, np.float64)
    scaled = [g * min(1.0, 1.0 / (np.linalg.norm(g) + 1e-6)) for g in grads]
    np.testing.assert_allclose(got, sgd_ref(p0, scaled, lr=0.01, momentum=0.9), rtol=1e-10)


def test_last_grad_norm_is_deterministic_and_right(monkeypatch):
    """The same bits from the parallel kernel on all threads or one and the serial kernel,
    twice each (the chunks' partial sums are added in a fixed order)."""
    import numba

    from fastnn.optim import base

    g = np.random.default_rng(0).standard_normal(100_003).astype(np.float32)
    norms = []
    for threads, variant in ((numba.config.NUMBA_NUM_THREADS, 0), (1, 0), (numba.config.NUMBA_NUM_THREADS, 1)) * 2:
        numba.set_num_threads(threads)
        monkeypatch.setattr(base, "pick", lambda *kernels, v=variant: kernels[v])
        opt = fnn.optim.SGD((np.zeros_like(g), g), lr=0.0)
        opt.step()
        norms.append(opt.last_grad_norm)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert len(set(norms)) == 1, norms
    assert norms[0] == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-12)


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_last_grad_norm_of_a_refused_step_is_not_the_step_before(policy):
    p, g = np.zeros(5), np.ones(5)
    opt = fnn.optim.SGD((p, g), lr=0.1, nonfinite=policy)
    opt.step()
    assert opt.last_grad_norm == pytest.approx(np.sqrt(5))
    g[2] = np.nan
    if policy == "raise":
        with pytest.raises(FloatingPointError):
            opt.step()
    else:
        assert opt.step() is False
    assert np.isnan(opt.last_grad_norm)


@pytest.mark.parametrize("make", [lambda pair: fnn.optim.Adam(pair, fused=True),
                                  lambda pair: fnn.optim.SGD(pair, foreach=False, lr=0.1),
                                  lambda pair: fnn.optim.AdamW(pair, weight_decays=0.1)])
def test_unknown_options_name_the_optimizer_and_what_it_takes(make):
    with pytest.raises(TypeError, match=r"(Adam|SGD|AdamW): unexpected option\(s\) \['(fused|foreach|weight_decays)'\]"
                                        r".*expected among \[.*'lr'.*'max_grad_norm', 'nonfinite'\]"):
        make((np.zeros(3), np.zeros(3)))


def test_zero_grad_takes_torchs_set_to_none():
    g = np.ones(4)
    opt = fnn.optim.SGD((np.zeros(4), g), lr=0.1)
    opt.zero_grad(set_to_none=True)
    assert not g.any()
    g[:] = 1
    opt.zero_grad(set_to_none=False)
    assert not g.any()
    with pytest.raises(TypeError, match="set_to_none: expected True or False"):
        opt.zero_grad(set_to_none="yes")
    wrapped = fnn.distributed.DataParallel(model := fnn.Sequential(fnn.Dense(2, 2)), fnn.optim.SGD(model, lr=0.1))
    model.flat.grad[:] = 1
    wrapped.zero_grad(set_to_none=True)                             # one process: the wrapper as the optimizer
    assert not model.flat.grad.any()


@pytest.mark.parametrize("key, make", [("lr", lambda pair: fnn.optim.SGD(pair, lr=np.inf)),
                                       ("momentum", lambda pair: fnn.optim.SGD(pair, lr=0.1, momentum=np.inf)),
                                       ("weight_decay", lambda pair: fnn.optim.Adam(pair, weight_decay=np.inf)),
                                       ("dampening", lambda pair: fnn.optim.SGD(pair, momentum=0.9,
                                                                                dampening=-np.inf))])
def test_infinite_hyperparameters_are_refused(key, make):
    with pytest.raises(ValueError, match=f"{key}: expected a finite number( >= 0)?(,| within float64's range .*,) "
                                         f"got -?inf"):
        make((np.zeros(3), np.zeros(3)))
    p = np.ones(3)
    opt = fnn.optim.SGD((p, np.ones(3)), lr=0.1, momentum=0.5)
    opt.param_groups[0]["lr"] = np.inf                            # edited by hand between steps
    with pytest.raises(ValueError, match="lr: expected a finite number >= 0"):
        opt.step()
    np.testing.assert_array_equal(p, 1.0)


@pytest.mark.parametrize("make, key", [(lambda pair: fnn.optim.SGD(pair, lr=1e39), "lr"),
                                       (lambda pair: fnn.optim.SGD(pair, momentum=1e39), "momentum"),
                                       (lambda pair: fnn.optim.SGD(pair, momentum=0.9, dampening=-1e39), "dampening"),
                                       (lambda pair: fnn.optim.AdamW(pair, weight_decay=1e39), "weight_decay"),
                                       (lambda pair: fnn.optim.Adam(pair, eps=1e39), "eps")])
def test_settings_beyond_float32_are_refused_for_float32_parameters(make, key):
    """lr=1e39 is finite in float64 but an inf kernel scalar in float32: every parameter became
    NaN, even those with a zero gradient, with only NumPy's cast warning."""
    with pytest.raises(ValueError, match=f"{key}: expected a finite number within float32's range .*, got [-]?1e[+]39"):
        make((np.ones(3, np.float32), np.zeros(3, np.float32)))
    make((p := np.ones(3), np.zeros(3))).step()                  # float64 parameters hold it
    p32 = np.ones(3, np.float32)
    opt = fnn.optim.SGD((p32, np.array([1, 0, 0], np.float32)), lr=0.1)
    opt.param_groups[0]["lr"] = 1e39                             # edited by hand, or grown by a schedule
    with pytest.raises(ValueError, match="lr: expected a finite number within float32's range"):
        opt.step()
    np.testing.assert_array_equal(p32, 1.0)
    assert opt.step_count == 0


@pytest.mark.filterwarnings("error")
def test_numpy_float32_settings_on_float64_parameters_step_without_warnings():
    """The range check compared np.float32(lr) with float64's largest value: NumPy cast that to
    float32 (inf) with an overflow warning on every step(), an error under -W error."""
    p, g = np.zeros(4), np.ones(4)
    opt = fnn.optim.Adam((p, g), lr=np.float32(0.5))
    opt.step(grad_scale=np.float32(0.5))
    np.testing.assert_allclose(p, -0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_raises_and_changes_nothing(bad):
    p, g = np.ones(50), np.ones(50)
    opt = fnn.optim.Adam((p, g), lr=0.1)
    opt.step()
    before = (p.copy(), {k: v.copy() for k, v in opt.state.items()}, opt.step_count)
    g[17] = bad
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    np.testing.assert_array_equal(p, before[0])
    for k, v in opt.state.items():
        np.testing.assert_array_equal(v, before[1][k])
    assert opt.step_count == before[2]


def test_nonfinite_skip_counts_and_skips_everything():
    p, g = np.ones(10), np.full(10, np.nan)
    opt = fnn.optim.Adam((p, g), lr=0.1, nonfinite="skip")
    assert opt.step() is False
    assert (opt.skipped_steps, opt.step_count, opt.last_step_skipped) == (1, 0, True)
    np.testing.assert_array_equal(p, 1.0)
    g[:] = 1.0
    assert opt.step() and not opt.last_step_skipped
    np.testing.assert_allclose(p, adam_ref(np.ones(10), [np.ones(10)], lr=0.1))


def test_lr_zero_is_a_no_op():
    p, g = np.ones(10), np.ones(10)
    opt = fnn.optim.Adam((p, g), lr=0.0)
    opt.step()
    np.testing.assert_array_equal(p, 1.0)


@pytest.mark.parametrize("make", [lambda pair: fnn.optim.Adam(pair, lr=0.01, amsgrad=True, max_grad_norm=5.0),
                                  lambda pair: fnn.optim.SGD(pair, lr=0.01, momentum=0.9, nesterov=True)])
def test_results_do_not_depend_on_thread_count_or_kernel_variant(make, monkeypatch):
    """Parallel kernel with all threads, parallel with one thread, serial kernel: bitwise equal."""
    import numba

    from fastnn.optim import adam, base, sgd

    n = 300_001
    out, ran = [], []
    for threads, variant in ((numba.config.NUMBA_NUM_THREADS, 0), (1, 0), (numba.config.NUMBA_NUM_THREADS, 1)):
        numba.set_num_threads(threads)
        for module in (adam, base, sgd):
            monkeypatch.setattr(module, "pick", lambda *kernels, v=variant: ran.append(kernels[v].__name__) or kernels[v])
        out.append(_run(make, np.ones(n), _grad_seq(n, 5), np.float32))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert {k for k in ran if k.endswith("_cpu")} and {k for k in ran if k.endswith("_serial")}, ran
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_state_dict_round_trip_continues_identically():
    n = 257
    grads = _grad_seq(n, 20)
    a = (np.ones(n), np.zeros(n))
    opt = fnn.optim.Adam(a, lr=0.01, amsgrad=True)
    for g in grads[:10]:
        a[1][:] = g
        opt.step()
    state = opt.state_dict()
    b = (a[0].copy(), np.zeros(n))
    opt2 = fnn.optim.Adam(b, lr=0.5, amsgrad=True)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.step_count == 10
    for g in grads[10:]:
        a[1][:] = g
        b[1][:] = g
        opt.step()
        opt2.step()
    np.testing.assert_array_equal(a[0], b[0])


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    opt = fnn.optim.Adam((np.ones(5), np.ones(5)), lr=0.1)
    opt.step()
    other = fnn.optim.Adam((np.ones(6), np.ones(6)), lr=0.2)
    snapshot = opt.state_dict()
    with pytest.raises(ValueError, match=r"saved for other parameter shapes, expected \[name, offset, size\] "
                                         r"\['params', 0, 5\], got \['params', 0, 6\]"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="expected a Adam state"):
        opt.load_state_dict(fnn.optim.SGD((np.ones(5), np.ones(5))).state_dict())
    assert opt.param_groups[0]["lr"] == 0.1
    np.testing.assert_array_equal(opt.state["exp_avg"], snapshot["state"]["exp_avg"])


@pytest.mark.parametrize("make,match", [
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(4))), "expected float64\\(3,\\)"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3, np.float32))), "expected float64"),
    (lambda: fnn.optim.SGD((np.ones((3, 2)), np.ones((3, 2)))), "1-D"),
    (lambda: fnn.optim.SGD((np.ones(6)[::2], np.ones(3))), "contiguous"),
    (lambda: fnn.optim.SGD((np.ones(3, np.int64), np.ones(3, np.int64))), "float32 or float64"),
    (lambda: fnn.optim.SGD(np.ones(3)), "model or a \\(params, grads\\) pair"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), lr=-1), "lr: expected a finite number >= 0, got -1"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), lr="0.1"), "lr: expected a finite number >= 0, got str '0.1'"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), lr=True), "lr: expected a finite number >= 0, got bool True"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), eps="1e-8"), "eps: expected a finite number >= 0, got str"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), maximize="False"),
     "maximize: expected True or False, got str 'False'"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), amsgrad=1), "amsgrad: expected True or False, got int 1"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), betas="ab"),
     r"expected betas a pair of numbers in \[0, 1\), got 'ab'"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), betas=("a", 0.9)),
     r"betas\[0\]: expected a number >= 0 and < 1, got str 'a'"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), betas=(0.9,)), "expected betas a pair of numbers"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), dampening="0.1"), "dampening: expected a finite number, got str"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), momentum=float("nan")), "momentum: expected a finite number >= 0"),
    (lambda: fnn.optim.SGD(fnn.Sequential(fnn.Dense(2, 2)), param_groups=[{"params": None}]),
     r"param_groups\[0\]\['params'\]: expected a list of parameter names"),
    (lambda: fnn.optim.SGD(fnn.Sequential(fnn.Dense(2, 2)), param_groups=[{"params": ["0.bias", "0.bias"]}]),
     r"'0.bias' is listed twice in param_groups\[0\]"),
    (lambda: fnn.optim.SGD((np.ones(3), np.ones(3)), nesterov=True), "nesterov"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), betas=(1.0, 0.9)), "betas"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), nonfinite="maybe"), "nonfinite"),
    (lambda: fnn.optim.Adam((np.ones(3), np.ones(3)), max_grad_norm=0), "max_grad_norm"),
])
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_grad_scale_that_overflows_the_gradient_is_a_non_finite_step(policy):
    p, g = np.zeros(4), np.full(4, 1e300)
    opt = fnn.optim.SGD((p, g), lr=0.1, nonfinite=policy)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="gradient times grad_scale=1e\\+10 overflows float64"):
            opt.step(grad_scale=1e10)
    else:
        assert opt.step(grad_scale=1e10) is False and opt.skipped_steps == 1
    assert not p.any() and opt.step_count == 0
    for bad in (float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="step: expected a finite number grad_scale"):
            opt.step(grad_scale=bad)
    assert opt.step(grad_scale=1e-300) is True                # finite scaled steps go on


def test_read_only_params_rejected():
    p = np.ones(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fnn.optim.SGD((p, np.ones(3)))


def test_params_made_read_only_later_are_refused_before_anything_changes():
    """step() checked writeability only when the optimizer was made: Numba compiled a kernel for
    the read-only type and failed typing it, leaving a lazily made momentum buffer behind."""
    p, g = np.ones(3), np.ones(3)
    opt = fnn.optim.SGD((p, g), lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    p.flags.writeable = False
    with pytest.raises(ValueError, match="SGD: the parameters became read-only after this optimizer was made"):
        opt.step()
    assert opt.state == {} and opt.step_count == 0 and (p == 1).all()
    opt.zero_grad()                                          # gradients only: still allowed
    assert not g.any()


@pytest.mark.parametrize("make", [lambda m: fnn.optim.AdamW(m, lr=0.1, amsgrad=True, nonfinite="ignore",
                                                             param_groups=[{"params": ["0.bias"], "lr": 0.03}]),
                                  lambda m: fnn.optim.SGD(m, lr=0.1, momentum=0.9, nesterov=True, nonfinite="ignore")])
def test_shards_over_one_state_step_like_the_whole(make):
    """Two optimizers sharding one model's buffers at an awkward cut (inside a tensor, off a
    cache line) give, step after step, what one optimizer over the whole buffer gives."""
    def model():
        fnn.manual_seed(0)
        return fnn.Sequential(fnn.Dense(7, 5, dtype=np.float64), fnn.Dense(5, 3, dtype=np.float64))
    whole, shared = model(), model()
    ref, left, right = make(whole), make(shared), make(shared)
    right.state = left.state  # one copy of the state, as in shared memory
    cut = 23
    left.shard(0, cut, None)
    right.shard(cut, shared.flat.data.size, None)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = rng.standard_normal(whole.flat.grad.size)
        whole.flat.grad[:], shared.flat.grad[:] = g, g
        ref.step()
        left.step()
        right.step()
    np.testing.assert_array_equal(shared.flat.data, whole.flat.data)
    with pytest.raises(ValueError, match=r"shard: expected 0 <= lo <= hi <= \d+, got lo=5, hi=4"):
        left.shard(5, 4, None)


def test_huge_finite_gradients_are_not_mistaken_for_nonfinite():
    g = np.array([1e200, -1e200, 3.0])
    opt = fnn.optim.SGD((np.zeros(3), g), lr=0.0, max_grad_norm=1.0)
    assert opt.step()
    assert opt.last_grad_norm == pytest.approx(np.sqrt(2) * 1e200)


def _lockstep(make_fnn, make_torch, edits, steps=12, sizes=(5, 4, 3)):
    """fastnn and torch.optim on the same two-layer model (``sizes``: in, hidden, out) and
    gradients, float64, with ``edits[t](groups)`` applied to both optimizers' param_groups
    before step t."""
    model = fnn.Sequential(fnn.Dense(*sizes[:2], dtype=np.float64), fnn.Dense(*sizes[1:], dtype=np.float64))
    names = [n for n, _ in model.named_parameters()]
    tensors = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in model.named_parameters()}
    opt = make_fnn(model, [{"params": [n for n in names if n.startswith("1.")]}])
    topt = make_torch([{"params": [tensors[n] for n in names if n.startswith("0.")]},
                       {"params": [tensors[n] for n in names if n.startswith("1.")]}])
    rng = np.random.default_rng(7)
    grads = dict(model.named_gradients())
    for t in range(steps):
        if t in edits:
            for groups in (opt.param_groups, topt.param_groups):
                edits[t](groups)
        for n in names:
            grads[n][...] = rng.standard_normal(grads[n].shape)
            tensors[n].grad = torch.tensor(grads[n].copy())
        opt.step()
        topt.step()
    for n, v in model.named_parameters():
        np.testing.assert_allclose(v, tensors[n].detach().numpy(), rtol=1e-12, atol=1e-13)
    return opt


def _set(**kw):
    def edit(groups, group=None):
        for k, g in enumerate(groups):
            if group is None or k == group:
                g.update(kw)
    return edit


def test_sgd_momentum_switched_on_later_per_group_matches_torch():
    """momentum set above 0 after construction (torch makes the buffer then, b = g first):
    per group, with dampening, and a buffer that must not alias the parameters."""
    def second_group(**kw):
        return lambda groups: _set(**kw)(groups, group=1)
    opt = _lockstep(lambda m, pg: fnn.optim.SGD(m, lr=0.05, dampening=0.3, param_groups=pg),
                    lambda pg: torch.optim.SGD(pg, lr=0.05, dampening=0.3),
                    {3: second_group(momentum=0.9), 6: _set(momentum=0.5), 9: _set(momentum=0.0)})
    assert "momentum_buffer" in opt.state


@pytest.mark.parametrize("make_fnn,make_torch,edits", [
    (lambda m, pg: fnn.optim.SGD(m, lr=0.05, momentum=0.9, param_groups=pg),
     lambda pg: torch.optim.SGD(pg, lr=0.05, momentum=0.9), {4: _set(nesterov=True)}),
    (lambda m, pg: fnn.optim.Adam(m, lr=0.05, param_groups=pg),
     lambda pg: torch.optim.Adam(pg, lr=0.05, amsgrad=True), {0: _set(amsgrad=True), 5: _set(lr=0.01)}),
])
def test_global_options_edited_in_param_groups_take_effect(make_fnn, make_torch, edits):
    _lockstep(make_fnn, make_torch, edits)


def test_global_option_must_agree_between_groups():
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9, param_groups=[{"params": ["0.bias"]}])
    opt.param_groups[1]["nesterov"] = True
    before = model.flat.data.copy()
    with pytest.raises(ValueError, match=r"nesterov: expected one value for all parameter groups, got \[False, True\]"):
        opt.step()
    np.testing.assert_array_equal(model.flat.data, before)


def test_load_state_dict_adopts_saved_global_options():
    """A state saved with nesterov=True continues with Nesterov steps in an optimizer built
    without it, as the uninterrupted run does."""
    n, grads = 33, _grad_seq(33, 12)
    a = (np.ones(n), np.zeros(n))
    opt = fnn.optim.SGD(a, lr=0.05, momentum=0.9, nesterov=True)
    b = (np.ones(n), np.zeros(n))
    opt2 = fnn.optim.SGD(b, lr=0.05, momentum=0.9)
    for t, g in enumerate(grads):
        if t == 6:
            b[0][...] = a[0]
            opt2.load_state_dict(opt.state_dict())
        for p, gr in (a, b):
            gr[...] = g
        opt.step()
        opt2.step()
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("damage", [lambda s: s.pop("skipped_steps"), lambda s: s["param_groups"][0].pop("eps"),
                                    lambda s: s["param_groups"][0].update(lr=-1.0),
                                    lambda s: s["state"].pop("exp_avg_sq")])
def test_load_state_dict_checks_everything_before_changing_anything(damage):
    opt = fnn.optim.Adam((np.ones(5), np.full(5, 0.5)), lr=0.1)
    opt.step()
    other = fnn.optim.Adam((np.ones(5), np.ones(5)), lr=5.0)
    other.step()
    other.step()
    state = other.state_dict()
    damage(state)
    snapshot = opt.state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.step_count == 1
    for k, v in snapshot["state"].items():
        np.testing.assert_array_equal(opt.state[k], v)


def test_load_state_dict_takes_entries_a_schedule_added():
    """A state saved under a schedule (groups carry initial_lr, as in torch) loads into an
    optimizer whose schedule is made afterwards."""
    opt = fnn.optim.SGD((np.ones(3), np.ones(3)), lr=0.1)
    sched = fnn.schedules.Exponential(opt, gamma=0.5)
    opt.step()
    sched.step()
    fresh = fnn.optim.SGD((np.ones(3), np.ones(3)), lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["initial_lr"] == 0.1 and fresh.param_groups[0]["lr"] == 0.05


def test_ignore_with_clipping_lets_nan_through_like_torch():
    """nonfinite="ignore" means no check even when clipping computes the norm: a NaN gradient
    makes the clip coefficient and so every updated parameter NaN (torch.nn.utils.clip_grad_norm_)."""
    p, g = np.ones(4), np.array([1.0, np.nan, 2.0, 3.0])
    assert fnn.optim.SGD((p, g), lr=0.1, max_grad_norm=1.0, nonfinite="ignore").step()
    t = torch.ones(4, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([t], 1.0)
    torch.optim.SGD([t], lr=0.1).step()
    np.testing.assert_array_equal(p, t.detach().numpy())
    assert np.isnan(p).all()


def test_an_optimizer_of_a_model_later_nested_refuses_to_step():
    body = fnn.Sequential(fnn.Dense(4, 8, activation="relu"), fnn.Dense(8, 3))
    opt = fnn.optim.SGD(body, lr=0.1)
    model = fnn.Sequential(body, fnn.Dense(3, 2))
    _, d = fnn.losses.softmax_cross_entropy(model(np.ones((2, 4), np.float32)), np.array([0, 1]))
    model.backward(d)
    before = model.flat.data.copy()
    for call in (opt.step, opt.zero_grad):
        with pytest.raises(RuntimeError, match="parameters moved to another buffer after this optimizer was made"):
            call()
    np.testing.assert_array_equal(model.flat.data, before)
    assert model.flat.grad.any() and opt.step_count == 0
    outer = fnn.optim.SGD(model, lr=0.1)
    assert outer.step() and not np.array_equal(model.flat.data, before)


@pytest.mark.parametrize("make, switch", [
    (lambda m: fnn.optim.SGD(m, lr=0.1), ("momentum", 0.9)),
    (lambda m: fnn.optim.Adam(m, lr=0.01), ("amsgrad", True)),
])
def test_a_state_saved_before_a_switched_on_buffer_exists_round_trips(make, switch):
    fnn.manual_seed(0)
    models = [fnn.Sequential(fnn.Dense(3, 4), fnn.Dense(4, 2)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [make(m) for m in models]
    models[0].flat.grad[:] = 1.0
    opts[0].step()
    opts[0].param_groups[0][switch[0]] = switch[1]
    opts[0].load_state_dict(opts[0].state_dict())      # the same optimizer
    opts[1].load_state_dict(opts[0].state_dict())      # and another one
    models[1].load_state_dict(models[0].state_dict())
    grads = np.random.default_rng(0).standard_normal(models[0].flat.grad.shape).astype(np.float32)
    for m, o in zip(models, opts):
        for _ in range(3):
            m.flat.grad[:] = grads
            o.step()
    for (n, v), w in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        np.testing.assert_array_equal(v, w, err_msg=n)


def test_a_state_of_other_parameter_shapes_is_refused():
    a = fnn.Sequential(fnn.Dense(5, 7), fnn.Dense(7, 3))
    b = fnn.Sequential(fnn.Dense(5, 8), fnn.Dense(8, 3))
    assert a.flat.data.size == b.flat.data.size                # the same padded length and names
    oa, ob = fnn.optim.Adam(a), fnn.optim.Adam(b)
    a.flat.grad[:] = 1.0
    oa.step()
    with pytest.raises(ValueError, match=r"saved for other parameter shapes, expected \[name, offset, size\] "
                                         r"\['0.weight', 0, 40\], got \['0.weight', 0, 35\]"):
        ob.load_state_dict(oa.state_dict())
    assert ob.step_count == 0 and not ob.state["exp_avg"].any()


def _torch_twin(model):
    return {n: torch.tensor(v.copy(), requires_grad=True) for n, v in model.named_parameters()}


def test_nesterov_with_a_group_without_momentum_steps_as_torch():
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(3, 4), fnn.Dense(4, 2))
    tensors = _torch_twin(model)
    biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True, param_groups=[{"params": biases, "momentum": 0.0}])
    ref = torch.optim.SGD([{"params": [t for n, t in tensors.items() if n not in biases]},
                           {"params": [tensors[n] for n in biases], "momentum": 0.0}], lr=0.1, momentum=0.9,
                          nesterov=True)
    rng = np.random.default_rng(1)
    for _ in range(4):
        model.flat.grad[:] = 0
        for n, g in model.named_gradients():
            g[...] = rng.standard_normal(g.shape)
            tensors[n].grad = torch.tensor(g.copy())
        opt.step()
        ref.step()
    for n, v in model.named_parameters():
        np.testing.assert_allclose(v, tensors[n].detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=n)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening = 0, got momentum=0"):
        fnn.optim.SGD(model, nesterov=True)


def test_clipping_an_infinite_gradient_under_ignore_scales_by_zero_as_torch():
    p, g = np.ones(4), np.array([np.inf, 1.0, 1.0, 1.0])
    fnn.optim.SGD((p, g), lr=0.1, max_grad_norm=1.0, nonfinite="ignore").step()
    t = torch.ones(4, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([t], 1.0)
    torch.optim.SGD([t], lr=0.1).step()
    np.testing.assert_array_equal(p, t.detach().numpy())           # [nan, 1, 1, 1]: only the Inf element


def test_a_group_may_name_one_parameter_without_a_list():
    model = fnn.Sequential(fnn.Dense(3, 2))
    for one in ("0.bias", model.layers[0].params["bias"]):
        opt = fnn.optim.SGD(model, lr=0.1, weight_decay=0.1, param_groups=[{"params": one, "weight_decay": 0.0}])
        assert opt.param_groups[1]["params"] == ["0.bias"] and opt.param_groups[0]["params"] == ["0.weight"]


def test_a_zero_size_parameter_may_be_grouped_by_its_view():
    """A zero-size view shares no memory with the buffer, so grouping the model's parameters
    as torch users do (``[v for n, v in model.named_parameters() if ...]``) raised that it
    was not a view into the optimized parameters."""
    class Empty(fnn.module.Module):
        def __init__(self):
            super().__init__()
            self.dtype = np.dtype(np.float64)
            self._create_params({"w": np.ones(3), "e": np.zeros((0, 4)), "b": np.ones(2)})

    model = fnn.Sequential(Empty(), fnn.Dense(3, 2, dtype=np.float64))
    views = dict(model.named_parameters())
    opt = fnn.optim.SGD(model, lr=0.1, param_groups=[{"params": [views["0.e"], views["0.b"]], "lr": 0.5}])
    assert opt.param_groups[1]["params"] == ["0.e", "0.b"]
    with pytest.raises(ValueError, match="must be a parameter name or a view"):
        fnn.optim.SGD(model, param_groups=[{"params": [np.zeros(4)[:0]]}])


@pytest.mark.parametrize("key, value", [("step", -3), ("step", -1), ("step", 1.9), ("step", "x"), ("step", True),
                                        ("skipped_steps", -5)])
def test_load_state_dict_refuses_bad_step_counters(key, value):
    """A negative step made Adam's next update NaN (or 1/0 in its bias correction); a
    fractional one was truncated without a word."""
    p = np.ones(4)
    opt = fnn.optim.Adam((p, np.ones(4)), lr=0.1)
    opt.step()
    state = opt.state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=f"expected {key} an int >= 0, got .*{value!r}"):
        opt.load_state_dict(state)
    assert opt.step_count == 1 and opt.skipped_steps == 0
    opt.step()
    assert np.all(np.isfinite(p))


def test_load_state_dict_names_what_came_for_wrong_containers():
    opt = fnn.optim.Adam((np.ones(4), np.ones(4)))
    opt.step()
    with pytest.raises(TypeError, match="expected a dict from state_dict.., got NoneType"):
        opt.load_state_dict(None)
    state = opt.state_dict()
    state["state"]["exp_avg"] = [0.0] * 4
    with pytest.raises(ValueError, match=r"'exp_avg': expected a float64\(4,\) array, got list"):
        opt.load_state_dict(state)
    with pytest.raises(TypeError, match="max_grad_norm .or None.: expected a number >= 0, got str 'a'"):
        fnn.optim.SGD((np.ones(2), np.ones(2)), max_grad_norm="a")


@pytest.mark.parametrize("key, value, match", [
    ("param_groups", {"a": 1}, "expected param_groups a list of dicts, got {'a': 1}"),
    ("param_groups", ["lr"], "expected param_groups a list of dicts"),
    ("state", None, "expected state a dict of arrays, got NoneType"),
    ("slots", [[1, 2]], r"expected slots a list of \[name, offset, size\], got \[\[1, 2\]\]"),
    ("buffer_started", 5, "expected buffer_started a list of 2 True/False flags, got 5"),
    ("buffer_started", "x", "expected buffer_started a list of 2 True/False flags, got 'x'"),
    ("buffer_started", [1, 0], r"got \[1, 0\]")])
def test_load_state_dict_checks_inner_containers(key, value, match):
    """Malformed containers inside a state were raw AttributeErrors and TypeErrors (or, for
    buffer_started "x", taken as True); now a ValueError naming the field, nothing changed."""
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9, param_groups=[{"params": ["0.bias"], "lr": 0.01}])
    model.flat.grad[:] = 1.0
    opt.step()
    snapshot, state = opt.state_dict(), opt.state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    assert opt.state_dict()["buffer_started"] == snapshot["buffer_started"] == [True, True]
    np.testing.assert_array_equal(opt.state["momentum_buffer"], snapshot["state"]["momentum_buffer"])


@pytest.mark.parametrize("make, match", [
    (lambda p: fnn.optim.SGD(p, momentum=None, nesterov=True), "momentum: expected a finite number >= 0, got NoneType None"),
    (lambda p: fnn.optim.Adam(p, betas=0.9), r"expected betas a pair of numbers in \[0, 1\), got 0.9")])
def test_constructors_check_types_before_comparing(make, match):
    with pytest.raises(TypeError, match=match):
        make((np.ones(3), np.ones(3)))


def test_grad_scale_past_float32_is_refused_before_anything_changes():
    """float32(1e39) is inf: the kernel wrote -inf and NaN (inf * 0) into p, under 'raise'."""
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    g[0] = 1e-3
    opt = fnn.optim.Adam((p, g), lr=0.1)
    with pytest.raises(ValueError, match=r"expected .grad_scale. <= 3.40282e\+38 \(the largest float32\), got 1e\+39"):
        opt.step(grad_scale=1e39)
    assert not p.any() and opt.step_count == 0 and not any(v.any() for v in opt.state.values())
    assert opt.step(grad_scale=1e30)
    assert np.isfinite(p).all()


@pytest.mark.parametrize("make, key, value, error, match", [
    (lambda m: fnn.optim.SGD(m, lr=0.0, param_groups=[{"params": ["0.bias"]}]), "momentum", None, TypeError,
     r"param_groups\[1\]: momentum: expected a finite number"),
    (lambda m: fnn.optim.SGD(m, lr=0.1, momentum=0.9), "lr", None, TypeError, r"param_groups\[0\]: lr"),
    (lambda m: fnn.optim.SGD(m, lr=0.1, momentum=0.9), "lr", "1e-2", TypeError, r"param_groups\[0\]: lr"),
    (lambda m: fnn.optim.SGD(m, lr=0.1, momentum=0.9), "dampening", None, TypeError, "dampening"),
    (lambda m: fnn.optim.SGD(m, lr=0.1, momentum=0.9), "weight_decay", None, TypeError, "weight_decay"),
    (lambda m: fnn.optim.Adam(m), "amsgrad", "no", TypeError, "amsgrad: expected True or False, got str 'no'"),
    (lambda m: fnn.optim.Adam(m), "maximize", "no", TypeError, "maximize: expected True or False"),
    (lambda m: fnn.optim.Adam(m), "betas", 0.9, TypeError, "expected betas a pair of numbers"),
    (lambda m: fnn.optim.Adam(m), "eps", KeyError, KeyError, r"param_groups\[0\]: expected the options .* missing \['eps'\]"),
])
def test_hyperparameters_edited_by_hand_are_checked_before_the_step(make, key, value, error, match):
    """step() sent param_groups to the kernel unchecked: a momentum of None in one group made
    no buffer yet reached the kernel as NaN, which wrote through the empty buffer into group 0's
    weights; None lr gave NaN parameters, strings were read as numbers or as True."""
    m = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = make(m)
    m.flat.grad[:] = 0.5
    opt.step()
    opt.param_groups[-1].pop(key) if value is KeyError else opt.param_groups[-1].__setitem__(key, value)
    params, state, step = m.flat.data.copy(), {k: v.copy() for k, v in opt.state.items()}, opt.step_count
    with pytest.raises(error, match=match):
        opt.step()
    np.testing.assert_array_equal(m.flat.data, params)
    assert opt.step_count == step and set(opt.state) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(opt.state[k], v)


def test_a_closure_is_refused_with_what_to_do_instead():
    p, g = np.ones(3), np.ones(3)
    opt = fnn.optim.SGD((p, g), lr=0.1)
    with pytest.raises(TypeError, match=r"torch's step\(closure\) is not supported; run the forward and backward"):
        opt.step(lambda: 0.0)
    np.testing.assert_array_equal(p, 1.0)


@pytest.mark.parametrize("variant", [0, 1])        # the parallel kernel (forced) and the serial one
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_groups_with_their_own_settings_match_torch_in_every_kernel(kind, variant, monkeypatch):
    """Group 1's lr, betas or momentum and maximize: the tests with groups used small models,
    which take the serial kernel, so a parallel kernel that read group 0's settings for every
    chunk went unseen."""
    from fastnn.optim import adam, base, sgd

    for module in (adam, base, sgd):
        monkeypatch.setattr(module, "pick", lambda *kernels: kernels[variant])
    mine = {"lr": 0.1, "betas": (0.5, 0.9), "maximize": True} if kind == "adam" else \
        {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01}
    make, peer, options = ((fnn.optim.Adam, torch.optim.Adam, {}) if kind == "adam" else
                           (fnn.optim.SGD, torch.optim.SGD, {"momentum": 0.9}))
    _lockstep(lambda m, pg: make(m, lr=1e-2, param_groups=[{**pg[0], **mine}], **options),
              lambda groups: peer([groups[0], {**groups[1], **mine}], lr=1e-2, **options), {}, steps=5,
              sizes=(300, 64, 10))


def test_last_grad_norm_is_of_the_scaled_gradient():
    """grad_scale (data parallelism's 1/ranks) multiplies the gradient: the norm is the scaled one."""
    p, g = np.zeros(4), np.ones(4)
    opt = fnn.optim.SGD((p, g), lr=0.1, max_grad_norm=10.0)
    opt.step(grad_scale=0.5)
    assert opt.last_grad_norm == pytest.approx(0.5 * np.linalg.norm(g), rel=1e-15)
