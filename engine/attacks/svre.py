"""SVRE-MI-FGSM (Xiong et al. 2022, "Stochastic Variance Reduced Ensemble Adversarial Attack"):
an inner loop of single-surrogate steps, each gradient corrected by that surrogate's deviation
from the ensemble at the outer point, so the update follows what the surrogates share rather
than any one of them. One outer step costs K + ``inner`` surrogate passes (K surrogates)
against K for MI-FGSM.
"""

from __future__ import annotations

import torch

from ..ensemble import Ensemble, unit_mean_abs
from .base import AttackState
from .mifgsm import MIFGSM


class SVRE(MIFGSM):
    def __init__(self, *args, inner: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        members, weights = list(self.model.members), self.model.weights
        self.singles = [Ensemble([m], normalize_grads=self.model.normalize_grads)
                        for m in members]
        self.member_weights = weights
        self.inner = len(members) if inner is None else inner

    def _grad(self, k: int, adv: torch.Tensor, labels, targets, guides) -> torch.Tensor:
        """Surrogate ``k``'s gradient alone (EOT, DI and AMP as usual)."""
        g = None if not guides else (guides[k],)
        return self.gradient(adv, labels, targets, g, model=self.singles[k])[1]

    def step(self, state: AttackState, labels: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:
        self.check_targets(targets)
        guides = state.guides or None
        outer = [self._grad(k, state.adv, labels, targets, guides)
                 for k in range(len(self.singles))]
        g_ens = sum(w * g for w, g in zip(self.member_weights, outer, strict=True))
        x, acc = state.adv, torch.zeros_like(state.adv)
        pick = torch.multinomial(torch.tensor(self.member_weights), self.inner, replacement=True,
                                 generator=self.generator)
        for k in pick.tolist():
            g = self._grad(k, x, labels, targets, guides) - outer[k] + g_ens
            acc = self.decay * acc + unit_mean_abs(g)
            x = self.project(state, x + state.alpha_01 * acc.sign()).detach()
        state.momentum = self.decay * state.momentum + unit_mean_abs(acc)
        state.adv = self.project(state, state.adv + state.alpha_01 * state.momentum.sign()).detach()
        return torch.zeros(len(state.adv), device=state.adv.device)
