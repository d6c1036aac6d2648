"""Robust image loading (to uint8 HxWx3 RGB, each conversion noted; a bad file raises
:class:`ImageLoadError`) and encoding."""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..export.files import write_bytes_atomic

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 64_000_000
LARGE_PNG_PIXELS = 4_000_000
_ORIENTATION_TAG = 0x0112
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF",
               b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "RIFF/WebP"}
_RAW_16BIT = re.compile(r";16[BLN]")  # 16 bits per sample, e.g. PNG "RGB;16B" (not BMP 5-6-5)
# What a malformed file can make Pillow raise (besides UnidentifiedImageError).
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
    TypeError, ZeroDivisionError, OverflowError, MemoryError,
)


class ImageLoadError(Exception):
    """A file could not be turned into an RGB image; ``reason`` (``str(err)``) says why."""

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``pixels`` is uint8 HxWx3 RGB."""

    pixels: np.ndarray
    notes: tuple[str, ...]


# --------------------------------------------------------------------------- loading


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode ``path`` fully into RGB uint8 (over ``max_pixels`` refused before decoding);
    raise :class:`ImageLoadError` on any bad input."""
    p = Path(path)
    try:
        if not p.exists():
            raise ImageLoadError("file not found")
        if not p.is_file():
            raise ImageLoadError("not a regular file")
        if p.stat().st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with open(p, "rb") as fh:
            return _load_stream(fh, p.suffix.lower(), max_pixels)
    except OSError as exc:  # open/stat failures (permissions, I/O errors)
        raise ImageLoadError(f"cannot read file: {exc.strerror or exc}") from exc


def decode_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (e.g. a simulated JPEG delivery) to uint8 HxWx3 RGB."""
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    return _load_stream(io.BytesIO(data), "", max_pixels).pixels


def _load_stream(fh: BinaryIO, ext: str, max_pixels: int) -> LoadedImage:
    head = fh.read(16)
    fh.seek(0)
    with warnings.catch_warnings():
        # Pillow warnings (bomb warning, odd EXIF, palette transparency) are not failures:
        # the pixel limit is enforced explicitly below, real decode errors still raise.
        warnings.simplefilter("ignore")
        try:
            with Image.open(fh) as im:
                return _decode(im, max_pixels)
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(f"decompression bomb: {exc}") from exc
        except UnidentifiedImageError as exc:
            fmt = next((n for magic, n in _SIGNATURES.items() if head.startswith(magic)), None)
            if fmt is not None:
                reason = f"truncated or corrupt image: {fmt} signature but unreadable header"
            else:
                what = f"extension {ext}, " if ext else ""
                reason = f"not an image ({what}content not recognised)"
            raise ImageLoadError(reason) from exc
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(f"truncated or corrupt image: {exc}") from exc


def _decode(im: Image.Image, max_pixels: int) -> LoadedImage:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"decompression bomb: {width}x{height} pixels exceeds the limit of {max_pixels}"
        )
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"invalid image size {width}x{height}")
    notes: list[str] = []
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if n_frames > 1:
        im.seek(0)
        notes.append(f"animated ({n_frames} frames): first frame used")
    # Pillow squeezes 16-bit RGB(A)/LA samples into 8 bits itself; record that.
    sixteen_bit_raw = not im.mode.startswith("I") and any(
        _RAW_16BIT.search(str(tile[3])) for tile in im.tile
    )
    im.load()  # force a full decode: truncation/corruption surfaces here
    if sixteen_bit_raw:
        notes.append("16-bit image reduced to 8 bits")
    im = _apply_exif_orientation(im, notes)
    pixels = np.ascontiguousarray(_to_rgb(im, notes), dtype=np.uint8)
    return LoadedImage(pixels=pixels, notes=tuple(notes))


def _apply_exif_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG)
    except _DECODE_ERRORS:  # corrupt EXIF must not make a decodable image unreadable
        notes.append("unreadable EXIF ignored")
        return im
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        transposed = ImageOps.exif_transpose(im)
        if transposed is not None:
            notes.append(f"EXIF orientation {orientation} applied")
            return transposed
    return im


def _to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert a loaded image of any mode to an HxWx3 uint8 array, appending notes."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        gray = _high_depth_to_uint8(np.asarray(im), mode, notes)
        notes.append("grayscale expanded to RGB")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        notes.append("palette image converted to RGB")
    elif mode in ("L", "LA", "La"):
        notes.append("grayscale expanded to RGB")
    elif mode == "1":
        notes.append("1-bit image expanded to RGB")
    elif mode not in ("RGB", "RGBA", "RGBa"):
        notes.append(f"{mode} converted to RGB")
    if im.has_transparency_data:
        notes.append("alpha channel composited on white")
        return composite_on_white(np.asarray(im.convert("RGBA")))
    return np.asarray(im if mode == "RGB" else im.convert("RGB"))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend uint8 HxWx4 RGBA over white: ``round((c*a + 255*(255-a)) / 255)``."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _high_depth_to_uint8(arr: np.ndarray, mode: str, notes: list[str]) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale samples to uint8."""
    if mode.startswith("I;16"):
        notes.append("16-bit image reduced to 8 bits")
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)
    if mode.startswith("I"):
        values = arr.astype(np.int64)
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 0xFFFF:  # 16-bit data held in a 32-bit container
            notes.append("16-bit image reduced to 8 bits")
            return (values >> 8).astype(np.uint8)
        notes.append(f"32-bit integer image rescaled from [{lo}, {hi}] to 8 bits")
        return _rescale(values.astype(np.float64), lo, hi)
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        notes.append("non-finite float values set to 0")
        values = np.where(finite, values, 0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        notes.append("float image scaled from [0, 1] to 8 bits")
        return np.rint(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        notes.append("float image rounded to 8 bits")
        return np.rint(values).astype(np.uint8)
    notes.append(f"float image rescaled from [{lo:g}, {hi:g}] to 8 bits")
    return _rescale(values, lo, hi)


def _rescale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# --------------------------------------------------------------------------- writing


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 HxWx3 RGB as PNG or JPEG (JPEG: given quality, 4:4:4 chroma)."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ValueError("pixels must be a uint8 numpy array")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"pixels must have shape HxWx3, got {pixels.shape}")
    fmt = fmt.lower()
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if fmt == "png":  # zlib level 1 above 4 MP: several times faster, files a little larger
        img.save(buf, format="PNG", compress_level=6 if pixels.shape[0] * pixels.shape[1]
                 <= LARGE_PNG_PIXELS else 1)
    elif fmt in ("jpeg", "jpg"):
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        raise ValueError(f"unsupported output format {fmt!r} (expected 'png' or 'jpeg')")
    return buf.getvalue()


def save_image_atomic(
    path: Path, pixels: np.ndarray, *, fmt: str = "png", quality: int = 95
) -> None:
    """Encode ``pixels`` and write them to ``path`` atomically (temp file + fsync + replace)."""
    write_bytes_atomic(Path(path), encode_image(pixels, fmt, quality))
