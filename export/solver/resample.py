"""Resizes and grey conversions as OCR packages run them, twice: in torch (differentiable, for
the gradient path) and through the library itself (PIL / OpenCV on 8-bit images, for the
verifier).

The torch path builds, per axis, the exact weight matrix of the library's filter: PIL's
``Image.resize`` (``antialias`` true: the filter widens when downscaling, 22-bit coefficients,
the first pass rounded to 8 bits) or ``cv2.resize`` (11-bit coefficients at half-pixel
centres). Rounding to 8 bits is straight through, so the torch path sees the library's pixels
and keeps its gradient. Grey is PIL's ``convert("L")`` or OpenCV's ``COLOR_RGB2GRAY``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

_PIL_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_PIL_BITS = 22  # Resample.c: PRECISION_BITS = 32 - 8 - 2
_CV_BITS = 11  # INTER_RESIZE_COEF_BITS
_PIL_GREY = (19595, 38470, 7471)  # / 65536, + 0x8000 before the shift
_CV_GREY = (9798, 19235, 3735)  # / 32768 (R, G, B), rounded (OpenCV 4.x+ RGB2Gray)


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
def cv_linear_taps(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.resize INTER_LINEAR along one axis: source indices [n_out, 2] and 11-bit
    coefficients [n_out, 2]. Columns (``clamp``) pin the position to the border; rows keep
    it and read the border row twice (``resizeGeneric_``'s xofs / yofs tables)."""
    scale = 1.0 / (n_out / n_in)
    idx = np.zeros((n_out, 2), np.int64)
    coef = np.zeros((n_out, 2), np.int64)
    for i in range(n_out):
        f = np.float32((i + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        if clamp and s < 0:
            s, f = 0, np.float32(0)
        if clamp and s >= n_in - 1:
            s, f = n_in - 1, np.float32(0)
        one = np.float32(1 << _CV_BITS)
        coef[i] = [np.rint((np.float32(1) - f) * one), np.rint(f * one)]
        idx[i] = [min(max(s, 0), n_in - 1), min(max(s + 1, 0), n_in - 1)]
    return idx, coef


@lru_cache(maxsize=256)
def cv_weights(n_in: int, n_out: int, name: str) -> np.ndarray:
    """[n_out, n_in] weights of cv2.resize (INTER_LINEAR / INTER_CUBIC) along one axis, with
    its 11-bit coefficients (bicubic: within one level of OpenCV's 8-bit result)."""
    w = np.zeros((n_out, n_in))
    one = 1 << _CV_BITS
    if name == "bilinear":
        idx, coef = cv_linear_taps(n_in, n_out, True)
        for i in range(n_out):
            for j, c in zip(idx[i], coef[i], strict=True):
                w[i, j] += c / one
        return w
    if name != "bicubic":
        raise ValueError(f"OpenCV-style resize supports bilinear and bicubic, not {name!r}")
    scale = n_in / n_out
    for i in range(n_out):  # a = -0.75, borders replicated
        f = float(np.float32((i + 0.5) * scale - 0.5))
        s = math.floor(f)
        f -= s
        a = -0.75
        c0 = ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a
        c1 = ((a + 2) * f - (a + 3)) * f * f + 1
        c2 = ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1
        fixed = [round(t * one) for t in (c0, c1, c2, 1 - c0 - c1 - c2)]
        fixed[1] += one - sum(fixed)  # the fixed-point taps sum to one exactly
        for t, j in zip(fixed, (s - 1, s, s + 1, s + 2), strict=True):
            w[i, min(max(j, 0), n_in - 1)] += t / one
    return w


def _cv_linear_8bit(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """cv2.resize INTER_LINEAR of 8-bit values, to the bit: the horizontal pass in integers,
    the vertical one as OpenCV's SIMD kernel rounds it (VResizeLinearVec_32s8u)."""
    h, w = x.shape[-2:]
    (ix, ax), (iy, ay) = cv_linear_taps(w, out_w, True), cv_linear_taps(h, out_h, False)
    dev = x.device
    ix, ax, iy, ay = (torch.from_numpy(a).to(dev) for a in (ix, ax, iy, ay))
    s = x.detach().round().long()
    rows = s[..., ix[:, 0]] * ax[:, 0] + s[..., ix[:, 1]] * ax[:, 1]  # [N, C, h, W] (x 2^11)
    b0, b1 = ay[:, 0].view(-1, 1), ay[:, 1].view(-1, 1)
    out = ((((rows[..., iy[:, 0], :] >> 4) * b0) >> 16)
           + (((rows[..., iy[:, 1], :] >> 4) * b1) >> 16) + 2) >> 2
    return out.clamp(0, 255).to(x.dtype)


@lru_cache(maxsize=256)
def pil_vertical_first(h: int, w: int, out_h: int, out_w: int, name: str) -> bool:
    """Whether Pillow runs the vertical pass first for this resize (Pillow 13 does for some
    downscales, python-pillow/Pillow#9549; earlier versions never): asked of the installed
    Pillow once per size, on a random image whose result tells the two orders apart."""
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = library_resize(rgb, (out_h, out_w), name, pil=True).astype(np.float64)
    x = rgb.astype(np.float64).transpose(2, 0, 1)
    wy, wx = pil_weights(h, out_h, name), pil_weights(w, out_w, name)

    def r8(a: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(a + 0.5), 0, 255)

    h_first = np.abs(r8(wy @ r8(x @ wx.T)).transpose(1, 2, 0) - got).sum()
    v_first = np.abs(r8(r8(wy @ x) @ wx.T).transpose(1, 2, 0) - got).sum()
    return bool(v_first < h_first)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half up to integers (8-bit pixel values), gradient straight through."""
    return x + (torch.floor(x + 0.5) - x).detach()


def clip8(x: torch.Tensor) -> torch.Tensor:
    """Clip to 0-255, gradient straight through: a pixel at exactly 0 or 255 (a white
    background, a binarised view) keeps its gradient, which ``clamp`` would zero."""
    return x + (x.clamp(0, 255) - x).detach()


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
    if pil:  # two passes, the first rounded to 8 bits, in the order Pillow takes them
        wy = torch.from_numpy(weights(h, out_h, name)).to(x.device) if h != out_h else None
        wx = torch.from_numpy(weights(w, out_w, name)).to(x.device) if w != out_w else None
        if wx is not None and wy is not None and pil_vertical_first(h, w, out_h, out_w, name):
            x = wy @ x
            x = (clip8(_ste_round(x)) if quantize else x) @ wx.T
        else:
            x = x @ wx.T if wx is not None else x
            if wy is not None:
                x = wy @ (clip8(_ste_round(x)) if quantize and wx is not None else x)
    else:
        wy = torch.from_numpy(weights(h, out_h, name)).to(x.device)
        wx = torch.from_numpy(weights(w, out_w, name)).to(x.device)
        x = wy @ x @ wx.T
        if quantize and name == "bilinear":  # OpenCV's 8-bit values, the float gradient
            return (x + (_cv_linear_8bit(images.double(), out_h, out_w) - x).detach()).to(dtype)
    if quantize:
        x = clip8(_ste_round(x))
    return x.to(dtype)


def grey(images: torch.Tensor, *, pil: bool, quantize: bool) -> torch.Tensor:
    """RGB [N, 3, H, W] in 0-255 units -> [N, 1, H, W] luma, as PIL's convert("L") or
    OpenCV's cvtColor(COLOR_RGB2GRAY)."""
    coeffs, bits = (_PIL_GREY, 16) if pil else (_CV_GREY, 15)
    k = torch.tensor(coeffs, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    y = (images.double() * k).sum(1, keepdim=True) / (1 << bits)
    if quantize:
        y = clip8(_ste_round(y))
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


__all__ = ["cv_linear_taps", "cv_weights", "grey", "library_grey", "library_resize",
           "pil_vertical_first", "pil_weights", "resize"]
