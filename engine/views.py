"""Solver views: what a solver does to a delivered tile before its network answers.

A :class:`View` composes

- a *delivery* transform (the file re-encoded as JPEG, resized down and up, cropped, blurred),
- a solver-side *denoiser* (OpenCV's non-local means as hcaptcha-challenger runs it, a 3x3
  median), and
- a *geometry*: how the solver turns the tile into its input (size, centre crop, squash or
  letterbox, interpolation, antialiasing). ``None`` is the verifier's own preprocessing;
  ``prescale`` first brings the tile down to a low-resolution solver's size, after which the
  verifier's own preprocessing resizes it to what its graph takes (never skipped).

Verification scores every view of a preset's fixed *view matrix* exactly: the real codec and the
real filters on the delivered bytes. Expectation over transformation (EOT) samples the real codec
and filters forward with differentiable stand-ins backward (kornia's JPEG; behind non-local means
the filter's own Jacobian with its weights frozen, :mod:`advx.engine.nlm_jacobian`, which beat the
identity, a bilateral and a Gaussian stand-in, see benchmarks/EFFICACY.md), kornia's
median, random resampling, and (:class:`~.geometry.GeometryDraw`, in the ``solver`` and ``robust``
presets) random geometries in place of a surrogate's own preprocessing. Geometries themselves live
in :mod:`advx.engine.geometry`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .defaults import DEFAULT_PRESET as DEFAULT_PRESET  # re-exported
from .defaults import PRESET_VIEWS, view_matrices
from .geometry import FITS as FITS  # re-exported, with the geometry, for the views' users
from .geometry import INTERPOLATIONS as INTERPOLATIONS
from .geometry import Geometry as Geometry
from .geometry import GeometryDraw as GeometryDraw
from .geometry import fit as fit
from .geometry import resize as resize
from .nlm_jacobian import LinearizedNLM
from .transforms import (
    BPDA,
    CropShift,
    GaussianBlur,
    Identity,
    Jpeg,
    ResizeDownUp,
    Transform,
    _uniform,
)

# --- solver-side denoisers -----------------------------------------------------------------------


def _to_uint8_bgr(x: torch.Tensor) -> list[np.ndarray]:
    arr = x.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a[..., ::-1]) for a in arr]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of their threads


def per_frame(fn: Callable[[np.ndarray], np.ndarray], frames: list[np.ndarray]
              ) -> list[np.ndarray]:
    """``fn`` on each frame, in order, on as many threads as torch may use. OpenCV's filters
    release the GIL but barely parallelise a 224 px tile inside one call (non-local means on 16
    tiles, 2 cores: 2.1 s on one thread or on OpenCV's two, 1.1 s with two tiles at a time)."""
    workers = max(1, torch.get_num_threads())
    if workers == 1 or len(frames) < 2:
        return [fn(f) for f in frames]
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="advx-frames")
    return list(pool.map(fn, frames))


def _from_bgr(frames: list[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    arr = np.stack([f[..., ::-1] for f in frames])
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(
        like.device, like.dtype) / 255


@dataclass(frozen=True)
class NonLocalMeans:
    """OpenCV's fastNlMeansDenoisingColored(img, None, h, h_color, template, search), on the
    8-bit BGR image as hcaptcha-challenger calls it (h 10, 7x7 patches, 21x21 search)."""

    h: float = 10.0
    h_color: float = 10.0
    template: int = 7
    search: int = 21

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        import cv2

        out = per_frame(lambda f: cv2.fastNlMeansDenoisingColored(
            f, None, self.h, self.h_color, self.template, self.search), _to_uint8_bgr(x))
        return _from_bgr(out, x)

    def __str__(self) -> str:
        return f"nlmeans{self.h:g}"


@dataclass(frozen=True)
class Median:
    """OpenCV's medianBlur on the 8-bit image."""

    k: int = 3

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        import cv2

        return _from_bgr([cv2.medianBlur(f, self.k) for f in _to_uint8_bgr(x)], x)

    def __str__(self) -> str:
        return f"median{self.k}"


# --- differentiable stand-ins for EOT -------------------------------------------------------------


@dataclass(frozen=True)
class SoftMedian:
    """kornia's median blur (differentiable: the gradient reaches the median pixel)."""

    k: int = 3

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        from kornia.filters import median_blur

        return median_blur(x, (self.k, self.k))

    def __str__(self) -> str:
        return f"softmedian{self.k}"


@dataclass(frozen=True)
class SoftDenoise:
    """A differentiable stand-in for non-local means: kornia's edge-preserving bilateral
    filter, with a colour sigma of about the NLM strength (h 10 on 0..255)."""

    lo: float = 0.03  # colour sigma range, [0, 1] units
    hi: float = 0.08
    spatial: float = 1.5

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        from kornia.filters import bilateral_blur

        sigma = _uniform(self.lo, self.hi, g)
        return bilateral_blur(x, (5, 5), sigma, (self.spatial, self.spatial))

    def __str__(self) -> str:
        return f"softdenoise{self.lo:g}-{self.hi:g}"


@dataclass(frozen=True)
class StraightThrough(Identity):
    """The identity, as a denoiser's gradient stand-in (BPDA)."""

    def __str__(self) -> str:
        return "straight-through"


@dataclass(frozen=True)
class RealDenoise:
    """EOT over the real solver-side filter: OpenCV's output forward, a differentiable
    stand-in's gradient backward (BPDA)."""

    real: NonLocalMeans | Median = field(default_factory=NonLocalMeans)
    soft: SoftDenoise | SoftMedian | StraightThrough | LinearizedNLM = field(
        default_factory=StraightThrough)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if not x.requires_grad:
            return self.real(x)
        return BPDA.apply(x, self.real, lambda t: self.soft(t, g))

    def __str__(self) -> str:
        return f"real-{self.real}"


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


EotTransform = Transform | SoftMedian | SoftDenoise | RealDenoise | Resample


# --- views and presets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One way a solver may see a delivered tile (see the module docstring)."""

    name: str
    delivery: Transform = field(default_factory=Identity)
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


def score(scorer, images: torch.Tensor, view: View) -> torch.Tensor:
    """A scorer's logits for ``images`` seen through ``view``."""
    return look(scorer, view.images(images), view)


def look(scorer, seen: torch.Tensor, view: View) -> torch.Tensor:
    """A scorer's logits for tiles already through ``view.images`` (its geometry follows)."""
    if view.geometry is None:
        return scorer(seen)
    return scorer(seen, geometry=view.geometry)


@dataclass(frozen=True)
class Preset:
    """A named solver model: what EOT samples from and the view matrix verification checks."""

    name: str
    eot: tuple[EotTransform, ...]  # one is drawn per EOT sample
    views: tuple[View, ...]  # the candidate must fool every verifier under each of these
    help: str = ""
    geometry: GeometryDraw | None = None  # EOT over the surrogates' preprocessing too

    def describe(self) -> str:
        return "; ".join(f"{v.name} ({v.describe()})" for v in self.views)


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

_DELIVERY_EOT = (Identity(), Jpeg(50, 95), ResizeDownUp(0.5, 1.0))
_SOLVER_EOT = (Identity(), Jpeg(50, 95), ResizeDownUp(0.5, 1.0), Resample(96, 384, 0.8),
               SoftMedian(3), RealDenoise(NonLocalMeans(), LinearizedNLM()),
               CropShift(0.06, 0.03))

VIEWS: dict[str, View] = {v.name: v for v in (OWN, WHOLE, JPEG75, JPEG50, RESIZE75, NLM, MEDIAN,
                                                LOWRES, CROP, BLUR)}
_EOT = {"none": (Identity(),), "jpeg": (Identity(), Jpeg(50, 95)), "delivery": _DELIVERY_EOT,
        "solver": _SOLVER_EOT, "robust": (*_SOLVER_EOT, GaussianBlur(0.3, 1.0))}
_HELP = {"none": "the delivered tile as is", "jpeg": "and after JPEG 75",
         "delivery": "and after JPEG 75 and a 0.75 down-and-up resize",
         "solver": "each verifier's own preprocessing and a whole-tile resize, JPEG 75 and 50, "
                   "resize 0.75, a 3x3 median and non-local means (h 10)",
         "robust": "solver's views, a 128 px solver, crop/shift and blur 0.7"}
# the presets that model solvers (and their own preprocessing) also draw the geometry
_GEOMETRY = {"solver": GeometryDraw(), "robust": GeometryDraw()}
PRESETS: dict[str, Preset] = {
    name: Preset(name, eot=_EOT[name], views=tuple(VIEWS[v] for v in views), help=_HELP[name],
                 geometry=_GEOMETRY.get(name))
    for name, views in PRESET_VIEWS.items()
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown transform preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def sample_eot(preset: Preset, x: torch.Tensor, g: torch.Generator | None,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Apply one transform drawn from the preset's EOT distribution: uniformly, or in
    proportion to ``weights`` (one per transform, see :func:`eot_weights`)."""
    if weights is None:
        i = int(torch.randint(len(preset.eot), (), generator=g))
    else:
        i = int(torch.multinomial(weights, 1, generator=g))
    return preset.eot[i](x, g)


def stands_for(t: EotTransform, view: View) -> bool:
    """Whether the EOT transform ``t`` models what ``view`` does to a tile."""
    if isinstance(t, Identity) and not isinstance(t, StraightThrough):
        return (isinstance(view.delivery, Identity) and view.denoise is None
                and view.prescale is None)
    if isinstance(t, Jpeg | ResizeDownUp | CropShift | GaussianBlur):
        return isinstance(view.delivery, type(t))
    if isinstance(t, SoftMedian):
        return isinstance(view.denoise, Median)
    if isinstance(t, SoftDenoise):
        return isinstance(view.denoise, NonLocalMeans)
    if isinstance(t, RealDenoise):
        return isinstance(view.denoise, type(t.real))
    if isinstance(t, Resample):
        return view.prescale is not None or view.geometry is not None
    return False


def eot_weights(preset: Preset, failing: dict[str, float], focus: float) -> torch.Tensor:
    """Adaptive EOT: each transform's weight is ``1 + focus * f``, f the largest share of the
    batch that a view it stands for still fails (``failing``: view name -> share in [0, 1])."""
    w = [1 + focus * max((failing.get(v.name, 0.0) for v in preset.views if stands_for(t, v)),
                         default=0.0)
         for t in preset.eot]
    return torch.tensor(w)


def presets_help() -> str:
    """The view matrix of every preset, for --help and the README (one line each)."""
    return view_matrices()

