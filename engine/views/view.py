"""Solver views: what a solver does to a delivered tile before its network answers.

A :class:`View` composes

- a *delivery* transform (the file re-encoded as JPEG, resized down and up, cropped, blurred),
- a solver-side *denoiser* (:mod:`advx.engine.views.denoise`: OpenCV's non-local means as
  hcaptcha-challenger runs it, a 3x3 median), and
- a *geometry*: how the solver turns the tile into its input (size, centre crop, squash or
  letterbox, interpolation, antialiasing). ``None`` is the verifier's own preprocessing;
  ``prescale`` first brings the tile down to a low-resolution solver's size, after which the
  verifier's own preprocessing resizes it to what its graph takes (never skipped).

Verification scores every view of a preset exactly, on the delivered bytes; expectation over
transformation (EOT) draws from the preset's transforms (real codecs and filters forward,
differentiable stand-ins backward). :mod:`advx.engine.views.presets` names them; this module
holds the objects behind the names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...export.geometry import Geometry, fit, resize
from ..pixels import as_float
from .denoise import Median, NonLocalMeans, RealDenoise, SoftMedian
from .nlm_jacobian import LinearizedNLM
from .ocr import Grey, Otsu, Rotate, TextTransform
from .presets import Preset, get_preset
from .transforms import (
    CropShift,
    GaussianBlur,
    GeometryDraw,
    Identity,
    Jpeg,
    ResizeDownUp,
    Transform,
    _uniform,
)


@dataclass(frozen=True)
class Resample:
    """A random low-resolution solver: resize to a side in [lo, hi] px with a random
    interpolation (antialiased or not) and a centre crop in [crop, 1], then back to the
    tile's size (the surrogate's own preprocessing follows)."""

    lo: int = 96
    hi: int = 384
    crop: float = 0.8

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        side = round(_uniform(self.lo, self.hi, g))
        c = _uniform(self.crop, 1.0, g)
        modes = ("bilinear", "bicubic", "area")
        mode = modes[int(torch.randint(len(modes), (), generator=g))]
        aa = bool(torch.rand((), generator=g) < 0.5)
        k = side / max(h, w)
        small = fit(x, (max(1, round(h * k)), max(1, round(w * k))), crop=c, mode=mode,
                    antialias=aa)
        return resize(small, (h, w), "bilinear", antialias=False)

    def __str__(self) -> str:
        return f"resample{self.lo}-{self.hi}"


EotTransform = Transform | TextTransform | SoftMedian | RealDenoise | Resample


@dataclass(frozen=True)
class View:
    """One way a solver may see a delivered tile (see the module docstring)."""

    name: str
    delivery: Transform | TextTransform = field(default_factory=Identity)
    denoise: NonLocalMeans | Median | None = None
    geometry: Geometry | None = None  # None: the verifier's own preprocessing
    prescale: int | None = None  # a low-resolution solver: the tile brought to this side first

    @property
    def cost(self) -> int:
        """Rough relative cost; expensive views are scored only where cheap ones are fooled."""
        return 10 if isinstance(self.denoise, NonLocalMeans) else 1

    def images(self, delivered: torch.Tensor) -> torch.Tensor:
        """The delivered tiles as this solver has them before its own preprocessing."""
        x = self.delivery(delivered)
        if self.denoise is not None:
            x = self.denoise(x)
        if self.prescale is not None:
            h, w = x.shape[-2:]
            k = self.prescale / max(h, w)
            x = resize(x, (max(1, round(h * k)), max(1, round(w * k))), "bilinear", True)
        return x

    @property
    def source(self) -> tuple:
        """What :meth:`images` depends on: views with the same source see the same tiles."""
        return self.delivery, self.denoise, self.prescale

    def describe(self) -> str:
        parts = [str(self.delivery) if not isinstance(self.delivery, Identity) else "",
                 str(self.denoise) if self.denoise else "",
                 f"at {self.prescale}px" if self.prescale else "",
                 f"geometry {self.geometry}" if self.geometry else "own preprocessing"]
        return ", ".join(p for p in parts if p)


def by_cost(views: Sequence[View]) -> list[View]:
    """Cheap views first (stable): a lazy pass stops scoring a row at its first view that
    cannot be beaten any more, so the costly ones run on the fewest rows."""
    return sorted(views, key=lambda w: w.cost)


def look(scorer, seen: torch.Tensor, view: View) -> torch.Tensor:
    """A scorer's logits for tiles already through ``view.images`` (its geometry follows)."""
    if view.geometry is None:
        return scorer(seen)
    return scorer(seen, geometry=view.geometry)


@dataclass(frozen=True)
class Eot:
    """What expectation over transformation draws from for one gradient."""

    transforms: tuple[EotTransform, ...]  # one is drawn per EOT sample
    geometry: GeometryDraw | None = None  # EOT over the surrogates' preprocessing too
    samples: int = 1  # draws per attack step, their gradients averaged

    def sample(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Apply one transform drawn uniformly."""
        return self.transforms[int(torch.randint(len(self.transforms), (), generator=g))](x, g)


OWN = View("own")
WHOLE = View("whole-tile", geometry=Geometry(crop=1.0, interpolation="bilinear", antialias=True))
JPEG75 = View("jpeg75", Jpeg(75, 75))
JPEG50 = View("jpeg50", Jpeg(50, 50))
RESIZE75 = View("resize0.75", ResizeDownUp(0.75, 0.75))
NLM = View("nlmeans", denoise=NonLocalMeans())
MEDIAN = View("median3", denoise=Median(3))
LOWRES = View("lowres128", prescale=128)
CROP = View("crop-shift", CropShift(0.05, 0.02, True))
BLUR = View("blur0.7", GaussianBlur(0.7, 0.7))
# text solvers: delivery runs on the delivered 8-bit tiles without a gradient, so grey and Otsu
# are exactly PIL's and OpenCV's
GREY = View("grey", Grey())
OTSU = View("otsu", Otsu())
RESIZE50 = View("resize0.5", ResizeDownUp(0.5, 0.5))
ROTATE = View("rotate3", Rotate(3, 3))

VIEWS: dict[str, View] = {v.name: v for v in (OWN, WHOLE, JPEG75, JPEG50, RESIZE75, NLM, MEDIAN,
                                                LOWRES, CROP, BLUR, GREY, OTSU, RESIZE50,
                                                ROTATE)}
EOT_TRANSFORMS: dict[str, EotTransform] = {
    "identity": Identity(),
    "jpeg50-95": Jpeg(50, 95),
    "resize0.5-1": ResizeDownUp(0.5, 1.0),
    "resample96-384": Resample(96, 384, 0.8),
    "softmedian3": SoftMedian(3),
    "real-nlmeans": RealDenoise(NonLocalMeans(), LinearizedNLM()),
    "crop-shift0.06": CropShift(0.06, 0.03),
    "blur0.3-1": GaussianBlur(0.3, 1.0),
    "grey": Grey(),
    "soft-otsu": Otsu(),  # exact forward, a soft threshold's gradient
    "rotate-3-3": Rotate(-3, 3),
}


def _named(table: dict, names: tuple[str, ...], what: str, preset: str) -> tuple:
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"preset {preset!r} names unknown {what} {unknown}; known: "
                         f"{sorted(table)}")
    return tuple(table[n] for n in names)


def views_of(preset: Preset | str) -> tuple[View, ...]:
    """The view matrix of a preset (a name or a :class:`~.presets.Preset`)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return _named(VIEWS, p.views, "views", p.name)


def eot_of(preset: Preset | str, samples: int = 1) -> Eot:
    """What EOT draws from under a preset, ``samples`` draws per attack step."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return Eot(_named(EOT_TRANSFORMS, p.eot, "EOT transforms", p.name),
               GeometryDraw() if p.geometry else None, samples)


class SeenTiles:
    """The delivered tiles as each view's solver has them (before its geometry), computed once
    per row and source, and let go after the last view that uses it."""

    def __init__(self, delivered: torch.Tensor, views: Sequence[View]) -> None:
        self.delivered = delivered
        self.left = Counter(v.source for v in views)  # views still to ask, per source
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, view: View, rows: torch.Tensor) -> torch.Tensor | None:
        """``view``'s tiles for ``rows`` (None when there are none)."""
        key, n = view.source, len(self.delivered)
        self.left[key] -= 1
        out, done = self.cache.pop(key, (None, torch.zeros(n, dtype=torch.bool)))
        need = rows[~done[rows]]
        if len(need):
            x = view.images(self.delivered[need])
            if out is None:
                out = x.new_empty((n, *x.shape[1:]))
            out[need.to(out.device)] = x
            done[need] = True
        if out is not None and self.left[key] > 0:
            self.cache[key] = (out, done)
        return out[rows.to(out.device)] if len(rows) else None


def each_view(images: Sequence[torch.Tensor], views: Sequence[View], batch: int | None = None):
    """(indices, view, tiles) for each group of same-size ``images`` (at most ``batch``) and
    each view: the group as that view's solver has it."""
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    for idx in by_size.values():
        step = batch or len(idx)
        for lo in range(0, len(idx), step):
            rows = idx[lo : lo + step]
            x = as_float(torch.stack([images[i] for i in rows]))
            seen, every = SeenTiles(x, views), torch.arange(len(rows))
            for w in views:
                yield rows, w, seen(w, every)
