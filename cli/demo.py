"""``advx demo``: cut labelled tiles from photos that ship inside Python packages, harden them
(or, with ``--task text``, draw text captchas and harden them against the OCR solvers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..engine.config import HardenConfig
from .common import EXIT_INTERRUPTED, RunError, exit_codes, fail_cleanly
from .harden import summary_table
from .harden_text import TASKS, text_summary_table

TILE = 224
CHECK_MODEL = "effnet-lite2"  # the default verifier: tiles it gets wrong clean are dropped
# (cx, cy, side) of each crop: centre as a fraction of the photo, side as a fraction of its
# shorter side
CROPS: tuple[tuple[float, float, float], ...] = ((0.5, 0.5, 1.0), (0.4, 0.5, 0.7),
                                                 (0.6, 0.45, 0.8), (0.5, 0.55, 0.6))
SAMPLES_HINT = "pip install 'advx[samples]'"
TEXT_CAPTCHAS = 8  # captchas the text demo draws (engine/text_draw.py, seed 0)


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
# skimage's camera ("tripod") works too; six photos x 2 crops keep the demo near a minute on
# 2 idle CPU cores.
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

    from ..export.zoo import create_classifier

    clf = create_classifier(model, label_set)
    x = torch.from_numpy(np.stack([t for _, _, t in tiles])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pred = clf(x).argmax(1).tolist()
    return [label_set[p] == lab for p, (lab, _, _) in zip(pred, tiles, strict=True)]


def write_demo_input(input_dir: Path, per_photo: int, echo: Callable[[str], None]) -> int:
    """Write the checked tiles to ``input_dir/<label>/<photo>_<n>.png``; returns their number."""
    from ..engine.images import save_image_atomic

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


@click.command("demo", epilog=exit_codes("the demo ran and wrote its report"))
@click.option("--task", type=click.Choice(TASKS), default="image", show_default=True,
              help="image: tiles cut from sample photos; text: drawn text captchas.")
@click.option("--out", "out_dir", default="advx-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Demo folder: tiles go to OUT/input, hardened tiles to OUT/hardened "
                   "(text: OUT/text-input, OUT/text-hardened).")
@click.option("--steps", type=click.IntRange(min=0), default=40, show_default=True,
              help="Attack step limit per tile or captcha.")
@click.option("--tiles-per-photo", type=click.IntRange(1, len(CROPS)), default=None,
              help="Crops cut from each sample photo (image only) [default: 2].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
def demo_cmd(task: str, out_dir: Path, steps: int, tiles_per_photo: int | None,
             quiet: bool) -> None:
    """Harden tiles cut from sample photos: a quick tour.

    The photos ship with scikit-image, scikit-learn and matplotlib (pip install
    'advx[samples]'). Writes 224x224 tiles to OUT/input/<label>/ (keeping those the default
    verifier gets right clean), runs `advx harden OUT/input --out OUT/hardened` with the
    default settings, and prints where report.html is. About 1-2 minutes on 2 CPU cores.
    Running it again finishes an interrupted demo (it resumes); delete OUT to start over.

    --task text draws 8 text captchas (with the captcha package's font: pip install
    'advx[samples]') to OUT/text-input with their labels.csv and runs `advx harden
    OUT/text-input --out OUT/text-hardened --task text`: every built-in OCR solver installed
    is attacked and verified. About a minute on 2 CPU cores.

    \b
    Example:
      advx demo --out /tmp/advx-demo
      advx eval /tmp/advx-demo/hardened --models effnet-lite2,effnet-lite0 --transforms solver
      advx demo --task text --out /tmp/advx-demo
    """
    from ..engine.folder import HardenJob, run_harden

    def echo(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    if task == "text":
        if tiles_per_photo is not None:
            raise click.UsageError("--tiles-per-photo does not apply to --task text")
        return _text_demo(out_dir, steps, quiet, echo)
    tiles_per_photo = tiles_per_photo or 2
    input_dir, hardened = out_dir / "input", out_dir / "hardened"
    try:
        with fail_cleanly():
            n = write_demo_input(input_dir, tiles_per_photo, echo)
            echo(f"wrote {n} tiles to {input_dir}")
            job = HardenJob(input_dir, hardened, config=HardenConfig(steps=steps), resume=True)
            outcome = run_harden(job, show_progress=not quiet, warn=echo)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if not quiet:
        click.echo(summary_table(outcome.summary, hardened))
    if outcome.interrupted:
        click.echo("Interrupted; run `advx demo` again with the same --out to finish.", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    click.echo(f"report: {(hardened / 'report.html').resolve()}")


def _text_demo(out_dir: Path, steps: int, quiet: bool, echo: Callable[[str], None]) -> None:
    """Draw the demo captchas, harden them with the defaults, print the headline."""
    from ..engine.folder import harden_text_folder
    from ..engine.tasks.text.api import text_config
    from ..engine.tasks.text.draw import write_captcha_folder

    input_dir, hardened = out_dir / "text-input", out_dir / "text-hardened"
    try:
        with fail_cleanly():
            try:
                labels = write_captcha_folder(input_dir, TEXT_CAPTCHAS, seed=0)
            except ImportError as e:  # the captcha package draws the glyphs
                raise RunError(str(e)) from e
            echo(f"wrote {TEXT_CAPTCHAS} captchas and {labels.name} to {input_dir}")
            summary = harden_text_folder(input_dir, hardened, labels_csv=labels,
                                         config=text_config(steps=steps), resume=True,
                                         show_progress=not quiet, warn=echo)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if not quiet:
        click.echo(text_summary_table(summary, hardened))
    if summary["interrupted"]:
        click.echo("Interrupted; run `advx demo --task text` again with the same --out to "
                   "finish.", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    click.echo(f"report: {(hardened / 'report.html').resolve()}")
