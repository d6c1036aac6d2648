"""The solver spec (schema v1): how a foreign ONNX solver sees a tile and what it answers.

A spec is a JSON file beside (or pointing to) a solver's ``.onnx`` graph::

    {
      "model": "solver.onnx",
      "input": {"name": "image", "size": [128, 128], "layout": "NCHW", "dtype": "float32",
                "range": [0, 1], "mean": [0, 0, 0], "std": [1, 1, 1], "channels": "RGB",
                "resize": "bilinear", "antialias": false, "crop": 1.0},
      "output": {"name": "probs", "kind": "multilabel", "label_axis": 1, "reduce": "max"},
      "labels": ["Bicycle", "Bus", "Motorcycle"],
      "label_map": {"motorcycle": "Motorcycle"},
      "threshold": 0.5
    }

``threshold`` may also be one per solver label: ``{"default": 0.5, "Bus": 0.8}``. Other
output kinds register their own spec (:mod:`.text_spec`). Every error names the field to fix;
keys starting with ``_`` are comments, any other unknown key is an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .reader import (
    SCHEMA_VERSION,
    Reader,
    SolverSpecError,
    read_header,
    read_labels,
    read_size,
    read_units,
)

if TYPE_CHECKING:
    from ..onnx.spec import Tolerance
    from .detect_spec import DetectHead
    from .text_spec import CTCHead

LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8")
CHANNELS = ("RGB", "BGR")
RESIZES = ("bilinear", "bicubic", "area", "nearest")
FITS = ("squash", "letterbox")
KINDS = ("logits", "softmax", "multilabel", "multilabel_logits", "ctc")
REDUCES = ("max", "mean", "none")
CLOSED_KINDS = ("logits", "softmax")  # argmax over the labels
MULTILABEL_KINDS = ("multilabel", "multilabel_logits")  # P(label) >= threshold, per label


@dataclass(frozen=True)
class InputSpec:
    """How the solver turns a tile into its input tensor (applied in this order)."""

    name: str | None = None  # graph input name (None: the graph's only input)
    size: tuple[int, int | None] = (224, 224)  # (height, width); width None: keep the aspect
    layout: str = "NCHW"  # "NCHW" | "NHWC"
    dtype: str = "float32"  # "float32" | "float16" | "uint8"
    range: tuple[float, float] = (0.0, 1.0)  # pixel values span [lo, hi] (e.g. [0, 255])
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted, in range units
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # divided by, in range units
    channels: str = "RGB"  # channel order the graph takes: "RGB" | "BGR"
    resize: str = "bilinear"  # "bilinear" | "bicubic" | "area" | "nearest"
    antialias: bool = False  # low-pass before downscaling (PIL / torchvision), not OpenCV
    crop: float = 1.0  # centre-crop fraction; 1.0 = the whole tile, squashed to size
    fit: str = "squash"  # "squash" (ignore aspect) | "letterbox" (keep aspect, pad)
    pad: float = 0.0  # letterbox padding value, in [0, 1] pixel units
    align: str = "centre"  # letterbox: the image "centre"d or in the "topleft" corner
    # text solvers (output kind "ctc") only:
    quantize: bool = False  # the package resizes 8-bit images: round after each step
    width_rounding: str = "floor"  # free width: int(w * H / h) | ceil | round
    min_width: int = 0  # free width: pad on the right up to this many columns


@dataclass(frozen=True)
class OutputSpec:
    """Which output holds the answer and how to read it."""

    name: str | None = None  # graph output name (None: the first output)
    kind: str = "logits"  # "logits" | "softmax" | "multilabel" | "multilabel_logits"
    label_axis: int = 1  # the axis that indexes labels
    reduce: str = "none"  # fold every other non-batch axis (grid cells, boxes): max | mean
    label_start: int = 0  # labels begin at this index of the label axis (YOLO: 4, after boxes)
    ctc: CTCHead | None = None  # kind "ctc": the head's charset and decoding rule
    detect: DetectHead | None = None  # detector kinds: how the outputs decode (.detect_spec)

    @property
    def decision(self) -> str:
        if self.kind == "ctc":
            return "text"
        if self.detect is not None:
            return "detect"
        return "multilabel" if self.kind in MULTILABEL_KINDS else "closed"


@dataclass(frozen=True)
class SolverSpec:
    """A parsed, validated spec. ``model`` is resolved against the spec file's folder."""

    model: Path
    input: InputSpec
    output: OutputSpec
    labels: tuple[str, ...]
    label_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    threshold: float = 0.5  # multilabel: a label is selected when P >= threshold
    thresholds: tuple[float, ...] = ()  # per solver label (default: threshold for each)
    name: str | None = None  # display name (default: the spec file's stem)
    path: Path | None = None  # the spec file
    tolerance: Tolerance | None = None  # text solvers: torch against onnxruntime

    @property
    def decision(self) -> str:
        return self.output.decision

    def threshold_of(self, index: int) -> float:
        """The threshold of solver label ``index``."""
        return self.thresholds[index] if self.thresholds else self.threshold

    def solver_labels_for(self, label: str) -> tuple[int, ...]:
        """Indices of the solver's labels that a CAPTCHA label stands for (empty: none)."""
        key = _norm(label)
        for captcha, solver_labels in self.label_map.items():
            if captcha == label or _norm(captcha) == key:
                return tuple(self.labels.index(s) for s in solver_labels)
        return tuple(i for i, s in enumerate(self.labels) if _norm(s) == key)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``parse_spec`` reads it back to an equal spec)."""
        body = SPEC_KINDS[self.output.kind].to_dict if self.output.kind in SPEC_KINDS else _body
        model = (self.model.name if self.path and self.model.parent == self.path.parent
                 else str(self.model))
        return {"schema": SCHEMA_VERSION, "model": model, **body(self),
                **({"name": self.name} if self.name else {})}


def _body(spec: SolverSpec) -> dict[str, Any]:
    """A label spec's sections."""
    i, o, thresholds = spec.input, spec.output, spec.thresholds
    return {
        "input": {"name": i.name, "size": list(i.size), "layout": i.layout, "dtype": i.dtype,
                  "range": list(i.range), "mean": list(i.mean), "std": list(i.std),
                  "channels": i.channels, "resize": i.resize, "antialias": i.antialias,
                  "crop": i.crop, "fit": i.fit, "pad": i.pad},
        "output": {"name": o.name, "kind": o.kind, "label_axis": o.label_axis,
                   "reduce": o.reduce, "label_start": o.label_start},
        "labels": list(spec.labels),
        "label_map": {k: list(v) for k, v in spec.label_map.items()},
        "threshold": spec.threshold if len(set(thresholds)) <= 1 and (
            not thresholds or thresholds[0] == spec.threshold) else {
            "default": spec.threshold, **dict(zip(spec.labels, thresholds, strict=True))},
    }


def _norm(label: str) -> str:
    return " ".join(label.strip().lower().replace("_", " ").replace("-", " ").split())


# --- parsing -------------------------------------------------------------------------------------

_TOP = ("schema", "name", "model", "input", "output", "labels", "label_map", "threshold")
_INPUT = ("name", "size", "layout", "dtype", "range", "mean", "std", "channels", "resize",
          "antialias", "crop", "fit", "pad")
_OUTPUT = ("name", "kind", "label_axis", "reduce", "label_start")


@dataclass(frozen=True)
class SpecKind:
    """An ``output.kind`` whose spec reads otherwise than the label heads' (a head module
    registers its own: :mod:`.text_spec` the ``ctc`` head of OCR solvers)."""

    parse: Callable[..., SolverSpec]  # (data, *, path) -> SolverSpec
    to_dict: Callable[[SolverSpec], dict[str, Any]]  # its sections (not schema, model, name)


SPEC_KINDS: dict[str, SpecKind] = {}


def register_spec_kind(kind: str, parse: Callable[..., SolverSpec],
                       to_dict: Callable[[SolverSpec], dict[str, Any]]) -> None:
    """Read specs whose ``output.kind`` is ``kind`` with ``parse`` (a kind taken is refused)."""
    if kind in SPEC_KINDS:
        raise ValueError(f"spec kind {kind!r} is already registered")
    SPEC_KINDS[kind] = SpecKind(parse, to_dict)


def parse_spec(data: Any, *, path: Path | None = None) -> SolverSpec:
    """Validate a spec dict (``path``: the spec file, for resolving ``model`` and messages)."""
    out = data.get("output") if isinstance(data, dict) else None
    kind = out.get("kind") if isinstance(out, dict) else None
    if isinstance(kind, str) and kind.strip().lower() in SPEC_KINDS:
        return SPEC_KINDS[kind.strip().lower()].parse(data, path=path)
    src = str(path) if path else "solver spec"
    top = Reader(src, data, "", _TOP)
    _, model_path = read_header(top, path)

    if not top.has("input"):
        raise top.error("input", "missing: an object with at least \"size\": [H, W]")
    ir = Reader(src, top.data["input"], "input", _INPUT)
    size = read_size(ir)
    dtype = ir.string("dtype", "float32", DTYPES, case="lower")
    rng, mean, std = read_units(ir, (0.0, 255.0) if dtype == "uint8" else (0.0, 1.0))
    if dtype == "uint8":
        if rng != (0.0, 255.0):
            raise ir.error("input.range", f"a uint8 input holds [0, 255], got {list(rng)}")
        if mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0):
            raise ir.error("input.mean", "a uint8 input cannot be normalised outside the graph; "
                                         "leave mean 0 and std 1 (the graph normalises itself)")
    inp = InputSpec(
        name=ir.string("name"), size=size,
        layout=ir.string("layout", "NCHW", LAYOUTS, case="upper"), dtype=dtype, range=rng,
        mean=mean, std=std, channels=ir.string("channels", "RGB", CHANNELS, case="upper"),
        resize=ir.string("resize", "bilinear", RESIZES, case="lower"),
        antialias=ir.boolean("antialias", False),
        crop=ir.number("crop", 1.0, 0.0, 1.0, lo_open=True),
        fit=ir.string("fit", "squash", FITS, case="lower"),
        pad=ir.number("pad", 0.0, 0.0, 1.0),
    )

    if not top.has("output"):
        raise top.error("output", f"missing: an object with at least \"kind\" "
                                  f"({', '.join(KINDS)})")
    orr = Reader(src, top.data["output"], "output", _OUTPUT)
    if not orr.has("kind"):
        raise orr.error("output.kind", f"missing: one of {', '.join(KINDS)}")
    out = OutputSpec(
        name=orr.string("name"), kind=orr.string("kind", None, KINDS, case="lower"),
        label_axis=orr.number("label_axis", 1, 1, 8, integer=True),
        reduce=orr.string("reduce", "none", REDUCES, case="lower"),
        label_start=orr.number("label_start", 0, 0, 1 << 20, integer=True),
    )

    labels, label_map, threshold, per_label = read_labels(
        top, closed=out.kind in CLOSED_KINDS, per_label=True)
    return SolverSpec(model=model_path, input=inp, output=out, labels=labels,
                      label_map=label_map, threshold=threshold, thresholds=per_label,
                      name=top.string("name"), path=path)


def load_spec(path: str | Path) -> SolverSpec:
    """Read and validate a spec file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SolverSpecError(f"solver spec {path} not found (expected a JSON file; "
                              f"`advx solver init MODEL.onnx --out SPEC.json` writes one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SolverSpecError(f"{path}: not a UTF-8 JSON file ({e})") from e
    except json.JSONDecodeError as e:
        raise SolverSpecError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, "
                              f"column {e.colno}") from e
    return parse_spec(data, path=path.resolve())
