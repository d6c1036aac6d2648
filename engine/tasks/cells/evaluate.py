"""The cells task in ``advx eval``: what detectors answer on a set of challenges, under each
view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...views.view import View, each_view
from . import challenge as chal


@torch.no_grad()
def answer_views(verifiers: Sequence, images: Sequence[torch.Tensor], views: Sequence[View],
                 truths: Sequence[dict], batch: int = 16) -> dict[str, dict[str, list]]:
    """verifier -> view -> per image {"answer": its answer, "truth": the truth's answer}."""
    from .models import bind_queries, read

    bind_queries(verifiers, [t["label"] for t in truths])
    out: dict = {v.name: {w.name: [None] * len(images) for w in views} for v in verifiers}
    for rows, w, tiles in each_view(images, views, batch):
        h, wd = tiles.shape[-2:]
        for v in verifiers:
            got, _, _, _ = read(v, tiles.cpu(), [truths[i] for i in rows], (h, wd))
            for i, a in zip(rows, got, strict=True):
                out[v.name][w.name][i] = {"answer": a,
                                          "truth": chal.truth_answer(truths[i], h, wd)}
    return out


__all__ = ["answer_views"]
