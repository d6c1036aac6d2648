"""What a solver does to an image before scoring it, as differentiable torch transforms.

Each maps images [N, 3, H, W] in [0, 1] to the same shape, drawing its parameters in
[lo, hi] from a ``torch.Generator`` (fixed for verification, ranges for EOT). JPEG's forward pass
is the real encoder; its gradient is kornia's differentiable JPEG's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...export.geometry import Geometry


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    if lo == hi:
        return lo
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode each image as JPEG (PIL, 4:4:4, like the delivered files)."""
    from ..images import encode_image  # the very encoder that writes delivered JPEG files

    out = []
    for img in images.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu():
        data = encode_image(img.numpy(), "jpeg", int(quality))
        out.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255


@dataclass(frozen=True)
class Identity:
    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return x

    def __str__(self) -> str:
        return "identity"


def differentiable_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """kornia's differentiable JPEG (a smooth stand-in for the real codec's gradient)."""
    from kornia.enhance import jpeg_codec_differentiable

    q = torch.full((x.shape[0],), float(quality), device=x.device, dtype=x.dtype)
    return jpeg_codec_differentiable(x, q)


class BPDA(torch.autograd.Function):
    """Backward-pass differentiable approximation. Forward: ``real(x)``, exactly (a codec, a
    filter). Backward: the vector-Jacobian product of the differentiable ``soft`` at the same
    input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, real, soft) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.soft = soft
        return real(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.soft(xx), xx, grad)
        return g, None, None


@dataclass(frozen=True)
class Jpeg:
    """JPEG re-encoding at a quality in [lo, hi]: the real encoder forward, kornia's
    differentiable JPEG backward."""

    lo: int = 50
    hi: int = 95

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        q = round(_uniform(self.lo, self.hi, g))
        if not x.requires_grad:
            return jpeg_roundtrip(x, q)
        return BPDA.apply(x, lambda t: jpeg_roundtrip(t, q),
                          lambda t: differentiable_jpeg(t, q))

    def __str__(self) -> str:
        return f"jpeg{self.lo}" if self.lo == self.hi else f"jpeg{self.lo}-{self.hi}"


@dataclass(frozen=True)
class ResizeDownUp:
    """Downscale by a factor in [lo, hi] and back up (bilinear, as a thumbnailer would)."""

    lo: float = 0.5
    hi: float = 0.9

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        s = _uniform(self.lo, self.hi, g)
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                              mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)

    def __str__(self) -> str:
        return f"resize{self.lo:g}" if self.lo == self.hi else f"resize{self.lo:g}-{self.hi:g}"


@dataclass(frozen=True)
class CropShift:
    """Crop up to ``crop`` of each side, shift by up to ``shift`` of the size, resize back."""

    crop: float = 0.08
    shift: float = 0.04
    fixed: bool = False  # verification: always the full crop and shift

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        c = self.crop if self.fixed else _uniform(0, self.crop, g)
        sy = self.shift if self.fixed else _uniform(-self.shift, self.shift, g)
        sx = self.shift if self.fixed else _uniform(-self.shift, self.shift, g)
        ch, cw = max(1, round(h * (1 - c))), max(1, round(w * (1 - c)))
        top = min(max(0, round((h - ch) / 2 + sy * h)), h - ch)
        left = min(max(0, round((w - cw) / 2 + sx * w)), w - cw)
        crop = x[..., top : top + ch, left : left + cw]
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)

    def __str__(self) -> str:
        return f"crop{self.crop:g}shift{self.shift:g}"


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with sigma in [lo, hi] pixels."""

    lo: float = 0.3
    hi: float = 1.0

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        sigma = _uniform(self.lo, self.hi, g)
        radius = max(1, int(3 * sigma + 0.5))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)

    def __str__(self) -> str:
        return f"blur{self.lo:g}" if self.lo == self.hi else f"blur{self.lo:g}-{self.hi:g}"


Transform = Identity | Jpeg | ResizeDownUp | CropShift | GaussianBlur


@dataclass(frozen=True)
class InputDiversity:
    """DI (Xie et al. 2019): with probability ``prob`` resize to a random size in
    [size, size * rate) and pad randomly back to size * rate, then resize to the input size."""

    prob: float = 0.5
    rate: float = 1.1

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if self.prob <= 0 or float(torch.rand((), generator=g)) >= self.prob:
            return x
        h, w = x.shape[-2:]
        H, W = int(h * self.rate), int(w * self.rate)
        nh = int(torch.randint(h, max(h + 1, H), (), generator=g))
        nw = int(torch.randint(w, max(w + 1, W), (), generator=g))
        r = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        top = int(torch.randint(0, H - nh + 1, (), generator=g))
        left = int(torch.randint(0, W - nw + 1, (), generator=g))
        padded = F.pad(r, (left, W - nw - left, top, H - nh - top), value=0.0)
        return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class GeometryDraw:
    """EOT over how solvers bring a tile to their input: with probability ``p`` a random
    geometry (the whole tile or a centre crop down to ``crop``, squashed or letterboxed, any
    interpolation) replaces a surrogate's own preprocessing for one gradient."""

    p: float = 0.75
    crop: float = 0.8
    letterbox: float = 0.15

    def __call__(self, g: torch.Generator | None = None) -> Geometry | None:
        if self.p <= 0 or float(torch.rand((), generator=g)) >= self.p:
            return None
        crop = 1.0 if float(torch.rand((), generator=g)) < 0.5 else _uniform(self.crop, 1.0, g)
        fit_mode = "letterbox" if float(torch.rand((), generator=g)) < self.letterbox else "squash"
        modes = ("bilinear", "bicubic", "area")
        mode = modes[int(torch.randint(len(modes), (), generator=g))]
        antialias = bool(torch.rand((), generator=g) < 0.5)
        return Geometry(crop=round(crop, 3), fit=fit_mode, interpolation=mode,
                        antialias=antialias)

    def __str__(self) -> str:
        return f"geometry{self.p:g}"
