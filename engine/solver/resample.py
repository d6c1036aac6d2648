"""Resizes and grey conversions as OCR packages run them, twice: in torch (differentiable, for
the gradient path) and through the library itself (PIL / OpenCV on 8-bit images, for the
verifier).

The torch path builds, per axis, the exact weight matrix of the library's filter:

- PIL (``antialias`` true): ``Image.resize`` with BILINEAR / BICUBIC / LANCZOS; the filter
  widens by the downscale factor, coefficients are rounded to 22-bit fixed point, and the
  horizontal pass is rounded to 8 bits before the vertical one (``Resample.c``);
- OpenCV (``antialias`` false): ``cv2.resize`` with INTER_LINEAR / INTER_CUBIC: two (four) taps
  at half-pixel centres, coefficients rounded to 11 bits, one rounding at the end.

Rounding to 8 bits uses a straight-through estimator (the value is rounded, the gradient passes
as if it were not), so the torch path sees the library's pixels and keeps its gradient. Grey is
PIL's ``convert("L")`` (ITU-R 601-2 luma, 16-bit fixed point) or OpenCV's ``COLOR_RGB2GRAY``
(14-bit fixed point), whichever library the solver resizes with.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

FILTERS = ("bilinear", "bicubic", "lanczos")
_PIL_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_PIL_BITS = 22  # Resample.c: PRECISION_BITS = 32 - 8 - 2
_CV_BITS = 11  # INTER_RESIZE_COEF_BITS
_PIL_GREY = (19595, 38470, 7471)  # / 65536, + 0x8000 before the shift
_CV_GREY = (4899, 9617, 1868)  # / 16384 (R, G, B), rounded


def _pil_filter(name: str, x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    if name == "bilinear":
        return np.where(ax < 1.0, 1.0 - ax, 0.0)
    if name == "bicubic":  # a = -0.5
        a = -0.5
        return np.where(ax < 1.0, ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1,
                        np.where(ax < 2.0, (((ax - 5) * ax + 8) * ax - 4) * a, 0.0))

    def sinc(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.sin(np.pi * v) / (np.pi * v)
        return np.where(v == 0, 1.0, s)

    return np.where(ax < 3.0, sinc(x) * sinc(x / 3.0), 0.0)


@lru_cache(maxsize=256)
def pil_weights(n_in: int, n_out: int, name: str) -> np.ndarray:
    """[n_out, n_in] weights of PIL's resample along one axis, in its 22-bit fixed point."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = _PIL_SUPPORT[name] * fscale
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        x = np.arange(lo, hi)
        k = _pil_filter(name, (x - center + 0.5) / fscale)
        total = k.sum()
        if total != 0:
            k = k / total
        one = 1 << _PIL_BITS
        w[i, lo:hi] = np.where(k < 0, np.trunc(-0.5 + k * one), np.trunc(0.5 + k * one)) / one
    return w


@lru_cache(maxsize=256)
def cv_weights(n_in: int, n_out: int, name: str) -> np.ndarray:
    """[n_out, n_in] weights of cv2.resize (INTER_LINEAR / INTER_CUBIC) along one axis, with
    its 11-bit coefficients."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    one = 1 << _CV_BITS
    for i in range(n_out):
        f = float(np.float32((i + 0.5) * scale - 0.5))
        s = math.floor(f)
        f -= s
        if name == "bilinear":
            taps, idx = [1.0 - f, f], [s, s + 1]
            if s < 0:
                taps, idx = [1.0, 0.0], [0, 1]
            if s >= n_in - 1:
                taps, idx = [1.0, 0.0], [n_in - 1, n_in - 1]
        elif name == "bicubic":  # a = -0.75, borders replicated
            a = -0.75
            c0 = ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a
            c1 = ((a + 2) * f - (a + 3)) * f * f + 1
            c2 = ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1
            taps, idx = [c0, c1, c2, 1 - c0 - c1 - c2], [s - 1, s, s + 1, s + 2]
        else:
            raise ValueError(f"OpenCV-style resize supports bilinear and bicubic, not {name!r}")
        fixed = [round(t * one) for t in taps]
        if name == "bicubic":  # OpenCV makes the fixed-point taps sum to one exactly
            fixed[1] += one - sum(fixed)
        for t, j in zip(fixed, idx, strict=True):
            w[i, min(max(j, 0), n_in - 1)] += t / one
    return w


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half up to integers (8-bit pixel values), gradient straight through."""
    return x + (torch.floor(x + 0.5) - x).detach()


def resize(images: torch.Tensor, size: tuple[int, int], name: str, *, pil: bool,
           quantize: bool) -> torch.Tensor:
    """images [N, C, h, w] in 0-255 units -> [N, C, H, W], as PIL (``pil``) or OpenCV would
    resize them; ``quantize``: the library works on 8-bit images (rounded, clipped)."""
    h, w = images.shape[-2:]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return images
    dtype = images.dtype
    x = images.double()
    weights = pil_weights if pil else cv_weights
    if pil:  # two passes, the first rounded to 8 bits; Pillow orders them by the smaller
        # intermediate image (vertical first when w * out_h < out_w * h)
        wy = torch.from_numpy(weights(h, out_h, name)).to(x.device) if h != out_h else None
        wx = torch.from_numpy(weights(w, out_w, name)).to(x.device) if w != out_w else None
        passes = [lambda t: t @ wx.T if wx is not None else t,
                  lambda t: wy @ t if wy is not None else t]
        if wx is not None and wy is not None and w * out_h < out_w * h:
            passes.reverse()
        x = passes[0](x)
        if quantize and x.shape[-2:] != images.shape[-2:] and (wx is not None
                                                               and wy is not None):
            x = _ste_round(x).clamp(0, 255)
        x = passes[1](x)
    else:
        wy = torch.from_numpy(weights(h, out_h, name)).to(x.device)
        wx = torch.from_numpy(weights(w, out_w, name)).to(x.device)
        x = wy @ x @ wx.T
    if quantize:
        x = _ste_round(x).clamp(0, 255)
    return x.to(dtype)


def grey(images: torch.Tensor, *, pil: bool, quantize: bool) -> torch.Tensor:
    """RGB [N, 3, H, W] in 0-255 units -> [N, 1, H, W] luma, as PIL's convert("L") or
    OpenCV's cvtColor(COLOR_RGB2GRAY)."""
    coeffs, bits = (_PIL_GREY, 16) if pil else (_CV_GREY, 14)
    k = torch.tensor(coeffs, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    y = (images.double() * k).sum(1, keepdim=True) / (1 << bits)
    if quantize:
        y = _ste_round(y).clamp(0, 255)
    return y.to(images.dtype)


# --- the libraries themselves (the verifier) ---------------------------------------------------


def library_resize(rgb: np.ndarray, size: tuple[int, int], name: str, *, pil: bool
                   ) -> np.ndarray:
    """uint8 [h, w, 3] RGB -> uint8 [H, W, 3], by PIL's Image.resize or cv2.resize."""
    out_h, out_w = size
    if rgb.shape[:2] == (out_h, out_w):
        return rgb
    if pil:
        from PIL import Image

        filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS}[name]
        return np.asarray(Image.fromarray(rgb).resize((out_w, out_h), filt))
    import cv2

    interp = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[name]
    return cv2.resize(rgb, (out_w, out_h), interpolation=interp)


def library_grey(rgb: np.ndarray, *, pil: bool) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H, W] luma, by PIL's convert("L") or cv2.cvtColor."""
    if pil:
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).convert("L"))
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


__all__ = ["FILTERS", "cv_weights", "grey", "library_grey", "library_resize", "pil_weights",
           "resize"]
