"""engine/metrics: L-inf, PSNR and SSIM against their definitions and scikit-image."""

from __future__ import annotations

import torch
from toys import rand_images

from advx.engine import metrics


def test_metrics_exact():
    import skimage.metrics

    a = rand_images(2, 32)
    b = (a + 4 / 255 * torch.sign(torch.randn_like(a))).clamp(0, 1)
    assert torch.allclose(metrics.linf(b, a), torch.full((2,), 4 / 255), atol=1e-6)
    mse = (b - a).pow(2).flatten(1).mean(1)
    assert torch.allclose(metrics.psnr(b, a), 10 * torch.log10(1 / mse))
    assert metrics.psnr(a, a)[0] == float("inf")
    for i in range(2):
        want = skimage.metrics.structural_similarity(
            b[i].permute(1, 2, 0).double().numpy(), a[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=2)
        assert abs(float(metrics.ssim(b[i : i + 1], a[i : i + 1])) - want) < 1e-5
