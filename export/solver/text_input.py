"""A text solver's preprocessing, twice: in torch with gradients (:class:`TextPreprocess`, what
the attack differentiates) and by the library itself on each 8-bit image
(:func:`reference_input`, what the package feeds its graph)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import resample
from .spec import InputSpec
from .text_spec import input_width


def _to_units(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """0-255 pixel values -> the graph's units (range, then mean / std)."""
    lo, hi = spec.range
    if (lo, hi) != (0.0, 255.0):
        x = x / 255 * (hi - lo) + lo
    channels = x.shape[1]
    mean = torch.tensor(spec.mean[:channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[:channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        x = (x - mean) / std
    return x


def _pad(x: torch.Tensor, spec: InputSpec, width: int) -> torch.Tensor:
    """Right-pad [N, C, H, w] (graph units) to ``width`` columns of the spec's pad pixel."""
    if x.shape[-1] >= width:
        return x
    fill = torch.full((1, x.shape[1], 1, 1), spec.pad * 255, dtype=x.dtype, device=x.device)
    fill = _to_units(fill, spec).expand(x.shape[0], -1, x.shape[2], width - x.shape[-1])
    return torch.cat([x, fill], -1)


class TextPreprocess(nn.Module):
    """Tiles [N, 3, h, w] in [0, 1] -> the graph's input [N, C, H, W], in torch with gradients:
    resize as PIL (``antialias``) or OpenCV would, 8-bit rounding after each step where the
    package works on 8-bit images (``quantize``, straight through), grey or BGR, units, pad."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        resized, padded = input_width(s, *images.shape[-2:])
        x = images.float() * 255
        if s.quantize:  # the delivered file is 8-bit
            x = resample.clip8(resample._ste_round(x))
        x = resample.resize(x, (s.size[0], resized), s.resize, pil=s.antialias,
                            quantize=s.quantize)
        if s.channels == "GREY":
            x = resample.grey(x, pil=s.antialias, quantize=s.quantize)
        elif s.channels == "BGR":
            x = x.flip(1)
        return _pad(_to_units(x, s), s, padded).contiguous()


def reference_input(images: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """The same as :class:`TextPreprocess`, by the library itself on each 8-bit image (PIL's
    ``Image.resize`` / ``convert("L")`` or ``cv2.resize`` / ``cvtColor``): float32
    [N, C, H, W], what the package feeds its graph."""
    if not spec.quantize:  # the package resizes float images: the torch path is the reference
        with torch.no_grad():
            return TextPreprocess(spec)(images.detach().cpu()).numpy()
    resized, padded = input_width(spec, *images.shape[-2:])
    pixels = torch.floor(images.detach().float().cpu() * 255 + 0.5).clamp(0, 255)
    out = []
    for rgb in pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy():
        r = resample.library_resize(np.ascontiguousarray(rgb), (spec.size[0], resized),
                                    spec.resize, pil=spec.antialias)
        if spec.channels == "GREY":
            arr = resample.library_grey(r, pil=spec.antialias)[None]
        else:
            arr = (r[..., ::-1] if spec.channels == "BGR" else r).transpose(2, 0, 1)
        out.append(np.ascontiguousarray(arr).astype(np.float32))
    x = _pad(_to_units(torch.from_numpy(np.stack(out)), spec), spec, padded)
    return x.numpy().astype(np.float32)
