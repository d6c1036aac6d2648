"""The cells task's solver copy to retrain: a detector's torch twin, its class scores trained
as a detector's are (binary cross-entropy per candidate): the label's classes up where a
candidate's box centre lies in the truth (its boxes, its box, its cells; a box holding a point
to click), down everywhere else, positives and negatives weighed alike. Box regression is left
as it is: what the hardening attacks, and what decides a challenge, is whether the label is
detected where it is."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ....export.onnx.retrained import own_graph
from ....export.solver.detector import DetectorSolver, to_image
from ...errors import RunError
from ..base import Trainee
from . import challenge as chal
from .models import load_detector


class DenseTwin(nn.Module):
    """images -> (class-score logits [N, A, C], candidate box centres [N, A, 2] in the
    images' own pixels, the images' (height, width))."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        dense = self.model.dense(images)
        h, w = images.shape[-2:]
        boxes = to_image(dense.boxes.detach(), self.model.spec.input, h, w)
        return dense.score_logits(), (boxes[..., :2] + boxes[..., 2:]) / 2, (h, w)


def regions(ch: dict, height: int, width: int) -> np.ndarray:
    """[K, 4] where the challenge's object is, in image pixels (empty: nowhere said)."""
    k = chal.kind(ch)
    if k == "grid":
        if "cells" in ch:
            return chal.cell_boxes(ch["grid"], height, width)[[c - 1 for c in ch["cells"]]]
        return np.asarray([ch["box"]], dtype=np.float64) if "box" in ch else np.zeros((0, 4))
    if k == "points":  # a point's own neighbourhood: 4% of the shorter side around it
        r = 0.04 * min(height, width)
        return np.asarray([[x - r, y - r, x + r, y + r] for x, y in ch["points"]])
    return np.asarray(ch["boxes"], dtype=np.float64).reshape(-1, 4)


def detector_trainee(name: str, *, device: torch.device) -> Trainee:
    solver = load_detector(name)
    if not isinstance(solver, DetectorSolver):
        raise RunError(f"{name}: only detectors with a graph (a spec, ddddocr-det, nanodet) can "
                       f"be retrained; zero-shot ones are read through their text queries")
    model = solver.surrogate()
    save = own_graph(solver, model)
    twin = DenseTwin(model).to(device).requires_grad_(True)  # eval mode stays

    def loss(out: tuple, truths) -> torch.Tensor:
        logits, centres, size = out
        terms = []
        for i, raw in enumerate(truths):
            ch = chal.parse(raw)
            classes = list(model.classes_of(ch["label"]))
            where = torch.as_tensor(regions(ch, *size), dtype=centres.dtype,
                                    device=centres.device)
            if not classes or not len(where):
                continue
            x, y = centres[i, :, :1], centres[i, :, 1:]
            inside = ((where[:, 0] <= x) & (x <= where[:, 2]) & (where[:, 1] <= y)
                      & (y <= where[:, 3])).any(1)  # [A]
            z = logits[i][:, classes].float()  # [A, k]
            target = inside[:, None].float().expand_as(z)
            per = F.binary_cross_entropy_with_logits(z, target, reduction="none").mean(1)
            terms += [part.mean() for part in (per[inside], per[~inside]) if len(part)]
        return torch.stack(terms).sum() / len(truths) if terms else logits.sum() * 0

    return Trainee(name, twin, loss, save)
