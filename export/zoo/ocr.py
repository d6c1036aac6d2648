"""Built-in offline text (OCR) solvers: graphs and charsets shipped inside PyPI packages.

Each entry finds its files inside its installed package (located, never imported) and
declares, as a solver spec, the preprocessing and decoding its package's own code uses.
rapidocr-onnxruntime needs the GUI ``opencv-python``, so its wheel is read, not installed:
``ADVX_PPOCR_REC`` names the wheel, its unpacked folder or the ``.onnx`` file.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import cache_root, sha256_file, write_bytes_atomic
from ..solver.spec import parse_spec
from .registry import ModelUnavailableError, register_alias

PPOCR_ENV = "ADVX_PPOCR_REC"
PPOCR_WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
PPOCR_GRAPH = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
PPOCR_HOWTO = (f"download the wheel without installing it (it needs the GUI opencv-python): "
               f"`pip download --no-deps rapidocr-onnxruntime==1.4.4 -d DIR`, then "
               f"`export {PPOCR_ENV}=DIR/{PPOCR_WHEEL}` (the unpacked wheel's folder or the "
               f".onnx file work too)")


# name -> (an explicit path or None -> the .onnx file, the graph -> its solver spec as a dict)
TEXT_ENTRIES: dict[str, tuple[Callable[[Path | None], Path], Callable[[Path], dict[str, Any]]]] = {}


def register_text(name: str, description: str, graph: Callable[[Path | None], Path],
                  spec: Callable[[Path], dict[str, Any]]) -> None:
    """List a built-in text solver in the model registry (``advx models``) and here."""
    register_alias(name, description, task="text")(lambda ref, device: text_solver(name))
    TEXT_ENTRIES[name] = (graph, spec)


# --- finding files inside installed packages -----------------------------------------------------


def package_dir(module: str, pip: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a module of that name without a spec
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"{module} is not installed: `pip install {pip}`")
    return Path(next(iter(spec.submodule_search_locations)))


def module_constant(path: Path, name: str) -> Any:
    """A constant assigned at the top of a module file, read without running the module: a
    literal, or names of earlier constants joined by ``+ - *`` and ``len()``."""
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
    known: dict[str, Any] = {}

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "len" and len(node.args) == 1 and not node.keywords):
            return len(value(node.args[0]))
        return ast.literal_eval(node)

    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name):
            try:
                known[node.targets[0].id] = value(node.value)
            except (ValueError, KeyError, TypeError):
                continue
    if name not in known:
        raise ModelUnavailableError(f"{path} has no constant {name}: not the package version "
                                    f"advx reads")
    return known[name]


def _file(folder: Path, rel: str, pip: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise ModelUnavailableError(f"{path} not found: reinstall `pip install {pip}`")
    return path


# --- ddddocr -------------------------------------------------------------------------------------

_DDDDOCR = "ddddocr==1.6.1"


def _ddddocr_spec(graph: Path, charset: str, quantised: bool) -> dict[str, Any]:
    symbols = module_constant(graph.parent / "charsets.py", charset)
    # classification: PIL LANCZOS to height 64, int(w * 64 / h), convert("L"), / 255; the output
    # 387 is the logits [T, 1, 8210] (the graph declares [1, T])
    return {
        "name": "ddddocr" if quantised else "ddddocr-beta",
        "model": str(graph),
        "input": {"name": "input1", "size": [64, None], "width_rounding": "floor",
                  "channels": "GREY", "range": [0, 1], "resize": "lanczos", "antialias": True,
                  "quantize": True},
        "output": {"name": "387", "kind": "ctc", "layout": "TNC", "blank": 0,
                   "charset": symbols, "case": "insensitive"},
        # quantised: a last-bit difference in a float kernel can move a whole quantisation
        # step downstream (logits span about -11..34)
        "tolerance": {"atol": 2.0, "rtol": 0.0, "margin": 3.0} if quantised
        else {"atol": 2e-2, "rtol": 1e-3},
    }


register_text(
    "ddddocr", "ddddocr 1.6.1 default OCR (common_old.onnx, quantised CNN + LSTM, 8,210 "
               "symbols); text CAPTCHAs",
    lambda path: path or _file(package_dir("ddddocr", _DDDDOCR), "common_old.onnx", _DDDDOCR),
    lambda graph: _ddddocr_spec(graph, "CHARSET_OLD", quantised=True))

register_text(
    "ddddocr-beta", "ddddocr 1.6.1 beta OCR (common.onnx, CNN + LSTM, 8,210 symbols); text "
                    "CAPTCHAs",
    lambda path: path or _file(package_dir("ddddocr", _DDDDOCR), "common.onnx", _DDDDOCR),
    lambda graph: _ddddocr_spec(graph, "CHARSET_BETA", quantised=False))


# --- captcha-whisperer ---------------------------------------------------------------------------

_WHISPERER = "captcha-whisperer==0.1.0"


def _whisperer_graph(path: Path | None) -> Path:
    """The bundled graph, or the one ``$CAPTCHA_OCR_MODEL`` names (the package reads that)."""
    folder = package_dir("captcha_whisperer", _WHISPERER)
    given = path or (Path(os.environ["CAPTCHA_OCR_MODEL"]).expanduser()
                     if os.environ.get("CAPTCHA_OCR_MODEL") else None)
    if given is not None and not given.is_file():
        raise ModelUnavailableError(f"captcha-whisperer: {given} not found")
    return given or _file(folder, "models/captcha_crnn.onnx", _WHISPERER)


def _whisperer_spec(graph: Path) -> dict[str, Any]:
    constants = package_dir("captcha_whisperer", _WHISPERER) / "constants.py"
    labels = module_constant(constants, "LABELS")
    steps = module_constant(constants, "TIME_STEPS")
    return {
        "name": "captcha-whisperer",
        "model": str(graph),
        "input": {"name": "image", "size": [module_constant(constants, "INPUT_HEIGHT"),
                                            module_constant(constants, "INPUT_WIDTH")],
                  "channels": "BGR", "range": [0, 255], "resize": "bilinear",
                  "antialias": True, "quantize": True},
        "output": {"name": "logits", "kind": "ctc", "layout": "TNC",
                   "blank": module_constant(constants, "BLANK_INDEX"), "charset": list(labels),
                   "case": "insensitive",
                   # recognizer.decode: the argmax over classes 1.. of steps 0..TIME_STEPS - 2
                   "never_emit": [0], "ignore_last_steps": 1 if steps > 1 else 0},
        "tolerance": {"atol": 2e-2, "rtol": 1e-3},
    }


register_text(
    "captcha-whisperer", "captcha-whisperer 0.1.0 CRNN (DenseNet + BiLSTM, 0-9A-Z, 160 x 60); "
                         "text CAPTCHAs",
    _whisperer_graph, _whisperer_spec)


# --- PP-OCRv4 (rapidocr-onnxruntime) -------------------------------------------------------------

_EXTRACT_LOCK = threading.Lock()


def ppocr_graph(path: str | Path | None = None) -> Path:
    """The PP-OCRv4 recogniser graph: from ``path`` or ``$ADVX_PPOCR_REC`` (a wheel, a folder
    or the .onnx), else from the unpacked wheel on the import path."""
    given = path or os.environ.get(PPOCR_ENV)
    if given:
        p = Path(given).expanduser()
        if p.suffix == ".whl" and p.is_file():
            return _from_wheel(p)
        for cand in (p, p / PPOCR_GRAPH, p / Path(PPOCR_GRAPH).relative_to(
                "rapidocr_onnxruntime"), p / Path(PPOCR_GRAPH).name):
            if cand.is_file() and cand.suffix == ".onnx":
                return cand
        raise ModelUnavailableError(f"ppocr-v4-rec: no {Path(PPOCR_GRAPH).name} at {p} "
                                    f"({PPOCR_ENV if not path else 'path'}); {PPOCR_HOWTO}")
    with contextlib.suppress(ModelUnavailableError):
        cand = package_dir("rapidocr_onnxruntime", "") / "models" / Path(PPOCR_GRAPH).name
        if cand.is_file():
            return cand
    raise ModelUnavailableError(f"ppocr-v4-rec needs the rapidocr-onnxruntime 1.4.4 files: "
                                f"{PPOCR_HOWTO}")


def _from_wheel(wheel: Path) -> Path:
    """The graph extracted once from the wheel into advx's cache (keyed by the wheel's hash)."""
    digest = sha256_file(wheel)[:16]
    out = cache_root() / "ppocr" / digest / Path(PPOCR_GRAPH).name
    with _EXTRACT_LOCK:
        if not out.is_file():
            try:
                with zipfile.ZipFile(wheel) as z:
                    data = z.read(PPOCR_GRAPH)
            except (zipfile.BadZipFile, KeyError) as e:
                raise ModelUnavailableError(f"ppocr-v4-rec: {wheel} is not the "
                                            f"rapidocr-onnxruntime wheel ({e}); "
                                            f"{PPOCR_HOWTO}") from e
            write_bytes_atomic(out, data)
    return out


def _ppocr_spec(graph: Path) -> dict[str, Any]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False)
            .metadata_props}
    if "character" not in meta:
        raise ModelUnavailableError(f"{graph} has no 'character' metadata: not the PP-OCRv4 "
                                    f"recogniser of rapidocr-onnxruntime 1.4.4")
    # CTCLabelDecode.get_character: the metadata's lines, " " appended, "blank" first
    charset = ["blank", *meta["character"].splitlines(), " "]
    # TextRecognizer: cv2.resize of BGR to height 48, ceil(48 * w / h), to [-1, 1], padded with
    # zeros (0.5 before the normalisation) to at least 320 columns
    return {
        "name": "ppocr-v4-rec",
        "model": str(graph),
        "input": {"name": "x", "size": [48, None], "width_rounding": "ceil", "min_width": 320,
                  "pad": 0.5, "channels": "BGR", "range": [0, 1], "mean": [0.5, 0.5, 0.5],
                  "std": [0.5, 0.5, 0.5], "resize": "bilinear", "antialias": False,
                  "quantize": True},
        "output": {"name": "softmax_11.tmp_0", "kind": "ctc", "layout": "NTC", "blank": 0,
                   "charset": charset, "case": "insensitive", "scores": "softmax"},
        "tolerance": {"atol": 2e-3, "rtol": 1e-3},
    }


register_text(
    "ppocr-v4-rec", f"PP-OCRv4 recogniser from rapidocr-onnxruntime 1.4.4 (6,625 symbols); "
                    f"text CAPTCHAs; its wheel's files via ${PPOCR_ENV}",
    ppocr_graph, _ppocr_spec)


# --- building ------------------------------------------------------------------------------------


def text_spec(name: str, path: str | Path | None = None):
    """The parsed solver spec of built-in text solver ``name`` (``path``: its graph file, or
    for ppocr-v4-rec also its wheel or folder, instead of the installed package)."""
    if name not in TEXT_ENTRIES:
        raise ModelUnavailableError(f"no built-in text solver {name!r}; they are "
                                    f"{', '.join(TEXT_ENTRIES)}")
    graph, spec = TEXT_ENTRIES[name]
    return parse_spec(spec(graph(Path(path).expanduser() if path else None)))


def text_solver(name: str, path: str | Path | None = None):
    """Built-in text solver ``name`` as a :class:`~advx.export.solver.text.TextSolver` (loaded
    once per graph file)."""
    from ..solver.load import solver_of

    return solver_of(text_spec(name, path), name=name)


__all__ = ["PPOCR_ENV", "TEXT_ENTRIES", "ppocr_graph", "text_solver", "text_spec"]
