"""The ``cells`` task: grid and click challenges against detectors and segmenters
(:mod:`.task`; the challenge and the rules solvers answer it by in :mod:`.challenge`, its
models and the vanishing loss in :mod:`.models`, the click-captcha drawer in :mod:`.draw`,
answering a set of challenges in :mod:`.evaluate`, its report in :mod:`.report`)."""

from __future__ import annotations

from .task import CELLS, CellsResult, CellsTask

__all__ = ["CELLS", "CellsResult", "CellsTask"]
