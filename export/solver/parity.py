"""How a solver's torch path is held to its graph: the error when they disagree, the figures of
one check, and the structured images the checks run on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class SolverParityError(RuntimeError):
    """The converted torch graph and onnxruntime disagree beyond the tolerance."""


@dataclass
class GraphParity:
    """The torch path against onnxruntime on one batch of inputs."""

    max_abs_diff: float
    n: int
    decision_agreement: float


def parity_images(n: int, height: int, width: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Structured test images: half smooth colour fields with texture, half uniform noise."""
    low = torch.rand(n, 3, 6, 6, generator=generator)
    smooth = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.rand(n, 3, height, width, generator=generator)
    mix = torch.where(torch.arange(n).view(-1, 1, 1, 1) % 2 == 0, 0.85 * smooth + 0.15 * noise,
                      noise)
    return mix.clamp(0, 1)


__all__ = ["GraphParity", "SolverParityError", "parity_images"]
