"""Perceptual figures of a perturbation: L-inf, L2, PSNR and SSIM (images in [0, 1])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linf(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image max |x - ref|, in [0, 1] units."""
    return (x - ref).abs().flatten(1).amax(1)


def l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image Euclidean norm of x - ref, in [0, 1] units."""
    return (x - ref).flatten(1).norm(dim=1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for data range 1 (inf for identical images)."""
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)),
                       torch.full_like(mse, math.inf))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(x: torch.Tensor, ref: torch.Tensor, *, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, data range 1), the mean
    over channels and valid positions, as skimage's structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)."""
    x, ref = x.double(), ref.double()
    side = min(x.shape[-2:])
    if side < window:  # tiny images: the largest odd window that fits, as skimage requires
        window = side if side % 2 else side - 1
        if window < 1:
            raise ValueError("images need at least one pixel")
    w = _gaussian_window(window, sigma, x.device).double()
    c1, c2 = 0.01**2, 0.03**2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(ref)
    vx = blur(x * x) - mx * mx
    vy = blur(ref * ref) - my * my
    cov = blur(x * ref) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    # valid convolution == skimage's crop of the (window - 1) / 2 border
    return s.flatten(1).mean(1).float()
