"""Reading a solver spec's JSON with errors that name the field to fix: typed access to one
object (unknown keys refused, a close match suggested), and the sections every spec kind
shares (schema and model, input size and units, labels, label map and threshold)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class SolverSpecError(ValueError):
    """A spec (or its graph) that cannot be used; the message names the field to fix."""


class Reader:
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


def read_size(ir: Reader, free_width: bool = False) -> tuple[int, int | None]:
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


def read_units(ir: Reader, default_range: tuple[float, float] = (0.0, 1.0)) -> tuple:
    """An input section's ``range``, ``mean`` and ``std``."""
    rng = ir.numbers("range", default_range, 2)
    if rng[1] <= rng[0]:
        raise ir.error("input.range", f"must be [low, high] with low < high, got {list(rng)}")
    return rng, ir.numbers("mean", (0.0,) * 3, 3), ir.numbers("std", (1.0,) * 3, 3, positive=True)


def read_header(top: Reader, path: Path | None) -> tuple[Path, Path]:
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


def read_labels(top: Reader, *, closed: bool = False, per_label: bool = False,
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
        tr = Reader(top.src, raw_thr, "threshold", ("default", *labels))
        threshold = read_threshold(tr, "default", default_threshold)
        per = tuple(read_threshold(tr, lab, threshold) for lab in labels)
    else:
        threshold = read_threshold(top, "threshold", default_threshold)
    return labels, label_map, threshold, per


def read_threshold(reader: Reader, key: str, default: float) -> float:
    value = reader.number(key, default, 0.0, 1.0, lo_open=True)
    if value >= 1.0:
        raise reader.error(reader.field(key), "must be below 1 (a label is selected when "
                                              "P >= threshold)")
    return value


__all__ = ["SCHEMA_VERSION", "Reader", "SolverSpecError", "read_header", "read_labels",
           "read_size", "read_threshold", "read_units"]
