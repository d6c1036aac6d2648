"""Pure loss functions: (logits, labels) -> per-sample loss that the attack *maximises*.

Two decision rules exist (``decision`` of a model):

- ``closed``: the model picks its argmax label (ImageNet and zero-shot models, closed-set
  solvers). Fooled by a margin m when ``max_{j != y} z_j - z_y >= m``.
- ``multilabel``: label l is selected when its decision logit ``z_l`` (logit(P(l)) minus
  logit(threshold)) is >= 0, independently of the other labels (CAPTCHA grid solvers). "Select
  all X" is fooled on an X tile by a margin m when ``-z_X >= m``.

A targeted (decoy) row asks the opposite: that the model picks / selects the decoy label.

The **fooling margin** (:func:`fooling_margin`) is the logit gap a model's rule and the row's
target call for, positive exactly when the model is fooled; it counts as fooled from the
**required margin** (``HardenConfig.required_margin``) on; the **margin loss**
(:class:`Objective`) is the fooling margin capped at ``kappa``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _pick(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels[:, None]).squeeze(1)


def logit_gap(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the prediction is not ``labels``."""
    others = logits.masked_fill(F.one_hot(labels, logits.shape[-1]).bool(), float("-inf"))
    return others.amax(dim=-1) - _pick(logits, labels)


def _per_row(untargeted: torch.Tensor, targeted_fn: Callable[[torch.Tensor], torch.Tensor],
             targets: torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        return untargeted
    decoy = targets >= 0
    if not bool(decoy.any()):
        return untargeted
    return torch.where(decoy, targeted_fn(targets.clamp_min(0)), untargeted)


def fooling_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                   decision: str = "closed") -> torch.Tensor:
    """How far each row is past the model's decision boundary, the way the attacker wants it
    (>= 0: fooled). ``targets`` holds a decoy label per row, or -1 for none."""
    logits = logits.float()
    if decision == "multilabel":  # -z_y: the solver no longer selects the tile for y
        return _per_row(-_pick(logits, labels), lambda t: _pick(logits, t), targets)
    return _per_row(logit_gap(logits, labels), lambda t: -logit_gap(logits, t), targets)


@dataclass(frozen=True)
class Objective:
    """The loss an attack maximises, per row and per model decision rule: the fooling margin
    capped at ``kappa``, so that rows already fooled stop dominating the gradient."""

    kappa: float = 50.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None, decision: str = "closed") -> torch.Tensor:
        return fooling_margin(logits, labels, targets, decision).clamp(max=self.kappa)
