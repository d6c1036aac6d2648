"""Pixel helpers: the 8-bit grid a saved image has, and the masks of the perceptual budget
(where people see noise and where texture or the strokes of text hide it)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .views.ocr import grey_levels, otsu_binarise


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


def stroke_mask(images: torch.Tensor, floor: float, radius: int = 2,
                contrast: float = 24 / 255) -> torch.Tensor:
    """[N, 1, H, W] share of the budget each pixel of a text image may use: 1 on the strokes
    and within ``radius`` (>= 0) px of them, and on textured background (:func:`texture_mask`
    after a 3 x 3 median);
    ``floor`` on flat background. The ink is the minority class of the image's Otsu
    binarisation (the darker class on a tie), so white text on a dark ground works too; an
    image whose two classes differ by less than ``contrast`` in mean grey has no ink."""
    levels = grey_levels(images)
    bright, _ = otsu_binarise(levels)
    n = levels.shape[-2] * levels.shape[-1]
    n_bright = bright.sum((1, 2, 3), keepdim=True)
    ink = torch.where(n_bright < n - n_bright, bright, 1 - bright)
    grey = levels.float() / 255
    gap = ((grey * bright).sum((1, 2, 3), keepdim=True) / n_bright.clamp_min(1)
           - (grey * (1 - bright)).sum((1, 2, 3), keepdim=True) / (n - n_bright).clamp_min(1))
    ink = ink * (gap >= contrast)  # a one-class image has a gap of at most 0
    # dilated one pixel beyond radius, then smoothed over 3 x 3 so that the mask draws no edge:
    # 1 within radius px of the ink, fading to the floor over the next pixel or two
    near = F.max_pool2d(ink, 2 * radius + 3, 1, radius + 1)
    near = F.avg_pool2d(near, 3, 1, 1, count_include_pad=False)
    m = floor + (1 - floor) * near.to(images.dtype)
    # isolated specks (a speckled captcha background) are not texture that hides a change: the
    # texture is measured after a 3 x 3 median removes them
    return torch.maximum(m, texture_mask(_median3(images), floor))


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 median per channel, the border replicated."""
    n, c, h, w = x.shape
    p = F.pad(x, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    return p.reshape(n, c, h, w, 9).median(-1).values


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
