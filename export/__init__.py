"""The export stage: zero-shot / closed-set classifiers -> validated ONNX (fp32, fp16)."""

from __future__ import annotations

from .manifest import Manifest, Parity, load_manifest
from .onnx_export import check_parity, default_cache_dir, export_cached, export_classifier
from .spec import ExportError, ExportSpec, ManifestError, ParityError, Tolerance
from .verifier import OnnxVerifier

__all__ = [
    "ExportError", "ExportSpec", "Manifest", "ManifestError", "OnnxVerifier", "Parity",
    "ParityError", "Tolerance", "check_parity", "default_cache_dir", "export_cached",
    "export_classifier", "load_manifest",
]
