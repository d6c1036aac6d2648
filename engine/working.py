"""Large images: attack a downscaled working copy, then upsample the perturbation bilinearly
onto the full-size original (convex weights: the L-inf budget holds). Metrics are recomputed
at full size; the verification status is the working copy's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# metrics.ssim uses an 11x11 window: smaller images cannot be scored (nor hardened)
MIN_SIDE = 11


def working_size(width: int, height: int, max_side: int) -> tuple[int, int] | None:
    """(W, H) of the working copy, or None when the image is small enough as it is."""
    longest = max(width, height)
    if longest <= max_side:
        return None
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 -> the working copy of ``size`` (W, H), PIL bicubic."""
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def upsample_perturbation(original: np.ndarray, working: np.ndarray, adversarial: np.ndarray,
                          scale: float = 1.0) -> np.ndarray:
    """original + scale * bilinear_upsample(adversarial - working), clipped and quantised."""
    import torch
    import torch.nn.functional as F

    h, w = original.shape[:2]
    delta = (adversarial.astype(np.float32) - working.astype(np.float32)) / 255.0
    if scale != 1.0:
        delta *= scale
    delta_t = torch.from_numpy(delta).permute(2, 0, 1)[None]
    up = F.interpolate(delta_t, size=(h, w), mode="bilinear", align_corners=False)[0]
    up = up.permute(1, 2, 0)  # H x W x 3, a view
    out = np.empty_like(original)
    for top in range(0, h, 512):  # in strips of rows: no full-size float copies of the image
        rows = slice(top, top + 512)
        base = torch.from_numpy(original[rows].astype(np.float32)).div_(255.0)
        px = base.add_(up[rows]).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        out[rows] = px.numpy()
    return out


def full_size_delivery(original: np.ndarray, working: np.ndarray, adversarial: np.ndarray,
                       config) -> tuple[np.ndarray, dict, float]:
    """(full-size image, its metrics, the perturbation's scale): scaled back by bisection
    where the delivered file would fall below ``config.ssim_floor`` at full size."""
    from .images import decode_image_bytes, encode_image

    def at(scale: float) -> tuple[np.ndarray, dict]:
        image = upsample_perturbation(original, working, adversarial, scale)
        delivered = image if config.output_format == "png" else decode_image_bytes(
            encode_image(image, "jpeg", config.jpeg_quality))
        return image, full_size_metrics(delivered, original)

    image, metrics = at(1.0)
    floor = config.ssim_floor
    if floor is None or metrics["ssim"] >= floor:
        return image, metrics, 1.0
    lo, hi, best = 0.0, 1.0, None
    for _ in range(6):
        mid = (lo + hi) / 2
        cand = at(mid)
        if cand[1]["ssim"] >= floor:
            lo, best = mid, cand
        else:
            hi = mid
    image, metrics = best or at(0.0)
    return image, metrics, lo


def full_size_metrics(delivered: np.ndarray, original: np.ndarray, *, strip: int = 512
                      ) -> dict[str, float | None]:
    """linf (/255), l2, psnr (None when identical) and ssim as advx.engine.metrics computes
    them, in strips of rows."""
    from . import metrics

    h, w = original.shape[:2]
    win = 11
    linf = sq = 0.0
    ssim_sum, ssim_rows = 0.0, 0
    for top in range(0, h, strip):
        a = delivered[top : top + strip].astype(np.float64) / 255.0
        b = original[top : top + strip].astype(np.float64) / 255.0
        d = a - b
        linf = max(linf, float(np.abs(d).max()))
        sq += float((d * d).sum())
    n_valid = h - win + 1
    for top in range(0, n_valid, strip):
        rows = min(strip, n_valid - top)
        a = _tensor(delivered[top : top + rows + win - 1])
        b = _tensor(original[top : top + rows + win - 1])
        ssim_sum += float(metrics.ssim(a, b)) * rows
        ssim_rows += rows
    mse = sq / (h * w * 3)
    psnr = None if mse == 0 else 10 * float(np.log10(1.0 / mse))
    return {"linf": round(linf * 255, 5), "l2": round(sq**0.5, 5),
            "psnr": None if psnr is None else round(psnr, 3),
            "ssim": round(ssim_sum / ssim_rows, 5)}


def _tensor(pixels: np.ndarray):
    import torch

    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
