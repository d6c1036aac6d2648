"""Loading the solver a spec describes, once per spec and graph file version (spec files and
the built-in entries alike)."""

from __future__ import annotations

import threading
from pathlib import Path

from .detector import DetectorSolver
from .graph import GraphSolver
from .model import Solver
from .spec import SolverSpec, load_spec
from .text import TextSolver

_CACHE: dict[tuple, GraphSolver] = {}
_CACHE_LOCK = threading.Lock()


def load_solver(spec_path: str | Path, *, name: str | None = None
                ) -> Solver | TextSolver | DetectorSolver:
    """The solver the spec file at ``spec_path`` describes (:func:`solver_of`)."""
    return solver_of(load_spec(spec_path), name=name)


def solver_of(spec: SolverSpec, *, name: str | None = None
              ) -> Solver | TextSolver | DetectorSolver:
    """The solver a parsed spec describes, built once per spec and graph file version: a
    :class:`Solver` (labels), a :class:`~.text.TextSolver` for a ``ctc`` head (text) or a
    :class:`~.detector.DetectorSolver` for a detector or segmenter head (cells)."""
    key = (str(spec.path), _stamp(spec.path), str(spec.model), _stamp(spec.model), name)
    with _CACHE_LOCK:
        if key not in _CACHE:
            head = (TextSolver if spec.output.ctc is not None else DetectorSolver
                    if spec.output.detect is not None else Solver)
            _CACHE[key] = head(spec, name=name)
        return _CACHE[key]


def _stamp(path: Path | None) -> tuple:
    try:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    except (OSError, AttributeError):
        return ()


__all__ = ["load_solver", "solver_of"]
