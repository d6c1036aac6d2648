"""The text hardeners of the hardening service: built on the first text request, not at start (a
service may never see one), with the service's budget and settings under the ``text`` preset.

The OCR solvers are loaded and converted once, by the first build; a request with another
budget (eps, steps) or other deciding views of the ``text`` preset gets a hardener of its own
over the same solvers (cheap: no model is loaded or converted again), at most ``max_budgets``
of them kept, least recently used first out, the service's own budget never.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..config import HardenConfig

MAX_BUDGETS = 8


class TextHardeners:
    def __init__(self, config: HardenConfig, *, surrogates: Sequence[str] | None = None,
                 verifiers: Sequence[str] | None = None, max_budgets: int = MAX_BUDGETS) -> None:
        from ..tasks.text.api import TEXT_PRESET

        # the service's settings; the image preset's deciding views mean nothing here
        self.config = dataclasses.replace(config, transforms=TEXT_PRESET, decide=None)
        self.surrogates = None if surrogates is None else tuple(surrogates)
        self.verifiers = None if verifiers is None else tuple(verifiers)
        self.max_budgets = max_budgets
        self.build_seconds = 0.0  # time spent loading and converting the solvers
        # (eps, steps, deciding views or None) -> hardener
        self._kept: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def default(self) -> tuple:
        return self.config.eps, self.config.steps, None

    @property
    def built(self) -> bool:
        return bool(self._kept)

    def get(self, eps: float | None = None, steps: int | None = None,
            decide: tuple[str, ...] | None = None):
        """The TextHardener of a budget and deciding views (default the service's and the text
        preset's), built when not kept."""
        from ..tasks.text.api import TextHardener

        key = (self.config.eps if eps is None else eps,
               self.config.steps if steps is None else steps, decide)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
            config = dataclasses.replace(self.config, eps=key[0], steps=key[1], decide=decide)
            if not self._kept:
                t0 = time.perf_counter()
                first = TextHardener(surrogates=self.surrogates, verifiers=self.verifiers,
                                     config=self.config)
                self.build_seconds = time.perf_counter() - t0
                self._kept[self.default] = first
                if key == self.default:
                    return first
            base = self._kept[self.default]
            # the solvers the first build loaded (and converted), as it uses them
            h = TextHardener(surrogates=[base.solvers[m.name] for m in base.surrogates],
                             verifiers=[base.solvers[v.name] for v in base.verifiers],
                             config=config)
            self._kept[key] = h
            while len(self._kept) > self.max_budgets:
                del self._kept[next(k for k in self._kept if k != self.default)]
            return h

    def solver_names(self) -> dict[str, list[str]] | None:
        """The text solvers (None: not built yet, no text request so far)."""
        first = self._kept.get(self.default)  # no lock: a build may hold it for seconds
        return None if first is None else first.solver_names

    def __len__(self) -> int:
        return len(self._kept)


__all__ = ["TextHardeners"]
