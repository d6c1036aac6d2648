"""Large images end to end: an 8-megapixel photo hardened through the CLI, the record's
full-size metrics checked against independent references (scikit-image's SSIM in float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.mark.slow
def test_eight_megapixel_image_end_to_end(photos, tmp_path):
    import skimage.metrics

    from advx.cli.main import cli

    image, _ = photos["chelsea"]  # a real photo, upscaled to 3464 x 2309 (8.0 MP)
    big = np.asarray(Image.fromarray(image).resize((3464, 2309), Image.Resampling.BICUBIC))
    inp = tmp_path / "in"
    (inp / "cat").mkdir(parents=True)
    Image.fromarray(big).save(inp / "cat" / "big.jpg", quality=92)
    original = np.asarray(Image.open(inp / "cat" / "big.jpg").convert("RGB"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "harden", str(inp), "--out", str(out), "--label-set", "cat,dog", "--steps", "3",
        "--surrogates", "effnet-lite0", "--transforms", "none", "--eps", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    (r,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert r["status"] in ("fooled", "unfooled") and any("upsampled to full size" in n
                                                         for n in r["notes"])
    delivered = np.asarray(Image.open(out / r["output"]))
    assert delivered.shape == original.shape == (2309, 3464, 3)
    d = delivered.astype(np.float64) / 255 - original.astype(np.float64) / 255
    assert 0 < r["linf"] <= 8 and abs(r["linf"] - np.abs(d).max() * 255) < 1e-3
    assert r["psnr"] == pytest.approx(10 * np.log10(1 / np.mean(d * d)), abs=1e-3)
    want = skimage.metrics.structural_similarity(
        delivered, original, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=2)
    assert abs(r["ssim"] - want) < 1e-3, (r["ssim"], want)
    assert r["ssim"] >= 0.90  # the SSIM floor, held at full size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and (out / "report.html").is_file()
    assert summary["task"] == r["task"] == "labels" and summary["min_ssim"] == round(r["ssim"], 4)
    assert set(summary["headline"]) == set(summary["models"]["verifiers"])


def test_the_ssim_floor_holds_at_full_size():
    """A perturbation that breaks the floor once upsampled is scaled back (bisection) until
    the delivered file, PNG or JPEG, holds it; one that keeps it is left whole."""
    from advx.engine.config import HardenConfig
    from advx.engine.working import downscale, full_size_delivery, upsample_perturbation

    y, x = np.mgrid[0:240, 0:360]
    smooth = np.stack([x * 0.5, y * 0.8, (x + y) * 0.3], -1).astype(np.uint8)  # flat: SSIM-fragile
    work = downscale(smooth, (120, 80))
    rng = np.random.default_rng(0)
    adv = np.clip(work.astype(int) + rng.choice([-12, 12], work.shape), 0, 255).astype(np.uint8)
    for fmt in ("png", "jpeg"):
        cfg = HardenConfig(ssim_floor=0.95, output_format=fmt, jpeg_quality=95)
        image, m, scale = full_size_delivery(smooth, work, adv, cfg)
        assert 0 <= scale < 1 and m["ssim"] >= 0.95
        assert np.array_equal(image, upsample_perturbation(smooth, work, adv, scale))
    cfg = HardenConfig(ssim_floor=0.10)
    image, m, scale = full_size_delivery(smooth, work, adv, cfg)
    assert scale == 1.0 and np.array_equal(image, upsample_perturbation(smooth, work, adv))
