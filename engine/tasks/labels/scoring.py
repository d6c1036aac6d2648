"""What verifiers answer, and how it is read: the scorer protocol, a model's readout of its
logits (by its own decision rule), and one verification pass over the view matrix with its
verdict."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ...attacks.ensemble import decision_of
from ...views.view import SeenTiles, View, look
from .losses import fooling_margin


class Scorer(Protocol):
    """A verifier: a name, labels and images [N,3,H,W] in [0,1] -> logits; optionally its
    ``decision`` rule (:mod:`.losses`) and, multi-label, ``known`` and ``probabilities``."""

    name: str
    labels: tuple[str, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def readout(model, label_set: Sequence[str], logits: torch.Tensor
            ) -> tuple[str, list[str], dict[str, float] | None]:
    """One image's logits [L] -> (top label, labels the model selects, P per known label of a
    multi-label model)."""
    top = label_set[int(logits.argmax())]
    if decision_of(model) != "multilabel":
        return top, [top], None
    known = getattr(model, "known", (True,) * len(label_set))
    probs = model.probabilities(logits[None].float())[0]
    selected = [lab for lab, z, k in zip(label_set, logits.tolist(), known, strict=True)
                if k and z >= 0]
    return top, selected, {lab: round(float(p), 5) for lab, p, k in
                           zip(label_set, probs.tolist(), known, strict=True) if k}


def readouts(models, label_set: Sequence[str], logits: dict[str, torch.Tensor]):
    """model name -> one image's logits, read out: (top labels, selections, probabilities of
    the multi-label models), each a dict by model name."""
    preds, selected, probs = {}, {}, {}
    for name, z in logits.items():
        top, sel, p = readout(models[name], label_set, z)
        preds[name], selected[name] = top, sel
        if p is not None:
            probs[name] = p
    return preds, selected, probs


def view_selections(models, label_set: Sequence[str],
                    logits: dict[str, dict[str, torch.Tensor]], row: int | None
                    ) -> dict[str, dict[str, list[str]]]:
    """verifier -> view -> the labels it selects (``row`` of a batch, or one image's logits)."""
    return {v: {w: readout(models[v], label_set, z if row is None else z[row])[1]
                for w, z in d.items()} for v, d in logits.items()}


@dataclass
class ViewScores:
    """One verification pass over a batch."""

    mins: torch.Tensor  # [N] min fooling margin over the deciding (verifier, view) pairs
    per_verifier: dict[str, torch.Tensor]  # verifier -> [N] min over its deciding views
    own: dict[str, torch.Tensor]  # verifier -> [N, L] logits under its own preprocessing
    by_view: dict[str, dict[str, torch.Tensor]]  # verifier -> view -> [N] (nan: not scored)
    logits: dict[str, dict[str, torch.Tensor]]  # verifier -> view -> [N, L] (full passes)
    # sum over the deciding pairs of margins capped at the target (unscored: -target): the
    # candidate fooling the most views, by the most, scores highest
    score: torch.Tensor
    strict: torch.Tensor  # [N] min over every scored pair, reported views included


@torch.no_grad()
def score_views(verifiers: Sequence[Scorer], perms: Sequence[torch.Tensor],
                views: Sequence[View], delivered: torch.Tensor, y: torch.Tensor,
                t: torch.Tensor, required: float, lazy: bool = False,
                deciding: Sequence[Collection[str]] | None = None) -> ViewScores:
    """One verification pass of the verifiers (logits reordered by ``perms``) under the views;
    ``t`` holds a decoy per row or -1, ``deciding[k]`` the views deciding for verifier ``k``
    (default: all). ``lazy``: only deciding views, cheapest first, each only for the rows every
    earlier view found fooled; rows left out get NaN (missed)."""
    n, cap = len(delivered), required  # cap: a margin counts up to the one required
    if deciding is None:
        deciding = [frozenset(w.name for w in views)] * len(verifiers)
    mins, strict = torch.full((n,), math.inf), torch.full((n,), math.inf)
    score_sum = torch.zeros(n)
    per_v = {v.name: torch.full((n,), math.inf) for v in verifiers}
    by_view: dict[str, dict[str, torch.Tensor]] = {v.name: {} for v in verifiers}
    logits: dict[str, dict[str, torch.Tensor]] = {v.name: {} for v in verifiers}
    order = sorted(range(len(views)), key=lambda i: (views[i].cost, i))
    if lazy:
        order = [i for i in order if any(views[i].name in d for d in deciding)]
    seen = SeenTiles(delivered, [views[i] for i in order])
    for i in order:
        view = views[i]
        rows = (torch.nonzero(mins >= cap).flatten() if lazy and i != order[0]
                else torch.arange(n))
        x = seen(view, rows)
        for v, perm, decides in zip(verifiers, perms, deciding, strict=True):
            decides = view.name in decides
            if lazy and not decides:
                continue
            m = torch.full((n,), math.nan)
            if x is not None:
                z = look(v, x, view).float().cpu()[:, perm]
                m[rows] = fooling_margin(z, y[rows], t[rows], decision_of(v))
                if len(rows) == n:
                    logits[v.name][view.name] = z
            by_view[v.name][view.name] = m
            scored = torch.nan_to_num(m, nan=math.inf)
            strict = torch.minimum(strict, scored)
            if decides:
                per_v[v.name] = torch.minimum(per_v[v.name], scored)
                mins = torch.minimum(mins, scored)
                score_sum += torch.nan_to_num(m, nan=-cap).clamp(max=cap)
    # the first view scored is the cheapest (the verifier's own), for every row
    own = {v.name: logits[v.name].get(views[order[0]].name) for v in verifiers}
    return ViewScores(mins, per_v, own, by_view, logits, score_sum, strict)
