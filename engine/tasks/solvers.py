"""What the tasks whose models are foreign solvers share (text: OCR graphs; cells: detectors):
loading one by name (a built-in entry, ``onnx:SPEC.json`` with the family's head, or a solver
as given), the defaults that are installed, and the torch twins of the surrogates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverFamily:
    """One kind of foreign solver (see the module docstring)."""

    what: str  # "text solver", "detector": in messages
    cls: type  # the solver class of the family's head
    entries: Mapping[str, Any]  # the built-in ones, by name
    build: Callable[[str], Any]  # a built-in one by name
    defaults: tuple[str, ...]  # a run's solvers when it names none
    head: str  # what an onnx spec of the family has, in messages ('a "ctc" output')
    twin: Callable[[Any], Any]  # a solver's torch twin (raises where there is none)
    others: tuple[type, ...] = ()  # solvers of the family built otherwise (hf: detectors)

    def load(self, name: Any):
        """A built-in solver by name, an ``onnx:SPEC.json`` spec with the family's head, an
        ``hf:REPO_OR_DIR`` model of the family (:attr:`others`), or a solver as given."""
        from ...export.solver.load import load_solver
        from ...export.zoo import build_backbone, parse_name

        family = (self.cls, *self.others)
        if isinstance(name, family):
            return name
        if not isinstance(name, str):
            raise TypeError(f"a {self.what} is a name or a {self.cls.__name__}, got "
                            f"{type(name).__name__}")
        if name in self.entries:
            return self.build(name)
        if name.startswith("onnx:"):
            solver = load_solver(parse_name(name).arch)
            if not isinstance(solver, self.cls):
                raise ValueError(f"{name} is not a {self.what}: its spec's output kind is "
                                 f"{solver.spec.output.kind!r} (a {self.what} has {self.head})")
            return solver
        if name.startswith("hf:") and self.others:
            solver = build_backbone(parse_name(name))
            if not isinstance(solver, self.others):
                raise ValueError(f"{name} is not a {self.what}: it loads as a "
                                 f"{type(solver).__name__}, not a "
                                 f"{' or '.join(c.__name__ for c in self.others)}")
            return solver
        hf = " or hf:REPO_OR_DIR" if self.others else ""
        raise ValueError(f"{name!r} is not a {self.what}; the built-in ones are "
                         f"{', '.join(self.entries)} (or give onnx:SPEC.json with "
                         f"{self.head}{hf})")

    def load_all(self, names: Sequence | None = None) -> tuple[list, dict[str, str]]:
        """The solvers ``names``, all of which must load; by default (None) every built-in one
        whose files are present, and for each other one why it is left out (logged as a
        warning saying how to get it)."""
        from ...export.zoo.registry import ModelUnavailableError

        if names:
            return [self.load(n) for n in names], {}
        out, left_out = [], {}
        for n in self.defaults:
            try:
                out.append(self.load(n))
            except ModelUnavailableError as e:
                log.warning("warning: %s left out: %s", n, e)
                left_out[n] = str(e)
        return out, left_out

    def models(self, surrogates: Sequence | None, verifiers: Sequence | None, device
               ) -> tuple[list, list, list, dict[str, str], list[str]]:
        """(the surrogates' torch twins, their solvers, the verifiers' solvers, the defaults
        left out and why, notes). A surrogate without a twin (an unconverted op, parity)
        verifies only."""
        surrogates, gone = self.load_all(surrogates)
        verifiers, gone_v = self.load_all(verifiers)
        if not verifiers:
            raise ValueError(f"no {self.what} to verify with: none of "
                             f"{', '.join(self.defaults)} could be loaded")
        twins, notes = [], []
        for s in surrogates:
            try:
                twins.append(self.twin(s).to(device))
            except Exception as e:  # no torch twin: it verifies only
                log.warning("warning: %s has no gradient path (%s); it verifies only", s.name, e)
                notes.append(f"{s.name}: verifier only ({str(e)[:200]})")
                if s.name not in {v.name for v in verifiers}:
                    verifiers.append(s)
        if not twins:
            raise ValueError(f"no surrogate left to attack: none of the {self.what}s converts "
                             f"to torch")
        return twins, surrogates, verifiers, {**gone, **gone_v}, notes


__all__ = ["SolverFamily"]
