"""CTC heads of OCR solvers: greedy decoding, and the parity check of a converted sequence
graph (close scores, the same strings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .graph import SolverParityError


def greedy_ctc(scores: torch.Tensor, blank: int, *, time_axis: int = 1) -> list[list[int]]:
    """Best symbol per step of ``scores`` [N, T, C] (or [T, N, C], ``time_axis=0``), repeats
    merged, blanks dropped (``a - a`` reads ``aa``): one index list per sample."""
    if scores.ndim != 3 or time_axis not in (0, 1):
        raise ValueError(f"expected scores [N, T, C] or [T, N, C], got {list(scores.shape)} "
                         f"with time_axis {time_axis}")
    best = scores.argmax(-1)
    best = best.T if time_axis == 0 else best
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [row[k].tolist() for row, k in zip(best, keep, strict=True)]


@dataclass(frozen=True)
class SequenceParity:
    """A converted CTC graph against onnxruntime on one batch."""

    max_abs_diff: float  # worst score difference
    n: int  # samples compared
    same_strings: int  # samples whose greedy reading is identical
    undecided: int  # samples whose readings differ only at steps onnxruntime nearly ties


def sequence_parity(got: torch.Tensor, ref: torch.Tensor, blank: int, *, time_axis: int = 1,
                    atol: float = 1e-3, rtol: float = 1e-3, margin: float | None = None,
                    name: str = "solver") -> SequenceParity:
    """Torch scores ``got`` against onnxruntime's ``ref``: within ``atol + rtol * |ref|``, and
    the same greedy strings except at near-ties (best two within ``margin``, default
    ``2 * atol``: ``undecided``). Raises ``SolverParityError`` otherwise."""
    if got.shape != ref.shape:
        raise SolverParityError(f"{name}: torch scores of shape {list(got.shape)} != "
                                f"onnxruntime {list(ref.shape)}")
    got, ref = got.float(), ref.float()
    diff = (got - ref).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    a = greedy_ctc(got, blank, time_axis=time_axis)
    b = greedy_ctc(ref, blank, time_axis=time_axis)
    n = len(b)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    # per sample and step [N, T]: do the best symbols differ where onnxruntime is decided?
    top2 = ref.topk(min(2, ref.shape[-1]), -1).values
    decided = (top2[..., 0] - top2[..., -1]) > (2 * atol if margin is None else margin)
    flipped = (got.argmax(-1) != ref.argmax(-1)) & decided
    flipped = flipped.T if time_axis == 0 else flipped
    differ = [x != y for x, y in zip(a, b, strict=True)]
    real = sum(d and bool(f.any()) for d, f in zip(differ, flipped, strict=True))
    if bool((diff > atol + rtol * ref.abs()).any()) or real:
        raise SolverParityError(f"{name}: the torch conversion differs from onnxruntime by up "
                                f"to {worst:.3g} (tolerance {atol} + {rtol}·|x|) and reads "
                                f"another string on {real} of {n} samples")
    return SequenceParity(worst, n, same, n - same)


__all__ = ["SequenceParity", "greedy_ctc", "sequence_parity"]
