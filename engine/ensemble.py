"""A weighted ensemble of surrogate classifiers with per-model gradient normalisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .losses import Objective

ObjectiveFn = Callable[..., torch.Tensor]  # (logits, labels, targets, decision) -> [N]


def decision_of(model: nn.Module) -> str:
    """A model's decision rule: "closed" (argmax) unless it says "multilabel"."""
    return getattr(model, "decision", "closed")


class Ensemble(nn.Module):
    """Surrogates whose gradients are normalised per model (mean |g| = 1 per image) before the
    weighted sum, so that one architecture's gradient scale does not dominate."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 *, normalize_grads: bool = True) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one surrogate")
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per model, got {weights}")
        self.members = nn.ModuleList(models)
        self.weights = [w / sum(weights) for w in weights]
        self.normalize_grads = normalize_grads

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Weighted mean of the members' logits."""
        return sum(w * m(images).float() for w, m in zip(self.weights, self.members, strict=True))

    def loss_and_grad(
        self, images: torch.Tensor, labels: torch.Tensor, objective: ObjectiveFn | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image weighted loss [N] and its gradient w.r.t. ``images`` [N, 3, H, W].

        ``objective(logits, labels, targets, decision)`` is read with each member's own decision
        rule; ``targets`` holds a decoy label per row or -1 (default :class:`Objective`)."""
        objective = objective or Objective()
        x = images.detach().requires_grad_(True)
        xt = transform(x) if transform is not None else x
        total_loss = torch.zeros(len(images), device=images.device)
        total_grad = torch.zeros_like(images)
        last = len(self.members) - 1
        for i, (w, model) in enumerate(zip(self.weights, self.members, strict=True)):
            with autocast or contextlib.nullcontext():
                logits = model(xt)
            loss = objective(logits.float(), labels, targets, decision_of(model))
            (g,) = torch.autograd.grad(loss.sum(), x, retain_graph=i < last)
            if self.normalize_grads:
                g = g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            total_loss += w * loss.detach()
            total_grad += w * g
        return total_loss, total_grad
