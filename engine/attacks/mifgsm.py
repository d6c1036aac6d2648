"""MI-FGSM (Dong et al. 2018): momentum over L1-normalised gradients, for transferability.

With ``nesterov`` it is NI-FGSM (Lin et al. 2020), the gradient taken one step ahead: the next
sign step itself, projected into the budget (NI's ``adv + decay * alpha * momentum`` would carry
steps of eps / 4 many budgets away).
"""

from __future__ import annotations

import torch

from .base import Attack, AttackState, register_attack
from .ensemble import unit_mean_abs


@register_attack("mifgsm")
class MIFGSM(Attack):
    def __init__(self, *args, decay: float = 1.0, nesterov: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.decay = decay
        self.nesterov = nesterov

    def look_ahead(self, state: AttackState) -> torch.Tensor:
        if not self.nesterov:
            return state.adv
        return self.project(state, state.adv + state.alpha_01 * state.momentum.sign())

    def update(self, state: AttackState, grad: torch.Tensor) -> torch.Tensor:
        state.momentum = self.decay * state.momentum + unit_mean_abs(grad)
        return self.project(state, state.adv + state.alpha_01 * state.momentum.sign())
