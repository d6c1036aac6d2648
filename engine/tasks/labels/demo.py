"""The labels demo's inputs: labelled tiles cut from photos that ship inside Python packages
(scikit-image, scikit-learn, matplotlib: ``pip install 'advx[samples]'``), keeping those the
default verifier gets right clean."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import RunError

TILE = 224
CHECK_MODEL = "effnet-lite2"  # the default verifier: tiles it gets wrong clean are dropped
# (cx, cy, side) of each crop: centre as a fraction of the photo, side as a fraction of its
# shorter side
CROPS: tuple[tuple[float, float, float], ...] = ((0.5, 0.5, 1.0), (0.4, 0.5, 0.7),
                                                 (0.6, 0.45, 0.8), (0.5, 0.55, 0.6))
SAMPLES_HINT = "pip install 'advx[samples]'"


@dataclass(frozen=True)
class Photo:
    name: str
    label: str  # maps to ImageNet classes (advx.export.zoo.labels.imagenet_classes)
    pixels: np.ndarray  # uint8 HxWx3


def _skimage(name: str, label: str, pick: Callable[[object], np.ndarray] = lambda x: x
             ) -> Callable[[], Photo]:
    def load() -> Photo:
        import skimage.data

        px = np.asarray(pick(getattr(skimage.data, name)()))
        if px.ndim == 2:
            px = np.repeat(px[:, :, None], 3, axis=2)
        return Photo(name, label, np.ascontiguousarray(px, dtype=np.uint8))

    return load


def _sklearn(filename: str, label: str) -> Callable[[], Photo]:
    def load() -> Photo:
        from sklearn.datasets import load_sample_image

        return Photo(filename.rsplit(".", 1)[0], label, np.asarray(load_sample_image(filename)))

    return load


def _matplotlib(filename: str, label: str) -> Callable[[], Photo]:
    def load() -> Photo:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(filename) as fh:
            px = np.asarray(Image.open(fh).convert("RGB"))
        return Photo(filename.rsplit(".", 1)[0], label, px)

    return load


# Photos whose label effnet-lite0/1/2 get right on every crop (checked again at run time).
PHOTOS: tuple[Callable[[], Photo], ...] = (
    _skimage("chelsea", "cat"),
    _skimage("coffee", "espresso"),
    _skimage("stereo_motorcycle", "motorcycle", pick=lambda x: x[0]),
    _skimage("rocket", "missile"),
    _sklearn("china.jpg", "palace"),
    _matplotlib("grace_hopper.jpg", "military uniform"),
)


def load_photos(loaders: Sequence[Callable[[], Photo]] | None = None
                ) -> tuple[list[Photo], int]:
    """The photos whose package is installed (default: PHOTOS), and how many were missing."""
    photos, missing = [], 0
    for load in PHOTOS if loaders is None else loaders:
        try:
            photos.append(load())
        except ImportError:
            missing += 1
    return photos, missing


def crop_tile(pixels: np.ndarray, crop: tuple[float, float, float], size: int = TILE
              ) -> np.ndarray:
    """A square crop (centre and side as fractions) resized to ``size`` (PIL bicubic)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    cx, cy, frac = crop
    side = max(1, int(min(h, w) * frac))
    x0 = int(min(max(cx * w - side / 2, 0), w - side))
    y0 = int(min(max(cy * h - side / 2, 0), h - side))
    tile = Image.fromarray(np.ascontiguousarray(pixels[y0 : y0 + side, x0 : x0 + side]))
    return np.asarray(tile.resize((size, size), Image.Resampling.BICUBIC))


def make_tiles(photos: Sequence[Photo], per_photo: int) -> list[tuple[str, str, np.ndarray]]:
    """(label, file name, tile) for ``per_photo`` crops of each photo."""
    return [(p.label, f"{p.name}_{i + 1}.png", crop_tile(p.pixels, c))
            for p in photos for i, c in enumerate(CROPS[:per_photo])]


def correctly_classified(tiles: Sequence[tuple[str, str, np.ndarray]],
                         label_set: Sequence[str], model: str = CHECK_MODEL) -> list[bool]:
    """Whether ``model`` (over ``label_set``) gets each tile's label right, clean."""
    import torch

    from ....export.zoo import create_classifier

    clf = create_classifier(model, label_set)
    x = torch.from_numpy(np.stack([t for _, _, t in tiles])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pred = clf(x).argmax(1).tolist()
    return [label_set[p] == lab for p, (lab, _, _) in zip(pred, tiles, strict=True)]


def write_demo_input(input_dir: Path, per_photo: int, echo: Callable[[str], None]) -> int:
    """Write the checked tiles to ``input_dir/<label>/<photo>_<n>.png``; returns their number."""
    from ...images import save_image_atomic

    photos, missing = load_photos()
    if missing:
        echo(f"{missing} sample photo(s) skipped: their package is missing ({SAMPLES_HINT})")
    if len({p.label for p in photos}) < 2:
        raise RunError(f"the demo needs the sample photos of scikit-image, scikit-learn and "
                       f"matplotlib: {SAMPLES_HINT}")
    tiles = make_tiles(photos, per_photo)
    label_set = tuple(sorted({lab for lab, _, _ in tiles}))
    ok = correctly_classified(tiles, label_set)
    dropped = [name for (_, name, _), good in zip(tiles, ok, strict=True) if not good]
    if dropped:
        echo(f"dropped {len(dropped)} tile(s) that {CHECK_MODEL} misclassifies clean: "
             f"{', '.join(dropped)}")
    kept = [t for t, good in zip(tiles, ok, strict=True) if good]
    for label, name, tile in kept:
        save_image_atomic(input_dir / label.replace(" ", "_") / name, tile, fmt="png")
    return len(kept)
