"""The model zoo: one registry, one interface (images in [0, 1] -> label logits)."""

from __future__ import annotations

from collections.abc import Sequence

from .labels import CAPTCHA_LABEL_MAP, LabelMapError, binary_label_set, class_sets
from .model import Backbone, ClassifierCore, ImageClassifier, PreprocessCfg
from .registry import (
    GRAMMAR,
    ModelNameError,
    ModelRef,
    ModelUnavailableError,
    build_backbone,
    list_backends,
    list_entries,
    parse_name,
)
from .zeroshot import DEFAULT_TEMPLATES, TEMPLATE_SETS, label_embeddings

__all__ = [
    "CAPTCHA_LABEL_MAP", "DEFAULT_TEMPLATES", "GRAMMAR", "TEMPLATE_SETS", "Backbone",
    "ClassifierCore", "ImageClassifier", "LabelMapError", "ModelNameError", "ModelRef",
    "ModelUnavailableError", "PreprocessCfg", "binary_label_set", "create_classifier",
    "list_backends", "list_entries", "parse_name",
]


def create_classifier(name: str, labels: Sequence[str], *, templates: str = DEFAULT_TEMPLATES,
                      device: str = "cpu") -> ImageClassifier:
    """Build model ``name`` as a classifier over ``labels``: images in [0, 1] -> [N, L] logits.

    Image-text models get a zero-shot head (prompts from ``templates``); ImageNet classifiers
    get a label map head (each label -> a set of ImageNet classes).
    """
    from .model import ClassSetHead, ZeroShotHead

    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {labels}")
    backbone = build_backbone(parse_name(name), device)
    if backbone.kind == "zero_shot":
        head = ZeroShotHead(label_embeddings(backbone, labels, templates), backbone.logit_scale,
                            backbone.logit_bias)
        used_templates: str | None = templates
    else:
        head = ClassSetHead(class_sets(labels), num_classes=1000)
        used_templates = None
    return ImageClassifier(backbone, labels, head, used_templates).to(device)
