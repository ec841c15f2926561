"""LR and batch-size schedules: step by step against torch.optim.lr_scheduler, Robbins-Monro
flags, skipped optimizer steps, checkpoints, and the batch-size schedule driven by samples."""
import json
import math

import numpy as np
import pytest
import torch  # the peer: fastnn[bench], which make test installs

import fastnn as fnn
from fastnn import schedules as S

STEPS = 250
LRS = (0.1, 0.01)  # two parameter groups with different lr


def fnn_sgd(lrs=LRS, **options):
    """A real fastnn SGD over a small flat buffer; with two lrs, group 1 holds the parameters."""
    import fastnn.optim

    p, g = np.zeros(4), np.zeros(4)
    groups = [{"params": ["params"], "lr": lr} for lr in lrs[1:]]
    return fastnn.optim.SGD((p, g), lr=lrs[0], param_groups=groups, **options)


def torch_sgd(torch, lrs=LRS):
    params = [torch.zeros(1, requires_grad=True) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])


# (name, ours(opt), theirs(torch, opt)); sub-schedules are built on the same optimizer.
CASES = [
    ("constant", lambda o: S.Constant(o),
     lambda T, o: T.LambdaLR(o, lambda t: 1.0)),
    ("inverse_time", lambda o: S.InverseTime(o, 10, decay_rate=0.5),
     lambda T, o: T.LambdaLR(o, lambda t: 1 / (1 + 0.5 * t / 10))),
    ("inverse_time_staircase", lambda o: S.InverseTime(o, 7, staircase=True),
     lambda T, o: T.LambdaLR(o, lambda t: 1 / (1 + t // 7))),
    ("inverse_sqrt", lambda o: S.InverseTime(o, 4, decay_rate=2.0, power=0.5),
     lambda T, o: T.LambdaLR(o, lambda t: (1 + 2.0 * t / 4) ** -0.5)),
    ("exponential", lambda o: S.Exponential(o, 0.97),
     lambda T, o: T.ExponentialLR(o, 0.97)),
    ("step", lambda o: S.Step(o, 30, gamma=0.5),
     lambda T, o: T.StepLR(o, 30, gamma=0.5)),
    ("cosine", lambda o: S.Cosine(o, 300),
     lambda T, o: T.CosineAnnealingLR(o, 300)),
    ("cosine_periodic_eta_min", lambda o: S.Cosine(o, 50, eta_min=1e-3),
     lambda T, o: T.CosineAnnealingLR(o, 50, eta_min=1e-3)),
    ("warmup", lambda o: S.Warmup(o, 20, start_factor=0.25),
     lambda T, o: T.LinearLR(o, start_factor=0.25, total_iters=20)),
    ("warmup_cosine", lambda o: S.Sequential(o, [S.Warmup(o, 10), S.Cosine(o, 190, eta_min=1e-4)], [10]),
     lambda T, o: T.SequentialLR(o, [T.LinearLR(o, 1 / 3, total_iters=10),
                                     T.CosineAnnealingLR(o, 190, eta_min=1e-4)], [10])),
    ("sequential_three", lambda o: S.Sequential(o, [S.Warmup(o, 5, 0.1), S.Constant(o), S.Exponential(o, 0.98)],
                                                [5, 60]),
     lambda T, o: T.SequentialLR(o, [T.LinearLR(o, 0.1, total_iters=5), T.LambdaLR(o, lambda t: 1.0),
                                     T.ExponentialLR(o, 0.98)], [5, 60])),
    ("sequential_restarts_at_milestone", lambda o: S.Sequential(o, [S.Exponential(o, 0.5), S.Step(o, 100, 0.1)], [3]),
     lambda T, o: T.SequentialLR(o, [T.ExponentialLR(o, 0.5), T.StepLR(o, 100, 0.1)], [3])),
    ("chain_warmup_exponential", lambda o: S.Chain([S.Warmup(o, 10, 0.1), S.Exponential(o, 0.99)]),
     lambda T, o: T.ChainedScheduler([T.LinearLR(o, 0.1, total_iters=10), T.ExponentialLR(o, 0.99)])),
    ("chain_step_cosine", lambda o: S.Chain([S.Step(o, 40, 0.5), S.Cosine(o, 300)]),
     lambda T, o: T.ChainedScheduler([T.StepLR(o, 40, 0.5), T.CosineAnnealingLR(o, 300)])),
]


@pytest.mark.parametrize("ours, theirs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_torch_step_by_step(ours, theirs):
    opt, topt = fnn_sgd(), torch_sgd(torch)
    sched, tsched = ours(opt), theirs(torch.optim.lr_scheduler, topt)
    for t in range(STEPS + 1):
        want = [g["lr"] for g in topt.param_groups]
        assert tsched.get_last_lr() == want
        assert sched.get_last_lr() == pytest.approx(want, rel=1e-10, abs=1e-16), f"step {t}"
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
        assert sched.t == sched.last_epoch == t
        assert opt.step() and sched.step()
        topt.step()
        tsched.step()


def test_pure_functions_agree_with_stepping():
    opt = fnn_sgd()
    sched = S.Chain([S.Warmup(opt, 3), S.Cosine(opt, 8, eta_min=0.002)])
    for t in range(20):
        assert sched.get_last_lr() == [sched.lr_at(t, b) for b in LRS]
        assert sched.lr_at(t, 0.1) == pytest.approx(sched.factor(t) * 0.1 + sched.offset(t))
        sched.step()
    assert S.Exponential(fnn_sgd(), 0.5).factor(3) == 0.125
    with pytest.raises(ValueError, match="t: expected an int >= 0, got -1"):
        sched.factor(-1)


def test_cosine_eta_min_is_absolute_per_group():
    opt = fnn_sgd()
    sched = S.Cosine(opt, 10, eta_min=0.005)
    for _ in range(10):
        sched.step()
    assert sched.get_last_lr() == pytest.approx([0.005, 0.005], abs=1e-18)  # both groups reach eta_min


def test_end_to_end_parameters_match_torch():
    """fastnn SGD with momentum under Warmup+Cosine takes the same steps as torch."""
    import fastnn.optim

    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(9), np.zeros(9)
    opt = fastnn.optim.SGD((p, g), lr=0.05, momentum=0.9)
    sched = S.Sequential(opt, [S.Warmup(opt, 5), S.Cosine(opt, 40)], [5])
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.05, momentum=0.9)
    L = torch.optim.lr_scheduler
    tsched = L.SequentialLR(topt, [L.LinearLR(topt, 1 / 3, total_iters=5), L.CosineAnnealingLR(topt, 40)], [5])
    for _ in range(45):
        g[:] = rng.standard_normal(9)
        tp.grad = torch.tensor(g.copy())
        opt.step(), sched.step(), topt.step(), tsched.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


ROBBINS_MONRO = [
    ("constant", lambda o: S.Constant(o), False),
    ("inverse_time", lambda o: S.InverseTime(o, 100), True),
    ("inverse_time_staircase", lambda o: S.InverseTime(o, 100, staircase=True), True),
    ("inverse_sqrt", lambda o: S.InverseTime(o, 100, power=0.5), True),
    ("inverse_square", lambda o: S.InverseTime(o, 100, power=2.0), False),  # sum finite
    ("exponential", lambda o: S.Exponential(o, 0.99), False),  # sum finite
    ("exponential_one", lambda o: S.Exponential(o, 1.0), False),  # constant
    ("step", lambda o: S.Step(o, 10), False),
    ("cosine", lambda o: S.Cosine(o, 100), False),  # periodic, no limit
    ("cosine_eta_min", lambda o: S.Cosine(o, 100, eta_min=1e-3), False),
    ("warmup", lambda o: S.Warmup(o, 10), False),  # constant after warm-up
    ("warmup_then_inverse", lambda o: S.Sequential(o, [S.Warmup(o, 10), S.InverseTime(o, 10)], [10]), True),
    ("warmup_then_cosine", lambda o: S.Sequential(o, [S.Warmup(o, 10), S.Cosine(o, 90)], [10]), False),
    ("inverse_then_constant", lambda o: S.Sequential(o, [S.InverseTime(o, 10), S.Constant(o)], [10]), False),
    ("chain_warmup_inverse", lambda o: S.Chain([S.Warmup(o, 10), S.InverseTime(o, 10)]), True),
    ("chain_inverse_inverse", lambda o: S.Chain([S.InverseTime(o, 10), S.InverseTime(o, 10)]), False),  # t^-2
    ("chain_cosine_inverse", lambda o: S.Chain([S.Cosine(o, 10), S.InverseTime(o, 10)]), True),
    ("chain_eta_min_then_inverse", lambda o: S.Chain([S.Cosine(o, 10, 1e-3), S.InverseTime(o, 10)]), True),
    ("chain_inverse_then_eta_min", lambda o: S.Chain([S.InverseTime(o, 10), S.Cosine(o, 10, 1e-3)]), False),
    ("chain_inverse_exponential", lambda o: S.Chain([S.InverseTime(o, 10), S.Exponential(o, 0.9)]), False),
    # the rates multiply to 1 only up to rounding (0.5**0.5 * 2**0.5 = 1.0000000000000002): still 1/t
    ("chain_step_growth_inverse", lambda o: S.Chain([S.Step(o, 2, 0.5), S.Exponential(o, 2 ** 0.5),
                                                     S.InverseTime(o, 1)]), True),
    # a rate 1e-13 off 1 was taken for 1 (rel_tol 1e-12): summable, or growing without bound
    ("chain_slow_exponential_inverse", lambda o: S.Chain([S.Exponential(o, 1 - 1e-13), S.InverseTime(o, 10)]), False),
    ("chain_slow_growth_inverse", lambda o: S.Chain([S.Exponential(o, 1 + 1e-13), S.InverseTime(o, 10)]), False),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in ROBBINS_MONRO], ids=[c[0] for c in ROBBINS_MONRO])
def test_robbins_monro(make, expected):
    assert make(fnn_sgd()).robbins_monro is expected


def test_skipped_optimizer_step_does_not_advance():
    opt = fnn_sgd(nonfinite="skip")
    sched = S.Exponential(opt, 0.5)
    assert opt.step() and sched.step()
    opt.grads[:] = np.nan
    assert opt.step() is False and opt.last_step_skipped
    assert sched.step() is False
    assert sched.t == 1 and sched.get_last_lr() == [0.05, 0.005]
    opt.grads[:] = 0.0
    assert opt.step() and sched.step()
    assert sched.t == 2 and sched.get_last_lr() == [0.025, 0.0025]


def test_a_schedule_stepped_each_epoch_advances_after_a_skipped_last_batch():
    opt = fnn_sgd(nonfinite="skip")
    sched = S.Step(opt, step_size=1, gamma=0.5)
    for epoch in range(2):
        for batch in range(3):
            opt.grads[:] = np.nan if (epoch, batch) == (0, 2) else 0.0   # the epoch's last batch is skipped
            opt.step()
        assert sched.step()
    assert sched.t == 2 and sched.get_last_lr() == [0.025, 0.0025]


def test_a_resumed_schedule_advances_after_a_skip_as_the_uninterrupted_one_does():
    """load_state_dict forgot the optimizer step of the schedule's last step: after a resume at
    an epoch's end, an epoch ending in a skipped batch did not advance a once-an-epoch schedule,
    and the resumed run's lr stayed one value behind for the rest of the run."""
    def epoch(opt, sched, skip_last):
        for batch in range(2):
            opt.grads[:] = np.nan if skip_last and batch == 1 else 0.0
            opt.step()
        return sched.step()

    opt = fnn_sgd(nonfinite="skip")
    sched = S.Step(opt, step_size=1, gamma=0.5)
    epoch(opt, sched, False)
    saved = json.loads(json.dumps({"opt": {**opt.state_dict(), "state": {}}, "sched": sched.state_dict()}))
    opt2 = fnn_sgd(nonfinite="skip")
    opt2.load_state_dict(saved["opt"])
    sched2 = S.Step(opt2, step_size=1, gamma=0.5)
    sched2.load_state_dict(saved["sched"])
    assert [epoch(o, s, True) for o, s in ((opt, sched), (opt2, sched2))] == [True, True]
    assert sched2.t == sched.t == 2 and sched2.get_last_lr() == sched.get_last_lr() == [0.025, 0.0025]
    with pytest.raises(ValueError, match="schedule state stepped_at: expected an int >= 0, got -1"):
        sched2.load_state_dict({**saved["sched"], "stepped_at": -1})
    old = {k: v for k, v in saved["sched"].items() if k != "stepped_at"}      # saved before it was kept
    sched2.load_state_dict(old)
    assert sched2.t == 1


def test_a_checkpoint_between_a_skipped_step_and_the_schedules_step_resumes_the_same_lrs():
    """The optimizer's state left out that its last step was skipped: a schedule resumed there
    advanced where the uninterrupted one did not, and every later lr was half what it should be."""
    def run(resume_at):
        opt = fnn_sgd(nonfinite="skip")
        sched = S.Exponential(opt, 0.5)
        lrs = []
        for s in range(5):
            opt.grads[:] = np.nan if s == 2 else 1.0
            opt.step()
            if s == resume_at:
                saved = json.loads(json.dumps({"opt": {**opt.state_dict(), "state": {}}, "sched": sched.state_dict()}))
                opt = fnn_sgd(nonfinite="skip")
                opt.load_state_dict(saved["opt"])
                sched = S.Exponential(opt, 0.5)
                sched.load_state_dict(saved["sched"])
            sched.step()
            lrs.append(sched.get_last_lr()[0])
        return lrs

    assert run(2) == run(None) == [0.05, 0.025, 0.025, 0.0125, 0.00625]
    with pytest.raises(ValueError, match="expected last_step_skipped True or False, got str 'no'"):
        fnn_sgd().load_state_dict({**fnn_sgd().state_dict(), "last_step_skipped": "no"})


def test_composite_skips_and_parts_cannot_be_stepped():
    opt = fnn_sgd(nonfinite="skip")
    warm = S.Warmup(opt, 4)
    sched = S.Sequential(opt, [warm, S.Constant(opt)], [4])
    opt.grads[:] = np.inf
    opt.step()
    assert sched.step() is False and sched.t == 0
    with pytest.raises(RuntimeError, match="part of Sequential"):
        warm.step()
    with pytest.raises(ValueError, match="already part of"):
        S.Chain([warm])


def test_stepping_two_schedules_after_one_optimizer_step_is_refused():
    """torch chains schedulers stepped one after the other (ExponentialLR then StepLR: the
    product); a fastnn schedule sets the lr from initial_lr, so the second silently replaced
    the first's lr. A schedule that replaces another at a later optimizer step is fine."""
    opt = fnn_sgd()
    first, second = S.Exponential(opt, 0.5), S.Step(opt, 1, 0.1)
    assert opt.step() and first.step()
    with pytest.raises(RuntimeError, match=r"Exponential\(gamma=0.5, t=1\) already stepped .*Chain"):
        second.step()
    assert second.t == 0 and first.get_last_lr() == pytest.approx([0.05, 0.005])
    assert opt.step() and second.step() and second.get_last_lr() == pytest.approx([0.01, 0.001])


def test_a_schedule_loaded_after_a_rollback_replaces_the_one_that_stepped():
    """A checkpoint loaded into the same optimizer rolls its step count back: the new
    schedule's first step after the next optimizer step came at a count the old schedule
    (still alive) had stepped at, and was refused as chaining."""
    opt = fnn_sgd()
    old = S.Exponential(opt, 0.5)
    assert opt.step() and old.step()
    saved = (opt.state_dict(), old.state_dict())
    assert opt.step() and old.step()
    new = S.Exponential(opt, 0.5)
    opt.load_state_dict(saved[0])
    new.load_state_dict(saved[1])
    assert opt.step() and new.step() and new.get_last_lr() == pytest.approx([0.025, 0.0025])
    assert old.t == 2


STATEFUL = [
    lambda o: S.InverseTime(o, 5, staircase=True),
    lambda o: S.Sequential(o, [S.Warmup(o, 10), S.Cosine(o, 50, eta_min=1e-4)], [10]),
    lambda o: S.Chain([S.Warmup(o, 10), S.Step(o, 7, 0.8)]),
]


@pytest.mark.parametrize("make", STATEFUL)
def test_state_dict_round_trip(make):
    opt = fnn_sgd()
    sched = make(opt)
    for _ in range(37):
        sched.step()
    saved = json.loads(json.dumps(sched.state_dict()))
    opt2 = fnn_sgd(lrs=(1.0, 2.0))  # the checkpoint's base lrs win
    resumed = make(opt2)
    resumed.load_state_dict(saved)
    for _ in range(80):
        assert resumed.get_last_lr() == sched.get_last_lr()
        assert resumed.t == sched.t
        sched.step()
        resumed.step()


def test_state_dict_from_another_schedule_is_rejected():
    saved = S.Cosine(fnn_sgd(), 100).state_dict()
    with pytest.raises(ValueError, match=r"saved by Cosine\(T_max=100.*expected one of Cosine\(T_max=50"):
        S.Cosine(fnn_sgd(), 50).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"base_lrs: expected a list of 1 lrs \(one per parameter group\), got \[0.1, 0.01\]"):
        S.Cosine(fnn_sgd(lrs=(0.1,)), 100).load_state_dict(saved)


def _bad(state, **change):
    return {k: v for k, v in {**state, **change}.items() if v is not None}


BAD_STATES = [
    (dict(base_lrs=[0.1, "x"]), TypeError, r"base_lrs\[1\]: expected a number >= 0, got str 'x'"),
    (dict(base_lrs=[0.1, float("nan")]), ValueError, r"base_lrs\[1\]: expected a number >= 0, got nan"),
    (dict(base_lrs=[0.1, -1.0]), ValueError, r"base_lrs\[1\]: expected a number >= 0, got -1.0"),
    (dict(base_lrs=0.1), ValueError, "expected a list of 2 lrs"),
    (dict(t=-1), ValueError, "t: expected an int >= 0, got -1"),
    (dict(t=None), ValueError, r"expected keys \['schedule', 't', 'base_lrs'\], missing \['t'\]"),
    (dict(schedule={"T_max": 50}), ValueError, r"saved by \?\(T_max=50\), expected one of Cosine"),
]


@pytest.mark.parametrize("change, error, message", BAD_STATES, ids=[m[:20] for _, _, m in BAD_STATES])
def test_bad_state_is_refused_and_changes_nothing(change, error, message):
    opt = fnn_sgd()
    sched = S.Cosine(opt, 50, eta_min=1e-3)
    for _ in range(17):
        sched.step()
    state = sched.state_dict()
    state["t"] = 5
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(error, match=message):
        sched.load_state_dict(_bad(state, **change))
    assert sched.t == 17 and opt.param_groups == before
    with pytest.raises(TypeError, match="schedule state: expected a dict from state_dict"):
        sched.load_state_dict([1, 2])


def test_an_overflowing_lr_raises_and_leaves_the_step_count():
    opt = fnn_sgd()
    sched = S.Exponential(opt, 2.0)
    sched.t = 1022
    sched.step()                                   # 2 ** 1023 is a float; 2 ** 1024 overflows
    for _ in range(3):
        with pytest.raises(OverflowError, match=r"Exponential\(gamma=2, t=1023\): the lr factor overflows a float at step 1024"):
            sched.step()
    assert sched.t == 1023 and sched.get_last_lr() == [0.1 * 2.0 ** 1023, 0.01 * 2.0 ** 1023]
    big = S.Exponential(fnn_sgd(lrs=(10.0,)), 2.0)         # a finite factor, an lr beyond float range
    big.t = 1019
    big.step()
    with pytest.raises(OverflowError, match=r"the lr overflows a float at step 1021 \(got \[inf\]\)"):
        big.step()
    assert big.t == 1020 and big.get_last_lr() == [10.0 * 2.0 ** 1020]


def test_base_lrs_may_come_as_a_numpy_array():
    opt = fnn_sgd()
    sched = S.Cosine(opt, 50)
    state = dict(sched.state_dict(), t=3, base_lrs=np.array([0.2, 0.02]))
    sched.load_state_dict(state)
    assert sched.base_lrs == [0.2, 0.02] and sched.t == 3


def test_repr_is_one_line():
    opt = fnn_sgd()
    sched = S.Sequential(opt, [S.Warmup(opt, 5), S.Cosine(opt, 95)], [5])
    assert repr(sched) == ("Sequential(schedules=[Warmup(warmup_steps=5, start_factor=0.333333), "
                           "Cosine(T_max=95, eta_min=0)], milestones=[5], t=0)")


BAD = [
    (lambda o: S.InverseTime(o, 0), ValueError, "decay_steps: expected an int >= 1, got 0"),
    (lambda o: S.InverseTime(o, 10, decay_rate=0), ValueError, "decay_rate: expected a number > 0, got 0"),
    (lambda o: S.InverseTime(o, 10, power=-1), ValueError, "power: expected a number > 0, got -1"),
    (lambda o: S.InverseTime(o, 2.5), TypeError, "decay_steps: expected an int >= 1, got float 2.5"),
    (lambda o: S.Exponential(o, 0.0), ValueError, "gamma: expected a number > 0, got 0.0"),
    (lambda o: S.Exponential(o, math.nan), ValueError, "gamma: expected a number > 0, got nan"),
    (lambda o: S.Step(o, -3), ValueError, "step_size: expected an int >= 1, got -3"),
    (lambda o: S.Step(o, 10, gamma=-0.1), ValueError, "gamma: expected a number > 0, got -0.1"),
    (lambda o: S.Cosine(o, 0), ValueError, "T_max: expected an int >= 1, got 0"),
    (lambda o: S.Cosine(o, 10, eta_min=-1e-3), ValueError, "eta_min: expected a number >= 0, got -0.001"),
    (lambda o: S.Warmup(o, 0), ValueError, "warmup_steps: expected an int >= 1, got 0"),
    (lambda o: S.Warmup(o, 5, start_factor=0.0), ValueError, r"start_factor: expected a number in \(0, 1\]"),
    (lambda o: S.Warmup(o, 5, start_factor=2), ValueError, r"start_factor: expected a number in \(0, 1\]"),
    (lambda o: S.Sequential(o, [S.Warmup(o, 5), S.Cosine(o, 9)], [0]), ValueError,
     r"milestones\[0\]: expected an int >= 1 \(a step; at 0 the schedule before it would never run\), got 0"),
    (lambda o: S.Sequential(o, [S.Constant(o), S.Constant(o), S.Constant(o)], [5, 5]), ValueError,
     r"milestones: expected strictly increasing ints, got \[5, 5\]"),
    (lambda o: S.Sequential(o, [S.Constant(o), S.Constant(o)], []), ValueError,
     "expected len\\(schedules\\) - 1 = 1 milestones, got 0"),
    (lambda o: S.Sequential(o, [S.Constant(fnn_sgd())], []), ValueError, "wraps another optimizer"),
    (lambda o: S.Chain([]), ValueError, "Chain: expected at least one schedule, got none"),
    (lambda o: S.Chain([S.Constant(o), S.Constant(fnn_sgd())]), ValueError,
     r"schedules\[1\] \(Constant\(t=0\)\) wraps another optimizer"),
    (lambda o: S.Chain([S.Constant(o), "cosine"]), TypeError, r"schedules\[1\]: expected a Schedule, got str"),
    (lambda o: S.InverseTime(o, 10, staircase="False"), TypeError,
     "staircase: expected True or False, got str 'False'"),
    (lambda o: S.Sequential(o, [S.Constant(o), S.Constant(o)], 5), TypeError,
     "Sequential: milestones: expected a list, got int 5"),
    (lambda o: S.Chain(S.Constant(o)), TypeError, "Chain: schedules: expected a list, got Constant"),
    (lambda o: S.Exponential(o, 2.0).lr_at(2000, 0.1), OverflowError,
     r"Exponential\(gamma=2, t=0\): the lr factor overflows a float at step 2000"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m[:24] for _, _, m in BAD])
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make(fnn_sgd())


# -- batch size ----------------------------------------------------------------------------------

def test_batch_size_every_samples_with_cap():
    bs = S.BatchSize(32, factor=2, every_samples=1000, max_batch=256)
    got = {n: bs.batch_size_at(n) for n in (0, 999, 1000, 1999, 2000, 2999, 3000, 10**6, 10**15)}
    assert got == {0: 32, 999: 32, 1000: 64, 1999: 64, 2000: 128, 2999: 128, 3000: 256, 10**6: 256, 10**15: 256}
    assert S.BatchSize(10, factor=3, every_samples=5, max_batch=100).batch_size_at(15) == 100  # 270 capped


def test_batch_size_without_cap_stops_growing_instead_of_overflowing():
    bs = S.BatchSize(1, every_samples=1)
    assert bs.batch_size_at(10) == 1024
    assert bs.batch_size_at(1100) == bs.batch_size_at(10**9) == 2 ** 62      # 2.0**1100 overflows a float
    assert S.BatchSize(3, factor=1.5, every_samples=1).batch_size_at(10**6) == 2 ** 62
    # a factor whose first growth overflows a float: round(inf) raised OverflowError, capped or not
    assert S.BatchSize(3, factor=1e308, every_samples=10, max_batch=100).batch_size_at(10) == 100
    assert S.BatchSize(3, factor=1e308, every_samples=10).batch_size_at(10) == 2 ** 62
    assert S.BatchSize(3, factor=1e300, every_samples=10).batch_size_at(100) == 2 ** 62    # 1e300**2 raised too


def test_batch_size_milestones_and_counting():
    bs = S.BatchSize(16, factor=4, milestones=[100, 500])
    assert [bs.batch_size_at(n) for n in (0, 99, 100, 499, 500, 10**9)] == [16, 16, 64, 64, 256, 256]
    sizes = []
    while bs.samples_seen < 700:
        sizes.append(bs.batch_size)
        bs.advance(bs.batch_size)
    assert sizes == [16] * 7 + [64] * 7 + [256]
    assert bs.samples_seen == 112 + 448 + 256


@pytest.mark.parametrize("scale_lr, scale", [("linear", lambda r: r), ("sqrt", math.sqrt)])
def test_batch_size_scales_lr_from_the_first_bigger_batch(scale_lr, scale):
    """Driven by fastnn.data.batches: each batch's step sees the lr for that batch's size."""
    from fastnn.data import BatchSizeSchedule, batches

    opt = fnn_sgd()
    bs = S.BatchSize(8, every_samples=32, max_batch=32, scale_lr=scale_lr, opt=opt)
    assert isinstance(bs, BatchSizeSchedule)
    sizes = []
    for xb, _ in batches(np.arange(200.0), None, bs, shuffle=False):
        planned = bs.batch_size_at(bs.samples_seen - len(xb))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * scale(planned / 8) for lr in LRS])
        sizes.append(len(xb))
    assert sizes == [8] * 4 + [16] * 2 + [32] * 4 + [8]  # the short last batch keeps the lr for 32
    assert bs.lr_scale == pytest.approx(scale(4))


def test_batch_size_scaling_composes_with_an_lr_schedule():
    opt = fnn_sgd()
    sched = S.Exponential(opt, 0.9)
    bs = S.BatchSize(4, every_samples=8, max_batch=8, scale_lr="linear", opt=opt)
    for t in range(1, 6):
        bs.advance(bs.batch_size)
        opt.step()
        sched.step()
        assert sched.get_last_lr() == pytest.approx([lr * bs.lr_scale * 0.9 ** t for lr in LRS])
    assert bs.lr_scale == 2.0 and sched.base_lrs == pytest.approx([0.2, 0.02])


def test_batch_size_state_dict_round_trip():
    make = lambda o: S.BatchSize(8, factor=2, milestones=[20, 60], scale_lr="sqrt", opt=o)  # noqa: E731
    bs = make(fnn_sgd())
    for _ in range(5):
        bs.advance(bs.batch_size)
    resumed = make(fnn_sgd())
    resumed.load_state_dict(json.loads(json.dumps(bs.state_dict())))
    assert (resumed.samples_seen, resumed.batch_size, resumed.lr_scale) == (bs.samples_seen, bs.batch_size,
                                                                            bs.lr_scale)
    with pytest.raises(ValueError, match=r"saved by BatchSize\(start=8.*expected one of BatchSize\(start=16"):
        S.BatchSize(16, milestones=[20, 60]).load_state_dict(bs.state_dict())
    assert repr(bs) == ("BatchSize(start=8, factor=2, every_samples=None, milestones=[20, 60], max_batch=None, "
                        "scale_lr='sqrt', batch_size=16, samples_seen=56)")


def test_batch_size_bad_state_changes_nothing():
    bs = S.BatchSize(8, every_samples=100)
    bs.advance(8)
    state = dict(bs.state_dict(), samples_seen=500, lr_batch=0)
    with pytest.raises(ValueError, match="lr_batch: expected an int >= 1, got 0"):
        bs.load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing \['lr_batch'\]"):
        bs.load_state_dict({"schedule": bs.state_dict()["schedule"], "samples_seen": 500})
    assert (bs.samples_seen, bs.batch_size) == (8, 8)


@pytest.mark.parametrize("make", [lambda: S.BatchSize(32, every_samples=1437, max_batch=128),
                                  lambda: S.BatchSize(5, factor=3, milestones=[10, 400])])
def test_batch_size_steps_counts_the_loaders_batches(make):
    import fastnn as fnn

    x, y = np.zeros((1437, 1), np.float32), np.zeros(1437, np.int64)
    for drop_last in (False, True):     # fit(drop_last=True) draws fewer: an lr schedule sized by it overran
        bs, drawn = make(), 0
        for epoch in range(4):
            drawn += sum(1 for _ in fnn.data.batches(x, y, batch_size=bs, seed=0, epoch=epoch, drop_last=drop_last))
        assert make().steps(1437, 4, drop_last=drop_last) == drawn
    assert make().steps(1437, 4, drop_last=True) < make().steps(1437, 4)
    assert make().steps(1437, 0) == 0


BAD_BATCH = [
    (dict(start=0, every_samples=10), ValueError, "start: expected an int >= 1, got 0"),
    (dict(start=8, factor=0.5, every_samples=10), ValueError, "factor: expected a number >= 1, got 0.5"),
    (dict(start=8, every_samples=0), ValueError, "every_samples: expected an int >= 1, got 0"),
    (dict(start=8), ValueError, "expected exactly one of every_samples and milestones"),
    (dict(start=8, every_samples=10, milestones=[5]), ValueError, "expected exactly one of"),
    (dict(start=8, milestones=[50, 20]), ValueError, r"milestones: expected strictly increasing ints, got \[50, 20\]"),
    (dict(start=8, every_samples=10, max_batch=4), ValueError, "max_batch: expected an int >= 8, got 4"),
    (dict(start=8, every_samples=10, scale_lr="cubic", opt="opt"), ValueError,
     "scale_lr: expected None, 'linear' or 'sqrt', got 'cubic'"),
    (dict(start=8, every_samples=10, scale_lr="linear"), ValueError, "scale_lr and opt go together"),
    (dict(start=8, every_samples=10, opt="opt"), ValueError, "scale_lr and opt go together"),
    (dict(start=8, every_samples=10, scale_lr="linear", opt=5), TypeError,
     r"BatchSize opt: expected an optimizer \(with param_groups\), got int"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_BATCH, ids=[m[:24] for _, _, m in BAD_BATCH])
def test_batch_size_bad_arguments(kwargs, error, message):
    if kwargs.get("opt") == "opt":
        kwargs = dict(kwargs, opt=fnn_sgd())
    start = kwargs.pop("start")
    with pytest.raises(error, match=message):
        S.BatchSize(start, **kwargs)


def test_batch_size_bad_counts():
    bs = S.BatchSize(8, every_samples=10)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 0, got -1"):
        bs.advance(-1)
    with pytest.raises(TypeError, match="samples: expected an int >= 0, got float 3.0"):
        bs.batch_size_at(3.0)


def test_schedules_name_what_came_instead_of_an_optimizer():
    with pytest.raises(TypeError, match="Constant: expected an optimizer .with param_groups., got NoneType"):
        S.Constant(None)
    with pytest.raises(ValueError, match="Sequential: expected at least one schedule, got none"):
        S.Sequential(fnn_sgd(), [], [])


@pytest.mark.parametrize("bad, error", [("0.1", TypeError), (None, TypeError), (float("nan"), ValueError),
                                        (-0.1, ValueError)])
def test_a_bad_initial_lr_is_named_before_anything_changes(bad, error):
    """initial_lr (the base a schedule scales, which the docs say to edit to move a schedule) was
    read unchecked: a string failed in a multiplication, NaN as an overflow, and a negative base
    advanced the schedule before the optimizer refused the lr."""
    p, g = np.zeros(3), np.ones(3)
    opt = fnn.optim.SGD((p, g), lr=0.1)
    sched = fnn.schedules.Cosine(opt, 10)
    state = opt.state_dict()
    state["param_groups"][0]["initial_lr"] = bad
    with pytest.raises(error, match="optimizer state: group 0: initial_lr: expected a finite number >= 0"):
        opt.load_state_dict(state)
    opt.param_groups[0]["initial_lr"] = bad
    with pytest.raises(error, match=r"Cosine\(.*\): param_groups\[0\]\['initial_lr'\]: expected a number >= 0"):
        sched.step()
    assert sched.t == 0 and opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(error, match=r"param_groups\[0\]: initial_lr: expected a finite number >= 0"):
        opt.step()
    np.testing.assert_array_equal(p, 0.0)


def test_chain_scales_a_floor_by_the_schedules_after_it():
    """Chain([c, e]) is e applied to c's lr: Cosine's eta_min floor is scaled by e's factor too."""
    opt = fnn_sgd(lrs=(1.0,))
    c, e = S.Cosine(opt, T_max=10, eta_min=0.01), S.Exponential(opt, 0.5)
    chain = S.Chain([c, e])
    for t in range(26):
        for base in (1.0, 0.3):
            assert chain.lr_at(t, base) == pytest.approx(e.lr_at(t, c.lr_at(t, base)), rel=1e-14), t


def test_a_loaded_schedule_treats_a_skipped_step_as_the_saved_one_would():
    """The optimizer's step count at the schedule's last step is part of its state: without it, a
    resumed run advanced on a skipped step that the uninterrupted run did not count."""
    def make(g):
        opt = fnn.optim.SGD((np.zeros(3), g), lr=1.0, nonfinite="skip")
        return opt, S.Step(opt, 1, 0.5)

    g = np.ones(3)
    opt, sched = make(g)
    opt.step()
    sched.step()
    g[0] = np.nan
    opt.step()
    assert not sched.step()
    opt2, sched2 = make(g.copy())
    sched2.load_state_dict(sched.state_dict())      # checkpoint.load's order: schedule, then optimizer
    opt2.load_state_dict(opt.state_dict())
    for o, s in ((opt, sched), (opt2, sched2)):
        assert o.step() is False
    assert (sched.step(), sched.t) == (sched2.step(), sched2.t) == (False, 1)
