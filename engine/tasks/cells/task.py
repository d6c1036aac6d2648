"""The ``cells`` task: challenges answered by cells or points ("select all squares with a bus"
on one image cut into a 3x3 or 4x4 grid, "click the object", "click the characters"), against
the detectors and segmenters that solve them. A solver is fooled on a challenge when its answer
(the cells its detections select, or per point / box whether a detection covers / finds it) is
not the truth's (:mod:`.challenge`).

This module is torch-free (the declaration, records and report); the models are in
:mod:`.models`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import DatasetError, RunError
from ...rows import Row, read_csv_rows
from ..base import LABELS_CSV, Task, register_task
from . import challenge as chal
from .result import DEFAULT_DETECTORS, DEMO_CLICKS, CellsResult

FIELDS = ("grid", "cells", "box", "points", "boxes")


def _row_challenge(fields: Mapping[str, str]) -> dict:
    """A CSV row's challenge: a ``challenge`` column (JSON), else ``label`` and the others."""
    if fields.get("challenge"):
        return chal.parse(fields["challenge"])
    return chal.challenge(fields.get("label"), **{f: fields.get(f) or None for f in FIELDS})


class CellsTask(Task):
    name = "cells"
    truth = "challenge"
    noun = "challenge"
    preset = "detect"
    # the answer is in the image's own coordinates: a challenge is hardened at its own size
    rescale = False
    options = ("truth_from",)
    columns = "path,label,grid,cells,box,points,boxes"
    about = ("grid and click challenges, each with its label and the cells, box, points or "
             "boxes to find (a path,label,grid,cells,box,points,boxes CSV, or path,challenge "
             "with a JSON object), against detectors and segmenters")

    def read_rows(self, input_dir: Path, labels_csv: Path | None) -> list[Row]:
        labels_csv = labels_csv or input_dir / LABELS_CSV
        if not Path(labels_csv).is_file():
            raise DatasetError(f"labels file not found: {labels_csv}; a cells run needs a CSV "
                               f"with a '{self.columns}' header (--labels), the columns a "
                               f"challenge does not use left empty")
        head = Path(labels_csv).read_text(encoding="utf-8-sig").partition("\n")[0].lower()
        column = "challenge" if "challenge" in [c.strip() for c in head.split(",")] else "label"
        return read_csv_rows(labels_csv, column, _row_challenge, whole_row=True)

    def parse_truth(self, raw: Any) -> dict:
        """A challenge from a JSON object (a service request's ``challenge`` field) or a dict;
        raises ValueError (:class:`.challenge.ChallengeError`) naming the field."""
        return chal.parse(raw)

    def truth_text(self, truth: Any) -> str:
        return json.dumps(truth)

    def default_models(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Every built-in detector whose files are present, as both."""
        return DEFAULT_DETECTORS, DEFAULT_DETECTORS

    def load(self, surrogates, verifiers, *, config, device, **options):
        from .models import CellsModels

        return CellsModels(surrogates, verifiers, device=device,
                           truth_from=options.get("truth_from"))

    def load_scorers(self, names, *, device, **options):
        from .models import load_detectors

        solvers, gone = load_detectors(names)
        return ([s.verifier(device="cuda" if str(device).startswith("cuda") else "cpu")
                 for s in solvers], [f"{n}: {why}" for n, why in gone.items()])

    def trainee(self, name, *, device, **options):
        from .adapt import detector_trainee

        return detector_trainee(name, device=device)

    def eval_problem(self, scorers: Sequence, truth: Any) -> str | None:
        if chal.needs_truth(truth):
            return "a grid challenge without cells or a box has no truth to score against"
        from .models import knows

        blind = [s.name for s in scorers if not knows(s, truth["label"])]
        return f"label {truth['label']!r}: {', '.join(blind)} cannot detect it" if blind else None

    def answers(self, scorers, images, views, truths):
        from .evaluate import answer_views

        return answer_views(scorers, images, views, truths)

    def right(self, answer: Any, truth: Any, scorer: Any) -> bool:
        """``answer`` carries the answer the truth calls for on that image (a box's cells
        depend on its size)."""
        return answer["answer"] == answer["truth"]

    def plan(self, config, white_box: bool):
        """One EOT draw per step (a 416 px detector's forward and backward is the step's cost)
        and no skip gradients (converted graphs have no residual blocks to scale)."""
        from dataclasses import replace

        return replace(config.plan(white_box), eot_samples=1, skip_gamma=None)

    def view_figures(self, rows: Sequence[dict], verifier: str, view: str) -> dict[str, Any]:
        from .report import found_share

        return found_share(rows, verifier, view)

    def headline_rows(self, view: Mapping[str, Any]) -> list[tuple[str, str]]:
        from ...folder.html import pct

        if view.get("found_before") is None:
            return []
        return [("boxes found / found clean", f"{view['found_after']}/{view['found_before']} "
                                              f"({pct(view.get('found_rate'))})")]

    def write_demo(self, input_dir: Path, echo) -> Path:
        """Click captchas drawn on the sample photos (``pip install 'advx[samples]'``)."""
        from .draw import write_click_folder

        try:
            labels = write_click_folder(input_dir, DEMO_CLICKS, seed=0)
        except ImportError as e:
            raise RunError(str(e)) from e
        echo(f"wrote {DEMO_CLICKS} click captchas and {labels.name} to {input_dir}")
        return labels

    def report_gallery(self, out_dir: Path, input_root: Path, records: Sequence[dict]
                       ) -> list[str]:
        from .report import GALLERY_HEAD, challenge_html

        return [GALLERY_HEAD, *(challenge_html(out_dir, input_root, r) for r in records)]


CELLS = register_task(CellsTask())

__all__ = ["CELLS", "CellsResult", "CellsTask"]
