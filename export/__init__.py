"""The export stage: a registry model as one validated ONNX graph (fp32, fp16) in a folder of
its own, with its manifest, for ``advx export`` and for solvers tested elsewhere.

The engine verifies with such graphs itself (exported on demand into its cache), so the export
machinery lives in :mod:`advx.engine.onnx`; this package is its public face and imports it,
never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..engine.errors import RunError
from ..engine.onnx.cache import default_cache_dir, export_cached, remove_stale_exports
from ..engine.onnx.export import check_parity, export_classifier
from ..engine.onnx.manifest import Manifest, Parity, load_manifest
from ..engine.onnx.spec import ExportError, ExportSpec, ManifestError, ParityError, Tolerance
from ..engine.onnx.verifier import OnnxVerifier
from ..engine.zoo import DEFAULT_TEMPLATES, LabelMap, create_classifier, is_solver_name

__all__ = [
    "ExportError", "ExportSpec", "Manifest", "ManifestError", "OnnxVerifier", "Parity",
    "ParityError", "Tolerance", "check_parity", "default_cache_dir", "export_cached",
    "export_classifier", "export_model", "load_manifest", "remove_stale_exports",
]


def export_model(model: str, labels: Sequence[str], out_dir: str | Path,
                 spec: ExportSpec | None = None, *, templates: str = DEFAULT_TEMPLATES,
                 label_map: LabelMap | None = None) -> Manifest:
    """Export registry model ``model`` as a classifier over ``labels`` to ``out_dir``
    (``model.onnx`` and ``manifest.json``), validated like every export. A foreign solver
    (``onnx:SPEC.json``) is refused: it is an ONNX graph already."""
    if ":" in model and is_solver_name(model):
        raise RunError(f"{model} is already an ONNX graph: name it directly in "
                       f"--verifiers / advx eval --models")
    clf = create_classifier(model, labels, templates=templates, label_map=label_map)
    return export_classifier(clf, out_dir, spec or ExportSpec())
