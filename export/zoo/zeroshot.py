"""Zero-shot heads: labels -> prompts -> averaged, normalised text embeddings (cached)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..defaults import DEFAULT_TEMPLATES
from .model import Backbone


def _templates() -> dict[str, tuple[str, ...]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return {
        # the CLIP paper's 80 ImageNet prompt templates
        "openai": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
        # open_clip's short set of 7, the default
        "simple": tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES),
        # one prompt, the cheapest
        "photo": ("a photo of a {}.",),
    }


_CACHE: dict[tuple[str, tuple[str, ...], str], torch.Tensor] = {}


def templates(name: str) -> tuple[str, ...]:
    sets = _templates()
    if name not in sets:
        raise ValueError(f"unknown template set {name!r}; choose one of {sorted(sets)}")
    return sets[name]


@torch.no_grad()
def label_embeddings(backbone: Backbone, labels: Sequence[str],
                     template_set: str = DEFAULT_TEMPLATES) -> torch.Tensor:
    """[L, D] normalised label embeddings, each the mean over its prompts, cached per
    (model, labels, templates)."""
    if backbone.encode_text is None:
        raise TypeError(f"{backbone.name} is not an image-text model")
    key = (backbone.name, tuple(labels), template_set)
    if key not in _CACHE:
        prompts = templates(template_set)
        rows = []
        for label in labels:
            emb = backbone.encode_text([p.format(label) for p in prompts]).float()
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
        _CACHE[key] = torch.stack(rows).cpu()
    return _CACHE[key].clone()
