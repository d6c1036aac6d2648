"""Pixel helpers: the 8-bit grid a saved image has, the texture mask of the perceptual budget
(where people see noise and where texture hides it) and the SSIM floor's scale-back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid that a saved image has."""
    return x.detach().clamp(0, 1).mul(255).round().div(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """One image [3, H, W] in [0, 1] -> uint8 HxWx3."""
    return x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def texture_mask(images: torch.Tensor, floor: float, lo: float = 2 / 255,
                 hi: float = 12 / 255) -> torch.Tensor:
    """[N, 1, H, W] share of the budget each pixel may use: ``floor`` where the luminance is
    flat (local std <= lo), 1 where it is textured (>= hi), linear between; smoothed so the
    mask itself draws no edges."""
    lum = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
    mean = F.avg_pool2d(lum, 5, 1, 2, count_include_pad=False)
    var = F.avg_pool2d(lum * lum, 5, 1, 2, count_include_pad=False) - mean * mean
    std = var.clamp_min(0).sqrt()
    m = floor + (1 - floor) * ((std - lo) / (hi - lo)).clamp(0, 1)
    return F.avg_pool2d(m, 3, 1, 1, count_include_pad=False)


def ssim_scale(x: torch.Tensor, delta: torch.Tensor, floor: float,
               deliver: Callable[[torch.Tensor], torch.Tensor],
               ssim: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """[N] the largest factor k (bisection, 6 halvings) at which the delivered ``x + k delta``
    keeps SSIM >= ``floor`` (0 where none does)."""
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    for _ in range(6):
        mid = (lo + hi) / 2
        ok = ssim(deliver(quantise(x + mid.view(-1, 1, 1, 1).to(x.device) * delta)), x) >= floor
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo
