"""The labels task in ``advx eval``: the models it reads with (zoo names in torch, foreign
solvers' graphs, ``advx export`` folders in ONNX) and their answers (the labels each selects,
by its own decision rule) under each view."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ....export.defaults import DEFAULT_TEMPLATES
from ....export.onnx.manifest import MANIFEST
from ....export.onnx.verifier import OnnxVerifier
from ....export.zoo import LabelMap, create_classifier, create_verifier, is_solver_name
from ...attacks.ensemble import decision_of
from ...errors import RunError
from ...views.view import View, each_view, look

# images [N, 3, H, W] in [0, 1] (and a view's ``geometry=``) -> logits over the label set, in
# its order; ``name``, ``decision`` and ``known`` attributes as for verifiers (scoring.Scorer)
ScoreFn = Callable[..., torch.Tensor]


def load_scorer(spec: str, label_set: Sequence[str], *, device: str = "auto",
                templates: str = DEFAULT_TEMPLATES, label_map: LabelMap | None = None
                ) -> ScoreFn:
    """A zoo model name (torch), a foreign solver ``onnx:SPEC.json`` (its graph, in
    onnxruntime) or an ``advx export`` folder (ONNX), with logits over ``label_set`` in its
    order."""
    from ...devices import resolve_device

    label_set = tuple(label_set)
    dev = resolve_device(device)
    if ":" in spec and is_solver_name(spec):
        return create_verifier(spec, label_set, device="cuda" if dev.type == "cuda" else "cpu")
    path = Path(spec).expanduser()
    if (path / MANIFEST).is_file():
        v = OnnxVerifier(path, device="auto" if dev.type == "cuda" else "cpu")
        missing = [lab for lab in label_set if lab not in v.labels]
        if missing:
            raise RunError(f"the export {spec} scores {list(v.labels)}, not {missing}; "
                           f"re-export it with --labels {','.join(label_set)}")
        perm = torch.tensor([v.labels.index(lab) for lab in label_set])

        def export(x, geometry=None):
            return v(x, geometry)[:, perm]

        export.name = f"{v.name} ({v.manifest.precision} onnx)"
        return export
    clf = create_classifier(spec, label_set, templates=templates, device=str(dev),
                            label_map=label_map)

    def run(x, geometry=None):
        return clf(x.to(dev), geometry).cpu()

    run.name, run.decision = clf.name, getattr(clf, "decision", "closed")
    run.known = getattr(clf, "known", None)
    return run


def load_scorers(names: Sequence[str] | None, *, device: str, label_set: Sequence[str],
                 truths: Sequence[str] = (), label_map: LabelMap | None = None,
                 templates: str = DEFAULT_TEMPLATES, **_: object) -> list[ScoreFn]:
    """The scorers ``names`` (default: the default verifiers) over ``label_set``, each
    knowing every label of ``truths``."""
    from ...defaults import DEFAULT_VERIFIERS
    from .models import check_known

    scorers = [load_scorer(m, label_set, device=device, templates=templates,
                           label_map=label_map) for m in (names or DEFAULT_VERIFIERS)]
    check_known(scorers, sorted(set(truths)))
    for s in scorers:
        s.labels = tuple(label_set)
    return scorers


def _selected(scorer: ScoreFn, logits: torch.Tensor, labels: Sequence[str]) -> list[list[str]]:
    """The labels a model selects per image, by its own decision rule."""
    if decision_of(scorer) == "multilabel":
        known = np.asarray(getattr(scorer, "known", None) or [True] * logits.shape[1])
        return [[labels[i] for i in np.flatnonzero((row >= 0) & known)]
                for row in logits.numpy()]
    return [[labels[int(i)]] for i in logits.argmax(1).tolist()]


@torch.no_grad()
def answers(scorers: Sequence[ScoreFn], images: Sequence[torch.Tensor], views: Sequence[View]
            ) -> dict[str, dict[str, list]]:
    """scorer -> view -> the labels it selects on each image ([3, H, W]); images of one size
    are scored together, each view's filter once whatever the scorers."""
    out = {s.name: {w.name: [None] * len(images) for w in views} for s in scorers}
    for idx, view, xs in each_view(images, views):
        for s in scorers:
            logits = torch.as_tensor(look(s, xs, view)).float().cpu()
            for i, sel in zip(idx, _selected(s, logits, s.labels), strict=True):
                out[s.name][view.name][i] = sel
    return out


__all__ = ["answers", "load_scorer", "load_scorers"]
