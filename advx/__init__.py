"""advx: harden image and text CAPTCHAs against AI solvers with adversarial perturbations.

The public API (everything importable without the CLI)::

    import advx
    results = advx.harden(images, labels, label_set=[...], surrogates=[...], verifiers=[...])
    outcome = advx.harden_folder("tiles/", "hardened/", ray="auto")  # as `advx harden`
    texts = advx.harden_text(captchas, ["7KX2P", ...], config=advx.text_config(eps=6))
    summary = advx.harden_text_folder("captchas/", "hardened/")  # as `advx harden --task text`

``harden_text`` perturbs text CAPTCHAs so that OCR solvers (the built-in ``ddddocr``,
``ddddocr-beta``, ``captcha-whisperer``, ``ppocr-v4-rec``, or ``onnx:SPEC.json`` with a ctc
output) misread them; each :class:`TextResult` gives every solver's reading and character error
rate under each view of the ``text`` preset. A :class:`TextHardener` loads the solvers once for
many ``run`` calls.

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
    "harden_text_folder": "advx.engine.folder",
    "RayOptions": "advx.engine.folder",
    "HardenConfig": "advx.engine.config",
    "HardenResult": "advx.engine.results",
    "harden_text": "advx.engine.tasks.text.api",
    "TextHardener": "advx.engine.tasks.text.api",
    "text_config": "advx.engine.tasks.text.api",
    "TextResult": "advx.engine.results",
    "create_classifier": "advx.export.zoo",
    "list_entries": "advx.export.zoo",
    "parse_name": "advx.export.zoo",
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
