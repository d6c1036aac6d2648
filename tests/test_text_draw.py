"""The seeded captcha drawer: repeatable pixels, sizes, alphabet, the labelled folder, and (slow)
that real built-in OCR solvers read its captchas."""

from __future__ import annotations

import csv
import importlib.util
import random
import sys

import numpy as np
import pytest
from PIL import Image

from advx.engine.tasks.text import draw as text_draw
from advx.engine.tasks.text.draw import ALPHABET, draw_captchas, write_captcha_folder
from advx.export.zoo import ModelUnavailableError, ocr

needs_captcha = pytest.mark.skipif(importlib.util.find_spec("captcha") is None,
                                   reason="the captcha package is missing: pip install captcha")


def _same(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        ta == tb and np.array_equal(pa, pb) for (ta, pa), (tb, pb) in zip(a, b, strict=True))


@needs_captcha
def test_same_seed_same_pixels_and_no_global_state_touched():
    py, np_state = random.getstate(), np.random.get_state()
    first = draw_captchas(6, seed=3)
    assert random.getstate() == py
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert _same(first, draw_captchas(6, seed=3))
    assert _same(first[:2], draw_captchas(2, seed=3))  # captcha i does not depend on n
    other = draw_captchas(6, seed=4)
    assert not any(np.array_equal(p, q) for (_, p), (_, q) in zip(first, other, strict=True))


@needs_captcha
def test_sizes_and_texts():
    for text, pixels in draw_captchas(8, 1):
        assert pixels.shape == (60, 160, 3) and pixels.dtype == np.uint8
        assert len(text) in (4, 5) and set(text) <= set(ALPHABET)
        assert pixels.min() < 100 < 200 < pixels.max()  # dark ink on a light background
    for text, pixels in draw_captchas(5, 2, width=200, height=70, lengths=(6,),
                                      alphabet="AB7"):
        assert pixels.shape == (70, 200, 3) and len(text) == 6 and set(text) <= set("AB7")
    assert not set("0O1IL") & set(ALPHABET)
    with pytest.raises(ValueError, match="alphabet"):
        draw_captchas(1, alphabet="")


@needs_captcha
def test_folder_has_pngs_and_a_labels_csv(tmp_path):
    labels = write_captcha_folder(tmp_path / "caps", 4, seed=5)
    assert labels == tmp_path / "caps" / "labels.csv"
    with labels.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "text"]
    expected = draw_captchas(4, seed=5)
    assert [r[0] for r in rows[1:]] == [f"captcha_{i:03d}.png" for i in range(4)]
    for (path, text), (want, pixels) in zip(rows[1:], expected, strict=True):
        assert text == want
        assert np.array_equal(np.asarray(Image.open(labels.parent / path)), pixels)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "captcha.image", None)  # import fails
    with pytest.raises(ImportError, match="pip install captcha"):
        draw_captchas(1)
    with pytest.raises(text_draw.CaptchaPackageMissing):  # a RunError the CLI reports
        draw_captchas(1)


@needs_captcha
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddddocr-beta", "captcha-whisperer"])
def test_real_solvers_read_the_drawn_captchas(name):
    try:
        solver = ocr.text_solver(name)
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    import torch

    captchas = draw_captchas(20, seed=7)
    x = torch.from_numpy(np.stack([p for _, p in captchas])).permute(0, 3, 1, 2).float() / 255
    reads = solver.verifier().read(x)
    right = [r.lower() == t.lower() for r, (t, _) in zip(reads, captchas, strict=True)]
    assert sum(right) >= 18, list(zip(reads, [t for t, _ in captchas], strict=True))
