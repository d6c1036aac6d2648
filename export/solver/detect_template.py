"""``advx solver init`` for detectors and segmenters: which head a graph's outputs look like
(:mod:`.detect_spec`), and a spec template saying what was guessed."""

from __future__ import annotations

import math
from typing import Any

from .graph import GraphIO

STRIDES = (8, 16, 32)
ANCHORS = 500  # fewer outputs than this along both axes: not a YOLO head


def _cells(size: list[int], strides=STRIDES) -> int:
    return sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in strides)


def detect_head(io: GraphIO, shapes: dict[str, list], size: list[int], classes: int | None
                ) -> tuple[dict, list[str]] | None:
    """The ``output`` section of a detector or segmenter graph whose outputs have ``shapes``
    (name -> shape, on a probe), and what was guessed (None: they do not look like one)."""
    outs = [(o, shapes.get(o.name)) for o in io.outputs]
    shaped = [(o, d) for o, d in outs if d is not None]
    three = [(o, d) for o, d in shaped if len(d) == 3]
    four = [(o, d) for o, d in shaped if len(d) == 4]
    notes: list[str] = []
    # GFL (NanoDet): per stride a score and a box-distribution tensor [N, cells, ...]
    by_cells: dict[Any, list] = {}
    for o, d in three:
        by_cells.setdefault(d[1], []).append((o, d))
    pairs = [v for k, v in by_cells.items() if isinstance(k, int) and len(v) == 2]
    if len(pairs) >= 2 and sum(k for k in by_cells if isinstance(k, int)) == _cells(size):
        pairs.sort(key=lambda v: -v[0][1][1])  # stride 8 first: the most cells
        scores, boxes = [], []
        for v in pairs:
            (a, _), (b, db) = sorted(v, key=lambda p: p[1][2] % 4 == 0 and p[1][2] // 4 > 1)
            scores.append(a.name)
            boxes.append(b.name)
        reg_max = db[2] // 4 - 1
        notes.append(f"output.kind: \"gfl\" (NanoDet-style: per stride class scores and box "
                     f"distributions, reg_max {reg_max}); check offset (0.5: NanoDet v0.x)")
        return ({"kind": "gfl", "scores": scores, "boxes": boxes, "strides": list(STRIDES),
                 "reg_max": reg_max, "offset": 0.5}, notes)
    # DETR family: boxes [N, Q, 4] and logits [N, Q, C]
    q4 = [(o, d) for o, d in three if d[2] == 4]
    qc = [(o, d) for o, d in three if d[2] != 4 and q4 and d[1] == q4[0][1][1]]
    if len(q4) == 1 and qc:
        notes.append("output.kind: \"detr\" (boxes [N, Q, 4] as centre x, y, w, h normalised "
                     "to the input, sigmoid class logits); check \"normalised\"")
        return ({"kind": "detr", "boxes": q4[0][0].name, "logits": qc[0][0].name,
                 "normalised": True}, notes)
    if not three:
        return None
    o, d = three[0]
    if not all(isinstance(x, int) for x in d[1:]):
        return None
    # YOLO: hundreds of anchors (8,400 at 640 px), and a box before the classes
    anchors, width = max(d[1], d[2]), min(d[1], d[2])
    raw_grids = d[1] == _cells(size)  # YOLOX's raw output: one row per grid cell
    if (anchors < ANCHORS and not raw_grids) or width < 5 or (classes and width < 4 + classes):
        return None
    head: dict[str, Any] = {"kind": "yolo", "name": o.name}
    if d[2] > d[1]:  # [N, 4 + C (+ k), A]: v8 / v11
        head["layout"], width = "anchors_last", d[1]
        c = classes if classes else width - 4
        notes.append(f"output.kind: \"yolo\" v8 / v11 layout [N, 4 + classes, anchors] "
                     f"({d}), boxes decoded in the graph")
    else:  # [N, A, 5 + C]: v5 / YOLOX
        head["layout"], head["objectness"], width = "anchors_first", True, d[2]
        c = classes if classes else width - 5
        notes.append(f"output.kind: \"yolo\" with objectness ([N, anchors, 5 + classes], "
                     f"v5 / YOLOX: {d})")
        if raw_grids:
            head["strides"] = list(STRIDES)
            notes.append("output.strides: [8, 16, 32]: the anchors match YOLOX's raw grids; "
                         "remove it if the graph decodes boxes itself (v5 exports do)")
    extra = width - (5 if head.get("objectness") else 4) - c
    if extra > 0 and four:
        head.update(prototypes=four[0][0].name, coefficients=extra)
        notes.append(f"output.prototypes: {four[0][0].name!r} with {extra} mask coefficients "
                     f"(YOLO-seg)")
    return head, notes


def detect_template(io: GraphIO, shapes: dict[str, list], size: list[int],
                    labels: list[str] | None) -> tuple[dict, list[str]] | None:
    """The ``output``, ``labels``, ``threshold`` and ``nms`` sections of a detector's spec and
    the notes of what was guessed (None: not a detector)."""
    found = detect_head(io, shapes, size, len(labels) if labels else None)
    if found is None:
        return None
    out, notes = found
    if labels is None:
        n = None
        if out["kind"] == "gfl":
            n = shapes[out["scores"][0]][2]
        elif out["kind"] == "detr":
            n = shapes[out["logits"]][2]
        else:
            d = shapes[out["name"]]
            width = d[1] if out["layout"] == "anchors_last" else d[2]
            n = width - (5 if out.get("objectness") else 4) - out.get("coefficients", 0)
        labels = [f"label_{i}" for i in range(n)]
        notes.append(f"labels: {n} placeholders: replace them with the class names in output "
                     f"order (COCO detectors: see advx.export.zoo.detectors.COCO_CLASSES)")
    yolox = out.get("strides") and out["kind"] == "yolo"
    notes.append("input: letterbox " + ("top-left, padded 114 (YOLOX)" if yolox else
                                        "centred, padded 114 (Ultralytics)")
                 + "; check the solver's preprocessing (range, mean / std, BGR)")
    notes.append("threshold: 0.25 (Ultralytics' default); nms: IoU 0.45 " + (
        "across classes, each candidate's top class (YOLOX's demo)" if yolox else "per class")
        + "; set what the solver keeps")
    return {"output": out, "labels": labels, "threshold": 0.25,
            "nms": {"iou": 0.45, "per_class": not yolox, "top_class": bool(yolox)},
            "input_fit": {"fit": "letterbox", "align": "topleft" if yolox else "centre",
                          "pad": round(114 / 255, 4)}}, notes


__all__ = ["detect_head", "detect_template"]
