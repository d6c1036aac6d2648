"""Checks a surrogate must pass before it is attacked (after auto-attack's checks.py)."""

from __future__ import annotations

import torch
from torch import nn


class ModelCheckError(ValueError):
    """A surrogate that cannot be attacked meaningfully."""


def check_surrogate(model: nn.Module, size: int = 64, device: str | torch.device = "cpu") -> None:
    """Deterministic, returns logits (not probabilities), and gives non-zero input gradients."""
    name = getattr(model, "name", type(model).__name__)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, size, size, generator=g).to(device).requires_grad_(True)
    a = model(x)
    with torch.no_grad():
        b = model(x)
    if not torch.allclose(a.detach(), b, atol=1e-4, rtol=1e-4):
        raise ModelCheckError(f"{name} is not deterministic in eval mode (dropout left on?)")
    if a.ndim != 2 or a.shape[1] < 2:
        raise ModelCheckError(f"{name} must return [N, labels >= 2] logits, got {tuple(a.shape)}")
    p = a.detach()
    if (p >= 0).all() and (p <= 1).all() and torch.allclose(p.sum(1), torch.ones(len(p)),
                                                            atol=1e-3):
        raise ModelCheckError(f"{name} returns probabilities; attacks need logits")
    (grad,) = torch.autograd.grad(a[:, 0].sum() - a[:, 1].sum(), x)
    if not torch.isfinite(grad).all() or grad.abs().sum() == 0:
        raise ModelCheckError(f"{name} gives zero or non-finite input gradients")
