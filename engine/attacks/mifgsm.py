"""MI-FGSM (Dong et al. 2018): momentum over L1-normalised gradients, for transferability.

With ``diversity`` it is DI-MI-FGSM, with ``ti_size`` TI-DI-MI-FGSM (both options of Attack).
"""

from __future__ import annotations

import torch

from ..ensemble import unit_mean_abs
from .base import Attack, AttackState


class MIFGSM(Attack):
    def __init__(self, *args, decay: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.decay = decay

    def update(self, state: AttackState, grad: torch.Tensor) -> torch.Tensor:
        state.momentum = self.decay * state.momentum + unit_mean_abs(grad)
        return self.project(state, state.adv + state.alpha_01 * state.momentum.sign())
