"""What the cells task returns for each challenge, and its built-in detectors."""

from __future__ import annotations

from dataclasses import dataclass

from ...results import HardenResult

# the built-in detectors (advx.export.zoo.detectors); NanoDet after its one-time conversion
DEFAULT_DETECTORS = ("ddddocr-det", "nanodet")
DEMO_CLICKS = 6  # click captchas `advx demo --task cells` draws (seed 0)


@dataclass(kw_only=True)
class CellsResult(HardenResult):
    task = "cells"
    challenge: dict  # the truth as given: label and grid / cells / box, points or boxes
    truth_answer: list  # the answer the truth calls for (the cells; per point / box: True)
    truth_from: str  # "given", or the verifier whose clean answer the truth is
    answer_before: dict[str, dict[str, list]]  # verifier -> view -> its answer, clean
    answer_after: dict[str, dict[str, list]]  # verifier -> view -> its answer, as delivered
    # verifier -> view -> its detections of the label: boxes (the item's pixels) and scores
    found_before: dict[str, dict[str, dict]]
    found_after: dict[str, dict[str, dict]]


__all__ = ["DEFAULT_DETECTORS", "DEMO_CLICKS", "CellsResult"]
