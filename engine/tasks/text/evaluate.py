"""The text task in ``advx eval``: what OCR solvers read on a set of captchas, under each
view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...pixels import as_float
from ...views.view import SeenTiles, View

Reads = dict[str, dict[str, list[str]]]  # solver -> view -> reading per captcha


@torch.no_grad()
def read_views(verifiers: Sequence, images: Sequence[torch.Tensor], views: Sequence[View],
               batch: int = 32) -> Reads:
    """Each verifier's reading of each image ([3, H, W], uint8 or [0, 1]) under each view;
    images of one size are read together."""
    out: Reads = {v.name: {w.name: [""] * len(images) for w in views} for v in verifiers}
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    for idx in by_size.values():
        for lo in range(0, len(idx), batch):
            rows = idx[lo : lo + batch]
            x = as_float(torch.stack([images[i] for i in rows]))
            seen, all_rows = SeenTiles(x, views), torch.arange(len(x))
            for w in views:
                tiles = seen(w, all_rows)
                for v in verifiers:
                    for i, s in zip(rows, v.read(tiles), strict=True):
                        out[v.name][w.name][i] = s
    return out


__all__ = ["Reads", "read_views"]
