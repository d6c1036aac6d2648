"""The gradient path of a foreign solver: its ONNX graph converted to torch by onnx2torch with
our converters (:mod:`.o2t`), on a graph normalised for it (constants as initializers, the
answer cut out first). The caller checks it against onnxruntime (:class:`.graph.GraphSolver`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class ConversionError(RuntimeError):
    """The graph has no torch equivalent (the message names what is missing)."""


def unsupported_ops(model) -> list[str]:
    """The graph's op types (with their opset) that onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    from . import quant_ops, rnn_ops  # noqa: F401  (they and .o2t register converters)

    versions = {o.domain or "": o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain or ""
        try:
            get_converter(node.op_type, versions.get(domain, versions.get("", 1)), domain)
        except NotImplementedError:
            tag = f"{node.op_type} (opset {versions.get(domain, '?')})"
            if tag not in missing:
                missing.append(tag)
    return missing


def constants_to_initializers(model):
    """Normalise a graph for the converter (on a copy): Constant nodes become initializers
    (several converters, e.g. Clip's min / max, Pad, Resize, accept only initializers there,
    and exporters emit Constant nodes), and optional inputs left empty are dropped or filled."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    keep, inits = [], []
    for node in graph.node:
        while node.input and node.input[-1] == "":  # optional inputs left out at the end
            node.input.pop()
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[1] == "":
            low = f"{node.name or node.output[0]}__min"
            inits.append(numpy_helper.from_array(np.array(-3.4e38, np.float32), low))
            node.input[1] = low
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and not node.domain and "value" in attrs:
            arr = numpy_helper.to_array(attrs["value"].t)
        elif node.op_type == "Constant" and not node.domain and len(attrs) == 1:
            attr = next(iter(attrs.values()))
            value = onnx.helper.get_attribute_value(attr)
            if attr.name not in ("value_float", "value_floats", "value_int", "value_ints"):
                keep.append(node)
                continue
            arr = np.asarray(value, dtype=np.float32 if "float" in attr.name else np.int64)
        else:
            keep.append(node)
            continue
        inits.append(numpy_helper.from_array(arr, node.output[0]))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.extend(inits)
    return out


def _failing_node(model) -> str:
    """Which node's converter raises (onnx2torch's own error does not say)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    versions = {o.domain or "": o.version for o in model.opset_import}
    try:  # the shapes the converters saw
        graph = OnnxGraph(safe_shape_inference(model).graph)
    except Exception:
        graph = OnnxGraph(model.graph)
    for name, node in graph.nodes.items():
        try:
            get_converter(node.operation_type, versions.get(node.domain or "", 1),
                          node.domain)(node, graph)
        except Exception as e:
            return f"{node.operation_type} node {name!r}: {type(e).__name__}: {str(e)[:200]}"
    return "no single node (the graph as a whole)"


def only_output(model, output: str | tuple[str, ...]):
    """The subgraph that computes ``output`` alone (other heads, e.g. masks, are dropped), or
    each of several outputs (a tuple, in that order). An output may be an inner tensor (the
    logits before an ArgMax or a decoder): the graph is cut there."""
    import onnx

    graph = model.graph
    outputs = (output,) if isinstance(output, str) else tuple(output)
    needed, frontier = set(), list(outputs)
    producers = {o: n for n in graph.node for o in n.output}
    while frontier:
        name = frontier.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None:
            frontier.extend([i for i in node.input if i] + _subgraph_inputs(node))
    keep = [n for n in graph.node if any(o in needed for o in n.output)]
    inits = {t.name for t in graph.initializer}
    out = onnx.helper.make_graph(
        keep, graph.name,
        [i for i in graph.input if i.name in needed or i.name not in inits],
        [next((o for o in graph.output if o.name == name), None) or _value_info(model, name)
         for name in outputs],
        [t for t in graph.initializer if t.name in needed],
        value_info=[v for v in graph.value_info if v.name in needed and v.name != output],
    )
    return onnx.helper.make_model(out, opset_imports=list(model.opset_import),
                                  ir_version=model.ir_version)


def _value_info(model, name: str):
    """The type of tensor ``name`` (from the graph, else from shape inference)."""
    import onnx

    if not any(name in n.output for n in model.graph.node):
        raise ValueError(f"the graph has no tensor {name!r}")
    for vi in model.graph.value_info:
        if vi.name == name:
            return vi
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        return next(vi for vi in inferred if vi.name == name)
    except Exception:  # unknown ops or no type: declare float of unknown shape
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _own_node(model, output: str):
    """onnx2torch returns all outputs of the node that computes a graph output; where that node
    has several (LSTM: Y, Y_h, Y_c), the output goes through an Identity of its own."""
    import onnx

    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is None or len([o for o in producer.output if o]) < 2:
        return model
    model.graph.node.append(onnx.helper.make_node("Identity", [output], [f"{output}__own"]))
    model.graph.output[0].name = f"{output}__own"
    return model


def _subgraph_inputs(node) -> list[str]:
    """Names that If / Loop bodies read from the outer graph."""
    names = []
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {
                t.name for t in g.initializer}
            names += [i for n in g.node for i in n.input if i and i not in local]
    return names


def each_alone(fn, x: torch.Tensor, axis: int = 0, how: str = "loop") -> torch.Tensor:
    """``fn`` applied to each sample of ``x`` as a batch of one, joined on ``axis``, ``how``
    :func:`batching` says: ``batch`` (one call), ``vmap`` or ``loop``."""
    if x.shape[0] == 1 or how == "batch":
        return fn(x)
    if how == "vmap":
        def one(s: torch.Tensor):
            out = fn(s.unsqueeze(0))
            return tuple(o.squeeze(axis) for o in out) if isinstance(out, tuple) else out.squeeze(
                axis)

        return torch.func.vmap(one, out_dims=axis)(x)
    outs = [fn(x[i : i + 1]) for i in range(x.shape[0])]
    if isinstance(outs[0], tuple):  # a graph with several outputs: each joined
        return tuple(torch.cat(o, axis) for o in zip(*outs, strict=True))
    return torch.cat(outs, axis)


def batching(fn, probe: torch.Tensor, axis: int = 0) -> str:
    """The fastest :func:`each_alone` mode that answers two different samples of ``probe``
    (a batch of one) as one call per sample does: ``batch``, ``vmap`` or ``loop``."""
    x = torch.cat([probe[:1], probe[:1].flip(-1) * 0.5])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = each_alone(fn, x, axis, "loop")
        for how, atol in (("batch", 1e-4), ("vmap", 1e-2)):
            try:
                got = each_alone(fn, x, axis, how)
            except (RuntimeError, NotImplementedError, ValueError, IndexError):
                continue
            pairs = list(zip(*[(g, r) for g, r in zip(
                got if isinstance(got, tuple) else (got,),
                ref if isinstance(ref, tuple) else (ref,), strict=True)], strict=True))
            if all(g.shape == r.shape and float((g - r).abs().amax()) <= atol * (
                    1 + (float(r.abs().amax()) if r.numel() else 1.0))
                   for g, r in zip(*pairs, strict=True)):
                return how
    return "loop"


class ConvertedGraph(nn.Module):
    """The converted graph: input tensor (graph layout and units, float) -> answer tensor."""

    def __init__(self, module: nn.Module, half: bool, outputs: int = 1) -> None:
        super().__init__()
        self.module = module
        self.half_input = half  # an fp16 graph that would not run in float32
        self.outputs = outputs  # several: forward returns a tuple of them
        # dynamically quantised graphs: each sample runs alone (quantisation ranges are per
        # tensor, so a batch would share them), its answers joined on this output axis, in
        # one vmap call where the graph allows it (:func:`batching`)
        self.sample_axis: int | None = None
        self.alone = "loop"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sample_axis is not None:
            return each_alone(self._run, x, self.sample_axis, self.alone)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.half() if self.half_input else x)
        if self.outputs > 1:
            return tuple(o.float() for o in out)
        if isinstance(out, list | tuple):
            out = out[0]
        return out.float()


def convert(model, output: str | tuple[str, ...], probe: torch.Tensor) -> ConvertedGraph:
    """Convert the part of ``model`` that computes ``output`` (a tuple: each of several, which
    the module returns in that order); ``probe`` is one valid input batch (float, graph
    layout) used to check that the module runs."""
    missing = unsupported_ops(model)
    if missing:
        raise ConversionError(f"no torch converter for {', '.join(missing)}")
    from onnx2torch import convert as o2t

    from . import quant_ops

    pruned = constants_to_initializers(only_output(model, output))
    if isinstance(output, str):
        pruned = _own_node(pruned, output)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = o2t(pruned)
    except Exception as e:
        raise ConversionError(f"onnx2torch cannot convert {_failing_node(pruned)}") from e
    module = module.eval().requires_grad_(False)
    half = False
    try:
        module = module.float()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(probe)
    except Exception as first:
        try:  # an fp16 graph with float16 casts inside: keep it in half precision
            module = module.half()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module(probe.half())
            half = True
        except Exception:
            raise ConversionError(f"the converted graph does not run: {type(first).__name__}: "
                                  f"{str(first)[:300]}") from first
    graph = ConvertedGraph(module, half, 1 if isinstance(output, str) else len(output))
    if quant_ops.is_dynamically_quantised(pruned):
        graph.sample_axis = quant_ops.sample_axis(graph, probe)
        if graph.sample_axis is not None:
            graph.alone = batching(graph._run, probe, graph.sample_axis)
    return graph
