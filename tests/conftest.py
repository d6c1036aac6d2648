"""Shared fixtures: tiny random-init models of every backend, real photos, an isolated cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import tiny

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Exports go to a per-session cache, never to the user's ~/.cache."""
    old = os.environ.get("ADVX_CACHE_DIR")
    os.environ["ADVX_CACHE_DIR"] = str(tmp_path_factory.mktemp("advx-cache"))
    yield
    if old is None:
        os.environ.pop("ADVX_CACHE_DIR", None)
    else:
        os.environ["ADVX_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """backend -> the name of a tiny random-init model of that backend, loaded from local files."""
    d = tmp_path_factory.mktemp("tiny")
    arch = tiny.register_tiny_open_clip(d)
    return {
        "open_clip": f"open_clip:{arch}/{tiny.save_tiny_open_clip_checkpoint(d)}",
        "hf": f"hf:{tiny.save_tiny_hf_clip(d / 'hf_clip')}",
        "timm": f"timm:test_efficientnet/{tiny.save_tiny_timm_checkpoint(d)}",
        "onnx": f"onnx:{tiny.save_tiny_solver(d / 'solver')}",
    }


def tiles(image: np.ndarray, n: int = 3, size: int = 224) -> list[np.ndarray]:
    """``n`` square crops of decreasing scale around the centre, resized to ``size``."""
    from PIL import Image

    h, w = image.shape[:2]
    out = []
    for i in range(n):
        s = int(min(h, w) * (1.0 - 0.15 * i))
        y, x = (h - s) // 2, (w - s) // 2 + (i - 1) * (w - s) // 4
        x = min(max(0, x), w - s)
        crop = Image.fromarray(np.ascontiguousarray(image[y : y + s, x : x + s]))
        out.append(np.asarray(crop.resize((size, size), Image.BICUBIC)))
    return out


@pytest.fixture(scope="session")
def photos() -> dict[str, tuple[np.ndarray, str]]:
    """Real photos shipped inside scikit-image / matplotlib, with their ImageNet-mapped label."""
    import matplotlib.cbook as cbook
    import skimage.data as sd
    from PIL import Image

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return {
        "chelsea": (sd.chelsea(), "cat"),
        "stereo_motorcycle": (sd.stereo_motorcycle()[0], "motorcycle"),
        "coffee": (sd.coffee(), "espresso"),
        "grace_hopper": (hopper, "suit"),
    }
