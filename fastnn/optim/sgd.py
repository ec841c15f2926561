"""SGD with momentum (the lecture's form, torch.optim.SGD semantics), one fused kernel call."""
from __future__ import annotations

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

    global_options = ("nesterov",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False, **options) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), **options)

    def _state_to_allocate(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if any(g["momentum"] for g in self.param_groups) else ()

    def _check_hparams(self, group: dict, where: str) -> None:
        super()._check_hparams(group, where)
        if not group["momentum"] >= 0:
            raise ValueError(f"{where}: expected momentum >= 0, got {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov needs momentum > 0 and dampening = 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _update(self, grad_scale: float, first_step: bool, step: int) -> None:
        hp = sgd_hparams(self.param_groups, grad_scale, self.params.dtype)
        buf = self.state.get("momentum_buffer", self.params[:0])
        kernel = pick(sgd_step_cpu, sgd_step_serial, self.params.size)
        kernel(self.params, self.grads, buf, self._starts, self._stops, self._groups, hp,
               self.defaults["nesterov"], first_step)
