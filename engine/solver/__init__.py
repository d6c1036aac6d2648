"""Foreign CAPTCHA solvers shipped as ONNX, as first-class advx models (``onnx:SPEC.json``).

A solver spec (:mod:`.spec`) says how the solver sees a tile and reads its answer; the graph
runs in onnxruntime as a verifier and, converted to torch, as a surrogate with gradients.
"""

from __future__ import annotations

from .convert import ConversionError
from .ends import UNKNOWN, Decoder, Preprocess
from .model import (
    Solver,
    SolverClassifier,
    SolverParityError,
    SolverVerifier,
    load_solver,
)
from .spec import SCHEMA_VERSION, InputSpec, OutputSpec, SolverSpec, SolverSpecError, load_spec
from .template import init_template

__all__ = [
    "SCHEMA_VERSION", "UNKNOWN", "ConversionError", "Decoder", "InputSpec", "OutputSpec",
    "Preprocess", "Solver", "SolverClassifier", "SolverParityError", "SolverSpec",
    "SolverSpecError", "SolverVerifier", "init_template", "load_solver", "load_spec",
]
