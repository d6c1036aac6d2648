"""advx: harden image CAPTCHAs against AI solvers with transferable adversarial perturbations.

The public API (everything importable without the CLI)::

    import advx
    results = advx.harden(images, labels, label_set=[...], surrogates=[...], verifiers=[...])
    outcome = advx.harden_folder("tiles/", "hardened/", ray="auto")  # as `advx harden`

Heavy modules load lazily so that ``advx --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "harden": "advx.engine.api",
    "Hardener": "advx.engine.api",
    "harden_folder": "advx.engine.folder",
    "RayOptions": "advx.engine.folder",
    "HardenConfig": "advx.engine.config",
    "HardenResult": "advx.engine.results",
    "create_classifier": "advx.engine.zoo",
    "list_entries": "advx.engine.zoo",
    "parse_name": "advx.engine.zoo",
    "export_classifier": "advx.export",
    "export_cached": "advx.export",
    "OnnxVerifier": "advx.export",
    "ExportSpec": "advx.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'advx' has no attribute {name!r}")
