"""Detectors and segmenters in the solver spec: how their outputs decode and which detections
the solver keeps (schema v1; :mod:`.detect` decodes).

A spec whose ``output.kind`` is ``yolo``, ``gfl``, ``detr`` or ``heatmap`` describes a detector
or segmenter::

    {
      "model": "common_det.onnx",
      "input": {"size": [416, 416], "range": [0, 255], "channels": "BGR", "fit": "letterbox",
                "align": "topleft", "pad": 0.447, "quantize": true},
      "output": {"kind": "yolo", "name": "output", "layout": "anchors_first",
                 "objectness": true, "strides": [8, 16, 32]},
      "labels": ["text"],
      "threshold": 0.1,
      "nms": {"iou": 0.45, "per_class": false, "top_class": true}
    }

Input: ``size`` [H, W], ``range`` / ``mean`` / ``std`` / ``channels`` / ``layout`` as for image
solvers; ``fit``: ``letterbox`` (keep the aspect, pad with ``pad``, a pixel value in [0, 1];
``align`` ``centre`` as Ultralytics and NanoDet do or ``topleft`` as YOLOX and ddddocr do) or
``squash``; ``resize``: ``bilinear`` (OpenCV's INTER_LINEAR: no antialiasing) or another of the
image resizes; ``quantize``: the solver resizes the 8-bit image (values rounded after the
resize, straight through in torch).

Output, by ``kind`` (see :mod:`.detect` for the tensors):

- ``yolo``: ``name``; ``layout`` ``anchors_last`` (v8 / v11 [N, 4 + C, A]) or ``anchors_first``
  ([N, A, 4 + C], or with ``objectness`` [N, A, 5 + C]: v5, YOLOX); ``strides`` where the
  graph leaves grid decoding outside (YOLOX raw); ``scores`` ``sigmoid`` (the graph's
  probabilities) or ``logits``; ``prototypes`` and ``coefficients``: a YOLO-seg mask head
  (the prototype tensor, and the number of mask coefficients after the class scores);
- ``gfl``: ``scores`` and ``boxes``, one tensor name per stride, ``strides``, ``reg_max``;
- ``detr``: ``boxes`` (centre x, y, w, h) and ``logits`` tensor names, ``normalised`` (boxes in
  [0, 1] of the input, default true);
- ``heatmap`` (CLIPSeg): ``name`` of a [N, C, h, w] logit map per label.

``labels`` name the classes in output order, ``label_map`` maps CAPTCHA labels to them, and
``threshold`` is the score a detection needs (``heatmap``: the probability a pixel needs);
``nms`` says how the solver keeps detections (:class:`.detect.Keep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .detect import Keep
from .reader import Reader, read_header, read_labels, read_size, read_units
from .spec import RESIZES, InputSpec, OutputSpec, SolverSpec, register_spec_kind

DETECT_KINDS = ("yolo", "gfl", "detr", "heatmap")
YOLO_LAYOUTS = ("anchors_last", "anchors_first")
ALIGNS = ("centre", "topleft")

_TOP = ("schema", "name", "model", "input", "output", "labels", "label_map", "threshold", "nms")
_INPUT = ("name", "size", "layout", "dtype", "range", "mean", "std", "channels", "resize",
          "antialias", "fit", "pad", "align", "quantize")
_OUTPUT = {
    "yolo": ("kind", "name", "layout", "objectness", "strides", "scores", "prototypes",
             "coefficients"),
    "gfl": ("kind", "scores", "boxes", "strides", "reg_max", "offset"),
    "detr": ("kind", "boxes", "logits", "normalised"),
    "heatmap": ("kind", "name"),
}
_NMS = ("iou", "per_class", "top_class", "max_detections")


@dataclass(frozen=True)
class DetectHead:
    """How a detector's or segmenter's outputs decode (see the module docstring)."""

    kind: str  # "yolo" | "gfl" | "detr" | "heatmap"
    tensors: tuple[str, ...]  # the graph outputs read, in the order decode takes them
    layout: str = "anchors_last"  # yolo
    objectness: bool = False  # yolo v5 / YOLOX
    strides: tuple[int, ...] = ()  # yolo raw grids, gfl
    scores: str = "sigmoid"  # yolo: "sigmoid" (probabilities) | "logits"
    coefficients: int = 0  # yolo-seg: mask coefficients after the class scores
    reg_max: int = 7  # gfl
    offset: float = 0.0  # gfl: a cell's centre is (col + offset) * stride
    normalised: bool = True  # detr
    keep: Keep = field(default_factory=Keep)

    @property
    def masks(self) -> bool:
        return self.coefficients > 0 or self.kind == "heatmap"


def _names(orr: Reader, key: str, n: int | None = None) -> tuple[str, ...]:
    raw = orr.get(key)
    raw = [raw] if isinstance(raw, str) else raw
    if (not isinstance(raw, list) or not raw or not all(isinstance(v, str) and v for v in raw)
            or (n is not None and len(raw) != n)):
        count = f"{n} " if n is not None else ""
        raise orr.error(orr.field(key), f"missing or malformed: {count}graph output name(s)")
    return tuple(raw)


def _strides(orr: Reader, required: bool) -> tuple[int, ...]:
    raw = orr.get("strides")
    if raw is None and not required:
        return ()
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in raw)):
        raise orr.error(orr.field("strides"), f"must be a list of positive integers (e.g. "
                                              f"[8, 16, 32]), got {raw!r}")
    return tuple(raw)


def _head(orr: Reader, kind: str, keep: Keep) -> DetectHead:
    if kind == "yolo":
        name = orr.string("name")
        protos = orr.string("prototypes")
        coefficients = int(orr.number("coefficients", 32 if protos else 0, 0, 1024,
                                      integer=True))
        if coefficients and not protos:
            raise orr.error(orr.field("prototypes"), "missing: the prototype output of a mask "
                                                     "head with coefficients")
        return DetectHead(
            kind, (name or "",) + ((protos,) if protos else ()),
            layout=orr.string("layout", "anchors_last", YOLO_LAYOUTS, case="lower"),
            objectness=orr.boolean("objectness", False), strides=_strides(orr, False),
            scores=orr.string("scores", "sigmoid", ("sigmoid", "logits"), case="lower"),
            coefficients=coefficients if protos else 0, keep=keep)
    if kind == "gfl":
        strides = _strides(orr, True)
        n = len(strides)
        return DetectHead(kind, _names(orr, "scores", n) + _names(orr, "boxes", n),
                          strides=strides,
                          reg_max=int(orr.number("reg_max", 7, 1, 64, integer=True)),
                          offset=orr.number("offset", 0.0, 0.0, 1.0), keep=keep)
    if kind == "detr":
        return DetectHead(kind, _names(orr, "boxes", 1) + _names(orr, "logits", 1),
                          normalised=orr.boolean("normalised", True), keep=keep)
    return DetectHead(kind, (orr.string("name") or "",), keep=keep)


def parse_detect_spec(data: dict, *, path: Path | None = None) -> SolverSpec:
    """Validate a spec dict whose output is a detector or segmenter head."""
    src = str(path) if path else "solver spec"
    top = Reader(src, data, "", _TOP)
    _, model_path = read_header(top, path)
    if not top.has("input"):
        raise top.error("input", "missing: an object with at least \"size\": [H, W]")
    ir = Reader(src, top.data["input"], "input", _INPUT)
    rng, mean, std = read_units(ir, (0.0, 1.0))
    inp = InputSpec(
        name=ir.string("name"), size=read_size(ir),
        layout=ir.string("layout", "NCHW", ("NCHW", "NHWC"), case="upper"),
        dtype=ir.string("dtype", "float32", ("float32", "float16"), case="lower"),
        range=rng, mean=mean, std=std,
        channels=ir.string("channels", "RGB", ("RGB", "BGR"), case="upper"),
        resize=ir.string("resize", "bilinear", RESIZES, case="lower"),
        antialias=ir.boolean("antialias", False),
        fit=ir.string("fit", "letterbox", ("letterbox", "squash"), case="lower"),
        pad=ir.number("pad", 114 / 255, 0.0, 1.0),
        align=ir.string("align", "centre", ALIGNS, case="lower"),
        quantize=ir.boolean("quantize", False))
    if not top.has("output"):
        raise top.error("output", "missing: an object with at least \"kind\"")
    kind = str(top.data["output"].get("kind", "")).strip().lower()
    orr = Reader(src, top.data["output"], "output", _OUTPUT[kind])
    labels, label_map, threshold, _ = read_labels(top, default_threshold=0.25)
    keep = Keep(score=threshold)
    if top.has("nms"):
        nr = Reader(src, top.data["nms"], "nms", _NMS)
        keep = Keep(score=threshold, iou=nr.number("iou", keep.iou, 0.0, 1.0),
                    per_class=nr.boolean("per_class", keep.per_class),
                    top_class=nr.boolean("top_class", keep.top_class),
                    max_detections=int(nr.number("max_detections", keep.max_detections, 1,
                                                 100000, integer=True)))
    head = _head(orr, kind, keep)
    out = OutputSpec(name=head.tensors[0] or None, kind=kind, label_axis=-1, detect=head)
    return SolverSpec(model=model_path, input=inp, output=out, labels=labels,
                      label_map=label_map, threshold=threshold, name=top.string("name"),
                      path=path)


def detect_spec_dict(spec: SolverSpec) -> dict[str, Any]:
    """The sections of a parsed detector spec (:meth:`SolverSpec.to_dict` adds the rest)."""
    i, h = spec.input, spec.output.detect
    assert h is not None
    inp = {"name": i.name, "size": list(i.size), "layout": i.layout, "dtype": i.dtype,
           "range": list(i.range), "mean": list(i.mean), "std": list(i.std),
           "channels": i.channels, "resize": i.resize, "antialias": i.antialias, "fit": i.fit,
           "pad": i.pad, "align": i.align, "quantize": i.quantize}
    out: dict[str, Any] = {"kind": h.kind}
    n = len(h.strides)
    if h.kind == "yolo":
        out.update(name=h.tensors[0] or None, layout=h.layout, objectness=h.objectness,
                   strides=list(h.strides) or None, scores=h.scores)
        if h.coefficients:
            out.update(prototypes=h.tensors[1], coefficients=h.coefficients)
    elif h.kind == "gfl":
        out.update(scores=list(h.tensors[:n]), boxes=list(h.tensors[n:]),
                   strides=list(h.strides), reg_max=h.reg_max, offset=h.offset)
    elif h.kind == "detr":
        out.update(boxes=h.tensors[0], logits=h.tensors[1], normalised=h.normalised)
    else:
        out.update(name=h.tensors[0] or None)
    k = h.keep
    return {"input": inp, "output": out, "labels": list(spec.labels),
            "label_map": {a: list(b) for a, b in spec.label_map.items()},
            "threshold": spec.threshold,
            "nms": {"iou": k.iou, "per_class": k.per_class, "top_class": k.top_class,
                    "max_detections": k.max_detections}}


for _kind in DETECT_KINDS:
    register_spec_kind(_kind, parse_detect_spec, detect_spec_dict)

__all__ = ["ALIGNS", "DETECT_KINDS", "DetectHead", "detect_spec_dict", "parse_detect_spec"]
