"""The perceptual mask of text captchas: the change stays on and around the strokes and on
textured background, where a reader does not see it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...pixels import texture_mask
from ...views.ocr import grey_levels, otsu_binarise


def stroke_mask(images: torch.Tensor, floor: float, radius: int = 2,
                contrast: float = 24 / 255) -> torch.Tensor:
    """[N, 1, H, W] share of the budget each pixel of a text image may use: 1 on the strokes
    (the minority class of Otsu's binarisation, none below ``contrast``) and within ``radius``
    px of them, and on textured background; ``floor`` on flat background."""
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


__all__ = ["stroke_mask"]
