"""Transfer through a surrogate's insides: the skip gradient method (SGM, Wu et al. 2020, at the
end of this module; on by default for transfer runs) and a feature-level loss (FIA, Wang et al.
2021, "Feature Importance-aware Transferable Adversarial Attacks"; an option): instead of a
surrogate's logits, attack the features of one of its middle layers that the decision rests on.

The *guide* of an image is the aggregate gradient of the decision (minus the fooling margin,
losses.py) with respect to a middle layer's activations, summed over copies of the clean image
whose pixels are dropped at random and L2-normalised per image: object-aware directions, not
model-specific noise. The attack then maximises ``-sum(guide * features(x_adv))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .losses import fooling_margin


def feature_layer(model: nn.Module) -> nn.Module | None:
    """The middle layer whose activations FIA attacks, or None when the architecture is not
    known (that member keeps its logit loss): the middle stage of a timm ``blocks`` stack
    (EfficientNet, MobileNet, ConvNeXt, ViT) or a ResNet's ``layer2``."""
    visual = getattr(getattr(model, "core", None), "visual", None)
    if visual is None:
        return None
    blocks = getattr(visual, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) >= 3:
        return blocks[len(blocks) // 2]
    return getattr(visual, "layer2", None)


@contextlib.contextmanager
def forward_hooks(modules: list[nn.Module], hook) -> Iterator[int]:
    """``hook`` registered as a forward hook on each of ``modules`` while the context is open
    (its return value, when not None, replaces the module's output); yields their number."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The layer's outputs, appended on each forward pass while the context is open."""
    seen: list[torch.Tensor] = []
    with forward_hooks([layer], lambda _m, _i, out: seen.append(
            out[0] if isinstance(out, tuple) else out)):
        yield seen


def feature_loss(features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Per-row loss the attack maximises: minus the guide-weighted features."""
    return -(guide * features.float()).flatten(1).sum(1)


def guides(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
           targets: torch.Tensor | None, *, copies: int, drop: float,
           generator: torch.Generator | None, chunk: int,
           decision: str = "closed") -> torch.Tensor | None:
    """One member's guide per image [N, C, h, w] (see the module docstring), or None when the
    model has no known middle layer."""
    layer = feature_layer(model)
    if layer is None:
        return None
    total: torch.Tensor | None = None
    n = len(images)
    for _ in range(copies):
        keep = (torch.rand(images.shape[0], 1, *images.shape[2:], generator=generator)
                >= drop).to(images.device, images.dtype)
        parts = []
        for lo in range(0, n, chunk):
            rows = slice(lo, lo + chunk)
            with capture(layer) as seen, torch.enable_grad():
                x = (images[rows] * keep[rows]).requires_grad_(True)  # so the layer has a graph
                logits = model(x)
                f = seen[-1]
                decision_value = -fooling_margin(
                    logits.float(), labels[rows],
                    None if targets is None else targets[rows], decision)
                (g,) = torch.autograd.grad(decision_value.sum(), f)
            parts.append(g.detach().float())
        g = torch.cat(parts)
        total = g if total is None else total + g
    assert total is not None
    return total / total.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (total.ndim - 1))


# --- skip gradient (SGM, Wu et al. 2020) ----------------------------------------------------------


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient times ``gamma`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.gamma, None


def residual_branches(model: nn.Module) -> list[nn.Module]:
    """The last module of every residual branch of a timm network: its blocks add
    ``drop_path(branch)`` to the shortcut (EfficientNet and MobileNet blocks when ``has_skip``;
    ViT blocks twice, ``drop_path1`` and ``drop_path2``). A network without such modules (a
    timm ResNet without drop path) has none: SGM leaves it as it is."""
    out = []
    for m in model.modules():
        if getattr(m, "has_skip", True) is False:
            continue
        out += [b for name in ("drop_path", "drop_path1", "drop_path2")
                if isinstance(b := getattr(m, name, None), nn.Module)]
    return out


def ghost_branches(model: nn.Module, tau: float, generator: torch.Generator | None = None
                   ) -> contextlib.AbstractContextManager[int]:
    """Ghost networks (Li et al. 2020), residual erosion: while open, every residual branch's
    output is scaled by its own factor drawn from U[1 - tau, 1 + tau] at each forward pass, so
    that each pass (each micro-batch, each step) attacks another nearby network. Yields the
    number of branches."""

    def erode(_m, _i, out: torch.Tensor) -> torch.Tensor:
        u = float(torch.rand((), generator=generator))
        return out * (1 - tau + 2 * tau * u)

    return forward_hooks(residual_branches(model), erode)


def skip_gradient(model: nn.Module, gamma: float) -> contextlib.AbstractContextManager[int]:
    """SGM: while open, gradients through residual branches are scaled by ``gamma`` (< 1), so
    more of the gradient flows through the skip connections (forward values unchanged).
    Yields the number of branches."""
    return forward_hooks(residual_branches(model),
                         lambda _m, _i, out: _ScaleGrad.apply(out, gamma))
