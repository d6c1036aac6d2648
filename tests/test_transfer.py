"""Real transfer on real weights: EfficientNet-Lite0 + Lite1 surrogates, Lite2 held out in ONNX.

Prints the figures (run ``pytest tests/test_transfer.py -s`` to see them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import advx
from advx.engine.config import HardenConfig
from advx.export import OnnxVerifier, export_cached

from conftest import tiles

LABEL_SET = ("cat", "motorcycle", "espresso", "suit", "dog", "car", "bus", "bicycle")
PHOTOS = ("chelsea", "stereo_motorcycle", "coffee", "grace_hopper")


@pytest.fixture(scope="module")
def tile_set(photos):
    images, labels = [], []
    for key in PHOTOS:
        image, label = photos[key]
        for t in tiles(image, n=3):
            images.append(t)
            labels.append(label)
    return images, labels


@pytest.fixture(scope="module")
def verifier():
    return OnnxVerifier(export_cached("effnet-lite2", LABEL_SET, precision="fp32"), device="cpu")


def clean_accuracy_of(verifier, images, labels) -> float:
    return 1 - clean_error_rate(verifier, images, labels)


def clean_error_rate(verifier, images, labels) -> float:
    x = torch.stack([torch.from_numpy(i.copy()).permute(2, 0, 1) for i in images]).float() / 255
    pred = [LABEL_SET[i] for i in verifier(x).argmax(1)]
    return float(np.mean([p != y for p, y in zip(pred, labels, strict=True)]))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["none", "jpeg", "solver"])
def test_transfer_to_held_out_verifier(tile_set, verifier, preset):
    """The engine's verdict covers every view of the preset (non-local means included for
    "solver", which a held-out model almost never fails: see benchmarks/README.md), so the
    figure checked for every preset is the verifier's own view, recomputed here."""
    images, labels = tile_set
    clean_err = clean_error_rate(verifier, images, labels)
    config = HardenConfig(eps=8, steps=30, verify_every=5, transforms=preset, batch_size=12)
    results = advx.harden(images, labels, label_set=LABEL_SET,
                          surrogates=["effnet-lite0", "effnet-lite1"], verifiers=[verifier],
                          config=config)
    fooled = float(np.mean([r.fooled for r in results]))
    own_wrong = 1 - clean_accuracy_of(verifier, [r.image for r in results], labels)
    figures = {
        "preset": preset, "tiles": len(results), "eps": "8/255",
        "clean_error_rate": round(clean_err, 3), "fooled_rate": round(fooled, 3),
        "wrong_as_delivered": round(own_wrong, 3),
        "mean_psnr": round(float(np.mean([r.psnr for r in results])), 2),
        "mean_ssim": round(float(np.mean([r.ssim for r in results])), 4),
        "mean_steps": round(float(np.mean([r.steps for r in results])), 1),
    }
    print("\nTRANSFER", json.dumps(figures))
    for r in results:
        assert r.linf <= 8 + 1e-4 and r.image.dtype == np.uint8
        # a fooled result fools the verifier on the delivered pixels, with the margin asked
        x = torch.from_numpy(r.image.copy()).permute(2, 0, 1)[None].float() / 255
        if r.fooled:
            assert LABEL_SET[int(verifier(x).argmax())] != r.label
            assert r.margins[verifier.name] >= config.required_margin
        assert r.ssim >= 0.90 - 1e-4  # the default SSIM floor, on the delivered file
    assert own_wrong >= clean_err + 0.5, figures
    if preset != "solver":
        assert fooled >= clean_err + 0.5, figures
