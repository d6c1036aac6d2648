"""Reading a solver's ONNX graph: load it safely, list its inputs and outputs, check them against
the spec, and (for the gradient path) expose the logits behind a final sigmoid or softmax."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from .spec import SolverSpec, SolverSpecError

# ops that only move values around: a sigmoid before them can be moved after them
_MOVERS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, numpy dtype name, shape (int, symbol or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name} ({self.dtype}, shape unknown)"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype}, [{dims}])"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorInfo, ...]  # image inputs (initializers excluded)
    outputs: tuple[TensorInfo, ...]
    opset: int
    metadata: dict[str, str]  # the graph's metadata_props (e.g. YOLO stores class names here)

    def input(self, name: str) -> TensorInfo:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorInfo:
        return next(t for t in self.outputs if t.name == name)


def load_graph(path: Path, field: str = "model"):
    """onnx.load + onnx.checker; a missing, truncated or invalid file is a SolverSpecError."""
    import onnx

    if not path.is_file():
        raise SolverSpecError(f"{field}: {path} not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise SolverSpecError(f"{field}: {path} is not a readable ONNX file (truncated or "
                              f"corrupt?): {type(e).__name__}: {str(e)[:200]}") from e
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise SolverSpecError(f"{field}: {path} fails onnx.checker: {str(e)[:300]}") from e
    return model


def _tensor_info(vi) -> TensorInfo:
    from onnx.helper import tensor_dtype_to_np_dtype

    t = vi.type.tensor_type
    try:
        dtype = tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:
        dtype = f"onnx-type-{t.elem_type}"
    if not t.HasField("shape"):
        return TensorInfo(vi.name, dtype, None)
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return TensorInfo(vi.name, dtype, tuple(dims))


def graph_io(model) -> GraphIO:
    init = {i.name for i in model.graph.initializer}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    return GraphIO(
        inputs=tuple(_tensor_info(v) for v in model.graph.input if v.name not in init),
        outputs=tuple(_tensor_info(v) for v in model.graph.output),
        opset=int(opset),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _names(infos: tuple[TensorInfo, ...]) -> str:
    return ", ".join(t.describe() for t in infos)


def resolve_io(spec: SolverSpec, io: GraphIO) -> tuple[TensorInfo, TensorInfo]:
    """The image input and the answer output the spec means; a contradiction names its field."""
    i, o = spec.input, spec.output
    if not io.inputs:
        raise SolverSpecError(f"{spec.model}: the graph has no inputs")
    if i.name is not None:
        if i.name not in {t.name for t in io.inputs}:
            raise SolverSpecError(f"input.name: the graph has no input {i.name!r}; its inputs "
                                  f"are {_names(io.inputs)}")
        inp = io.input(i.name)
    elif len(io.inputs) == 1:
        inp = io.inputs[0]
    else:
        raise SolverSpecError(f"input.name: the graph has {len(io.inputs)} inputs "
                              f"({_names(io.inputs)}); name the image input")
    extra = [t for t in io.inputs if t.name != inp.name]
    if extra:
        raise SolverSpecError(f"input.name: the graph needs inputs besides the image "
                              f"({_names(tuple(extra))}); advx feeds only the image")
    if inp.dtype != i.dtype:
        raise SolverSpecError(f"input.dtype: the spec says {i.dtype} but graph input "
                              f"{inp.describe()} is {inp.dtype}")
    if inp.shape is not None:
        if len(inp.shape) != 4:
            raise SolverSpecError(f"input.name: graph input {inp.describe()} is not a 4-d "
                                  f"image batch")
        c_axis, hw = (1, (2, 3)) if i.layout == "NCHW" else (3, (1, 2))
        if isinstance(inp.shape[c_axis], int) and inp.shape[c_axis] != 3:
            other = "NHWC" if i.layout == "NCHW" else "NCHW"
            raise SolverSpecError(f"input.layout: the spec says {i.layout} but graph input "
                                  f"{inp.describe()} has {inp.shape[c_axis]} channels there; "
                                  f"is it {other}?")
        graph_hw = tuple(inp.shape[a] for a in hw)
        if all(isinstance(d, int) for d in graph_hw) and graph_hw != i.size:
            raise SolverSpecError(f"input.size: the spec says {list(i.size)} but graph input "
                                  f"{inp.describe()} takes {list(graph_hw)} (height, width)")
    if o.name is not None:
        if o.name not in {t.name for t in io.outputs}:
            raise SolverSpecError(f"output.name: the graph has no output {o.name!r}; its "
                                  f"outputs are {_names(io.outputs)}")
        out = io.output(o.name)
    else:
        out = io.outputs[0]
    if out.shape is not None:
        check_output_shape(spec, out.name, out.shape)
    return inp, out


def check_output_shape(spec: SolverSpec, name: str, shape: tuple) -> None:
    """The answer output's (static or observed) shape against output.* and labels."""
    o = spec.output
    rank = len(shape)
    if o.label_axis >= rank:
        raise SolverSpecError(f"output.label_axis: {o.label_axis} is past the last axis of "
                              f"output {name!r} (rank {rank}, shape {list(shape)})")
    n = shape[o.label_axis]
    if isinstance(n, int):
        have = n - o.label_start
        if have != len(spec.labels):
            start = f" after label_start {o.label_start}" if o.label_start else ""
            raise SolverSpecError(
                f"labels: the spec lists {len(spec.labels)} labels but output {name!r} has "
                f"{have}{start} along label_axis {o.label_axis} (shape {list(shape)})")
    if o.reduce == "none" and rank > 2:
        raise SolverSpecError(f"output.reduce: output {name!r} has shape {list(shape)}: axes "
                              f"besides the batch and labels (grid cells, boxes) must be "
                              f"folded with \"reduce\": \"max\" or \"mean\"")


def strip_activation(model, output: str, activation: str):
    """A copy of ``model`` whose ``output`` skips its final ``activation`` (Sigmoid / Softmax),
    or None when the activation is not found on a plain path to the output.

    The gradient path attacks these logits: a saturated probability (0.99999) has no useful
    gradient, its logit has. The caller checks the copy against the original by parity.
    """
    producers = {out: n for n in model.graph.node for out in n.output}
    name, found = output, None
    while (node := producers.get(name)) is not None:
        if node.op_type == activation:
            found = node
            break
        if node.op_type not in _MOVERS or activation == "Softmax":
            return None  # a softmax is stripped only where it produces the output itself
        name = node.input[0]
    if found is None:
        return None
    index = list(model.graph.node).index(found)
    stripped = copy.deepcopy(model)
    node = stripped.graph.node[index]
    node.op_type = "Identity"
    del node.attribute[:]
    return stripped
