"""Tasks: the kinds of challenge advx hardens, one registered seam each (:mod:`.base`).

- ``labels`` (:mod:`.labels`): image tiles of grid challenges, each with its label, against
  classifiers over a label set;
- ``text`` (:mod:`.text`): text captchas, each with the text it shows, against OCR solvers;
- ``cells`` (:mod:`.cells`): grid and click challenges, each with its label and the cells,
  points or boxes to find, against detectors and segmenters.

A task's declaration is torch-free (the command line lists the tasks without loading torch);
its models load when a run asks for them.
"""

from __future__ import annotations

from . import cells, labels, text  # noqa: F401  (the built-in tasks register themselves)
from .base import TASKS, Models, Task, Verdict, Verification, get_task, register_task

__all__ = ["TASKS", "Models", "Task", "Verdict", "Verification", "get_task", "register_task"]
