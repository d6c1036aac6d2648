"""The solver's two ends in torch, shared by the surrogate and the verifier: its preprocessing
(tile -> graph input) and the reading of its answer (-> decision logits over the run's labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..geometry import Geometry, fit
from .resample import clip8
from .spec import InputSpec, SolverSpec

UNKNOWN = -1.0e4  # decision logit of a label the solver does not know
_P_EPS = 1e-7


def _logit_of(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_P_EPS, 1 - _P_EPS)
    return torch.log(p) - torch.log1p(-p)


# --- preprocessing -------------------------------------------------------------------------------


class Preprocess(nn.Module):
    """Tile [N, 3, h, w] in [0, 1] -> the graph's input tensor (layout, units; kept float, with
    uint8 values rounded by a straight-through estimator so gradients still flow)."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec
        lo, hi = spec.range
        self.lo, self.scale = lo, hi - lo
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        """Tiles -> the graph's input; ``geometry``: a solver that brings the tile to its size
        otherwise than the spec says (from the view matrix)."""
        s = self.spec
        x = images.float()
        x = geometry.apply(x, s.size) if geometry is not None else fit(
            x, s.size, crop=s.crop, fit_mode=s.fit, pad=s.pad, mode=s.resize,
            antialias=s.antialias, align=s.align)
        if s.channels == "BGR":
            x = x.flip(1)
        x = x * self.scale + self.lo
        if s.dtype == "uint8":
            x = clip8(x)  # a saturated pixel keeps its gradient
            x = x + (x.round() - x).detach()  # straight-through rounding
        x = (x - self.mean) / self.std
        if s.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x.contiguous()


# --- reading the answer --------------------------------------------------------------------------


class Decoder(nn.Module):
    """Answer tensor -> [N, L] decision logits over ``labels``; ``kind``: what the tensor holds
    (the logits behind a stripped activation, on the gradient path)."""

    def __init__(self, spec: SolverSpec, labels: Sequence[str], kind: str | None = None) -> None:
        super().__init__()
        self.spec, self.labels = spec, tuple(labels)
        self.kind = kind or spec.output.kind
        self.columns = [spec.solver_labels_for(lab) for lab in self.labels]
        offsets = [_logit_of(spec.threshold_of(i)) for i in range(len(spec.labels))]
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)

    def solver_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """[N, S] scores per solver label: logits, log-probabilities or multi-label logits."""
        o = self.spec.output
        x = raw.float().movedim(o.label_axis, 1)
        x = x[:, o.label_start : o.label_start + len(self.spec.labels)]
        x = x.reshape(x.shape[0], x.shape[1], -1)  # [N, S, cells]
        reduce = (lambda t: t.amax(-1)) if o.reduce != "mean" else (lambda t: t.mean(-1))
        if self.kind == "logits":
            return reduce(x)
        if self.kind == "softmax":
            return reduce(x).clamp_min(1e-30).log()
        if self.kind == "multilabel":
            return _logit(reduce(x))
        # multilabel_logits: max commutes with the sigmoid; a mean is taken over probabilities
        return x.amax(-1) if o.reduce != "mean" or x.shape[-1] == 1 else _logit(
            torch.sigmoid(x).mean(-1))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        s = self.solver_scores(raw)
        multilabel = self.spec.decision == "multilabel"
        if multilabel:  # each solver label against its own threshold
            s = s - self.offsets.to(s.device)
        cols = []
        for idx in self.columns:
            if not idx:
                cols.append(torch.full((s.shape[0],), UNKNOWN, device=s.device))
            elif len(idx) == 1:
                cols.append(s[:, idx[0]])
            elif multilabel:  # any of them selected
                cols.append(s[:, list(idx)].amax(1))
            else:  # the probability of the set
                cols.append(torch.logsumexp(s[:, list(idx)], 1))
        return torch.stack(cols, 1)
