"""advx: harden CAPTCHAs against AI solvers with adversarial perturbations, one engine for
every kind of challenge (a registered task: ``labels`` for image tiles against classifiers,
``text`` for text captchas against OCR solvers).

The public API (everything importable without the CLI)::

    import advx
    results = advx.harden(images, labels, label_set=[...], surrogates=[...], verifiers=[...])
    texts = advx.harden(captchas, ["7KX2P", ...], task="text")
    outcome = advx.harden_folder("tiles/", "hardened/", ray="auto")  # as `advx harden`
    outcome = advx.harden_folder("captchas/", "out/", task="text")   # ... --task text
    figures = advx.evaluate_folder("out/", task="text")               # as `advx eval`
    check = advx.adapt_run("out/", "adapt/", config=advx.AdaptConfig(sizes=(0, 200)))

A :class:`Hardener` loads a task's models once for many ``run`` calls; a
:class:`HardenService` batches concurrent requests of every task (``advx serve``).

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
    "evaluate_folder": "advx.engine.evaluate",
    "adapt_run": "advx.engine.adapt",
    "AdaptConfig": "advx.engine.adapt",
    "HardenConfig": "advx.engine.config",
    "HardenResult": "advx.engine.results",
    "LabelResult": "advx.engine.tasks.labels",
    "TextResult": "advx.engine.tasks.text",
    "TASKS": "advx.engine.tasks",
    "Task": "advx.engine.tasks",
    "register_task": "advx.engine.tasks",
    "HardenService": "advx.engine.serve.service",
    "TaskSetup": "advx.engine.serve.requests",
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
