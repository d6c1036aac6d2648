"""Foreign CAPTCHA solvers shipped as ONNX, as advx models (``onnx:SPEC.json``): a spec says how
the solver sees a tile and reads its answer; the graph verifies in onnxruntime and, converted
to torch, is a surrogate. Heads: labels (:mod:`.model`), ``ctc`` (:mod:`.text`), detectors
(:mod:`.detector`).
"""

from __future__ import annotations

from .charset import Charset, CharsetError
from .convert import ConversionError
from .detector import DetectorModel, DetectorSolver, DetectorVerifier
from .ends import UNKNOWN, Decoder, Preprocess
from .graph import GraphSolver, SolverParityError
from .load import load_solver
from .model import Solver, SolverClassifier, SolverVerifier
from .spec import SCHEMA_VERSION, InputSpec, OutputSpec, SolverSpec, SolverSpecError, load_spec
from .template import init_template
from .text import TextModel, TextSolver, TextVerifier
from .text_spec import CTCHead

__all__ = [
    "SCHEMA_VERSION", "UNKNOWN", "CTCHead", "Charset", "CharsetError", "ConversionError",
    "Decoder", "DetectorModel", "DetectorSolver", "DetectorVerifier",
    "GraphSolver", "InputSpec", "OutputSpec", "Preprocess", "Solver", "SolverClassifier",
    "SolverParityError", "SolverSpec", "SolverSpecError", "SolverVerifier", "TextModel",
    "TextSolver", "TextVerifier", "init_template", "load_solver", "load_spec",
]
