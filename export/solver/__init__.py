"""Foreign CAPTCHA solvers shipped as ONNX, as first-class advx models (``onnx:SPEC.json``).

A solver spec (:mod:`.spec`) says how the solver sees a tile and reads its answer; the graph
runs in onnxruntime as a verifier and, converted to torch, as a surrogate with gradients. A spec
with a ``ctc`` output (:mod:`.text_spec`) is a text (OCR) solver: :mod:`.text`; one with a
detector or segmenter head (:mod:`.detect_spec`) answers grid and click challenges:
:mod:`.detector`.
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
