"""Transform presets: named models of what solvers do to a tile, declared in one place.

A preset names its *view matrix* (the views verification scores exactly on the delivered file,
see :mod:`advx.engine.views.view`) and the role of each view in it: a *deciding* view must be beaten
(every verifier wrong under it) before an image is done; a *reported* view is scored and shown
in every figure but never keeps an image in the batch. The defaults decide on what transfer can
reach (the verifier's own preprocessing, a whole-tile resize, JPEG 75, a 0.75 resize) and report
the harsher filters (JPEG 50, median, non-local means); the text preset models OCR solvers
(PIL grey, Otsu binarisation, a slight rotation; :mod:`advx.engine.views.ocr`). A verifier
that is also a surrogate (a solver the user has, attacked with its own gradients) is held to
every view of the matrix.
A preset also names the transforms expectation over transformation (EOT) draws from
during the attack, whether EOT also draws other solvers' resize and crop in place of each
surrogate's own preprocessing, and a line of help. This module is torch-free so that
``advx --help`` can show the presets without loading torch; the view and transform objects
behind the names live in :mod:`advx.engine.views.view`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    views: tuple[str, ...]  # view names: every view is scored on the delivered file
    eot: tuple[str, ...]  # EOT transform names, one drawn per gradient
    decide: tuple[str, ...] | None = None  # the deciding views (None: all of them)
    geometry: bool = False  # EOT also draws other solvers' resize and crop
    help: str = ""

    @property
    def deciding(self) -> tuple[str, ...]:
        return self.views if self.decide is None else self.decide

    @property
    def reported(self) -> tuple[str, ...]:
        return tuple(v for v in self.views if v not in self.deciding)

    def matrix(self) -> str:
        rep = f"; reported: {', '.join(self.reported)}" if self.reported else ""
        return f"{self.name}: decide {', '.join(self.deciding)}{rep}"


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to the registry; a name already taken is refused."""
    if preset.name in PRESETS:
        raise ValueError(f"transform preset {preset.name!r} is already registered")
    if not preset.views or not preset.eot:
        raise ValueError(f"transform preset {preset.name!r} needs views and EOT transforms")
    check_roles(preset, preset.deciding)
    PRESETS[preset.name] = preset
    return preset


def check_roles(preset: Preset, decide: tuple[str, ...]) -> None:
    """Raise ValueError unless ``decide`` is a non-empty set of views of ``preset``."""
    unknown = [v for v in decide if v not in preset.views]
    if not decide or unknown or len(set(decide)) != len(decide):
        raise ValueError(f"deciding views must be distinct views of preset {preset.name!r} "
                         f"({', '.join(preset.views)}), got {', '.join(decide) or 'none'}")


def resolve_decide(name: str, decide: str | Sequence[str]) -> tuple[str, ...]:
    """``decide`` (view names, or one comma list; ``all``: every view) as deciding views of
    preset ``name``, in the preset's order; ValueError naming the preset's views otherwise."""
    preset = get_preset(name)
    if isinstance(decide, str):
        decide = [v.strip() for v in decide.split(",") if v.strip()]
    decide = preset.views if tuple(decide) == ("all",) else tuple(decide)
    check_roles(preset, decide)
    return tuple(v for v in preset.views if v in decide)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown transform preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


_SOLVER_VIEWS = ("own", "whole-tile", "jpeg75", "jpeg50", "resize0.75", "median3", "nlmeans")
_SOLVER_DECIDE = ("own", "whole-tile", "jpeg75", "resize0.75")
_SOLVER_EOT = ("identity", "jpeg50-95", "resize0.5-1", "resample96-384", "softmedian3",
               "real-nlmeans", "crop-shift0.06")

register_preset(Preset("none", ("own",), ("identity",), help="the delivered tile as is"))
register_preset(Preset("jpeg", ("own", "jpeg75"), ("identity", "jpeg50-95"),
                       help="and after JPEG 75"))
register_preset(Preset("delivery", ("own", "jpeg75", "resize0.75"),
                       ("identity", "jpeg50-95", "resize0.5-1"),
                       help="and after JPEG 75 and a 0.75 down-and-up resize"))
register_preset(Preset("solver", _SOLVER_VIEWS, _SOLVER_EOT, _SOLVER_DECIDE, geometry=True,
                       help="each verifier's own preprocessing and a whole-tile resize, JPEG 75 "
                            "and 50, resize 0.75, a 3x3 median and non-local means (h 10)"))
register_preset(Preset("robust", (*_SOLVER_VIEWS, "lowres128", "crop-shift", "blur0.7"),
                       (*_SOLVER_EOT, "blur0.3-1"), _SOLVER_DECIDE, geometry=True,
                       help="solver's views, a 128 px solver, crop/shift and blur 0.7"))
register_preset(Preset("text", ("own", "grey", "otsu", "jpeg75", "jpeg50", "median3", "nlmeans",
                                "resize0.5", "rotate3"),
                       ("identity", "grey", "soft-otsu", "jpeg50-95", "resize0.5-1",
                        "softmedian3", "rotate-3-3"),
                       ("own", "grey", "jpeg75", "median3"),
                       help="text CAPTCHAs: decide on the OCR solver's own preprocessing, PIL "
                            "grey, JPEG 75 and a 3x3 median; report Otsu binarisation (out of "
                            "reach at 8/255 on high-contrast text, even white-box), JPEG 50, "
                            "non-local means, resize 0.5 and a 3 degree rotation"))

register_preset(Preset("detect", ("own", "jpeg75", "jpeg50", "resize0.75", "median3", "nlmeans"),
                       ("identity", "jpeg50-95"),
                       ("own", "jpeg75"),
                       help="detectors and segmenters: decide on the detector's own letterbox "
                            "and JPEG 75; report JPEG 50, a 0.75 resize, a 3x3 median and "
                            "non-local means"))

TRANSFORM_PRESETS: tuple[str, ...] = tuple(PRESETS)

VIEW_GLOSSARY = (
    "own = the verifier's own preprocessing; whole-tile = the tile squashed whole to the "
    "model's size (bilinear, antialiased); jpegQ = re-encoded at quality Q; resize0.75, "
    "resize0.5 = down to 0.75, 0.5 and back up; median3, nlmeans = OpenCV's 3x3 median, "
    "non-local means (h 10, 7x7, 21x21) before the network; lowres128 = a 128 px solver; "
    "crop-shift = 5% crop, 2% shift; blur0.7 = Gaussian 0.7; grey = PIL's grey conversion; "
    "otsu = grey binarised at OpenCV's Otsu threshold; rotate3 = rotated 3 degrees, border "
    "replicated"
)


def view_matrices() -> str:
    """Each preset's view matrix and roles, one line each (for --help and the README)."""
    return "\n".join(p.matrix() for p in PRESETS.values())
