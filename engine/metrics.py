"""Perceptual figures of a perturbation: L-inf, L2, PSNR and SSIM (images in [0, 1])."""

from __future__ import annotations

import math

import torch


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


def ssim(x: torch.Tensor, ref: torch.Tensor, *, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, data range 1), the mean
    over channels and valid positions, as skimage's structural_similarity(gaussian_weights=True,
    use_sample_covariance=False). pytorch-msssim computes it (separable Gaussian, float32)."""
    import warnings

    from pytorch_msssim import ssim as _ssim

    side = min(x.shape[-2:])
    if side < window:  # tiny images: the largest odd window that fits, as skimage requires
        window = side if side % 2 else side - 1
        if window < 1:
            raise ValueError("images need at least one pixel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pytorch-msssim warns about small images
        return _ssim(x.float(), ref.float(), data_range=1.0, size_average=False,
                     win_size=window, win_sigma=sigma).float()
