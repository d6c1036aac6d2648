"""PGD under L-inf (Madry et al. 2018): signed gradient steps projected onto the eps-ball."""

from __future__ import annotations

import torch

from .base import Attack, AttackState, register_attack


@register_attack("pgd")
class PGD(Attack):
    """L-inf PGD with random start. ``eps_01`` and ``alpha_01`` in [0, 1] pixel units."""

    def update(self, state: AttackState, grad: torch.Tensor) -> torch.Tensor:
        return self.project(state, state.adv + state.alpha_01 * grad.sign())
