"""What text-CAPTCHA solvers do to an image before their OCR network reads it.

Grey as PIL has it, Otsu's binarisation as OpenCV has it, slight rotations: each maps images
[N, 3, H, W] in [0, 1] to the same shape. The forward pass is exactly the solver's on the 8-bit
image; with a gradient, it is a differentiable stand-in's (straight through).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import _uniform

# PIL's RGB -> L weights in 16-bit fixed point (Convert.c: (R*19595 + G*38470 + B*7471
# + 0x8000) >> 16), i.e. 0.299, 0.587 and 0.114 rounded the way PIL rounds them
_LUMA = (19595, 38470, 7471)


def grey_levels(x: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] -> [N, 1, H, W] int32 grey levels 0..255, exactly what
    PIL's ``convert("L")`` gives for the same image saved as 8-bit."""
    q = x.detach().clamp(0, 1).mul(255).round().to(torch.int32)
    r, g, b = _LUMA
    return (q[:, 0:1] * r + q[:, 1:2] * g + q[:, 2:3] * b + 0x8000) >> 16


def luma(x: torch.Tensor) -> torch.Tensor:
    """Differentiable grey [N, 1, H, W] in [0, 1]: PIL's weights on the float image."""
    r, g, b = (w / 65536 for w in _LUMA)
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def otsu_binarise(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's Otsu binarisation of grey levels [N, 1, H, W]: the binary images in {0, 1} and
    the thresholds [N, 1, 1, 1], float on ``levels``' device."""
    import cv2

    binary, thresholds = [], []
    for grey in levels[:, 0].to(torch.uint8).cpu().numpy():
        t, out = cv2.threshold(np.ascontiguousarray(grey), 0, 255,
                               cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        binary.append(out)
        thresholds.append(t)
    b = torch.from_numpy(np.stack(binary)).to(levels.device)[:, None].float() / 255
    t = torch.tensor(thresholds, device=levels.device, dtype=torch.float32).view(-1, 1, 1, 1)
    return b, t


def _straight_through(exact: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``exact`` forward, ``soft``'s gradient backward."""
    return exact + (soft - soft.detach())


@dataclass(frozen=True)
class Grey:
    """PIL's ``convert("L")`` on the 8-bit image, replicated over three channels; backward the
    same weights on the float image."""

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        y = grey_levels(x).to(x.dtype) / 255
        if x.requires_grad:
            y = _straight_through(y, luma(x))
        return y.repeat(1, 3, 1, 1)

    def __str__(self) -> str:
        return "grey"


@dataclass(frozen=True)
class Otsu:
    """PIL grey, then OpenCV's Otsu binarisation per image: {0, 1} on three channels. Backward
    a sigmoid soft threshold around that image's Otsu threshold (the threshold itself held
    fixed): only pixels within a few grey levels of it carry a gradient."""

    temperature: float = 4.0  # grey levels: the width of the soft threshold

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        binary, t = otsu_binarise(grey_levels(x))
        y = binary.to(x.dtype)
        if x.requires_grad:
            # grey levels are integers and the rule is grey > t: the step lies at t + 0.5
            soft = torch.sigmoid((luma(x) * 255 - (t.to(x.dtype) + 0.5)) / self.temperature)
            y = _straight_through(y, soft)
        return y.repeat(1, 3, 1, 1)

    def __str__(self) -> str:
        return "otsu"


@dataclass(frozen=True)
class Rotate:
    """Rotation about the centre by an angle in [lo, hi] degrees (positive: anticlockwise, as
    ``cv2.getRotationMatrix2D`` has it), bilinear, the border replicated (``cv2.warpAffine``
    with ``BORDER_REPLICATE``); differentiable."""

    lo: float = -3.0
    hi: float = 3.0

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        a = math.radians(_uniform(self.lo, self.hi, g))
        if a == 0:
            return x
        h, w = x.shape[-2:]
        c, s = math.cos(a), math.sin(a)
        # output -> input sampling in normalised coordinates; h / w and w / h keep the rotation
        # rigid in pixels on a non-square image
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype,
                             device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def __str__(self) -> str:
        return f"rotate{self.lo:g}" if self.lo == self.hi else f"rotate{self.lo:g}-{self.hi:g}"


TextTransform = Grey | Otsu | Rotate
