"""Loading the solver a spec describes, once per spec and graph file version: a label solver
(:class:`~.model.Solver`) or, for a ``ctc`` head, a text solver (:class:`~.text.TextSolver`)."""

from __future__ import annotations

import threading
from pathlib import Path

from .model import Solver
from .spec import load_spec
from .text import TextSolver

_CACHE: dict[tuple, Solver | TextSolver] = {}
_CACHE_LOCK = threading.Lock()


def load_solver(spec_path: str | Path, *, name: str | None = None) -> Solver | TextSolver:
    """Load (once per spec and graph file version) the solver a spec describes: a
    :class:`Solver` (labels), or a :class:`~.text.TextSolver` for a ``ctc`` head (text)."""
    spec = load_spec(spec_path)
    key = (str(spec.path), _stamp(spec.path), str(spec.model), _stamp(spec.model), name)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if spec.output.ctc is not None:
                _CACHE[key] = TextSolver(spec, name=name)
            else:
                _CACHE[key] = Solver(spec, name=name)
        return _CACHE[key]


def _stamp(path: Path | None) -> tuple:
    try:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    except (OSError, AttributeError):
        return ()


__all__ = ["load_solver"]
