"""PGD under L2: normalised gradient steps projected onto the L2 ball of radius eps."""

from __future__ import annotations

import torch

from .base import Attack, AttackState


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


class PGDL2(Attack):
    """L2 PGD with random start; ``eps_01`` is the L2 radius in [0, 1] pixel units."""

    def random_init(self, images: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        d = torch.randn(images.shape, generator=self.generator, device="cpu").to(images.device)
        r = torch.rand(len(images), generator=self.generator, device="cpu").to(images.device)
        return (images + d / _norm(d) * r.view(-1, 1, 1, 1) * self.eps_01).clamp(0, 1)

    def update(self, state: AttackState, grad: torch.Tensor) -> torch.Tensor:
        return self.project(state, state.adv + self.alpha_01 * grad / _norm(grad))

    def project(self, state: AttackState, adv: torch.Tensor) -> torch.Tensor:
        """Onto the L2 ball of radius eps (the per-pixel budget does not apply)."""
        delta = adv - state.images
        delta = delta * (self.eps_01 / _norm(delta)).clamp(max=1.0)
        return (state.images + delta).clamp(0, 1)
