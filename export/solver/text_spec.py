"""Sequence (text) solvers in the solver spec: a CTC head and the inputs OCR packages take.

A spec whose ``output.kind`` is ``"ctc"`` describes an OCR solver (schema v1)::

    {
      "model": "common_old.onnx",
      "input": {"name": "input1", "size": [64, null], "width_rounding": "floor",
                "channels": "GREY", "range": [0, 1], "resize": "lanczos", "antialias": true,
                "quantize": true},
      "output": {"name": "387", "kind": "ctc", "layout": "TNC", "blank": 0,
                 "charset": "charset.json", "case": "insensitive"},
      "tolerance": {"atol": 2.0, "margin": 3.0}
    }

Input, applied in this order to a tile in [0, 1]: ``size`` ``[H, W]`` squashes, ``[H, null]``
keeps the aspect ratio, the width rounded by ``width_rounding`` (``floor``: ddddocr, ``ceil``:
PaddleOCR, or ``round``) and padded on the right with ``pad`` up to ``min_width``
(:func:`input_width`); ``resize`` (``bilinear`` | ``bicubic`` | ``lanczos``) with ``antialias``
true as PIL's ``Image.resize``, false as ``cv2.resize``; ``quantize``: rounded to 8 bits after
each step, as packages resizing 8-bit images are; ``channels`` ``RGB`` | ``BGR`` | ``GREY``;
``range``, ``mean``, ``std`` as for image solvers (one mean / std for a grey input).

Output, a CTC head: ``name`` (an inner tensor, such as the logits before an ArgMax, cuts the
graph there); ``layout`` ``TNC`` | ``NTC`` (classes last); ``charset``, one symbol per class
with the blank's place (inline, or a file beside the spec: a JSON list or one symbol per line);
``blank``; ``case`` ``insensitive`` | ``sensitive``; the package's departures from greedy CTC
(``never_emit`` classes, ``ignore_last_steps``); ``scores`` ``logits`` | ``softmax``.

``tolerance`` (optional): torch against onnxruntime, ``atol`` + ``rtol`` · |x| on the scores
and ``margin``, the best-two gap below which a step is a near-tie (default 2 · atol).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..onnx.spec import Tolerance
from .reader import Reader, SolverSpecError, read_header, read_size, read_units
from .spec import InputSpec, OutputSpec, SolverSpec, register_spec_kind

LAYOUTS = ("TNC", "NTC")
CASES = ("insensitive", "sensitive")
SCORES = ("logits", "softmax")
TEXT_RESIZES = ("bilinear", "bicubic", "lanczos")
WIDTH_ROUNDINGS = ("floor", "ceil", "round")
TEXT_CHANNELS = ("RGB", "BGR", "GREY")
_GREY_NAMES = ("GREY", "GRAY", "L")

_TOP = ("schema", "name", "model", "input", "output", "tolerance")
_INPUT = ("name", "size", "layout", "dtype", "range", "mean", "std", "channels", "resize",
          "antialias", "quantize", "width_rounding", "min_width", "pad")
_OUTPUT = ("name", "kind", "layout", "blank", "charset", "case", "never_emit",
           "ignore_last_steps", "scores")
_TOLERANCE = ("atol", "rtol", "margin")
_NOT_TEXT = {"labels": "a ctc head reads text: its symbols go in output.charset",
             "label_map": "a ctc head reads text, not labels",
             "threshold": "a ctc head reads text; it has no threshold"}


@dataclass(frozen=True)
class CTCHead:
    """A CTC head: scores per time step over ``charset`` (blank included), read greedily."""

    charset: tuple[str, ...]  # one symbol per class, in class order (the blank's is unused)
    blank: int = 0  # class index of the blank
    layout: str = "TNC"  # "TNC" | "NTC": where the batch and time axes are (classes last)
    case: str = "insensitive"  # how a reading is compared with the truth
    never_emit: tuple[int, ...] = ()  # classes the package's decoder never picks
    ignore_last_steps: int = 0  # time steps at the end the package's decoder never reads
    scores: str = "logits"  # "logits" | "softmax" (probabilities)
    charset_file: str | None = None  # where the charset was read from (relative to the spec)

    @property
    def classes(self) -> int:
        return len(self.charset)


def parse_text_spec(data: dict, *, path: Path | None = None) -> SolverSpec:
    """Validate a spec dict whose output is a CTC head."""
    src = str(path) if path else "solver spec"
    for key, why in _NOT_TEXT.items():
        if key in data:
            raise SolverSpecError(f"{src}: {key}: not used by a ctc solver ({why})")
    top = Reader(src, data, "", _TOP)
    base, model_path = read_header(top, path)
    if not top.has("input"):
        raise top.error("input", "missing: an object with at least \"size\": [H, W] or "
                                 "[H, null] (height H, keeping the aspect ratio)")
    inp = _input(Reader(src, top.data["input"], "input", _INPUT))
    out = _output(Reader(src, top.data["output"], "output", _OUTPUT), base)
    tol = Tolerance()
    if top.has("tolerance"):
        tr = Reader(src, top.data["tolerance"], "tolerance", _TOLERANCE)
        atol = tr.number("atol", tol.atol, 0.0)
        margin = tr.number("margin", -1.0, 0.0) if tr.has("margin") else None
        tol = Tolerance(atol, tr.number("rtol", tol.rtol, 0.0), margin)
    return SolverSpec(model=model_path, input=inp,
                      output=out, labels=(), name=top.string("name"), path=path,
                      tolerance=tol)


def _input(ir: Reader) -> InputSpec:
    size = read_size(ir, free_width=True)
    free = size[1] is None
    layout = ir.string("layout", "NCHW", ("NCHW",), case="upper")
    dtype = ir.string("dtype", "float32", ("float32",), case="lower")
    channels = ir.string("channels", "RGB", (*TEXT_CHANNELS, "GRAY", "L"), case="upper")
    channels = "GREY" if channels in _GREY_NAMES else channels
    rng, mean, std = read_units(ir)
    if channels == "GREY" and (len(set(mean)) > 1 or len(set(std)) > 1):
        raise ir.error("input.mean", f"a GREY input has one channel: give one mean and one "
                                     f"std, got mean {list(mean)}, std {list(std)}")
    antialias = ir.boolean("antialias", True)
    resize = ir.string("resize", "bilinear", TEXT_RESIZES, case="lower")
    if resize == "lanczos" and not antialias:
        raise ir.error("input.resize", "\"lanczos\" is PIL's filter: it needs "
                                       "\"antialias\": true (OpenCV-style resizes are bilinear "
                                       "or bicubic)")
    rounding = ir.string("width_rounding", "floor", WIDTH_ROUNDINGS, case="lower")
    min_width = ir.number("min_width", 0, 0, 4096, integer=True)
    if not free and (ir.has("width_rounding") or ir.has("min_width")):
        key = "width_rounding" if ir.has("width_rounding") else "min_width"
        raise ir.error(f"input.{key}", "only for a free width: \"size\": [height, null]")
    return InputSpec(
        name=ir.string("name"), size=size,
        layout=layout, dtype=dtype, range=rng, mean=mean, std=std, channels=channels,
        resize=resize, antialias=antialias, fit="height" if free else "squash",
        pad=ir.number("pad", 0.0, 0.0, 1.0), quantize=ir.boolean("quantize", False),
        width_rounding=rounding, min_width=int(min_width))


def _output(orr: Reader, base: Path) -> OutputSpec:
    where = orr.field("charset")
    if not orr.has("charset"):
        raise orr.error(where, "missing: one symbol per class of the head (blank included), "
                               "inline or a file beside the spec")
    raw = orr.get("charset")
    charset_file = None
    if isinstance(raw, str):
        charset_file = raw
        raw = _read_charset(base / Path(raw).expanduser(), orr, where)
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise orr.error(where, "must be a non-empty list of strings (one per class) or the "
                               "name of a file beside the spec")
    n = len(raw)
    blank = orr.number("blank", 0, 0, n - 1, integer=True)
    never = orr.get("never_emit", [])
    if (not isinstance(never, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                               and 0 <= i < n for i in never)):
        raise orr.error(orr.field("never_emit"), f"must be a list of class indices in "
                                                 f"[0, {n - 1}], got {never!r}")
    if blank in never:
        raise orr.error(orr.field("never_emit"), f"holds the blank ({blank}); the blank is "
                                                 f"never emitted anyway")
    emitted = [s for i, s in enumerate(raw) if i != blank and i not in never]
    dup = sorted({s for s in emitted if emitted.count(s) > 1})
    if dup:
        raise orr.error(where, f"duplicate symbols {dup[:10]}")
    empty = [i for i, s in enumerate(raw) if s == "" and i != blank and i not in never]
    if empty:
        raise orr.error(where, f"class {empty[0]} has an empty symbol (only the blank's, or "
                               f"a class in never_emit, may be empty)")
    head = CTCHead(
        charset=tuple(raw), blank=int(blank),
        layout=orr.string("layout", "TNC", LAYOUTS, case="upper"),
        case=orr.string("case", "insensitive", CASES, case="lower"),
        never_emit=tuple(sorted(set(never))),
        ignore_last_steps=int(orr.number("ignore_last_steps", 0, 0, 1 << 16, integer=True)),
        scores=orr.string("scores", "logits", SCORES, case="lower"),
        charset_file=charset_file)
    return OutputSpec(name=orr.string("name"), kind="ctc", label_axis=2, ctc=head)


def _read_charset(file: Path, orr: Reader, where: str) -> list[str]:
    if not file.is_file():
        raise orr.error(where, f"charset file {file} not found")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise orr.error(where, f"{file} is not a UTF-8 text file ({e})") from e
    if file.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise orr.error(where, f"{file}: not valid JSON: {e.msg} at line {e.lineno}") from e
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def text_spec_dict(spec: SolverSpec) -> dict[str, Any]:
    """The sections of a parsed ctc spec (:meth:`SolverSpec.to_dict` adds the rest)."""
    i, o, head, t = spec.input, spec.output, spec.output.ctc, spec.tolerance
    assert head is not None
    inp: dict[str, Any] = {"name": i.name, "size": list(i.size), "layout": i.layout,
                           "dtype": i.dtype, "range": list(i.range), "mean": list(i.mean),
                           "std": list(i.std), "channels": i.channels, "resize": i.resize,
                           "antialias": i.antialias, "quantize": i.quantize, "pad": i.pad}
    if i.size[1] is None:
        inp.update(width_rounding=i.width_rounding, min_width=i.min_width)
    d: dict[str, Any] = {
        "input": inp,
        "output": {"name": o.name, "kind": "ctc", "layout": head.layout, "blank": head.blank,
                   "charset": head.charset_file or list(head.charset), "case": head.case,
                   "never_emit": list(head.never_emit),
                   "ignore_last_steps": head.ignore_last_steps, "scores": head.scores},
    }
    if t is not None:
        d["tolerance"] = {"atol": t.atol, "rtol": t.rtol,
                          **({"margin": t.decisive_gap} if t.decisive_gap is not None else {})}
    return d


def input_width(spec: InputSpec, height: int, width: int) -> tuple[int, int]:
    """(resized width, graph input width) for a tile of ``height`` x ``width`` pixels."""
    h_out = spec.size[0]
    if spec.size[1] is not None:
        return spec.size[1], spec.size[1]
    if spec.width_rounding == "floor":  # ddddocr: int(w * (64 / h))
        resized = int(width * (h_out / height))
    elif spec.width_rounding == "ceil":  # PaddleOCR: ceil(48 * (w / h))
        resized = math.ceil(h_out * (width / height))
    else:
        resized = round(width * h_out / height)
    padded = resized
    if spec.min_width:  # PaddleOCR: int(48 * max(320 / 48, w / h)) columns, zero-padded
        padded = int(h_out * max(spec.min_width / h_out, width / height))
        resized = min(resized, padded)
    if resized < 1:
        raise ValueError(f"a {width}x{height} image resizes to width {resized} at height "
                         f"{h_out}: too narrow for this solver")
    return resized, padded


register_spec_kind("ctc", parse_text_spec, text_spec_dict)

__all__ = ["CASES", "LAYOUTS", "CTCHead", "input_width", "parse_text_spec", "text_spec_dict"]
