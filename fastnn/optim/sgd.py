"""SGD with momentum (the lecture's form, torch.optim.SGD semantics), one fused kernel call."""
from __future__ import annotations

import numpy as np

from fastnn.kernels.optim.sgd import sgd_hparams, sgd_step_cpu, sgd_step_serial
from fastnn.kernels.parallel import pick

from .base import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    ``b <- momentum*b + (1-dampening)*g`` (``b = g`` on the first step), ``p <- p - lr*b``
    (Nesterov: ``p <- p - lr*(g + momentum*b)``); ``weight_decay`` adds ``wd*p`` to g.
    This is the lecture's Delta <- mu*Delta - grad, theta <- theta + lr*Delta with b = -Delta,
    and exactly torch.optim.SGD. ``nesterov`` applies to all groups.
    """

    state_names = ("momentum_buffer",)
    lazy_state = state_names
    global_options = ("nesterov",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False, **options) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), **options)
        if nesterov and (not momentum > 0 or dampening != 0):   # the defaults only, as torch: a group with
            raise ValueError(f"nesterov needs momentum > 0 and dampening = 0, "   # momentum 0 steps as plain SGD
                             f"got momentum={momentum}, dampening={dampening}")
        #: per group: whether its part of the momentum buffer holds a value (torch: the buffer
        #: exists); a group's first step with momentum sets b = g
        self._buffer_started = [False] * len(self.param_groups)

    def _state_to_allocate(self, groups: list[dict]) -> tuple[str, ...]:
        for g in groups:
            if g["momentum"]:
                return self.state_names
        return ()

    def _check_hparams(self, group: dict, where: str) -> None:
        super()._check_hparams(group, where)
        self._check_setting(group, "momentum", where)
        self._check_setting(group, "dampening", where, None)

    def _update(self, grad_scale: float, step: int) -> None:
        if "momentum_buffer" not in self.state:
            self._buffer_started = [False] * len(self.param_groups)
        started = self._buffer_started
        hp = sgd_hparams(self.param_groups, grad_scale, started, self.params.dtype)
        buf = self.state.get("momentum_buffer", self.params[:0])
        kernel = pick(sgd_step_cpu, sgd_step_serial, self.params.size)
        kernel(self.params, self.grads, buf, self._starts, self._stops, self._groups, hp, self.defaults["nesterov"])
        for k, g in enumerate(self.param_groups):
            if not started[k] and g["momentum"] > 0:
                started[k] = True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buffer_started": list(self._buffer_started)}

    def _load_extra(self, state: dict) -> None:
        started = state.get("buffer_started")
        if started is None:      # a state without it: every group with momentum has stepped once it has a buffer
            started = [bool(state["step"]) and "momentum_buffer" in state["state"] and g["momentum"] > 0
                       for g in state["param_groups"]]
        if (not isinstance(started, (list, tuple)) or len(started) != len(self.param_groups)
                or not all(isinstance(s, (bool, np.bool_)) for s in started)):
            raise ValueError(f"optimizer state: expected buffer_started a list of {len(self.param_groups)} "
                             f"True/False flags, got {started!r}")
        self._buffer_started = [bool(s) for s in started]
