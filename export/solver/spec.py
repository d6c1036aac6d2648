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

import difflib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..onnx.spec import Tolerance
    from .detect_spec import DetectHead
    from .text_spec import CTCHead

SCHEMA_VERSION = 1
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8")
CHANNELS = ("RGB", "BGR")
RESIZES = ("bilinear", "bicubic", "area", "nearest")
FITS = ("squash", "letterbox")
KINDS = ("logits", "softmax", "multilabel", "multilabel_logits", "ctc")
REDUCES = ("max", "mean", "none")
CLOSED_KINDS = ("logits", "softmax")  # argmax over the labels
MULTILABEL_KINDS = ("multilabel", "multilabel_logits")  # P(label) >= threshold, per label


class SolverSpecError(ValueError):
    """A spec (or its graph) that cannot be used; the message names the field to fix."""


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


class _Reader:
    """Typed access to one JSON object; every error names ``where.key``."""

    def __init__(self, src: str, data: Any, where: str, known: Sequence[str]) -> None:
        self.src, self.where = src, where
        if not isinstance(data, dict):
            raise self.error(where or "the spec", f"must be a JSON object, got {_kind(data)}")
        self.data = data
        for key in data:
            if key in known or str(key).startswith(("_", "//")):
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise self.error(self.field(key), f"unknown key{hint}")

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, fld: str, msg: str) -> SolverSpecError:
        return SolverSpecError(f"{self.src}: {fld}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        v = self.data.get(key)
        return default if v is None else v

    def string(self, key: str, default: str | None = None, choices: Sequence[str] = (),
               case: str | None = None) -> str | None:
        if not self.has(key):
            return default
        v = self.data[key]
        if not isinstance(v, str) or not v.strip():
            raise self.error(self.field(key), f"must be a non-empty string, got {v!r}")
        v = {"upper": str.upper, "lower": str.lower}.get(case, str)(v.strip())
        if choices and v not in choices:
            raise self.error(self.field(key), f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def number(self, key: str, default: float, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False, integer: bool = False) -> float:
        if not self.has(key):
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.error(self.field(key), f"must be a number, got {v!r}")
        if integer and v != int(v):
            raise self.error(self.field(key), f"must be an integer, got {v!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise self.error(self.field(key), f"must be in {rng}, got {v!r}")
        return int(v) if integer else float(v)

    def numbers(self, key: str, default: tuple, n: int, positive: bool = False) -> tuple:
        if not self.has(key):
            return default
        v = self.data[key]
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = [v] * n  # one value for every channel
        if (not isinstance(v, list) or len(v) != n
                or not all(isinstance(x, int | float) and not isinstance(x, bool)
                           and math.isfinite(x) for x in v)):
            raise self.error(self.field(key), f"must be a list of {n} numbers, got {v!r}")
        if positive and any(x <= 0 for x in v):
            raise self.error(self.field(key), f"must be > 0, got {v!r}")
        return tuple(float(x) for x in v)

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        v = self.data[key]
        if not isinstance(v, bool):
            raise self.error(self.field(key), f"must be true or false, got {v!r}")
        return v


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(v), repr(v))


def read_size(ir: _Reader, free_width: bool = False) -> tuple[int, int | None]:
    """An input section's ``size``: [height, width] (or a side for both; with ``free_width``,
    [height, null]: the width that keeps the aspect ratio)."""
    either = ", or [height, null] to keep the aspect ratio" if free_width else ""
    if not ir.has("size"):
        raise ir.error("input.size", f"missing: [height, width] of the graph's image input{either}")
    size = ir.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (not isinstance(size, list) or len(size) != 2 or size[0] is None
            or (size[1] is None and not free_width)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= 4096
                       for s in size if s is not None)):
        raise ir.error("input.size", f"must be [height, width] in pixels (8..4096){either}; "
                                     f"got {size!r}")
    return int(size[0]), None if size[1] is None else int(size[1])


def read_units(ir: _Reader, default_range: tuple[float, float] = (0.0, 1.0)) -> tuple:
    """An input section's ``range``, ``mean`` and ``std``."""
    rng = ir.numbers("range", default_range, 2)
    if rng[1] <= rng[0]:
        raise ir.error("input.range", f"must be [low, high] with low < high, got {list(rng)}")
    return rng, ir.numbers("mean", (0.0,) * 3, 3), ir.numbers("std", (1.0,) * 3, 3, positive=True)


def read_header(top: _Reader, path: Path | None) -> tuple[Path, Path]:
    """The checked schema version and model of a spec's top level: (the folder paths are
    relative to, the resolved model path)."""
    schema = top.number("schema", SCHEMA_VERSION, integer=True)
    if schema != SCHEMA_VERSION:
        raise top.error("schema", f"version {schema} is not supported (this advx reads "
                                  f"{SCHEMA_VERSION})")
    model = top.string("model")
    if model is None:
        raise top.error("model", "missing: the path of the solver's .onnx file, relative to "
                                 "the spec file")
    base = path.parent if path else Path.cwd()
    return base, (base / Path(model).expanduser()).resolve()


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
    top = _Reader(src, data, "", _TOP)
    _, model_path = read_header(top, path)

    if not top.has("input"):
        raise top.error("input", "missing: an object with at least \"size\": [H, W]")
    ir = _Reader(src, top.data["input"], "input", _INPUT)
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
    orr = _Reader(src, top.data["output"], "output", _OUTPUT)
    if not orr.has("kind"):
        raise orr.error("output.kind", f"missing: one of {', '.join(KINDS)}")
    out = OutputSpec(
        name=orr.string("name"), kind=orr.string("kind", None, KINDS, case="lower"),
        label_axis=orr.number("label_axis", 1, 1, 8, integer=True),
        reduce=orr.string("reduce", "none", REDUCES, case="lower"),
        label_start=orr.number("label_start", 0, 0, 1 << 20, integer=True),
    )

    labels, label_map, threshold, per_label = parse_spec_labels(
        top, closed=out.kind in CLOSED_KINDS, per_label=True)
    return SolverSpec(model=model_path, input=inp, output=out, labels=labels,
                      label_map=label_map, threshold=threshold, thresholds=per_label,
                      name=top.string("name"), path=path)


def parse_spec_labels(top: _Reader, *, closed: bool = False, per_label: bool = False,
                      default_threshold: float = 0.5):
    """A spec's ``labels``, ``label_map`` and ``threshold``: (labels, map, threshold, the
    per-label thresholds an object gives where ``per_label`` allows one)."""
    labels = top.get("labels")
    if labels is None:
        raise top.error("labels", "missing: the solver's label names, in output order")
    if (not isinstance(labels, list) or not labels
            or not all(isinstance(s, str) and s.strip() for s in labels)):
        raise top.error("labels", "must be a non-empty list of label names (strings)")
    labels = tuple(s.strip() for s in labels)
    dup = sorted({s for s in labels if labels.count(s) > 1})
    if dup:
        raise top.error("labels", f"duplicate names {dup}")
    if closed and len(labels) < 2:
        raise top.error("labels", "a closed-set solver (logits, softmax) needs two or more "
                                  "labels")

    raw_map = top.get("label_map", {})
    if not isinstance(raw_map, dict):
        raise top.error("label_map", f"must be an object {{captcha label: solver label(s)}}, "
                                     f"got {_kind(raw_map)}")
    label_map: dict[str, tuple[str, ...]] = {}
    for key, val in raw_map.items():
        fld = f"label_map.{key}"
        vals = [val] if isinstance(val, str) else val
        if not isinstance(vals, list) or not vals or not all(isinstance(v, str) for v in vals):
            raise top.error(fld, f"must be a solver label or a list of them, got {val!r}")
        for v in vals:
            if v not in labels:
                close = difflib.get_close_matches(v, labels, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise top.error(fld, f"{v!r} is not one of the solver's labels{hint}")
        label_map[str(key).strip()] = tuple(vals)

    raw_thr = top.get("threshold", default_threshold)
    per: tuple[float, ...] = ()
    if isinstance(raw_thr, dict) and per_label:  # {"default": 0.5, "Bus": 0.8, ...}
        tr = _Reader(top.src, raw_thr, "threshold", ("default", *labels))
        threshold = _threshold(tr, "default", default_threshold)
        per = tuple(_threshold(tr, lab, threshold) for lab in labels)
    else:
        threshold = _threshold(top, "threshold", default_threshold)
    return labels, label_map, threshold, per


def _threshold(reader: _Reader, key: str, default: float) -> float:
    value = reader.number(key, default, 0.0, 1.0, lo_open=True)
    if value >= 1.0:
        raise reader.error(reader.field(key), "must be below 1 (a label is selected when "
                                              "P >= threshold)")
    return value


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
