"""What OCR solvers read on a set of captchas, under each view, and how often a hardened set
fools them: the figures of ``advx eval --task text`` and the text efficacy benchmark.

A solver is *fooled* on a captcha under a view when it read the clean captcha right under that
view and misreads the hardened one (under its case rule); captchas it could not read clean under
that view are counted apart (``read_clean``), never as fooled. The character error rate (edit
distance / truth length) is the mean over every captcha.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...pixels import as_float
from ...views.view import View
from .losses import edit_distance

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
            for w in views:
                seen = w.images(x)
                for v in verifiers:
                    for i, s in zip(rows, v.read(seen), strict=True):
                        out[v.name][w.name][i] = s
    return out


def fooled_table(charsets: dict, texts: Sequence[str], clean: Reads,
                 hardened: Reads | None = None) -> dict[str, dict[str, dict]]:
    """solver -> view -> {n, read_clean, fooled, fooled_rate, cer}: with ``hardened``, fooled
    among the captchas read right clean under that view; without, the clean reading rate."""
    table: dict[str, dict[str, dict]] = {}
    for name, views in clean.items():
        cs = charsets[name]
        table[name] = {}
        for w, reads in views.items():
            right = [cs.same(r, t) for r, t in zip(reads, texts, strict=True)]
            row = {"n": len(texts), "read_clean": sum(right),
                   "read_clean_rate": sum(right) / len(texts) if texts else None}
            after = hardened[name][w] if hardened is not None else reads
            cer = [edit_distance(cs.key(r), cs.key(t)) / len(t)
                   for r, t in zip(after, texts, strict=True)]
            row["cer"] = sum(cer) / len(cer) if cer else None
            if hardened is not None:
                fooled = sum(ok and not cs.same(r, t)
                             for ok, r, t in zip(right, after, texts, strict=True))
                row["fooled"] = fooled
                row["fooled_rate"] = fooled / sum(right) if sum(right) else None
            table[name][w] = row
    return table


__all__ = ["Reads", "fooled_table", "read_views"]
