"""A cells challenge: what a grid or click CAPTCHA asks, and how a solver's detections answer it.

A challenge names a ``label`` and asks one of:

- ``grid`` g (3 or 4; 1: one tile of a tile grid, "is there a bus in this tile") with
  ``cells``: "select all squares with a bus" on one image cut into a g x g grid; the truth is
  the cells the object covers (numbered 1..g*g, row by row; given as cells, as a ``box``
  whose cells the box rule selects, or taken from a named solver's clean answer);
- ``points``: "click the object": each point must be covered by a detection of the label;
- ``boxes``: "click the characters": each box must be found, by a detection of the label that
  overlaps it by an IoU of at least :data:`FOUND_IOU`.

A solver's answer is the cells its detections select (a box selects a cell it covers by at
least ``cell_share`` of the cell's area; a mask, one it covers by at least ``mask_share``, 0.5%
as recognizer's CLIPSeg rule has it), or per point / box whether it is covered / found. It
answers right when its answer is the truth's; fooled, otherwise.

Torch-free: a challenge is a plain dict (its record and CSV form), the rules take numpy arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GRIDS = (1, 2, 3, 4)
FOUND_IOU = 0.5  # a box is found by a detection overlapping it by this IoU
CELL_SHARE = 0.05  # a box selects a cell it covers by this share of the cell's area
MASK_SHARE = 0.005  # a mask selects a cell it covers by 0.5% of the cell's area


class ChallengeError(ValueError):
    """A challenge that cannot be asked; the message says which field and why."""


def _numbers(value: Any, what: str) -> list[float]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise ChallengeError(f"{what}: expected numbers, got {value!r}") from None


def _groups(value: Any, size: int, what: str) -> list[list[float]]:
    """``"x y; x y"`` or [[x, y], ...] -> groups of ``size`` numbers."""
    if isinstance(value, str):
        value = [g for g in value.split(";") if g.strip()]
    groups = [_numbers(g, what) for g in value]
    if not groups or any(len(g) != size for g in groups):
        raise ChallengeError(f"{what}: expected groups of {size} numbers, got {value!r}")
    return groups


def challenge(label: Any, *, grid: Any = None, cells: Any = None, box: Any = None,
              points: Any = None, boxes: Any = None) -> dict:
    """A checked challenge in its one form (a dict, as records hold it)."""
    label = str(label or "").strip()
    if not label:
        raise ChallengeError("label: empty; a challenge names the object to find")
    out: dict[str, Any] = {"label": label}
    given = [k for k, v in (("points", points), ("boxes", boxes)) if v not in (None, "", [])]
    if grid not in (None, "", 0):
        if given:
            raise ChallengeError(f"{given[0]}: a grid challenge asks for cells, not {given[0]}")
        try:
            g = int(grid)
        except (TypeError, ValueError):
            raise ChallengeError(f"grid: expected 1 to 4, got {grid!r}") from None
        if g not in GRIDS:
            raise ChallengeError(f"grid: expected 1 to 4 (3, 4: a grid challenge; 1: a tile), "
                                 f"got {grid!r}")
        out["grid"] = g
        if cells not in (None, ""):
            nums = _numbers(cells, "cells")
            if any(n != int(n) or not 1 <= n <= g * g for n in nums):
                raise ChallengeError(f"cells: numbers from 1 to {g * g}, got {cells!r}")
            out["cells"] = sorted({int(n) for n in nums})
        if box not in (None, ""):
            if "cells" in out:
                raise ChallengeError("box: give cells or a box, not both")
            out["box"] = _groups([box] if not isinstance(box, str) or ";" not in box
                                 else box, 4, "box")[0]
        return out
    if cells not in (None, "") or box not in (None, ""):
        raise ChallengeError("grid: cells and a box belong to a grid challenge (grid 1 to 4)")
    if len(given) != 1:
        raise ChallengeError("a challenge is a grid (grid, cells or box), points to click or "
                             "boxes to find" + (", not both" if given else ""))
    if points not in (None, "", []):
        out["points"] = _groups(points, 2, "points")
    else:
        out["boxes"] = _groups(boxes, 4, "boxes")
    return out


def parse(raw: str | Mapping) -> dict:
    """A challenge from a JSON object (a service request's ``challenge`` field) or a dict."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise ChallengeError(f"challenge: not JSON ({e.msg}); e.g. "
                                 f'{{"label": "bus", "grid": 4, "cells": [6, 7, 10, 11]}}') from e
    if not isinstance(raw, Mapping):
        raise ChallengeError("challenge: expected a JSON object with a label")
    unknown = sorted(set(raw) - {"label", "grid", "cells", "box", "points", "boxes"})
    if unknown:
        raise ChallengeError(f"challenge: unknown field(s) {', '.join(unknown)}")
    return challenge(raw.get("label"), grid=raw.get("grid"), cells=raw.get("cells"),
                     box=raw.get("box"), points=raw.get("points"), boxes=raw.get("boxes"))


def kind(ch: Mapping) -> str:
    """"grid", "points" or "boxes"."""
    return "grid" if "grid" in ch else "points" if "points" in ch else "boxes"


def needs_truth(ch: Mapping) -> bool:
    """A grid challenge without cells or a box: its truth is a solver's clean answer."""
    return "grid" in ch and "cells" not in ch and "box" not in ch


# --- the rules ---------------------------------------------------------------------------------


def cell_boxes(grid: int, height: int, width: int) -> np.ndarray:
    """[g*g, 4] each cell's x0, y0, x1, y1 (row by row)."""
    ys, xs = np.linspace(0, height, grid + 1), np.linspace(0, width, grid + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]]
                     for r in range(grid) for c in range(grid)], dtype=np.float64)


def box_cells(boxes: np.ndarray, grid: int, height: int, width: int,
              share: float = CELL_SHARE) -> list[int]:
    """The cells (1-based) that any of ``boxes`` [K, 4] covers by more than ``share`` of the
    cell's area."""
    cells = cell_boxes(grid, height, width)
    if not len(boxes):
        return []
    b = np.asarray(boxes, dtype=np.float64)
    lt = np.maximum(b[:, None, :2], cells[None, :, :2])
    rb = np.minimum(b[:, None, 2:], cells[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (cells[:, 2:] - cells[:, :2]).prod(-1)
    return [int(i) + 1 for i in np.flatnonzero((inter / area > share).any(0))]  # JSON ints


def mask_cells(masks: np.ndarray, grid: int, share: float = MASK_SHARE) -> list[int]:
    """The cells (1-based) that the union of ``masks`` [K, H, W] (bool) covers by at least
    ``share`` of the cell's area."""
    if not len(masks):
        return []
    union = np.asarray(masks, dtype=bool).any(0)
    h, w = union.shape
    out = []
    for i, (x0, y0, x1, y1) in enumerate(cell_boxes(grid, h, w)):
        cell = union[round(y0):round(y1), round(x0):round(x1)]
        if cell.size and cell.mean() >= share:
            out.append(i + 1)
    return out


def covered(points: Sequence[Sequence[float]], boxes: np.ndarray) -> list[bool]:
    """Per point: whether some box contains it."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [bool(((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])).any())
            for x, y in points]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K, 4] x [M, 4] -> [K, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def found(truth_boxes: Sequence[Sequence[float]], boxes: np.ndarray,
          threshold: float = FOUND_IOU) -> list[bool]:
    """Per truth box: whether a detection overlaps it by at least ``threshold`` IoU."""
    if not len(boxes):
        return [False] * len(truth_boxes)
    return [bool(m >= threshold) for m in iou(truth_boxes, boxes).max(1)]


def answer(ch: Mapping, boxes: np.ndarray, height: int, width: int,
           masks: np.ndarray | None = None, cell_share: float = CELL_SHARE) -> list:
    """A solver's answer to ``ch`` from its detections of the label (boxes [K, 4] and, for a
    segmenter, masks [K, H, W] in the image's pixels): the cells it selects, or per point
    covered / per box found."""
    k = kind(ch)
    if k == "grid":
        if masks is not None:
            return mask_cells(masks, ch["grid"])
        return box_cells(boxes, ch["grid"], height, width, cell_share)
    if k == "points":
        return covered(ch["points"], boxes)
    return found(ch["boxes"], boxes)


def truth_answer(ch: Mapping, height: int, width: int) -> list:
    """The answer the truth calls for."""
    k = kind(ch)
    if k == "grid":
        if "cells" in ch:
            return list(ch["cells"])
        return box_cells(np.array([ch["box"]]), ch["grid"], height, width)
    return [True] * len(ch[k])


def right(ch: Mapping, got: Sequence, height: int, width: int) -> bool:
    return list(got) == truth_answer(ch, height, width)


__all__ = ["CELL_SHARE", "FOUND_IOU", "GRIDS", "MASK_SHARE", "ChallengeError", "answer",
           "box_cells", "cell_boxes", "challenge", "covered", "found", "iou", "kind",
           "mask_cells", "needs_truth", "parse", "right", "truth_answer"]
