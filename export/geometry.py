"""Geometry: how a solver brings a tile to its network's input (size, centre crop, squash or
letterbox, interpolation, antialiasing), as differentiable torch resizes. (The draw of random
geometries that EOT uses is :class:`advx.engine.views.transforms.GeometryDraw`.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")
FITS = ("squash", "letterbox")


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear",
           antialias: bool = True) -> torch.Tensor:
    """Differentiable resize to ``size`` (H, W); bicubic output clamped like PIL / OpenCV."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode in ("bilinear", "bicubic"):
        out = F.interpolate(images, size=size, mode=mode, align_corners=False,
                            antialias=antialias)
        return out.clamp(0, 1) if mode == "bicubic" else out
    return F.interpolate(images, size=size, mode=mode)


def fit(images: torch.Tensor, size: tuple[int, int], *, crop: float = 1.0,
        fit_mode: str = "squash", pad: float = 0.0, mode: str = "bilinear",
        antialias: bool = True, align: str = "centre") -> torch.Tensor:
    """Tile -> ``size`` (H, W): resize the whole tile to size / crop (squashed, or letterboxed
    keeping its aspect ratio and padded with ``pad``, the image centred or, with ``align``
    "topleft", in the top-left corner as YOLOX and ddddocr pad), then cut the centre
    ``size``."""
    h, w = images.shape[-2:]
    ch, cw = max(size[0], round(size[0] / crop)), max(size[1], round(size[1] / crop))
    if fit_mode == "squash":
        x = resize(images, (ch, cw), mode, antialias)
    else:
        k = min(ch / h, cw / w)
        # YOLOX / ddddocr (top-left) truncate the scaled size, Ultralytics (centred) rounds it
        size_of = int if align == "topleft" else round
        nh, nw = max(1, size_of(h * k)), max(1, size_of(w * k))
        x = resize(images, (nh, nw), mode, antialias)
        top, left = ((ch - nh) // 2, (cw - nw) // 2) if align == "centre" else (0, 0)
        x = F.pad(x, (left, cw - nw - left, top, ch - nh - top), value=pad)
    top, left = (ch - size[0]) // 2, (cw - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


@dataclass(frozen=True)
class Geometry:
    """How a solver brings a tile to its input: replaces a verifier's own preprocessing."""

    crop: float = 1.0  # centre-crop fraction (1.0 = the whole tile)
    fit: str = "squash"  # "squash" | "letterbox"
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS or self.fit not in FITS:
            raise ValueError(f"bad geometry {self}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"crop must be in (0, 1], got {self.crop}")

    def apply(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return fit(images, size, crop=self.crop, fit_mode=self.fit, mode=self.interpolation,
                   antialias=self.antialias)

    def __str__(self) -> str:
        parts = ["whole" if self.crop == 1 else f"crop{self.crop:g}",
                 "" if self.fit == "squash" else self.fit, self.interpolation,
                 "aa" if self.antialias and self.interpolation in ("bilinear", "bicubic")
                 else ""]
        return "-".join(p for p in parts if p)
