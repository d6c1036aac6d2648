"""The export stage: the model registry (:mod:`.zoo`), foreign solvers (:mod:`.solver`), ONNX
exports (:mod:`.onnx`); the engine builds on it, never the other way round. The names below
load lazily, so that ``advx.export.defaults`` loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ExportError": "advx.export.onnx.spec", "ExportSpec": "advx.export.onnx.spec",
    "ManifestError": "advx.export.onnx.spec", "ParityError": "advx.export.onnx.spec",
    "Tolerance": "advx.export.onnx.spec",
    "Manifest": "advx.export.onnx.manifest", "Parity": "advx.export.onnx.manifest",
    "load_manifest": "advx.export.onnx.manifest",
    "check_parity": "advx.export.onnx.export", "export_classifier": "advx.export.onnx.export",
    "export_model": "advx.export.onnx.export",
    "default_cache_dir": "advx.export.onnx.cache", "export_cached": "advx.export.onnx.cache",
    "remove_stale_exports": "advx.export.onnx.cache",
    "OnnxVerifier": "advx.export.onnx.verifier",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'advx.export' has no attribute {name!r}")
