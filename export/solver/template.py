"""``advx solver init``: a spec template from what a graph (and any card beside it) says."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np

from .detect_template import detect_template
from .graph import GraphIO, graph_io, load_graph, probe_output, producer_chain
from .text_template import beside, relative_to, text_template

_LABEL_KEYS = ("categories", "labels", "classes", "class_names", "names", "id2label")
_SIZE_KEYS = ("input_size", "image_size", "tile_size", "imgsz", "img_size", "size", "tile")
_ORDER_KEYS = ("channel", "index", "id", "idx")


def _categories(value: Any) -> tuple[list[str], list[float] | None] | None:
    """A list of {"label"/"name": ..., "channel": ..., "threshold": ...} category records."""
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return None
    key = next((k for k in ("label", "name", "class") if all(isinstance(v.get(k), str)
                                                            for v in value)), None)
    if key is None:
        return None
    order = next((k for k in _ORDER_KEYS if all(isinstance(v.get(k), int) for v in value)), None)
    items = sorted(value, key=lambda v: v[order]) if order else list(value)
    thr = []
    for v in items:
        t = v.get("tile_threshold", v.get("threshold"))
        thr.append(float(t) if isinstance(t, int | float) and 0 < t < 1 else None)
    return [v[key] for v in items], (thr if all(t is not None for t in thr) else None)


def dumps_spec(obj: Any, indent: int = 0, width: int = 96) -> str:
    """JSON with objects one key per line and lists of scalars kept inline (wrapped when long),
    so a spec reads like the README's example."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dumps_spec(v, indent + 2, width)}'
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and all(not isinstance(v, dict | list) for v in obj):
        parts = [json.dumps(v, ensure_ascii=False) for v in obj]
        one = "[" + ", ".join(parts) + "]"
        if len(one) + indent <= width:
            return one
        lines, line = [], ""
        for p in parts:
            if line and len(line) + len(p) + indent + 4 > width:
                lines.append(line.rstrip())
                line = ""
            line += p + ", "
        lines.append(line.rstrip(", "))
        return "[\n" + ",\n".join(f"{pad}  {ln.rstrip(',')}" for ln in lines) + f"\n{pad}]"
    if isinstance(obj, list):
        items = [f"{pad}  {dumps_spec(v, indent + 2, width)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=False)


def _labels_from(value: Any) -> list[str] | None:
    if isinstance(value, str):
        try:  # YOLO metadata: "{0: 'person', 1: 'bicycle'}"
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, dict):
        try:
            items = sorted(value.items(), key=lambda kv: int(kv[0]))
        except (TypeError, ValueError):
            return None
        return [str(v) for _, v in items] if all(isinstance(v, str) for _, v in items) else None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _size_from(value: Any) -> list[int] | None:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 4096:
        return [value, value]
    if (isinstance(value, list | tuple) and len(value) >= 2
            and all(isinstance(v, int) for v in value[-2:])):
        return [int(value[-2]), int(value[-1])]
    return None


def read_cards(model_path: Path, exclude: Path | None = None) -> tuple[dict, list[str]]:
    """Labels, size and threshold from JSON cards / label files beside the graph."""
    found: dict[str, Any] = {}
    sources: list[str] = []
    for f, text in beside(model_path, exclude, max_bytes=2_000_000, txt=20):
        if f.suffix == ".txt":
            if f.stem.lower() in ("labels", "classes", "names") and "labels" not in found:
                lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
                if lines:
                    found["labels"] = lines
                    sources.append(f.name)
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or ("output" in data and "input" in data):
            continue  # not a card (or another spec)
        used = False
        for k in _LABEL_KEYS:
            if "labels" not in found and (cats := _categories(data.get(k))):
                found["labels"], used = cats[0], True
                if cats[1] is not None:
                    found["thresholds"] = cats[1]
            if "labels" not in found and (labels := _labels_from(data.get(k))):
                found["labels"], used = labels, True
        for k in _SIZE_KEYS:
            if "size" not in found and (size := _size_from(data.get(k))):
                found["size"], used = size, True
        thr = data.get("threshold")
        if "threshold" not in found and isinstance(thr, int | float) and 0 < thr < 1:
            found["threshold"], used = float(thr), True
        if used:
            sources.append(f.name)
    return found, sources


def init_template(model_path: str | Path, spec_path: str | Path) -> tuple[dict, list[str]]:
    """A spec dict for ``model_path`` (relative to where the spec will live) and the notes of
    what the user must fill in or check. An OCR graph (a CTC head: see :mod:`.text_template`)
    gets a ``ctc`` spec."""
    model_path, spec_path = Path(model_path).resolve(), Path(spec_path).resolve()
    model = load_graph(model_path, field="MODEL")
    io: GraphIO = graph_io(model)
    text = text_template(model, io, model_path, spec_path)  # an OCR graph: a CTC head
    if text is not None:
        return text
    card, sources = read_cards(model_path, exclude=spec_path)
    todo: list[str] = []
    if sources:
        todo.append(f"read from {', '.join(sources)}: {', '.join(sorted(card))}")
    meta_labels = next((lab for k in _LABEL_KEYS if (lab := _labels_from(io.metadata.get(k)))),
                       None)
    meta_size = next((s for k in _SIZE_KEYS if (s := _size_from(io.metadata.get(k)))), None)

    if not io.inputs:
        raise ValueError(f"{model_path} has no inputs")
    images = [t for t in io.inputs if t.shape is not None and len(t.shape) == 4]
    inp = images[0] if images else io.inputs[0]
    if len(io.inputs) > 1:
        todo.append(f"input.name: the graph has {len(io.inputs)} inputs; {inp.name!r} was "
                    f"taken as the image (advx feeds only the image)")
    shape = inp.shape or (None, None, None, None)
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        layout, hw = "NHWC", (shape[1], shape[2])
    else:
        layout, hw = "NCHW", (shape[2], shape[3]) if len(shape) == 4 else (None, None)
        if len(shape) != 4 or shape[1] != 3:
            todo.append(f"input.layout: could not tell from {inp.describe()}; NCHW assumed")
    if all(isinstance(d, int) for d in hw):
        size = [int(hw[0]), int(hw[1])]
    elif card.get("size") or meta_size:
        size = card.get("size") or meta_size
    else:
        size = [224, 224]
        todo.append("input.size: the graph takes any size; set the size the solver resizes "
                    "tiles to (224 x 224 is a placeholder)")
    dtype = inp.dtype if inp.dtype in ("float32", "float16", "uint8") else "float32"
    if dtype == "uint8":
        rng, mean, std = [0, 255], [0, 0, 0], [1, 1, 1]
    else:
        rng, mean, std = [0, 1], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        todo.append("input.range / mean / std: guessed [0, 1] without normalisation; check the "
                    "solver's code (e.g. [0, 255], or ImageNet mean/std)")
    todo.append("input.channels, resize, antialias, crop: guessed RGB, bilinear without "
                "antialias (OpenCV's cv2.resize), whole tile; check the solver's code")

    labels = card.get("labels") or meta_labels
    batch = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else 2
    probe = [batch, 3, *size] if layout == "NCHW" else [batch, *size, 3]
    shapes = {o.name: list(o.shape) if o.shape and all(isinstance(d, int) for d in o.shape)
              else getattr(probe_output(model, model_path, inp, o.name, probe, dtype), "shape",
                           None) for o in io.outputs}
    detector = detect_template(io, {k: list(v) for k, v in shapes.items() if v is not None},
                               size, labels)
    if detector is not None:  # a detector or segmenter: the cells task's solver
        sections, notes = detector
        fit = sections.pop("input_fit")
        todo += [*notes, "for image tiles (the labels task) a spec with output kind "
                         "\"multilabel\", label_start 4 and reduce \"max\" reads a YOLO "
                         "graph as a tile classifier instead"]
        return {"schema": 1, "model": relative_to(model_path, spec_path),
                "input": {"name": inp.name, "size": size, "layout": layout,
                          "dtype": "float32" if dtype == "uint8" else dtype, "range": rng,
                          "mean": mean, "std": std, "channels": "RGB", "resize": "bilinear",
                          "antialias": False, **fit},
                **sections, "_notes": todo}, todo
    out = io.outputs[0]
    if len(io.outputs) > 1:
        todo.append(f"output.name: the graph has {len(io.outputs)} outputs "
                    f"({', '.join(o.name for o in io.outputs)}); {out.name!r} was taken")
    raw = probe_output(model, model_path, inp, out.name, probe, dtype)
    chain = [n.op_type for n in producer_chain(model, out.name)]
    out_shape = list(raw.shape) if raw is not None else list(out.shape or [])
    label_start = 0
    n_axis = out_shape[1] if len(out_shape) > 1 and isinstance(out_shape[1], int) else None
    if labels and n_axis and n_axis == len(labels) + 4 and len(out_shape) == 3:
        label_start = 4  # YOLO detections: [N, 4 box coordinates + classes, boxes]
        todo.append("output.label_start: 4 (a YOLO-style [N, 4 + classes, boxes] output)")
    if "Sigmoid" in chain:
        kind = "multilabel"
    elif "Softmax" in chain:
        kind = "softmax"
    elif raw is not None:
        scores = np.moveaxis(raw, 1, -1)[..., label_start:] if raw.ndim > 1 else raw
        in01 = scores.size and scores.min() >= 0 and scores.max() <= 1
        sums = scores.sum(-1) if in01 else None
        kind = ("softmax" if sums is not None and np.allclose(sums, 1, atol=1e-3)
                else "multilabel" if in01 else "logits")
    else:
        kind = "logits"
    todo.append(f"output.kind: {kind!r} was inferred from the graph; \"multilabel\" means "
                f"a sigmoid per label (selected when P >= threshold)")
    reduce = "max" if len(out_shape) > 2 else "none"
    if reduce == "max":
        todo.append(f"output.reduce: \"max\" folds the extra axes of {out_shape} (grid cells, "
                    f"boxes): a tile is selected when any cell is")
    if labels is None:
        n = (n_axis - label_start) if n_axis else 2
        labels = [f"label_{i}" for i in range(n)]
        todo.append(f"labels: {n} placeholders label_0..label_{n - 1}: replace them with the "
                    f"solver's label names in output order (or map to them in label_map)")
    spec = {
        "schema": 1,
        "model": relative_to(model_path, spec_path),
        "input": {"name": inp.name, "size": size, "layout": layout, "dtype": dtype,
                  "range": rng, "mean": mean, "std": std, "channels": "RGB",
                  "resize": "bilinear", "antialias": False, "crop": 1.0},
        "output": {"name": out.name, "kind": kind, "label_axis": 1, "reduce": reduce,
                   "label_start": label_start},
        "labels": labels,
        "label_map": {},
        "threshold": card.get("threshold", 0.5),
        "_notes": todo,
    }
    thresholds = card.get("thresholds")
    if thresholds and len(thresholds) == len(labels) and kind in ("multilabel",
                                                                    "multilabel_logits"):
        spec["threshold"] = {"default": card.get("threshold", 0.5),
                             **dict(zip(labels, thresholds, strict=True))}
        todo.append("threshold: one per label, from the card")
    if kind not in ("multilabel", "multilabel_logits"):
        del spec["threshold"]
    return spec, todo
