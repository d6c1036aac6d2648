"""The defaults every entry point shares (the API, the CLI, the service), in one torch-free
place so that ``advx --help`` can show them without loading torch.

The view objects themselves live in :mod:`advx.engine.views`; this module names which views
each transform preset verifies, and :mod:`~advx.engine.views` builds its presets from it.
"""

from __future__ import annotations

DEFAULT_SURROGATES: tuple[str, ...] = ("effnet-lite0", "effnet-lite1")
DEFAULT_VERIFIERS: tuple[str, ...] = ("effnet-lite2",)
TEMPLATE_SETS: tuple[str, ...] = ("simple", "openai", "photo")

# the view matrix of each transform preset, by view name (see advx.engine.views.VIEWS)
_SOLVER_VIEWS = ("own", "whole-tile", "jpeg75", "jpeg50", "resize0.75", "median3", "nlmeans")
PRESET_VIEWS: dict[str, tuple[str, ...]] = {
    "none": ("own",),
    "jpeg": ("own", "jpeg75"),
    "delivery": ("own", "jpeg75", "resize0.75"),
    "solver": _SOLVER_VIEWS,
    "robust": (*_SOLVER_VIEWS, "lowres128", "crop-shift", "blur0.7"),
}
TRANSFORM_PRESETS: tuple[str, ...] = tuple(PRESET_VIEWS)
DEFAULT_PRESET = "solver"

VIEW_GLOSSARY = (
    "own = the verifier's own preprocessing; whole-tile = the tile squashed whole to the "
    "model's size (bilinear, antialiased); jpegQ = re-encoded at quality Q; resize0.75 = down "
    "to 0.75 and back up; median3, nlmeans = OpenCV's 3x3 median, non-local means (h 10, 7x7, "
    "21x21) before the network; lowres128 = a 128 px solver; crop-shift = 5% crop, 2% shift; "
    "blur0.7 = Gaussian 0.7"
)


def view_matrices() -> str:
    """Each preset's view matrix, one line each (for --help and the README)."""
    return "\n".join(f"{name}: {', '.join(views)}" for name, views in PRESET_VIEWS.items())

DEFAULT_TEMPLATES = "simple"  # zero-shot prompt templates
DEFAULT_MAX_SIDE = 1024  # folder runs: longer sides above this are attacked on a downscaled copy
