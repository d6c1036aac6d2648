"""Folder runs: a labelled folder hardened image by image into an output folder, with
``results.jsonl`` (one record per input, appended as each finishes), ``summary.json``,
``report.html`` and ``--resume``. The CLI's ``advx harden``, :func:`advx.harden_folder` and the
Ray driver share this one path; ``advx harden --task text`` and :func:`harden_text_folder` run
the captchas a labels.csv lists (text_run.py) into the same files."""

from __future__ import annotations

from .distributed import RayOptions
from .run import HardenJob, Outcome, harden_folder, run_harden
from .text_run import TextJob, harden_text_folder, run_text

__all__ = ["HardenJob", "Outcome", "RayOptions", "TextJob", "harden_folder",
           "harden_text_folder", "run_harden", "run_text"]
