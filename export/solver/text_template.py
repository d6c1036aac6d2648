"""``advx solver init`` for OCR graphs: a 3-D output with the classes last is a CTC head when
its class count matches a charset beside the graph (or PaddleOCR's ``character`` metadata),
its batch is the second axis, or its time axis grows with the input's width. A graph ending in
an ArgMax is cut at its input, the scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .graph import GraphIO, probe_output, producer_chain

_CHARSET_NAMES = ("char", "key", "vocab", "alphabet", "dict", "symbol", "token")
_BLANKS = ("", "blank", "<blank>", "[blank]", "-", "_", "<pad>", "~")


def _scores_tensor(model, output: str) -> tuple[str, str | None]:
    """The tensor holding the scores behind ``output`` and what it ends in (ArgMax, Softmax,
    or None for scores as they are)."""
    chain = producer_chain(model, output)
    op = chain[-1].op_type if chain else None
    if op == "ArgMax":
        return chain[-1].input[0], "ArgMax"
    return output, "Softmax" if op == "Softmax" else None


def relative_to(model_path: Path, spec_path: Path) -> str:
    """The spec's ``model``: the graph's path relative to the spec's folder where it can be."""
    try:
        return model_path.relative_to(spec_path.parent).as_posix()
    except ValueError:
        return str(model_path)


def beside(model_path: Path, exclude: Path | None, *, max_bytes: int, txt: int = 50,
           keep: Callable[[Path], bool] = lambda f: True) -> Iterator[tuple[Path, str]]:
    """(file, its text) of the JSON and text files beside the graph that ``keep`` takes, but
    ``exclude`` and files over ``max_bytes`` or not UTF-8."""
    folder = model_path.parent
    for f in sorted(folder.glob("*.json"))[:50] + sorted(folder.glob("*.txt"))[:txt]:
        if ((exclude is not None and f.resolve() == exclude.resolve()) or not keep(f)
                or f.stat().st_size > max_bytes):
            continue
        try:
            yield f, f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def _charset_files(model_path: Path, classes: int, exclude: Path | None) -> tuple[list, str] | None:
    """A charset beside the graph with one symbol per class: (symbols, file name)."""
    for f, text in beside(model_path, exclude, max_bytes=5_000_000,
                          keep=lambda f: any(k in f.stem.lower() for k in _CHARSET_NAMES)):
        if f.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(data, list) and len(data) == classes and all(
                    isinstance(s, str) for s in data):
                return data, f.name
            continue
        lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        if len(lines) == classes:
            return lines, f.name
    return None


def _blank(symbols: list[str]) -> int:
    if symbols[0].strip().lower() in _BLANKS:
        return 0
    if symbols[-1].strip().lower() in _BLANKS:
        return len(symbols) - 1
    return 0


def text_template(model, io: GraphIO, model_path: Path, spec_path: Path
                  ) -> tuple[dict[str, Any], list[str]] | None:
    """A ``ctc`` spec for an OCR graph and the notes of what was guessed, or None when its
    output is not a CTC head."""
    images = [t for t in io.inputs if t.shape is not None and len(t.shape) == 4]
    if len(io.inputs) != 1 or not images:
        return None
    inp = images[0]
    n, c, h, w = inp.shape
    channels = c if c in (1, 3) else None
    if channels is None:
        return None
    height = h if isinstance(h, int) else 48
    free = not isinstance(w, int)
    width = w if isinstance(w, int) else 4 * height
    batch = n if isinstance(n, int) else 2
    out = io.outputs[0]
    tensor, ending = _scores_tensor(model, out.name)
    raw = probe_output(model, model_path, inp, tensor, [batch, channels, height, width])
    if raw is None or raw.ndim != 3:
        return None
    if raw.shape[1] == batch and raw.shape[0] != batch:
        layout, tnc = "TNC", True
    elif raw.shape[0] == batch:
        layout, tnc = "NTC", False
    else:
        return None
    classes = int(raw.shape[2])
    grew = False
    if free:
        wide = probe_output(model, model_path, inp, tensor, [batch, channels, height, 2 * width])
        t_axis = 0 if layout == "TNC" else 1
        grew = wide is not None and wide.ndim == 3 and wide.shape[t_axis] > raw.shape[t_axis]
    found = _charset_files(model_path, classes, spec_path)
    meta = io.metadata.get("character")
    notes: list[str] = []
    charset: Any
    if found is not None:
        symbols, charset = found
        notes.append(f"output.charset: {charset} beside the graph has {classes} symbols, one "
                     f"per class")
    elif meta is not None and len(meta.splitlines()) + 2 == classes:
        symbols = charset = ["blank", *meta.splitlines(), " "]
        notes.append(f"output.charset: the graph's 'character' metadata ({classes - 2} "
                     f"symbols) in PaddleOCR's convention: \"blank\" first, \" \" last")
    elif tnc or grew:
        symbols = charset = ["<blank>"] + [f"?{i}" for i in range(1, classes)]
        notes.append(f"output.charset: {classes} placeholders (\"<blank>\" first): replace them "
                     f"with the solver's symbols in class order (inline, or a file beside the "
                     f"spec)")
    else:
        return None
    why = ("its class axis matches the charset" if found or meta is not None
           else "the batch is its second axis" if tnc else "its time axis grows with the width")
    notes.insert(0, f"output.kind: \"ctc\": output {out.name!r} gives {list(raw.shape)} "
                    f"({layout}) for a batch of {batch}; a CTC head, since {why}")
    if ending == "ArgMax":
        notes.append(f"output.name: the graph ends in an ArgMax; cut at its input {tensor!r}, "
                     f"the scores")
    blank = _blank(symbols)
    notes.append(f"output.blank: {blank} guessed ({'its symbol ' + repr(symbols[blank])})"
                 f"; check the package's decoder")
    notes.append("output.case: \"insensitive\" (how most sites compare); never_emit / "
                 "ignore_last_steps: none; check the package's decoder for deviations from "
                 "greedy CTC")
    size = [height, None] if free else [height, width]
    if free:
        notes.append(f"input.size: [{height}, null]: height {height} keeping the aspect ratio; "
                     f"check width_rounding (\"floor\" guessed) and min_width in the package's "
                     f"resize")
    if not isinstance(h, int):
        notes.append(f"input.size: the graph takes any height; {height} is a placeholder")
    notes.append(f"input: {'GREY' if channels == 1 else 'RGB'}, range [0, 1], bilinear with "
                 f"antialias (PIL) on 8-bit images (quantize) were guessed: check the "
                 f"package's preprocessing (BGR? 0-255? mean / std? OpenCV: antialias false)")
    spec = {
        "schema": 1,
        "model": relative_to(model_path, spec_path),
        "input": {"name": inp.name, "size": size, "layout": "NCHW", "dtype": "float32",
                  "range": [0, 1], "mean": [0.0] * 3, "std": [1.0] * 3,
                  "channels": "GREY" if channels == 1 else "RGB", "resize": "bilinear",
                  "antialias": True, "quantize": True,
                  **({"width_rounding": "floor", "min_width": 0} if free else {})},
        "output": {"name": tensor, "kind": "ctc", "layout": layout, "blank": blank,
                   "charset": charset, "case": "insensitive",
                   "scores": "softmax" if ending == "Softmax" else "logits"},
        "_notes": notes,
    }
    return spec, notes


__all__ = ["text_template"]
