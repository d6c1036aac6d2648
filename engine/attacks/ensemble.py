"""A weighted ensemble of surrogate classifiers with per-model gradient normalisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..tasks.labels.losses import Objective

if TYPE_CHECKING:
    from ...export.geometry import Geometry

ObjectiveFn = Callable[..., torch.Tensor]  # (logits, labels, targets, decision) -> [N]


def decision_of(model: nn.Module) -> str:
    """A model's decision rule: "closed" (argmax) unless it says "multilabel"."""
    return getattr(model, "decision", "closed")


# CPU backward passes run on this many 224 px images at a time (fewer for larger ones): a
# whole batch's activations would take gigabytes, and small runs are as fast per image
CPU_MICRO_BATCH_PIXELS = 4 * 224 * 224


def unit_mean_abs(g: torch.Tensor) -> torch.Tensor:
    """``g`` scaled per image so that its mean absolute value is 1 (L1 normalisation)."""
    return g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))


def takes_geometry(model) -> bool:
    """Whether ``model(images, geometry=...)`` replaces its preprocessing (advx's zoo models,
    solvers and verifiers do; a plain module keeps its own)."""
    import inspect

    try:
        params = inspect.signature(model.forward if isinstance(model, nn.Module) else model
                                   ).parameters
    except (TypeError, ValueError):
        return False
    return "geometry" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def micro_batch_size(shape: tuple[int, ...], device: torch.device) -> int:
    """Rows per member backward pass for inputs of ``shape`` [3, H, W]: bounded on the CPU,
    the whole batch on accelerators (whose out-of-memory back-off halves the batch)."""
    if device.type != "cpu":
        return 1 << 30
    return max(1, CPU_MICRO_BATCH_PIXELS // (shape[-1] * shape[-2]))


class Ensemble(nn.Module):
    """Surrogates whose gradients are normalised per model (mean |g| = 1 per image) before the
    weighted sum, so that one architecture's gradient scale does not dominate."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None
                 ) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one surrogate")
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per model, got {weights}")
        self.members = nn.ModuleList(models)
        self.micro_batch: int | None = None  # rows per backward pass; None: micro_batch_size
        self.weights = [w / sum(weights) for w in weights]
        # which members take a geometry in place of their own preprocessing
        self.takes_geometry = [takes_geometry(m) for m in models]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Weighted mean of the members' logits."""
        return sum(w * m(images).float() for w, m in zip(self.weights, self.members, strict=True))

    def loss_and_grad(
        self, images: torch.Tensor, labels: torch.Tensor, objective: ObjectiveFn | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        targets: torch.Tensor | None = None,
        geometry: Geometry | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image weighted loss [N] and its gradient w.r.t. ``images``, ``objective`` read
        with each member's decision rule; ``geometry`` replaces the members' preprocessing."""
        objective = objective or Objective()
        x = images.detach().requires_grad_(True)
        xt = transform(x) if transform is not None else x
        # each member's graph lives only for its own micro-batch: the input transform's graph
        # is kept (small), the members' activations never coexist
        xin = xt.detach()
        n = len(images)
        chunk = self.micro_batch or micro_batch_size(tuple(xin.shape[1:]), xin.device)
        total_loss = torch.zeros(n, device=images.device)
        total_grad = torch.zeros_like(images)
        last = len(self.members) - 1
        for i, (w, model) in enumerate(zip(self.weights, self.members, strict=True)):
            loss = torch.empty(n, device=images.device)
            g_in = torch.empty_like(xin)
            for lo in range(0, n, chunk):
                rows = slice(lo, lo + chunk)
                xr = xin[rows].detach().requires_grad_(True)
                with autocast or contextlib.nullcontext():
                    logits = (model(xr, geometry=geometry)
                              if geometry is not None and self.takes_geometry[i] else model(xr))
                part = self.member_loss(i, objective, logits.float(), labels[rows],
                                        None if targets is None else targets[rows])
                (g_in[rows],) = torch.autograd.grad(part.sum(), xr)
                loss[rows] = part.detach()
                del logits, part
            if xt is x:
                g = g_in
            else:
                (g,) = torch.autograd.grad(xt, x, g_in, retain_graph=i != last)
            total_loss += w * loss
            total_grad += w * unit_mean_abs(g)
        return total_loss, total_grad

    def member_loss(self, i: int, objective: ObjectiveFn, logits: torch.Tensor,
                    labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Member ``i``'s per-row loss [n] on its ``logits`` (to maximise)."""
        return objective(logits, labels, targets, decision_of(self.members[i]))
