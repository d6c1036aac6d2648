"""Seeded click CAPTCHAs ("click the characters in order"): glyphs of the ``captcha``
package's font, rotated and warped, in bright ink with a dark outline, on crops of the photos
that ship with scikit-image and scikit-learn, as those challenges look. Each drawing comes
with the box of each glyph (its challenge: find every box) and the characters in order.

A drawing depends only on (seed, index), as the text captchas' do (:mod:`..text.draw`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ...errors import RunError
from ..text.draw import ALPHABET, _fonts, _glyph

SIZE = (320, 160)  # width, height of a drawing
GLYPHS = 4  # characters to click per drawing
INKS = ((255, 235, 59), (255, 255, 255), (0, 229, 255), (255, 64, 129), (118, 255, 3))
LABEL = "text"  # ddddocr's detector has one class: a character (or icon) to click
PHOTOS_HINT = "pip install scikit-image scikit-learn (or pip install 'advx[samples]')"


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data as sd
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise RunError(f"click captchas are drawn on sample photos: {PHOTOS_HINT}") from e
    out = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), sd.stereo_motorcycle()[0]]
    return out + [np.asarray(im) for im in load_sample_images().images]


def _background(photos: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
    px = photos[int(rng.integers(len(photos)))]
    h, w = px.shape[:2]
    cw = int(min(w, h * SIZE[0] / SIZE[1]) * rng.uniform(0.5, 1.0))
    ch = int(cw * SIZE[1] / SIZE[0])
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = Image.fromarray(np.ascontiguousarray(px[y0:y0 + ch, x0:x0 + cw, :3]))
    return crop.resize(SIZE, Image.Resampling.BICUBIC).convert("RGB")


def _outlined(glyph: Image.Image) -> Image.Image:
    """A glyph with a dark outline (its alpha dilated), so that it reads on any photo."""
    alpha = glyph.getchannel("A")
    ring = alpha.filter(ImageFilter.MaxFilter(5))
    out = Image.new("RGBA", glyph.size, (20, 20, 20, 0))
    out.putalpha(ring)
    out.alpha_composite(glyph)
    return out


def draw_clicks(n: int, seed: int = 0) -> list[tuple[np.ndarray, list[list[float]], str]]:
    """``n`` drawings: (uint8 HxWx3 pixels, each glyph's box x0 y0 x1 y1, the characters)."""
    photos = _photos()
    fonts = _fonts(SIZE[1] // 3)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        im = _background(photos, rng)
        text = "".join(rng.choice(list(ALPHABET), GLYPHS))
        boxes: list[list[float]] = []
        slot = SIZE[0] // GLYPHS
        for k, c in enumerate(text):
            ink = INKS[int(rng.integers(len(INKS)))]
            g = _outlined(_glyph(c, fonts[int(rng.integers(len(fonts)))], ink, rng))
            bbox = g.getchannel("A").getbbox()
            g = g.crop(bbox)
            gw, gh = g.size
            x = int(k * slot + rng.integers(0, max(1, slot - gw)))
            y = int(rng.integers(4, max(5, SIZE[1] - gh - 4)))
            im.paste(g, (x, y), g)
            boxes.append([float(x), float(y), float(x + gw), float(y + gh)])
        out.append((np.asarray(im), boxes, text))
    return out


def write_click_folder(out_dir: Path, n: int, seed: int = 0) -> Path:
    """``n`` drawings as PNGs in ``out_dir`` with their labels.csv (path,label,boxes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [("path", "label", "boxes")]
    for i, (px, boxes, _) in enumerate(draw_clicks(n, seed)):
        name = f"click_{i:03d}.png"
        Image.fromarray(px).save(out_dir / name)
        rows.append((name, LABEL, "; ".join(" ".join(f"{v:g}" for v in b) for b in boxes)))
    labels = out_dir / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return labels


__all__ = ["GLYPHS", "LABEL", "SIZE", "draw_clicks", "write_click_folder"]
