"""Folder runs, for every task: the items of a folder hardened into an output folder, with
``results.jsonl`` (one record per input, appended as each finishes), ``summary.json``,
``report.html`` and ``--resume``; in one process or spread over Ray workers. The CLI's
``advx harden``, :func:`advx.harden_folder` and the Ray driver share this one path."""

from __future__ import annotations

from .distributed import RayOptions
from .run import HardenJob, Outcome, harden_folder, run_harden

__all__ = ["HardenJob", "Outcome", "RayOptions", "harden_folder", "run_harden"]
