"""The text task in ``advx eval``: what OCR solvers read on a set of captchas, under each
view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...views.view import View, each_view

Reads = dict[str, dict[str, list[str]]]  # solver -> view -> reading per captcha


@torch.no_grad()
def read_views(verifiers: Sequence, images: Sequence[torch.Tensor], views: Sequence[View],
               batch: int = 32) -> Reads:
    """Each verifier's reading of each image ([3, H, W], uint8 or [0, 1]) under each view;
    images of one size are read together."""
    out: Reads = {v.name: {w.name: [""] * len(images) for w in views} for v in verifiers}
    for rows, w, tiles in each_view(images, views, batch):
        for v in verifiers:
            for i, s in zip(rows, v.read(tiles), strict=True):
                out[v.name][w.name][i] = s
    return out


__all__ = ["Reads", "read_views"]
