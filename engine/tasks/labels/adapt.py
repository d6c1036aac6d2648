"""The labels task's solver copy to retrain: a zoo classifier or a foreign solver's torch twin
over the run's label set, trained with cross-entropy on the labels (as a per-prompt solver
classifier is), written back as a graph and a solver spec."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ....export.defaults import DEFAULT_TEMPLATES
from ....export.onnx.retrained import own_graph, write_classifier
from ....export.zoo import LabelMap, create_classifier
from ..base import Trainee


def label_trainee(name: str, *, device: torch.device, label_set: Sequence[str],
                  label_map: LabelMap | None = None, templates: str = DEFAULT_TEMPLATES,
                  **_: object) -> Trainee:
    labels = tuple(label_set)
    clf = create_classifier(name, labels, templates=templates, label_map=label_map)
    if hasattr(clf, "graph"):  # a foreign solver's twin: its graph is its cached solver's
        save = own_graph(clf.solver, clf)
    else:
        clf = copy.deepcopy(clf)

        def save(folder, images: torch.Tensor, label: str) -> str:
            return f"onnx:{write_classifier(clf, folder, label)}"

    clf.to(device).requires_grad_(True)  # eval mode stays: batch norms are folded
    index = {lab: i for i, lab in enumerate(labels)}

    def loss(logits: torch.Tensor, truths) -> torch.Tensor:
        y = torch.tensor([index[t] for t in truths], device=logits.device)
        return F.cross_entropy(logits.float(), y)

    return Trainee(name, clf, loss, save, flip=True)
