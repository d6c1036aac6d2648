"""Declarative export specs and the typed errors of the export stage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Tolerance:
    """A parity budget: a graph against its reference (an export against the float32 torch
    model; a solver's torch conversion against onnxruntime)."""

    atol: float = 1e-3  # |got - reference| <= atol + rtol * |reference| for every value
    rtol: float = 1e-3
    # the answer must agree wherever the reference's best two scores are further apart than
    # this (near-ties may flip); None: 2 * atol
    decisive_gap: float | None = None

    @property
    def gap(self) -> float:
        return 2 * self.atol if self.decisive_gap is None else self.decisive_gap


# ONNX value and dimension names: an identifier (what every ONNX runtime and tool accepts as is)
_ONNX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ExportSpec:
    """What an exported classifier looks like: one float32 image input, one float32 output.
    The graph's interface is declared here and nowhere else; the manifest records it, and the
    verifier feeds and reads the graph by it."""

    precision: str = "fp32"  # "fp32" | "fp16" (tower in half; normalisation and head in fp32)
    opset: int = 17  # ONNX opset
    input_name: str = "images"  # [batch_axis, 3, size, size], float32 in [0, 1]
    output_name: str = "logits"  # [batch_axis, labels], float32
    batch_axis: str = "batch"  # the name of the one dynamic dimension, shared by both
    parity_batch: int = 8  # images in the parity batch
    tolerances: dict[str, Tolerance] = field(
        default_factory=lambda: {
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, decisive_gap=1e-2),
            "fp16": Tolerance(atol=6e-2, rtol=3e-2, decisive_gap=0.25),
        }
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not 13 <= self.opset <= 21:
            raise ValueError(f"opset must be in [13, 21], got {self.opset}")
        for what in ("input_name", "output_name", "batch_axis"):
            value = getattr(self, what)
            if not isinstance(value, str) or not _ONNX_NAME.fullmatch(value):
                raise ValueError(
                    f"{what} must be a non-empty identifier (letters, digits, '_'; not starting "
                    f"with a digit), got {value!r}"
                )
        if self.input_name == self.output_name:
            raise ValueError(f"input_name and output_name must differ, both are "
                             f"{self.input_name!r}")
        if self.parity_batch < 1:
            raise ValueError(f"parity_batch must be at least 1, got {self.parity_batch}")
        if self.precision not in self.tolerances:
            raise ValueError(f"tolerances has no entry for precision {self.precision!r}")

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {self.input_name: {0: self.batch_axis}, self.output_name: {0: self.batch_axis}}

    @property
    def io_names(self) -> tuple[str, str, str]:
        return (self.input_name, self.output_name, self.batch_axis)

    @property
    def tolerance(self) -> Tolerance:
        return self.tolerances[self.precision]


class ExportError(RuntimeError):
    """The export itself failed (tracing, onnx.checker, session creation)."""


class ParityError(ExportError):
    """onnxruntime and torch disagree beyond the tolerance of the precision."""

    def __init__(self, model: str, precision: str, max_abs_diff: float, worst: tuple[int, int],
                 atol: float, rtol: float, detail: str = "") -> None:
        self.max_abs_diff, self.worst = max_abs_diff, worst
        super().__init__(
            f"{model} ({precision}): onnxruntime differs from torch by up to {max_abs_diff:.4g} "
            f"(sample {worst[0]}, label {worst[1]}), over the tolerance atol={atol} rtol={rtol}"
            + (f"; {detail}" if detail else "")
        )


class ManifestError(ValueError):
    """A manifest that is missing, malformed or does not match its ONNX file."""
