"""Learning-rate schedules (torch.optim.lr_scheduler semantics) and a batch-size schedule.

An LR schedule wraps an optimizer: constructing it sets every group's ``lr`` to
``lr_at(0, base)``, and each ``step()``, called after ``opt.step()``, advances the step
counter ``t`` and sets ``lr = lr_at(t, base)``, where ``base`` is the group's
``"initial_lr"`` (set from its ``lr`` when absent, as torch does). Every schedule is affine
in the base lr, ``lr_at(t, base) = factor(t) * base + offset(t)``; the offset is zero except
for Cosine's absolute floor ``eta_min``. A step the optimizer skipped (non-finite
gradients, ``opt.last_step_skipped``) does not advance the schedule, so a skip delays the
schedule instead of silently dropping one of its values (huggingface/accelerate#4243); a
schedule stepped less often (once an epoch) still advances when the optimizer took any real
step since the schedule's last one. The schedule owns ``lr``: an edit of a group's ``lr`` lasts
until the next ``step()`` (torch's chainable schedulers continue from the edited value);
change ``initial_lr``, the base, to move the whole schedule.

``BatchSize`` grows the batch with the number of samples seen (Smith et al. 2018, "Don't
decay the learning rate, increase the batch size") and can rescale the lr to match.
"""
from __future__ import annotations

import math
import numbers
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .checks import check_bool

__all__ = ["Schedule", "Constant", "InverseTime", "Exponential", "Step", "Cosine", "Warmup",
           "Sequential", "Chain", "BatchSize"]


# -- argument checks -------------------------------------------------------------------------

def _int_at_least(value: object, name: str, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}{why}, got {value}")
    return int(value)


def _real(value: object, name: str, ok: Callable[[float], bool], expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number {expected}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected a number {expected}, got {value}")
    return float(value)


def _state(state: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """``state`` if it is a dict holding ``keys``; a clear error otherwise."""
    if not isinstance(state, dict):
        raise TypeError(f"{what}: expected a dict from state_dict(), got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{what}: expected keys {list(keys)}, missing {missing}")
    return state


def _listed(values: object, what: str) -> list:
    """``values`` (a list, tuple or other iterable) as a list; a clear TypeError for a scalar."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what}: expected a list, got {type(values).__name__} {values!r}")
    return list(values)


def _check_optimizer(opt: object, who: str) -> None:
    if not isinstance(getattr(opt, "param_groups", None), list):
        raise TypeError(f"{who}: expected an optimizer (with param_groups), got {type(opt).__name__}")


def _milestones(values: Sequence[int], name: str, why: str = "") -> list[int]:
    values = [_int_at_least(m, f"{name}[{i}]", 1, why) for i, m in enumerate(values)]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name}: expected strictly increasing ints, got {values}")
    return values


# -- asymptotics, for the Robbins-Monro conditions ---------------------------------------------

@dataclass(frozen=True)
class _Tail:
    """gamma_t = Theta(rate**t * t**-power) as t -> inf, up to a bounded factor of positive
    mean (a periodic one such as Cosine's, or Step's staircase)."""

    rate: float = 1.0
    power: float = 0.0

    def __mul__(self, other: _Tail) -> _Tail:
        return _Tail(self.rate * other.rate, self.power + other.power)

    def __add__(self, other: _Tail) -> _Tail:
        return max(self, other, key=lambda a: (a.rate, -a.power))  # the slower decay dominates

    @property
    def robbins_monro(self) -> bool:
        """gamma_t -> 0 and sum gamma_t = inf: exactly the polynomial decays t**-p, 0 < p <= 1.
        Rates that cancel (Step's 0.5 every 2 steps times Exponential(2**0.5)) multiply to 1 up
        to a few roundings; a rate 1e-13 off 1 is a real geometric factor."""
        return math.isclose(self.rate, 1.0, rel_tol=1e-14) and 0.0 < self.power <= 1.0 + 1e-12


def _fmt(value: Any) -> str:
    """One-line rendering of a schedule spec (nested dicts with a "type" key)."""
    if isinstance(value, dict):
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if k != "type")
        return f"{value.get('type', '?')}({args})"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


# -- learning-rate schedules -------------------------------------------------------------------

#: per optimizer: a weak reference to the schedule whose ``step()`` last set its lr, and the
#: optimizer's step count then (a second schedule stepped at the same count is torch's chaining)
_LAST_STEPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Schedule:
    """Base of the LR schedules; ``t`` counts optimizer steps taken (torch's ``last_epoch``).

    Subclasses set their hyperparameters, then call ``Schedule.__init__(self, opt)``, and
    define ``_affine(t) -> (factor, offset)``, ``_tails()`` and ``_config()``.
    """

    def __init__(self, opt: Any) -> None:
        _check_optimizer(opt, type(self).__name__)
        self.opt = opt
        self.t = 0
        self._owner: Schedule | None = None
        #: the optimizer's step_count at this schedule's last step (None: unknown, after a load)
        self._stepped_at = getattr(opt, "step_count", None)
        self._apply(0)
        self._take_over()

    # the schedule as a pure function of the step ------------------------------------------
    def _affine(self, t: int) -> tuple[float, float]:
        raise NotImplementedError

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        """Asymptotics of factor(t) and of offset(t) (None: identically zero)."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def factor(self, t: int) -> float:
        """The multiplier of the base lr at step ``t`` (steps, not samples)."""
        return self._affine_at(_int_at_least(t, "t", 0))[0]

    def offset(self, t: int) -> float:
        """The absolute part of the lr at step ``t``: 0 except for Cosine's ``eta_min`` floor."""
        return self._affine_at(_int_at_least(t, "t", 0))[1]

    def lr_at(self, t: int, base_lr: float) -> float:
        """The lr at step ``t`` of a group whose base lr is ``base_lr``."""
        f, o = self._affine_at(_int_at_least(t, "t", 0))
        return f * base_lr + o

    @property
    def robbins_monro(self) -> bool:
        """True iff lr_t -> 0 and sum_t lr_t = inf (for a positive base lr): the lecture's
        conditions (i) and (ii) under which SGD converges."""
        f, o = self._tails()
        return (f if o is None else f + o).robbins_monro

    # stepping -----------------------------------------------------------------------------
    @property
    def last_epoch(self) -> int:
        """torch's name for ``t``."""
        return self.t

    @property
    def base_lrs(self) -> list[float]:
        """Every group's ``initial_lr``, the base the schedule scales."""
        return [g["initial_lr"] for g in self.opt.param_groups]

    def step(self) -> bool:
        """Advance one step and set every group's lr; call after ``opt.step()``.

        Returns False, changing nothing, when the optimizer skipped its last step, or only
        counted a micro-batch of an accumulated step (``fastnn.distributed.DataParallel`` with
        ``accumulate_steps``), and took no real step since this schedule's last one. Raises
        RuntimeError, changing nothing, when another schedule already stepped the optimizer
        since its last step (torch's chaining by stepping several; use ``Chain``).
        """
        if self._owner is not None:
            raise RuntimeError(f"{self!r} is part of {self._owner!r}; step that schedule instead")
        count = getattr(self.opt, "step_count", None)
        idle = getattr(self.opt, "last_step_skipped", False) or getattr(self.opt, "accumulating", False)
        if idle and (self._stepped_at is None or count == self._stepped_at):
            return False
        tracked = self._check_sole_stepper(count)
        self._apply(self.t + 1)
        self._stepped_at = count
        if tracked:
            _LAST_STEPPED[self.opt] = (weakref.ref(self), count)
        return True

    def _check_sole_stepper(self, count: int | None) -> bool:
        """RuntimeError when another schedule already stepped this optimizer after its step
        ``count``: torch chains schedulers stepped one after the other, each scaling the lr the
        one before set, but a fastnn schedule sets the lr from ``initial_lr``, so the last one
        stepped would silently win. Returns False (nothing checked) for an optimizer without
        ``step_count`` or one that cannot be weakly referenced."""
        if count is None:
            return False
        try:
            last = _LAST_STEPPED.get(self.opt)
        except TypeError:
            return False
        other = last[0]() if last is not None and last[1] == count else None
        if other is not None and other is not self:
            raise RuntimeError(f"{self!r}: {other!r} already stepped this optimizer after its step {count}; "
                               "stepping two schedules one after the other does not chain them as torch's "
                               "schedulers do (each sets the lr from initial_lr, the last would win): compose "
                               "them with schedules.Chain([...]) and step only that")
        return True

    def _take_over(self) -> None:
        """A schedule made or loaded now sets the optimizer's lr: the schedule it replaces no
        longer counts as the one that stepped it (a checkpoint loaded rolls the optimizer's
        step count back, to counts the replaced schedule may have stepped at)."""
        try:
            _LAST_STEPPED.pop(self.opt, None)
        except TypeError:       # an optimizer that cannot be weakly referenced: never tracked
            pass

    def _affine_at(self, t: int) -> tuple[float, float]:
        """``_affine(t)``, an overflow named with the schedule and step."""
        try:
            return self._affine(t)
        except OverflowError:
            raise OverflowError(f"{self!r}: the lr factor overflows a float at step {t}") from None

    def _apply(self, t: int, base_lrs: Sequence[float] | None = None) -> None:
        """Move to step ``t`` (and ``base_lrs``, if given): every group's lr is computed
        before anything changes, so an lr that overflows leaves the schedule as it was."""
        f, o = self._affine_at(t)
        groups = self.opt.param_groups
        if base_lrs is None:    # initial_lr may have been set by hand: checked before anything changes
            try:
                base_lrs = [_real(g.get("initial_lr", g["lr"]), f"param_groups[{k}]['initial_lr']",
                                  lambda v: v >= 0, ">= 0") for k, g in enumerate(groups)]
            except (TypeError, ValueError) as e:
                raise type(e)(f"{self!r}: {e}") from None
        lrs = [f * base + o for base in base_lrs]
        if not all(math.isfinite(lr) for lr in lrs):
            raise OverflowError(f"{self!r}: the lr overflows a float at step {t} (got {lrs})")
        for g, base, lr in zip(groups, base_lrs, lrs):
            g["initial_lr"] = base
            g["lr"] = lr
        self.t = t

    def get_last_lr(self) -> list[float]:
        """The lr of every parameter group now."""
        return [g["lr"] for g in self.opt.param_groups]

    # checkpoints --------------------------------------------------------------------------
    def _spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **self._config()}

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the schedule's spec, ``t``, the base lr of every group and the
        optimizer's step count at the schedule's last step (whether a skipped step since then
        still advances it, as it would have in the saved run)."""
        return {"schedule": self._spec(), "t": self.t, "base_lrs": [float(b) for b in self.base_lrs],
                "stepped_at": self._stepped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``t`` and the base lrs, and set every group's lr to match.

        The schedule must be built as the saved one was (same type and hyperparameters).
        Everything is checked before anything changes.
        """
        state = _state(state, ("schedule", "t", "base_lrs"), "schedule state")
        if state["schedule"] != self._spec():
            raise ValueError(f"schedule state: saved by {_fmt(state['schedule'])}, "
                             f"expected one of {_fmt(self._spec())}")
        t = _int_at_least(state["t"], "schedule state t", 0)
        groups, bases = self.opt.param_groups, state["base_lrs"]
        if isinstance(bases, (str, bytes, dict)) or not hasattr(bases, "__len__") or len(bases) != len(groups):
            raise ValueError(f"schedule state base_lrs: expected a list of {len(groups)} lrs (one per parameter "
                             f"group), got {bases!r}")
        bases = [_real(b, f"schedule state base_lrs[{i}]", lambda v: v >= 0, ">= 0") for i, b in enumerate(bases)]
        stepped_at = state.get("stepped_at")        # absent from states saved before it was kept: unknown
        if stepped_at is not None:
            stepped_at = _int_at_least(stepped_at, "schedule state stepped_at", 0)
        self._apply(t, bases)
        self._stepped_at = stepped_at
        self._take_over()

    def __repr__(self) -> str:
        return _fmt({**self._spec(), "t": self.t})


class Constant(Schedule):
    """lr_t = base. torch: ``LambdaLR(opt, lambda t: 1.0)``."""

    def _affine(self, t: int) -> tuple[float, float]:
        return 1.0, 0.0

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(), None

    def _config(self) -> dict[str, Any]:
        return {}


class InverseTime(Schedule):
    """lr_t = base / (1 + decay_rate * t / decay_steps) ** power, t in steps.

    ``staircase`` uses ``t // decay_steps``. With power 1 this is Keras ``InverseTimeDecay``,
    the lecture's 1/t decay; torch: ``LambdaLR(opt, lambda t: (1 + r * t / s) ** -p)``.
    Satisfies Robbins-Monro for 0 < power <= 1 (and sum lr_t**2 < inf for power > 1/2).
    """

    def __init__(self, opt: Any, decay_steps: int, decay_rate: float = 1.0, staircase: bool = False,
                 power: float = 1.0) -> None:
        self.decay_steps = _int_at_least(decay_steps, "decay_steps", 1)
        self.decay_rate = _real(decay_rate, "decay_rate", lambda v: v > 0, "> 0")
        self.staircase = check_bool(staircase, "staircase")
        self.power = _real(power, "power", lambda v: v > 0, "> 0")
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        x = t // self.decay_steps if self.staircase else t / self.decay_steps
        return (1.0 + self.decay_rate * x) ** -self.power, 0.0

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(power=self.power), None

    def _config(self) -> dict[str, Any]:
        return {"decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "power": self.power}


class Exponential(Schedule):
    """lr_t = base * gamma**t, t in steps. torch: ``ExponentialLR(opt, gamma)``."""

    def __init__(self, opt: Any, gamma: float) -> None:
        self.gamma = _real(gamma, "gamma", lambda v: v > 0, "> 0")
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        return self.gamma ** t, 0.0

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(rate=self.gamma), None

    def _config(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


class Step(Schedule):
    """lr_t = base * gamma**(t // step_size), t in steps. torch: ``StepLR(opt, step_size, gamma)``."""

    def __init__(self, opt: Any, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _int_at_least(step_size, "step_size", 1)
        self.gamma = _real(gamma, "gamma", lambda v: v > 0, "> 0")
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        return self.gamma ** (t // self.step_size), 0.0

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(rate=self.gamma ** (1.0 / self.step_size)), None

    def _config(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class Cosine(Schedule):
    """lr_t = eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2, t in steps.

    torch: ``CosineAnnealingLR(opt, T_max, eta_min)``. ``eta_min`` is an absolute lr, the
    same for every group (so ``factor(t)`` is the cosine term and ``offset(t)`` is
    ``eta_min * (1 - factor(t))``). As in torch, past ``T_max`` the lr rises again: the
    schedule has period ``2 * T_max``.
    """

    def __init__(self, opt: Any, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _int_at_least(T_max, "T_max", 1)
        self.eta_min = _real(eta_min, "eta_min", lambda v: v >= 0, ">= 0")
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        c = 0.5 * (1.0 + math.cos(math.pi * t / self.T_max))
        return c, self.eta_min * (1.0 - c)

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(), (_Tail() if self.eta_min > 0 else None)

    def _config(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class Warmup(Schedule):
    """lr_t = base * (start_factor + (1 - start_factor) * min(t, warmup_steps) / warmup_steps).

    Linear warm-up over ``warmup_steps`` steps, then constant. torch:
    ``LinearLR(opt, start_factor, end_factor=1.0, total_iters=warmup_steps)``.
    """

    def __init__(self, opt: Any, warmup_steps: int, start_factor: float = 1.0 / 3.0) -> None:
        self.warmup_steps = _int_at_least(warmup_steps, "warmup_steps", 1)
        self.start_factor = _real(start_factor, "start_factor", lambda v: 0 < v <= 1, "in (0, 1]")
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        s = self.start_factor
        return s + (1.0 - s) * min(t, self.warmup_steps) / self.warmup_steps, 0.0

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return _Tail(), None

    def _config(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps, "start_factor": self.start_factor}


def _adopt(owner: Schedule, parts: Sequence[Schedule], opt: Any) -> list[Schedule]:
    """Check ``parts`` may become components of ``owner`` (same optimizer, not yet owned)."""
    parts = list(parts)
    if not parts:
        raise ValueError(f"{type(owner).__name__}: expected at least one schedule, got none")
    for i, p in enumerate(parts):
        if not isinstance(p, Schedule):
            raise TypeError(f"{type(owner).__name__}: schedules[{i}]: expected a Schedule, "
                            f"got {type(p).__name__}")
        if p.opt is not opt:
            raise ValueError(f"{type(owner).__name__}: schedules[{i}] ({p!r}) wraps another optimizer; "
                             "expected all schedules to wrap the same one")
        if p._owner is not None:
            raise ValueError(f"{type(owner).__name__}: schedules[{i}] ({p!r}) is already part of "
                             f"{p._owner!r}")
    for p in parts:
        p._owner = owner
    return parts


class Sequential(Schedule):
    """Run ``schedules[k]`` from step ``milestones[k-1]`` on, restarted there (torch ``SequentialLR``).

    lr_t = schedules[k].lr_at(t - milestones[k-1], base) for milestones[k-1] <= t < milestones[k]
    (milestone 0 before the first). Milestones are steps, >= 1 and increasing; torch accepts
    a milestone of 0 and then starts at the wrong lr (pytorch#185872). The schedules become
    components: step the Sequential only.
    """

    def __init__(self, opt: Any, schedules: Sequence[Schedule], milestones: Sequence[int]) -> None:
        schedules = _listed(schedules, "Sequential: schedules")
        milestones = _listed(milestones, "Sequential: milestones")
        if not schedules:
            raise ValueError("Sequential: expected at least one schedule, got none")
        if len(milestones) != len(schedules) - 1:
            raise ValueError(f"Sequential: expected len(schedules) - 1 = {len(schedules) - 1} milestones, "
                             f"got {len(milestones)}")
        self.milestones = _milestones(milestones, "milestones",
                                      " (a step; at 0 the schedule before it would never run)")
        self.schedules = _adopt(self, schedules, opt)
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        k = bisect_right(self.milestones, t)
        return self.schedules[k]._affine(t - (self.milestones[k - 1] if k else 0))

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        return self.schedules[-1]._tails()

    def _config(self) -> dict[str, Any]:
        return {"schedules": [s._spec() for s in self.schedules], "milestones": self.milestones}


class Chain(Schedule):
    """Compose schedules: lr_t = s_n.lr_at(t, ... s_1.lr_at(t, base)) (torch ``ChainedScheduler``).

    For schedules without an offset this is the product of their factors, which is what
    torch gives as long as every Cosine in the chain is within its ``T_max``. torch's
    ChainedScheduler applies each scheduler's recursive update to the running lr; past
    ``T_max`` (and with an ``eta_min``) CosineAnnealingLR's update is additive, so torch's
    numbers then depend on the other factors and differ. The schedules become components:
    step the Chain only.
    """

    def __init__(self, schedules: Sequence[Schedule]) -> None:
        schedules = _listed(schedules, "Chain: schedules")
        opt = schedules[0].opt if schedules and isinstance(schedules[0], Schedule) else None
        self.schedules = _adopt(self, schedules, opt)
        super().__init__(opt)

    def _affine(self, t: int) -> tuple[float, float]:
        f, o = 1.0, 0.0
        for s in self.schedules:
            fs, os_ = s._affine(t)
            f, o = f * fs, o * fs + os_
        return f, o

    def _tails(self) -> tuple[_Tail, _Tail | None]:
        f, o = _Tail(), None
        for s in self.schedules:
            fs, os_ = s._tails()
            o = o * fs if o is not None else None
            if os_ is not None:
                o = os_ if o is None else o + os_
            f = f * fs
        return f, o

    def _config(self) -> dict[str, Any]:
        return {"schedules": [s._spec() for s in self.schedules]}


# -- batch-size schedule -----------------------------------------------------------------------

_LR_SCALINGS = ("linear", "sqrt")
#: without max_batch the size stops growing here (beyond any data set; start * factor**k would
#: overflow a float after enough growths)
_UNCAPPED_BATCH = 2 ** 62


class BatchSize:
    """A batch size that grows by ``factor`` as samples are seen, up to ``max_batch``.

    Growth comes every ``every_samples`` samples, or at each of ``milestones`` (sample
    counts; give exactly one of the two): with k growths so far, the batch size is
    ``min(round(start * factor**k), max_batch)`` (without ``max_batch`` it stops at 2**62,
    beyond any data set). Everything counts samples, not steps, so
    the schedule survives a change of batch size, of rank count, and checkpoints.
    Growing the batch by ``factor`` cuts SGD's noise scale ``lr * N / B`` as decaying the lr
    by ``factor`` would (Smith et al. 2018), with fewer parameter updates.

    The data loader reads ``batch_size`` before drawing each batch and calls ``advance(n)``
    as it hands out a batch of n samples, before the step on it (``fastnn.data.batches``
    does both). With ``scale_lr="linear"`` (or ``"sqrt"``) and ``opt``, each group's
    ``lr`` and ``initial_lr`` are multiplied by B_new / B_old (or its square root) in the
    ``advance`` that hands out the first batch of a new size, so that step already uses the
    scaled lr. Since LR schedules read ``initial_lr``, the two compose: lr_t = schedule(t) *
    scale(B_t / start), Cosine's ``eta_min`` floor unscaled. (On the step where the batch
    grows, ``advance`` scales that step's whole lr, floor included, since it cannot tell the
    floor apart; the LR schedule's next ``step()`` sets the exact value again.)
    """

    def __init__(self, start: int, *, factor: float = 2, every_samples: int | None = None,
                 milestones: Sequence[int] | None = None, max_batch: int | None = None,
                 scale_lr: str | None = None, opt: Any = None) -> None:
        self.start = _int_at_least(start, "start", 1)
        self.factor = _real(factor, "factor", lambda v: v >= 1, ">= 1")
        if (every_samples is None) == (milestones is None):
            raise ValueError("BatchSize: expected exactly one of every_samples and milestones, got "
                             f"every_samples={every_samples!r}, milestones={milestones!r}")
        self.every_samples = None if every_samples is None else _int_at_least(every_samples, "every_samples", 1)
        self.milestones = None if milestones is None else _milestones(milestones, "milestones")
        self.max_batch = None if max_batch is None else _int_at_least(max_batch, "max_batch", self.start)
        if scale_lr not in (None, *_LR_SCALINGS):
            raise ValueError(f"scale_lr: expected None, 'linear' or 'sqrt', got {scale_lr!r}")
        if (scale_lr is None) != (opt is None):
            raise ValueError("BatchSize: scale_lr and opt go together; got "
                             f"scale_lr={scale_lr!r} and opt={'None' if opt is None else type(opt).__name__}")
        if opt is not None:
            _check_optimizer(opt, "BatchSize opt")
        self.scale_lr, self.opt = scale_lr, opt
        self._cap = self.max_batch if self.max_batch is not None else max(_UNCAPPED_BATCH, self.start)
        self._max_growths = self._growths_to_cap()
        self._samples = 0
        self._lr_batch = self.start  # the batch size the optimizer's lr is scaled for

    def _growths_to_cap(self) -> int:
        """The number of growths after which the size stays at its cap."""
        if self.factor == 1:
            return 0
        k = max(0, math.ceil(math.log(self._cap / self.start) / math.log(self.factor)) - 1)
        while self._grown(k) < self._cap:
            k += 1
        return k

    def _grown(self, k: int) -> float:
        """start * factor**k, inf where that overflows a float."""
        try:
            return self.start * self.factor ** k
        except OverflowError:
            return math.inf

    def batch_size_at(self, samples: int) -> int:
        """The batch size once ``samples`` samples have been seen."""
        samples = _int_at_least(samples, "samples", 0)
        if self.every_samples is not None:
            k = samples // self.every_samples
        else:
            k = bisect_right(self.milestones, samples)
        grown = self._grown(min(k, self._max_growths))
        return self._cap if grown >= self._cap else min(round(grown), self._cap)

    def steps(self, epoch_samples: int, epochs: int, drop_last: bool = False, ranks: int = 1) -> int:
        """The number of batches (optimizer steps) in ``epochs`` epochs of ``epoch_samples``
        samples each, counted from no samples seen, each epoch's last batch holding the
        remainder, or dropped and not counted with ``drop_last`` or when it has fewer samples
        than ``ranks`` (as ``fastnn.data.batches`` takes them): what an LR schedule meant to
        span the run is sized by."""
        return sum(1 for _ in self.sizes(epoch_samples, epochs, drop_last, ranks))

    def sizes(self, epoch_samples: int, epochs: int, drop_last: bool = False, ranks: int = 1) -> Iterator[int]:
        """The size of each batch of those ``steps`` counts, in order."""
        epoch_samples = _int_at_least(epoch_samples, "epoch_samples", 1)
        drop_last = check_bool(drop_last, "drop_last")
        epochs = _int_at_least(epochs, "epochs", 0)
        ranks = _int_at_least(ranks, "ranks", 1)

        def run() -> Iterator[int]:
            seen = 0
            for _ in range(epochs):
                left = epoch_samples
                while left:
                    size = self.batch_size_at(seen)
                    if (drop_last and size > left) or min(size, left) < ranks:
                        break
                    n = min(size, left)
                    seen, left = seen + n, left - n
                    yield n
        return run()

    @property
    def batch_size(self) -> int:
        """The size of the next batch."""
        return self.batch_size_at(self._samples)

    @property
    def samples_seen(self) -> int:
        return self._samples

    @property
    def lr_scale(self) -> float:
        """The factor the lr has been scaled by so far (1.0 without ``scale_lr``)."""
        r = self._lr_batch / self.start
        return math.sqrt(r) if self.scale_lr == "sqrt" else r

    def advance(self, n_samples: int) -> None:
        """Count a batch of ``n_samples`` samples as handed out (the last may be short)."""
        n_samples = _int_at_least(n_samples, "n_samples", 0)
        if self.opt is not None:
            self._rescale_lr(self.batch_size)
        self._samples += n_samples

    def _rescale_lr(self, batch: int) -> None:
        if batch == self._lr_batch:
            return
        r = batch / self._lr_batch
        s = math.sqrt(r) if self.scale_lr == "sqrt" else r
        for g in self.opt.param_groups:
            g["initial_lr"] = g.setdefault("initial_lr", g["lr"]) * s
            g["lr"] *= s
        self._lr_batch = batch

    def _spec(self) -> dict[str, Any]:
        return {"type": "BatchSize", "start": self.start, "factor": self.factor,
                "every_samples": self.every_samples, "milestones": self.milestones,
                "max_batch": self.max_batch, "scale_lr": self.scale_lr}

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the spec, the samples seen and the batch size the lr is scaled for."""
        return {"schedule": self._spec(), "samples_seen": self._samples, "lr_batch": self._lr_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts. The lr itself is left alone: the optimizer's (or its LR
        schedule's) checkpoint holds the scaled lr."""
        state = _state(state, ("schedule", "samples_seen", "lr_batch"), "BatchSize state")
        if state["schedule"] != self._spec():
            raise ValueError(f"BatchSize state: saved by {_fmt(state['schedule'])}, "
                             f"expected one of {_fmt(self._spec())}")
        samples = _int_at_least(state["samples_seen"], "BatchSize state samples_seen", 0)
        self._lr_batch = _int_at_least(state["lr_batch"], "BatchSize state lr_batch", 1)
        self._samples = samples

    def __repr__(self) -> str:
        return _fmt({**self._spec(), "batch_size": self.batch_size, "samples_seen": self._samples})
