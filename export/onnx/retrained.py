"""A solver retrained in torch, written back as an ONNX graph and a solver spec beside it, so
that it loads wherever a solver spec does (``onnx:DIR/solver.json``: surrogate, verifier,
``advx eval`` model). Each write is checked against the torch module it came from."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..solver.graph import GraphSolver
from ..zoo.model import ImageClassifier
from .export import export_classifier
from .manifest import MODEL_FILE
from .runtime import make_session
from .spec import ExportError, Tolerance

SPEC_FILE = "solver.json"
# the kind of answer a converted graph gives where the conversion cut the final activation off
_BEHIND = {"softmax": "logits", "multilabel": "multilabel_logits"}


def tie_equal_parameters(module: nn.Module) -> int:
    """Make parameters of equal shape and values one parameter; returns how many were tied.

    The converter gives each use of a shared initializer (an unrolled LSTM's weights at every
    time step) its own copy: trained apart they would drift into per-step weights the source
    graph never had, and the written graph would hold one copy per use."""
    first: dict[tuple, nn.Parameter] = {}
    tied = 0
    for mod in module.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.numel() < 2:
                continue
            data = p.detach().cpu().contiguous().numpy()
            key = (tuple(p.shape), str(p.dtype), hashlib.sha1(data.tobytes()).hexdigest())
            if key not in first:
                first[key] = p
            elif first[key] is not p and torch.equal(first[key].data, p.data):
                setattr(mod, name, first[key])
                tied += 1
    return tied


def own_graph(solver: GraphSolver, twin: nn.Module) -> Callable[[Path, torch.Tensor, str], str]:
    """Give ``twin`` (``solver``'s torch twin: ``graph`` and ``preprocess``) a copy of the
    graph of its own, shared weights tied (the cached solver's stays as loaded); returns how to
    write it back: (folder, example images, display name) -> ``onnx:SPEC.json``."""
    twin.graph = copy.deepcopy(twin.graph)
    tie_equal_parameters(twin.graph)

    def save(folder: Path, images: torch.Tensor, label: str) -> str:
        x = twin.preprocess(images.to(next(twin.graph.parameters()).device)).detach()
        return f"onnx:{write_solver(solver, twin.graph, x, folder, label)}"

    return save


def _write_graph(graph: nn.Module, x: torch.Tensor, path: Path, input_name: str,
                 outputs: Sequence[str], dynamic: dict[int, str]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=list(outputs),
                          dynamic_axes={input_name: dynamic} if dynamic else None,
                          do_constant_folding=True)


def _check(path: Path, x: torch.Tensor, graph: nn.Module, input_name: str) -> None:
    """The written graph against the torch one on ``x`` (raises ExportError)."""
    with torch.no_grad():
        want = graph(x)
    want = [w.float() for w in (want if isinstance(want, tuple | list) else [want])]
    got = [torch.from_numpy(np.asarray(o)).float()
           for o in make_session(path, "fp32").run(None, {input_name: x.numpy()})]
    tol = Tolerance()
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise ExportError(f"{path}: onnxruntime answers {list(g.shape)}, torch "
                              f"{list(w.shape)}")
        if not torch.allclose(g, w, atol=tol.atol, rtol=tol.rtol):
            raise ExportError(f"{path}: onnxruntime and torch differ by "
                              f"{float((g - w).abs().max()):.3g}")


def write_solver(solver: GraphSolver, graph: nn.Module, x: torch.Tensor, out_dir: str | Path,
                 name: str) -> Path:
    """``graph`` (``solver``'s converted graph, retrained) as ``out_dir/model.onnx`` and a
    spec that reads it as ``solver``'s reads its own; ``x``: graph inputs (already through the
    solver's preprocessing) to trace and check on. Returns the spec's path."""
    spec = solver.spec
    if spec.input.dtype != "float32":
        raise ExportError(f"{solver.name}: a graph taking {spec.input.dtype} cannot be written "
                          f"back from torch (the retrained graph takes float32)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the outputs the spec reads, in the converted graph's order (a detector may have several)
    inp, outputs = solver.input_info.name, getattr(solver, "tensors", [solver.output_info.name])
    dynamic = {} if solver.fixed_batch == 1 else {0: "n"}
    if spec.input.size[1] is None:  # a free width
        dynamic[3 if spec.input.layout == "NCHW" else 2] = "width"
    x = x.detach().float().cpu()
    x = x[:1] if solver.fixed_batch == 1 else x
    tmp = out / f".{MODEL_FILE}.tmp"
    graph = copy.deepcopy(graph).cpu().eval()  # the caller's module stays where it is
    try:
        _write_graph(graph, x, tmp, inp, outputs, dynamic)
        _check(tmp, x, graph, inp)
        if dynamic.get(0) and len(x) > 1:  # another batch size than the one traced
            _check(tmp, x[:1], graph, inp)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"writing {solver.name} back to ONNX failed: {e}") from e
    os.replace(tmp, out / MODEL_FILE)
    data = spec.to_dict()
    data.update(model=MODEL_FILE, name=name)
    if solver.torch_kind != solver.kind:  # the retrained graph ends before that activation
        data["output"]["kind"] = _BEHIND[solver.kind]
    path = out / SPEC_FILE
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_classifier(clf: ImageClassifier, out_dir: str | Path, name: str) -> Path:
    """A zoo classifier (over its labels) as ``out_dir/model.onnx`` (the export stage's
    checked export) and a spec that preprocesses as its weights do. Returns the spec's path."""
    m = export_classifier(clf, out_dir)
    data = {"model": MODEL_FILE, "name": name,
            "input": {"name": m.input_name, "size": [m.input_size] * 2, "range": [0, 1],
                      "mean": [0, 0, 0], "std": [1, 1, 1], "channels": "RGB",
                      "resize": m.interpolation, "antialias": True, "crop": m.crop_pct},
            "output": {"name": m.output_name, "kind": "logits"},
            "labels": list(m.labels)}
    path = Path(out_dir) / SPEC_FILE
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


__all__ = ["SPEC_FILE", "own_graph", "tie_equal_parameters", "write_classifier", "write_solver"]
