"""Optimizer: parameter groups over a flat buffer, gradient checks and clipping, state dicts.

Subclasses name their per-parameter state buffers (``state_names``), validate their
hyperparameters (``_check_hparams``) and run their fused kernel (``_update``); this base
turns a model or a ``(params, grads)`` pair plus optional parameter groups into the
chunk table that kernel walks, so one call updates every group.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable

import numpy as np

from fastnn.kernels.chunks import make_chunks
from fastnn.kernels.parallel import pick
from fastnn.kernels.reduce import sumsq_cpu, sumsq_serial

from ..checks import check_bool, check_flat, check_real, type_name
from ..flat import aligned_zeros
from ..module import Module

NONFINITE_POLICIES = ("raise", "skip", "ignore")


class Optimizer:
    """Base of the fused optimizers.

    ``params``: a model (its flat buffer is used), or a ``(params, grads)`` pair of 1-D
    contiguous float arrays of equal length. ``param_groups``: optional list of dicts,
    each with ``"params"`` (views into the model's parameters, or their names such as
    ``"0.bias"``) and hyperparameters overriding the defaults for those elements; every
    other element stays in group 0 with the defaults. ``self.param_groups[0]`` is that group
    (empty when the groups given list every parameter), so the k-th group given is
    ``self.param_groups[k + 1]``, one further than in torch. ``max_grad_norm``: clip the global
    L2 norm of the gradient to this value (inside the kernel; the gradient buffer is left
    as it was). ``nonfinite``: what a NaN/Inf gradient does: "raise" (FloatingPointError,
    nothing changed), "skip" (the step is skipped and counted in ``skipped_steps``) or
    "ignore" (no check; NaN propagates into the parameters, as in torch).
    """

    #: every state buffer this optimizer may hold (which ones it holds follows the options)
    state_names: tuple[str, ...] = ()
    #: state buffers an option switched on after a step creates, zeroed, at the next step (a state
    #: saved in between lacks them)
    lazy_state: tuple[str, ...] = ()
    #: options one value of which applies to all groups; read from the groups at each step
    global_options: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, *, param_groups: list[dict] | None = None,
                 max_grad_norm: float | None = None, nonfinite: str = "raise", **unknown) -> None:
        if unknown:
            raise TypeError(_unknown_options(type(self), unknown))
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite: expected one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if max_grad_norm is not None:
            check_real(max_grad_norm, "max_grad_norm (or None)", 0.0)
            if not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm: expected a positive number or None, got {max_grad_norm}")
        self.params, self.grads, self._slots = _resolve(params)
        #: the flat buffer's alignment padding between tensors (kept zero)
        self._padding = np.concatenate([np.arange(start + size, stop, dtype=np.int64)
                                        for _, start, stop, size in self._slots] or [np.empty(0, np.int64)])
        self._model = params if isinstance(params, Module) else None
        self.defaults = dict(defaults)
        self._check_hparams(self.defaults, "defaults")
        self.max_grad_norm, self.nonfinite = max_grad_norm, nonfinite
        self.param_groups, self._segments = self._build_groups(param_groups or [])
        self._group_params = [list(g["params"]) for g in self.param_groups]     # fixed: the kernels' group table
        self._starts, self._stops, self._groups = make_chunks(self._segments)
        self._share = (0, self.params.size)
        self._combine = None
        self.state: dict[str, np.ndarray] = {}
        self._state_pinned = False
        self._new_state()
        self.step_count = 0
        self.skipped_steps = 0
        self.last_step_skipped = False
        #: the gradient's L2 norm (times grad_scale) at the last step(), refused ones included
        #: (NaN or Inf then); None until a step computes it (with clipping or a nonfinite check)
        self.last_grad_norm: float | None = None

    # -- groups ----------------------------------------------------------------------
    def _build_groups(self, overrides: list[dict]) -> tuple[list[dict], list[tuple[int, int, int]]]:
        owner = np.zeros(len(self._slots), dtype=np.int64)
        groups = [dict(self.defaults)]
        for k, spec in enumerate(overrides, start=1):
            if not isinstance(spec, dict) or "params" not in spec:
                raise TypeError(f"param_groups[{k - 1}]: expected a dict with a 'params' list, got {spec!r}")
            unknown = set(spec) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"param_groups[{k - 1}]: unknown options {sorted(unknown)}; "
                                 f"expected some of {sorted(self.defaults)}")
            fixed = [o for o in self.global_options if o in spec and spec[o] != self.defaults[o]]
            if fixed:
                raise ValueError(f"param_groups[{k - 1}]: {fixed} must be the same for all groups")
            group = {**self.defaults, **{o: v for o, v in spec.items() if o != "params"}}
            self._check_hparams(group, f"param_groups[{k - 1}]")
            params = spec["params"]
            if not isinstance(params, (list, tuple, str, np.ndarray)):
                raise TypeError(f"param_groups[{k - 1}]['params']: expected a list of parameter names or arrays "
                                f"(or one), got {type(params).__name__} {params!r}")
            for p in [params] if isinstance(params, (str, np.ndarray)) else params:   # one, as torch takes one tensor
                i = self._slot_index(p)
                if owner[i] == k:
                    raise ValueError(f"parameter {self._slots[i][0]!r} is listed twice in param_groups[{k - 1}]")
                if owner[i]:
                    raise ValueError(f"parameter {self._slots[i][0]!r} is in two parameter groups")
                owner[i] = k
            groups.append(group)
        for k, group in enumerate(groups):
            group["params"] = [s[0] for s, o in zip(self._slots, owner) if o == k]
        segments = [(start, stop, int(o)) for (_, start, stop, _), o in zip(self._slots, owner)]
        return groups, segments

    def _slot_index(self, p) -> int:
        if isinstance(p, str):
            for i, s in enumerate(self._slots):
                if s[0] == p:
                    return i
            raise KeyError(f"no parameter named {p!r}; expected one of {[s[0] for s in self._slots]}")
        if isinstance(p, np.ndarray) and p.size == 0 and self._model is not None:  # shares no memory: by identity
            name = next((n for n, v in self._model.named_parameters() if v is p), None)
            if name is not None:
                return self._slot_index(name)
        if not isinstance(p, np.ndarray) or not np.shares_memory(p, self.params):
            raise ValueError("param_groups: each entry of 'params' must be a parameter name or a view "
                             f"into the optimized parameters, got {type(p).__name__}")
        start = (p.__array_interface__["data"][0] - self.params.ctypes.data) // self.params.itemsize
        for i, (_, s_start, _, size) in enumerate(self._slots):
            if s_start == start and size == p.size:
                return i
        raise ValueError(f"param_groups: the array of shape {p.shape} at element {start} is not one "
                         "of the model's parameters")

    def _state_to_allocate(self, groups: list[dict]) -> tuple[str, ...]:
        """The state buffers that hyperparameter groups ``groups`` need."""
        return self.state_names

    def _new_state(self) -> list[str]:
        """Adopt the global options the groups hold now and allocate (zeroed) the state buffers
        they need that do not exist yet, e.g. after ``param_groups[0]["momentum"]`` was set
        above 0 (as torch creates a buffer on first use); returns the new buffers' names."""
        groups = self.param_groups
        for o in self.global_options:
            first = groups[0][o]
            for g in groups:
                if g[o] != first:
                    raise ValueError(f"{o}: expected one value for all parameter groups, got {[g[o] for g in groups]}")
            self.defaults[o] = first
        state = self.state
        for n in self._state_to_allocate(groups):
            if n not in state:
                break
        else:
            return []
        new = [n for n in self._state_to_allocate(groups) if n not in state]
        if self._state_pinned:
            raise ValueError(f"optimizer state {list(new)} is needed by the options set now, but the state "
                             "buffers were placed in shared memory when DataParallel wrapped this optimizer; "
                             "set these options before wrapping it")
        for n in new:
            self.state[n] = aligned_zeros(self.params.size, self.params.dtype)
        return new

    def pin_state(self) -> None:
        """Fix the set of state buffers from now on (they were moved, e.g. into memory shared
        by the ranks of a data-parallel job): an option that needs another one then raises."""
        self._state_pinned = True

    def _check_setting(self, group: dict, key: str, where: str, minimum: float | None = 0.0) -> None:
        """``group[key]`` a finite number >= ``minimum`` that the parameters' dtype holds: inf, or a
        float64 beyond float32's range cast to an inf kernel scalar, made every parameter NaN (even
        those with a zero gradient)."""
        value = float(check_real(group[key], f"{where}: {key}", minimum, math.inf))    # np.float32: no cast
        if not abs(value) <= (top := float(np.finfo(self.params.dtype).max)):       # -inf, with no minimum
            raise ValueError(f"{where}: {key}: expected a finite number within {self.params.dtype}'s range (the "
                             f"parameters' dtype, at most {top:g} in size), got {value:g}")

    def _check_hparams(self, group: dict, where: str) -> None:
        for key in ("lr", "weight_decay"):
            self._check_setting(group, key, where)
        if "initial_lr" in group:       # an lr schedule's base (torch's key), set by hand or loaded
            self._check_setting(group, "initial_lr", where)
        for key in ("maximize", "amsgrad", "nesterov"):
            if key in group:
                check_bool(group[key], f"{where}: {key}")

    # -- stepping --------------------------------------------------------------------
    def step(self, grad_scale: float = 1.0) -> bool:
        """Apply one update to every parameter; returns False when the step was skipped.

        ``grad_scale`` multiplies the gradient inside the kernel (data parallelism passes
        1/ranks here instead of rescaling the buffer); clipping sees the scaled norm.
        """
        if callable(grad_scale):
            raise TypeError("step: expected a number grad_scale, got a function: torch's step(closure) is not "
                            "supported; run the forward and backward, then call step()")
        self._check_buffers()
        if not self.params.flags.writeable:      # Numba's typing error said it, after a compile
            raise ValueError(f"{type(self).__name__}: the parameters became read-only after this optimizer was made; "
                             "expected a writeable buffer to update in place")
        self._check_groups()
        if isinstance(grad_scale, (bool, np.bool_)) or not isinstance(grad_scale, numbers.Real) \
                or not math.isfinite(grad_scale):
            raise ValueError(f"step: expected a finite number grad_scale, got {grad_scale!r}")
        grad_scale = float(grad_scale)      # an np.float32 compared with float64's range would overflow
        if abs(grad_scale) > float(np.finfo(self.params.dtype).max):     # the kernel's scalar would be inf
            raise ValueError(f"step: expected |grad_scale| <= {np.finfo(self.params.dtype).max:g} (the largest "
                             f"{self.params.dtype}), got {grad_scale!r}")
        scale = grad_scale
        new = self._new_state()
        if self.max_grad_norm is not None or self.nonfinite != "ignore":
            norm, bad, first_bad = self._grad_norm()
            message = self._nonfinite_message(bad, first_bad) if bad else None
            self.last_grad_norm = norm * abs(grad_scale)      # also for a step refused below: NaN or Inf
            if not bad and abs(grad_scale) > 1 and norm * abs(grad_scale) > np.finfo(self.params.dtype).max:
                peak = self._global(float(np.max(np.abs(self.grads[self._share[0]:self._share[1]]), initial=0.0)),
                                    "max")
                if peak * abs(grad_scale) > np.finfo(self.params.dtype).max:      # a scaled element overflows
                    message = (f"gradient times grad_scale={grad_scale:g} overflows {self.params.dtype} (largest "
                               f"|gradient| {peak:.3g}). Parameters and optimizer state are unchanged; pass "
                               "nonfinite='skip' to skip such steps instead")
            if message is not None and self.nonfinite != "ignore":
                for n in new:
                    del self.state[n]
                self.last_step_skipped = True
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    return False
                raise FloatingPointError(message)
            norm *= abs(grad_scale)
            if self.max_grad_norm is not None:     # a NaN norm ("ignore") makes every update NaN, as torch's clip
                coef = self.max_grad_norm / (norm + 1e-6)
                scale *= coef if not coef >= 1.0 else 1.0
        self._update(scale, step=self.step_count + 1)
        self.step_count += 1
        self.last_step_skipped = False
        return True

    def _update(self, grad_scale: float, step: int) -> None:
        raise NotImplementedError

    def _check_group_layout(self) -> None:
        """The groups are fixed when the optimizer is made (each chunk of the buffer knows its
        group's row in the kernels' table): a group popped or appended since had the kernels read
        past their table, a changed 'params' list did nothing."""
        built, groups = self._group_params, self.param_groups
        if type(groups) is list and len(groups) == len(built) and all(   # the usual case, every step
                type(g) is dict and g.get("params") == names for g, names in zip(groups, built)):
            return
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise TypeError(f"param_groups: expected a list of dicts, got {type_name(groups)}")
        if len(groups) != len(built):
            raise ValueError(f"param_groups: expected the {len(built)} groups this optimizer was made with, got "
                             f"{len(groups)}: the groups are fixed (set a group's lr to 0 to freeze its parameters, "
                             "or make a new optimizer with param_groups=[...])")
        for k, (group, names) in enumerate(zip(groups, built)):
            if group.get("params") != names:
                raise ValueError(f"param_groups[{k}]['params']: expected the parameters the group was made with "
                                 f"{names[:4]}{'...' if len(names) > 4 else ''}, got {group.get('params')!r:.200}: "
                                 "the groups are fixed; make a new optimizer to regroup")

    def _check_groups(self) -> None:
        """Every group's hyperparameters as the constructor checks them, before a step: torch
        users edit ``param_groups`` by hand between steps, and a None or a string went to the
        kernel as NaN or a number (a momentum of None even wrote through an empty buffer)."""
        self._check_group_layout()
        for k, group in enumerate(self.param_groups):
            missing = [key for key in self.defaults if key not in group]
            if missing:
                raise KeyError(f"param_groups[{k}]: expected the options {sorted(self.defaults)}, missing {missing}")
            self._check_hparams(group, f"param_groups[{k}]")

    def __setstate__(self, state: dict) -> None:
        """``copy.deepcopy`` and ``pickle`` (of the optimizer, or of the model and it together):
        the copy steps the copied model's buffers, which the model rebuilt for itself, and
        keeps its state in aligned buffers of its own."""
        self.__dict__.update(state)
        self.__dict__.setdefault("_group_params", [list(g["params"]) for g in self.param_groups])
        if self._model is not None and self._model._flat is not None:
            self.params, self.grads = self._model._flat.data, self._model._flat.grad
        for k, v in self.state.items():
            self.state[k] = aligned_zeros(v.size, v.dtype)
            self.state[k][...] = v

    def _check_buffers(self) -> None:
        """RuntimeError when the model's parameters moved since this optimizer was made (the model
        was put inside another one, which gathers every parameter into its own buffer): the
        update would go to the old buffer, which the model no longer reads."""
        m = self._model
        if m is not None and (m._flat is None or m._flat.data is not self.params or m._flat.grad is not self.grads):
            raise RuntimeError(f"{type(self).__name__}: the model's parameters moved to another buffer after this "
                               "optimizer was made (it became part of a larger model, or rehome() was called); "
                               "make the optimizer from the model as it is now (for a nested model: the outer "
                               "one)")

    def _grad_norm(self) -> tuple[float, int, int]:
        """(L2 norm of the gradient, count of non-finite elements, index of the first one),
        over the whole model: a sharded optimizer combines its share's numbers over ranks."""
        sumsq = np.empty(len(self._starts), np.float64)
        pick(sumsq_cpu, sumsq_serial, self._share[1] - self._share[0])(self.grads, self._starts, self._stops, sumsq)
        total = self._global(sumsq.sum(), "sum")
        if math.isfinite(total):
            return math.sqrt(total), 0, -1
        g = self.grads[self._share[0]:self._share[1]]
        bad = ~np.isfinite(g)
        count = int(self._global(bad.sum(), "sum"))
        if count:           # an Inf without a NaN makes the norm Inf (torch's clip then scales by 0)
            first = self._global(self._share[0] + np.argmax(bad) if bad.any() else self.grads.size, "min")
            nan = self._global(float(np.isnan(g).any()), "max")
            return math.nan if nan else math.inf, count, int(first)
        peak = self._global(float(np.max(np.abs(g))) if g.size else 0.0, "max")  # the squares overflow
        return peak * math.sqrt(self._global(float(np.sum(np.square(g / peak))), "sum")), 0, -1

    def _global(self, value: float, op: str) -> float:
        """``value`` combined over the ranks of a sharded step (op "sum", "min" or "max")."""
        if self._combine is None:
            return float(value)
        return self._combine(float(value), op)

    def shard(self, lo: int, hi: int, combine: Callable[[float, str], float] | None) -> None:
        """Update only elements [lo, hi) from now on: this rank's share of a sharded
        data-parallel step (fastnn.distributed.DataParallel sets it; parameters and state
        then live in memory every rank sees). ``combine(value, op)`` returns a float combined
        over the ranks (op "sum", "min" or "max"), so the gradient norm, the non-finite check
        and the skip decision stay global and every rank decides the same (None: this share's
        own values)."""
        if not 0 <= lo <= hi <= self.params.size:
            raise ValueError(f"shard: expected 0 <= lo <= hi <= {self.params.size}, got lo={lo}, hi={hi}")
        self._share = (int(lo), int(hi))
        self._combine = combine
        self._starts, self._stops, self._groups = make_chunks(
            [(max(start, lo), min(stop, hi), group) for start, stop, group in self._segments])

    def _nonfinite_message(self, count: int, at: int) -> str:
        name = next((s[0] for s in self._slots if s[1] <= at < s[2]), "?")
        return (f"gradient has {count} non-finite value(s) (NaN or Inf), first in {name!r}; expected all "
                "finite. Parameters and optimizer state are unchanged; pass nonfinite='skip' to skip "
                "such steps instead")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every gradient to zero (one pass over the flat gradient buffer). ``set_to_none``
        is torch's signature: the gradients are views into one buffer, so they are zeroed
        either way."""
        check_bool(set_to_none, "zero_grad: set_to_none")
        self._check_buffers()
        self.grads.fill(0)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Step counters, hyperparameters per group (with parameter names) and copies of the
        flat state buffers."""
        return {"type": type(self).__name__, "step": self.step_count, "skipped_steps": self.skipped_steps,
                "last_step_skipped": self.last_step_skipped,
                "param_groups": [dict(g, params=list(g["params"])) for g in self.param_groups],
                "slots": self._slot_list(), "state": {k: v.copy() for k, v in self.state.items()}}

    def _slot_list(self) -> list[list]:
        """[name, first element, size] of each parameter in the flat buffer."""
        return [[name, start, size] for name, start, _, size in self._slots]

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned; checked whole before anything is changed. The
        state buffers become the saved ones (a buffer the saved options did not need yet is
        dropped and made again, zeroed, when an option needs it)."""
        if not isinstance(state, dict):
            raise TypeError(f"optimizer state: expected a dict from state_dict(), got {type(state).__name__}")
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state: expected a {type(self).__name__} state, got {state.get('type')!r}")
        missing = [k for k in ("step", "skipped_steps", "param_groups", "state") if k not in state]
        if missing:
            raise ValueError(f"optimizer state: expected keys {missing}, got {sorted(state)}")
        for key in ("step", "skipped_steps"):      # a negative step makes Adam's bias correction NaN or 1/0
            v = state[key]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"optimizer state: expected {key} an int >= 0, got {type(v).__name__} {v!r}")
        step, skipped = int(state["step"]), int(state["skipped_steps"])
        skipped_last = state.get("last_step_skipped", False)     # absent from states saved before it was kept
        if not isinstance(skipped_last, (bool, np.bool_)):
            raise ValueError(f"optimizer state: expected last_step_skipped True or False, got "
                             f"{type(skipped_last).__name__} {skipped_last!r}")
        if not isinstance(state["param_groups"], (list, tuple)) or not all(isinstance(g, dict)
                                                                            for g in state["param_groups"]):
            raise ValueError(f"optimizer state: expected param_groups a list of dicts, got {state['param_groups']!r}")
        if not isinstance(state["state"], dict):
            raise ValueError(f"optimizer state: expected state a dict of arrays, got {type(state['state']).__name__}")
        slots = state.get("slots", [])
        if not isinstance(slots, (list, tuple)) or not all(isinstance(s, (list, tuple)) and len(s) == 3
                                                           for s in slots):
            raise ValueError(f"optimizer state: expected slots a list of [name, offset, size], got {slots!r:.200}")
        groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
                  for g in state["param_groups"]]
        self._check_group_layout()
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state: expected {len(self.param_groups)} parameter groups, "
                             f"got {len(groups)}")
        for k, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if list(theirs.get("params", ())) != mine["params"]:
                raise ValueError(f"optimizer state: group {k} holds {list(theirs.get('params', ()))[:4]}..., "
                                 f"expected {mine['params'][:4]}...")
            if set(self.defaults) - set(theirs):     # more may come along, e.g. a schedule's initial_lr
                raise ValueError(f"optimizer state: group {k} has options {sorted(theirs)}, expected at least "
                                 f"{sorted(self.defaults)}")
            self._check_hparams(theirs, f"optimizer state: group {k}")
        for o in self.global_options:
            if any(g[o] != groups[0][o] for g in groups):
                raise ValueError(f"optimizer state: {o} differs between groups: {[g[o] for g in groups]}")
        if "slots" in state:     # states saved before slots were recorded are checked by name and size only
            saved = [[n, int(a), int(z)] for n, a, z in state["slots"]]
            diff = next((pair for pair in zip(saved, self._slot_list()) if pair[0] != pair[1]), None)
            if diff or len(saved) != len(self._slots):
                raise ValueError(f"optimizer state: saved for other parameter shapes, expected [name, offset, size] "
                                 f"{diff[1] if diff else len(self._slots)}, got {diff[0] if diff else len(saved)}")
        buffers = state["state"]
        unknown = set(buffers) - set(self.state_names)
        needed = set(self._state_to_allocate(groups)) - set(self.lazy_state) - set(buffers)
        if unknown or needed:   # a lazy one the state lacks (switched on after the last step) comes zeroed
            raise ValueError(f"optimizer state: expected buffers {sorted(self._state_to_allocate(groups))} (any of "
                             f"{list(self.state_names)}), got {sorted(buffers)}")
        if self._state_pinned and set(buffers) != set(self.state):
            raise ValueError(f"optimizer state: expected buffers {sorted(self.state)} (pinned in shared memory), "
                             f"got {sorted(buffers)}")
        for k, v in buffers.items():
            if not isinstance(v, np.ndarray) or v.shape != self.params.shape or v.dtype != self.params.dtype:
                raise ValueError(f"optimizer state {k!r}: expected a {self.params.dtype}{self.params.shape} array, "
                                 f"got {getattr(v, 'dtype', type(v).__name__)}{getattr(v, 'shape', '')}")
        self._load_extra(state)
        for mine, theirs in zip(self.param_groups, groups):
            mine.update({k: v for k, v in theirs.items() if k != "params"})
        for o in self.global_options:
            self.defaults[o] = groups[0][o]
        for k in [k for k in self.state if k not in buffers]:
            del self.state[k]
        for k, v in buffers.items():
            self.state.setdefault(k, aligned_zeros(self.params.size, self.params.dtype))[...] = v
        self.step_count, self.skipped_steps, self.last_step_skipped = step, skipped, bool(skipped_last)

    def _load_extra(self, state: dict) -> None:
        """A subclass's own entries of ``state`` (validated, then applied; called last before the
        common ones are applied, so it must not fail after changing anything)."""

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({self.params.size:,} params, {len(self.param_groups)} groups, {hp})"


def _unknown_options(cls: type, unknown: dict) -> str:
    """The TypeError message for keywords ``cls`` does not take, naming those it does."""
    own = [n for n, p in inspect.signature(cls.__init__).parameters.items()
           if n not in ("self", "params") and p.kind is not p.VAR_KEYWORD]
    accepted = own + [n for n in inspect.signature(Optimizer.__init__).parameters
                      if n not in ("self", "params", "defaults", "unknown") and n not in own]
    torch_only = sorted(set(unknown) & {"fused", "foreach", "capturable", "differentiable"})
    why = (f" ({', '.join(torch_only)}: torch's choice of implementation; fastnn's step is always one fused "
           "kernel over the flat buffers)") if torch_only else ""
    return f"{cls.__name__}: unexpected option(s) {sorted(unknown)}{why}; expected among {accepted}"


def _resolve(params) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int, int]]]:
    """(flat params, flat grads, slots) where a slot is (name, start, stop incl. padding, size)."""
    if isinstance(params, Module):
        flat = params.flat
        slots = [(s.name, s.start, s.stop_padded, s.size) for s in flat.slots.values()]
        return flat.data, flat.grad, slots
    if isinstance(params, list):        # torch's habit: SGD([w, b]) took w's neighbour as its gradient
        raise TypeError(f"expected a fastnn model or a (params, grads) tuple of flat arrays, got a list of "
                        f"{len(params)} (a list of tensors, as torch.optim takes?): pass the model, and "
                        "param_groups=[{'params': [...names or views...], ...}] to treat some tensors apart")
    if isinstance(params, tuple) and len(params) == 2:
        p, g = check_flat(params[0], "params"), check_flat(params[1], "grads")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"grads: expected {p.dtype}{p.shape} like params, got {g.dtype}{g.shape}")
        if np.shares_memory(p, g):
            raise ValueError("params and grads: expected two separate buffers, got overlapping memory")
        return p, g, [("params", 0, p.size, p.size)]
    raise TypeError(f"expected a fastnn model or a (params, grads) pair of flat arrays, got {type_name(params)}")
