"""The text task's solver copy to retrain: an OCR solver's torch twin, trained with the CTC loss
of the truth (as CRNN solvers are), written back as its own graph and spec."""

from __future__ import annotations

import torch

from ....export.onnx.retrained import own_graph
from ..base import Trainee
from .losses import ctc_loss, text_targets
from .models import load_text_solver


def text_trainee(name: str, *, device: torch.device) -> Trainee:
    solver = load_text_solver(name)
    model = solver.text_model()
    save = own_graph(solver, model)
    model.to(device).requires_grad_(True)  # eval mode stays: no dropout, frozen batch norms

    def loss(logits: torch.Tensor, truths) -> torch.Tensor:
        per = ctc_loss(logits, text_targets(model.charset, list(truths)))
        fit = torch.isfinite(per)  # a truth longer than the solver's time steps: unlearnable
        return per[fit].mean() if fit.any() else logits.sum() * 0

    return Trainee(name, model, loss, save)

