"""Request images bounded before the engine sees them (refused from their header when too
large or too small; over ``max_side``, attacked on a working copy: :func:`prepare`) and
delivered at the input's size (:func:`deliver`), as folder runs do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE
from ..results import HardenResult
from ..tasks.base import get_task


@dataclass
class Prepared:
    """A request's image as the engine takes it (``working``) and, for a downscaled copy, the
    original's ``full_size`` (W, H) and ``source`` (its encoded bytes or pixels)."""

    working: np.ndarray
    full_size: tuple[int, int] | None = None
    source: bytes | np.ndarray | None = None
    notes: tuple[str, ...] = ()


def image_size(data: bytes) -> tuple[int, int]:
    """(W, H) from an encoded image's header, without decoding its pixels."""
    import io
    import warnings

    from PIL import Image

    from ..images import ImageLoadError, decode_image_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except Exception:  # let the decoder say what is wrong, as it does for files
            decode_image_bytes(data, max_pixels=1)
            raise ImageLoadError("not an image (content not recognised)") from None


def prepare(image: bytes | np.ndarray, *, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE
            ) -> Prepared:
    """Bound one image (encoded bytes from their header, before decoding); ImageLoadError."""
    from ..images import ImageLoadError, decode_image_bytes
    from ..working import MIN_SIDE, downscale, working_size

    def check(w: int, h: int) -> tuple[int, int] | None:
        if w * h > max_pixels:
            raise ImageLoadError(f"decompression bomb: {w}x{h} pixels exceeds the limit of "
                                 f"{max_pixels}")
        size = working_size(w, h, max_side)
        if min(size or (w, h)) < MIN_SIDE:
            raise ImageLoadError(f"image too small to harden: {w}x{h}" + (
                f" (working copy {size[0]}x{size[1]})" if size else "")
                + f"; sides must be >= {MIN_SIDE} px")
        return size

    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        if not data:
            raise ImageLoadError("empty file (0 bytes)")
        check(*image_size(data))  # from the header: nothing decoded yet
        pixels = decode_image_bytes(data, max_pixels=max_pixels)
        source: bytes | np.ndarray = data
    else:
        pixels = source = image
    h, w = pixels.shape[:2]
    size = check(w, h)
    if size is None:
        return Prepared(pixels)
    note = (f"attacked at {size[0]}x{size[1]}; perturbation upsampled to full size {w}x{h}; "
            f"status, predictions and margins refer to the working copy, metrics to the "
            f"full-size image")
    return Prepared(downscale(pixels, size), (w, h), source, (note,))


def size_problem(task: str, prepared: Prepared, max_side: int) -> str | None:
    """Why an image over ``max_side`` is refused: its task hardens it at its own size."""
    t = get_task(task)
    if prepared.full_size is None or t.rescale:
        return None
    w, h = prepared.full_size
    return (f"a {t.noun} of {w}x{h} px is over the longest side of {max_side} px (a {t.noun} "
            f"is hardened at its own size)")


def deliver(prepared: Prepared, result: HardenResult, config: HardenConfig,
            max_pixels: int | None = None) -> HardenResult:
    """The result at the input's size (:func:`~advx.engine.working.full_size_delivery`)."""
    if prepared.full_size is None:
        return result
    from ..images import decode_image_bytes
    from ..working import full_size_delivery

    src = prepared.source
    original = decode_image_bytes(src, max_pixels=max_pixels or prepared.full_size[0]
                                  * prepared.full_size[1]) if isinstance(src, bytes) else src
    image, metrics, scale = full_size_delivery(original, prepared.working, result.image, config)
    notes = [*result.notes, *prepared.notes]
    if scale < 1:
        notes.append(f"perturbation scaled by {scale:.3f} at full size to hold SSIM >= "
                     f"{config.ssim_floor}")
    return dataclasses.replace(
        result, image=image, linf=metrics["linf"], l2=metrics["l2"], ssim=metrics["ssim"],
        psnr=math.inf if metrics["psnr"] is None else metrics["psnr"], notes=notes)


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc), which a long-lived service
    otherwise keeps at the high-water mark of its largest image."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
