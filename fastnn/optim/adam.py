"""Adam, AdamW and AMSGrad (Kingma & Ba Algorithm 1; torch.optim semantics), one fused kernel call."""
from __future__ import annotations

from fastnn.kernels.optim.adam import HP_EPS, adam_hparams, adam_step_cpu, adam_step_serial
from fastnn.kernels.parallel import pick

from ..checks import check_real
from .base import Optimizer


class Adam(Optimizer):
    """Adam with bias correction: ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``.

    ``weight_decay`` is L2 (added to the gradient), as torch.optim.Adam; ``amsgrad`` keeps
    the running maximum of v (torch's form: the maximum is bias-corrected) and applies to
    all groups. Bias corrections are computed in float64 on the host from an int step.
    """

    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    lazy_state = ("max_exp_avg_sq",)
    global_options = ("amsgrad",)
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False, **options) -> None:
        betas = tuple(betas) if isinstance(betas, list) else betas    # _check_hparams checks it
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize), **options)

    def _state_to_allocate(self, groups: list[dict]) -> tuple[str, ...]:
        return self.state_names if groups[0]["amsgrad"] else self.state_names[:2]

    def _check_hparams(self, group: dict, where: str) -> None:
        super()._check_hparams(group, where)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: expected betas a pair of numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_real(b, f"{where}: betas[{i}]", 0.0, 1.0)
        self._check_setting(group, "eps", where)

    def _update(self, grad_scale: float, step: int) -> None:
        hp = adam_hparams(self.param_groups, step, self.decoupled, grad_scale, self.params.dtype)
        vmax = self.state.get("max_exp_avg_sq", self.params[:0])
        kernel = pick(adam_step_cpu, adam_step_serial, self.params.size)
        kernel(self.params, self.grads, self.state["exp_avg"], self.state["exp_avg_sq"], vmax,
               self._starts, self._stops, self._groups, hp, self.defaults["amsgrad"])
        if (hp[:, HP_EPS] == 0).any():     # 0 / (0 + 0) in the padding (eps as the kernel sees it): keep it zero
            self.params[self._padding] = 0


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; torch.optim.AdamW):
    ``p <- p * (1 - lr*weight_decay)`` before the Adam update. Default weight_decay 1e-2."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False, **options) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize, **options)
