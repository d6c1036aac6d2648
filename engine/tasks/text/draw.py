"""Seeded text CAPTCHAs drawn with the ``captcha`` package's font, in a style the built-in OCR
solvers (:mod:`advx.export.zoo.ocr`) read well: clean captchas they solve, so that hardening
them has something to break.

The package's default style is read poorly even clean; here each glyph of its DroidSansMono
is rotated (±12°) and warped more mildly, in one dark ink on a lighter speckled background,
with no noise curve and no word spaces. Every draw comes from a ``numpy`` generator seeded by
(seed, index): captcha ``i`` does not depend on ``n``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ...errors import RunError

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: ambiguous glyphs left out
INSTALL_HINT = "pip install captcha (or pip install 'advx[samples]')"


class CaptchaPackageMissing(RunError, ImportError):
    """The ``captcha`` package, whose font the drawings use, is not installed."""


ROTATE = 12.0  # the most a glyph is rotated, degrees either way
WARP = 0.12  # the most a warp corner moves, as a fraction of the glyph's size
FONT_SCALES = (0.7, 0.76, 0.82)  # font sizes, as fractions of the image height
GAP = (0, 3)  # pixels between neighbouring glyphs' ink boxes
SPECKLE_DENSITY = 0.06  # speckled pixels per background pixel
SPECKLE_DEPTH = (25, 70)  # how much darker than the background a speckle is (0-255)


def _fonts(height: int) -> list[ImageFont.FreeTypeFont]:
    """The captcha package's bundled DroidSansMono at the sizes used for ``height``."""
    try:
        from captcha.image import DEFAULT_FONTS
    except ImportError as e:
        raise CaptchaPackageMissing(
            f"drawing captchas needs the captcha package: {INSTALL_HINT}") from e
    return [ImageFont.truetype(f, max(8, round(height * s)))
            for f in DEFAULT_FONTS for s in FONT_SCALES]


def _glyph(c: str, font: ImageFont.FreeTypeFont, ink: tuple[int, int, int],
           rng: np.random.Generator) -> Image.Image:
    """One character in ``ink`` on transparency, rotated and warped."""
    _, _, right, bottom = font.getbbox(c)
    im = Image.new("RGBA", (right + 4, bottom + 4))
    ImageDraw.Draw(im).text((2, 2), c, font=font, fill=(*ink, 255))
    im = im.crop(im.getbbox())
    im = im.rotate(float(rng.uniform(-ROTATE, ROTATE)), Image.Resampling.BICUBIC, expand=True)
    dx, dy = round(WARP * im.size[0]), round(WARP * im.size[1])
    padded = Image.new("RGBA", (im.size[0] + 2 * dx, im.size[1] + 2 * dy))
    padded.paste(im, (dx, dy))  # room for the warp, so that it never cuts ink off
    w, h = padded.size
    # the source quad's corners (upper-left, lower-left, lower-right, upper-right), jittered
    jitter = rng.uniform(-1, 1, 8) * np.array([dx, dy] * 4)
    quad = np.array([0, 0, 0, h, w, h, w, 0], float) + jitter
    im = padded.transform((w, h), Image.Transform.QUAD, tuple(quad.tolist()),
                          Image.Resampling.BICUBIC)
    return im.crop(im.getbbox())  # no transparent margin: spacing is set by the layout


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A light colour with darker speckles of one or two pixels, uint8 HxWx3."""
    base = rng.integers(228, 256, 3)
    bg = np.broadcast_to(base, (height, width, 3)).astype(np.int16).copy()
    bg += rng.integers(-6, 7, (height, width, 1))  # faint grain
    k = int(SPECKLE_DENSITY * width * height)
    ys, xs = rng.integers(0, height, k), rng.integers(0, width, k)
    depth = rng.integers(*SPECKLE_DEPTH, (k, 1))
    tint = rng.integers(-15, 16, (k, 3))
    for oy, ox in ((0, 0), (0, 1), (1, 0)):  # some speckles two pixels wide or tall
        keep = rng.random(k) < (1.0 if (oy, ox) == (0, 0) else 0.3)
        y, x = np.minimum(ys + oy, height - 1)[keep], np.minimum(xs + ox, width - 1)[keep]
        bg[y, x] = base - depth[keep] + tint[keep]
    return np.clip(bg, 0, 255).astype(np.uint8)


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    """A dark colour: one channel may rise to mid-tone, the others stay low."""
    c = rng.integers(0, 90, 3)
    c[rng.integers(3)] = rng.integers(40, 150)
    return tuple(int(v) for v in c)


def _draw_one(text: str, rng: np.random.Generator, fonts: Sequence[ImageFont.FreeTypeFont],
             width: int, height: int) -> np.ndarray:
    """``text`` as a captcha, uint8 HxWx3 RGB."""
    ink = _ink(rng)
    glyphs = [_glyph(c, fonts[int(rng.integers(len(fonts)))], ink, rng) for c in text]
    gaps = [int(v) for v in rng.integers(GAP[0], GAP[1] + 1, len(glyphs))]
    strip_w = sum(g.size[0] for g in glyphs) + sum(gaps[1:])
    strip = Image.new("RGBA", (max(strip_w, 1), height))
    x = 0
    for g, gap in zip(glyphs, gaps, strict=True):
        x += gap if x else 0
        y = (height - g.size[1]) // 2 + int(rng.integers(-3, 4))
        strip.alpha_composite(g, (x, max(0, min(y, height - g.size[1]))))
        x += g.size[0]
    room = int(0.9 * width)
    if strip.size[0] > room:  # squeeze a long text into the width
        strip = strip.resize((room, height), Image.Resampling.BICUBIC)
    image = Image.fromarray(_background(width, height, rng)).convert("RGBA")
    left = (width - strip.size[0]) // 2 + int(rng.integers(-4, 5))
    image.alpha_composite(strip, (max(0, min(left, width - strip.size[0])), 0))
    return np.asarray(image.convert("RGB").filter(ImageFilter.SMOOTH))


def draw_captchas(n: int, seed: int = 0, *, width: int = 160, height: int = 60,
                  lengths: Sequence[int] = (4, 5),
                  alphabet: str = ALPHABET) -> list[tuple[str, np.ndarray]]:
    """``n`` (text, uint8 HxWx3 RGB) captchas, the same for the same arguments."""
    if not alphabet or not lengths or min(lengths) < 1:
        raise ValueError("draw_captchas needs a non-empty alphabet and lengths of at least 1")
    fonts = _fonts(height)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        size = int(lengths[int(rng.integers(len(lengths)))])
        text = "".join(alphabet[int(j)] for j in rng.integers(len(alphabet), size=size))
        out.append((text, _draw_one(text, rng, fonts, width, height)))
    return out


def write_captcha_folder(out_dir: Path, n: int, seed: int = 0) -> Path:
    """``n`` captchas as ``out_dir/captcha_000.png``... and ``labels.csv`` (``path,text``, paths
    relative to ``out_dir``); returns the csv's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(max(n - 1, 0))))
    rows = []
    for i, (text, pixels) in enumerate(draw_captchas(n, seed)):
        name = f"captcha_{i:0{digits}d}.png"
        Image.fromarray(pixels).save(out_dir / name)
        rows.append((name, text))
    labels = out_dir / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "text"))
        writer.writerows(rows)
    return labels


__all__ = ["ALPHABET", "CaptchaPackageMissing", "draw_captchas", "write_captcha_folder"]
