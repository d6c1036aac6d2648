"""Folder runs: a labelled folder hardened image by image into an output folder, with
``results.jsonl`` (one record per input, appended as each finishes), ``summary.json``,
``report.html`` and ``--resume``. The CLI's ``advx harden``, :func:`advx.harden_folder` and the
Ray driver share this one path."""

from __future__ import annotations

from .distributed import RayOptions
from .run import HardenJob, Outcome, harden_folder, run_harden

__all__ = ["HardenJob", "Outcome", "RayOptions", "harden_folder", "run_harden"]
