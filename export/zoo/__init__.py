"""The model zoo: one registry, one interface (images in [0, 1] -> label logits). The builders
register on import of this package, so every lookup sees every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..defaults import DEFAULT_TEMPLATES
from ..solver import Solver, SolverClassifier, SolverVerifier
from . import backends, detectors, ocr, zeroshot_detectors  # noqa: F401  (they register)
from .labels import (
    CAPTCHA_LABEL_MAP,
    LabelMap,
    LabelMapError,
    binary_label_set,
    class_sets,
    load_label_map,
)
from .model import ClassSetHead, ImageClassifier, ZeroShotHead
from .registry import (
    GRAMMAR,
    ModelNameError,
    ModelUnavailableError,
    build_backbone,
    list_backends,
    list_entries,
    parse_name,
)
from .zeroshot import label_embeddings

__all__ = [
    "CAPTCHA_LABEL_MAP", "DEFAULT_TEMPLATES", "GRAMMAR", "ImageClassifier", "LabelMap",
    "LabelMapError", "ModelNameError", "ModelUnavailableError", "binary_label_set",
    "create_classifier", "create_verifier", "is_solver_name", "list_backends", "list_entries",
    "load_label_map", "parse_name",
]


def create_classifier(name: str, labels: Sequence[str], *, templates: str = DEFAULT_TEMPLATES,
                      device: str = "cpu", label_map: LabelMap | None = None
                      ) -> ImageClassifier | SolverClassifier:
    """Build model ``name`` as a classifier over ``labels``: images in [0, 1] -> [N, L] logits
    (a zero-shot head for image-text models, a label map head for ImageNet classifiers; a
    foreign solver brings its own)."""
    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {labels}")
    backbone = build_backbone(parse_name(name), device)
    _not_text(name, backbone)
    if isinstance(backbone, Solver):
        return backbone.classifier(labels).to(device)
    if backbone.kind == "zero_shot":
        head = ZeroShotHead(label_embeddings(backbone, labels, templates), backbone.logit_scale,
                            backbone.logit_bias)
        used_templates: str | None = templates
    else:
        head = ClassSetHead(class_sets(labels, label_map), num_classes=1000)
        used_templates = None
    return ImageClassifier(backbone, labels, head, used_templates).to(device)


def is_solver_name(name: str) -> bool:
    """Whether ``name`` names a foreign solver (``onnx:SPEC.json``)."""
    return parse_name(name).backend == "onnx"


def create_verifier(name: str, labels: Sequence[str], *, device: str = "cpu") -> SolverVerifier:
    """A foreign solver as it runs (its graph in onnxruntime), answering over ``labels``."""
    solver = build_backbone(parse_name(name), device)
    _not_text(name, solver)
    if not isinstance(solver, Solver):
        raise ValueError(f"{name} is not a foreign solver; other models verify as exports")
    return solver.verifier(labels, device=device)


def _not_text(name: str, model: object) -> None:
    from ..solver.text import TextSolver

    if getattr(model, "kind", None) == "detect":  # DetectorSolver, ZeroShotDetector
        raise ValueError(f"{name} is a detector or segmenter: it answers grid and click "
                         f"challenges (the cells task), not labels")
    if isinstance(model, TextSolver):
        raise ValueError(f"{name} is a text (OCR) solver: it reads strings, not labels; use it "
                         f"with text CAPTCHAs (advx.export.zoo.ocr.text_solver({name!r}))")
