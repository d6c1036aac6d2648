"""The skip gradient method (SGM, Wu et al. 2020): through a surrogate's residual blocks, scale
the gradient of each residual branch by ``gamma`` < 1 so that more of it flows through the skip
connections, which the surrogate shares with other networks of its kind. Forward values are
unchanged. On by default for transfer runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient times ``gamma`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.gamma, None


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


def skip_gradient(model: nn.Module, gamma: float) -> contextlib.AbstractContextManager[int]:
    """While open, gradients through ``model``'s residual branches are scaled by ``gamma``.
    Yields the number of branches."""
    return forward_hooks(residual_branches(model),
                         lambda _m, _i, out: _ScaleGrad.apply(out, gamma))
