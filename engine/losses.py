"""Pure loss functions: (logits, labels) -> per-sample loss that the attack *maximises*."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _best_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != label} logits_j, per sample."""
    mask = F.one_hot(labels, logits.shape[-1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(dim=-1)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the prediction is not ``labels``."""
    return _best_other(logits, labels) - logits.gather(1, labels[:, None]).squeeze(1)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted cross-entropy: push the true label's probability down."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Untargeted CW margin loss, capped at ``kappa`` so fooled samples stop dominating."""
    return margin(logits.float(), labels).clamp(max=kappa)


def targeted_ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted cross-entropy: pull the decoy label's probability up."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def targeted_margin_loss(logits: torch.Tensor, targets: torch.Tensor,
                         kappa: float = 50.0) -> torch.Tensor:
    """Targeted CW margin loss: z_t - max_{j != t} z_j, capped at ``kappa``."""
    return (-margin(logits.float(), targets)).clamp(max=kappa)


LOSSES: dict[tuple[str, bool], LossFn] = {
    ("ce", False): ce_loss,
    ("margin", False): margin_loss,
    ("ce", True): targeted_ce_loss,
    ("margin", True): targeted_margin_loss,
}


def get_loss(name: str, targeted: bool) -> LossFn:
    try:
        return LOSSES[(name, targeted)]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose 'ce' or 'margin'") from None
