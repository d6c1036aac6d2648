"""The ``labels`` task: image tiles against classifiers over a label set (:mod:`.task`; its
models in :mod:`.models`, losses in :mod:`.losses`, verification in :mod:`.scoring`, grid
challenges in :mod:`.grids`, records and report in :mod:`.report`)."""

from __future__ import annotations

from .task import LABELS, LabelResult, LabelsTask

__all__ = ["LABELS", "LabelResult", "LabelsTask"]
