"""Frozen surrogates run faster with their batch norms folded into the convolutions before them,
kept only when the output is unchanged on a probe input."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _is_bn(m: nn.Module) -> bool:
    return (isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "BatchNormAct2d") and (
        m.track_running_stats and m.running_mean is not None and m.running_var is not None)


def _after_fold(bn: nn.Module) -> nn.Module:
    """What is left of a batch norm once its affine map lives in the convolution."""
    if isinstance(bn, nn.BatchNorm2d) and type(bn).__name__ != "BatchNormAct2d":
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act)  # timm's BatchNormAct2d: norm, drop, act


def fold_batchnorm(model: nn.Module, probe: torch.Tensor, rtol: float = 1e-4) -> int:
    """Fold every eval-mode batch norm registered right after a Conv2d into it, in place, and
    return how many; undone if the output on ``probe`` moves by more than ``rtol``."""
    if model.training:
        return 0
    undo: list[tuple[nn.Module, str, nn.Module, nn.Module, nn.Parameter, object]] = []
    with torch.no_grad():
        pairs = [(parent, a, nb, b) for parent in model.modules()
                 for (_, a), (nb, b) in zip(list(parent.named_children()),
                                            list(parent.named_children())[1:], strict=False)
                 if isinstance(a, nn.Conv2d) and _is_bn(b) and a.out_channels == b.num_features]
        if not pairs:
            return 0
        ref = model(probe).float()
        for parent, conv, name, bn in pairs:
            scale = (bn.weight if bn.affine else 1.0) / (bn.running_var + bn.eps).sqrt()
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            undo.append((parent, name, bn, conv, conv.weight, conv.bias))
            dtype = conv.weight.dtype
            conv.weight = nn.Parameter((conv.weight.float() * scale.float().view(-1, 1, 1, 1))
                                       .to(dtype), requires_grad=False)
            conv.bias = nn.Parameter((bias.float() * scale.float() + shift.float()).to(dtype),
                                     requires_grad=False)
            setattr(parent, name, _after_fold(bn))
        got = model(probe).float()
        err = float((got - ref).abs().max())
        if err <= rtol * max(1.0, float(ref.abs().max())):
            return len(pairs)
        for parent, name, bn, conv, weight, cbias in reversed(undo):
            conv.weight, conv.bias = weight, cbias
            setattr(parent, name, bn)
        log.debug("batch-norm folding undone: output moved by %.3g", err)
        return 0
