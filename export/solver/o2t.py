"""Our converters in onnx2torch's converter registry (no fork of it), registered on import.

``register`` adds a converter for an op onnx2torch lacks (a later onnx2torch's own is kept);
``constant`` reads a node input that must be a constant. Its own converters are fixed where
they fail on exported graphs: LayerNormalization with symbolic shapes (the weight's shape is
the normalised one), Slice (a tuple of slices), BatchNormalization where shape inference gives
no rank (a rank-free ``F.batch_norm``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from onnx2torch.node_converters import slice as slice_module
from onnx2torch.node_converters.layer_norm import OnnxLayerNorm
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node
from torch import nn

log = logging.getLogger(__name__)

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]


def register(op: str, versions: Iterable[int], domain: str = "") -> Callable[[Converter],
                                                                              Converter]:
    """Register the decorated converter for ``op`` at each opset version it changed in."""

    def deco(fn: Converter) -> Converter:
        for version in versions:
            if OperationDescription(domain, op, version) in _CONVERTER_REGISTRY:
                log.debug("onnx2torch has its own %s %s converter; keeping it", op, version)
                continue
            add_converter(op, version, domain)(fn)
        return fn

    return deco


def constant(graph: OnnxGraph, name: str, node: OnnxNode) -> torch.Tensor:
    """A node input that the torch module folds in (weights, zero points)."""
    if name not in graph.initializers:
        raise NotImplementedError(f"{node.operation_type} node {node.name!r}: input {name!r} "
                                  f"is computed in the graph; only constant weights are "
                                  f"supported")
    return graph.initializers[name].to_torch()


def converted(module: nn.Module, node, inputs: tuple[str, ...] | None = None
              ) -> OperationConverterResult:
    """``module`` for ``node``, fed ``inputs`` (default: the node's; "" for an absent one)."""
    mapping = (onnx_mapping_from_node(node) if inputs is None
               else OnnxMapping(inputs=inputs, outputs=node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


# --- ops onnx2torch lacks -------------------------------------------------------------------------


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


register("GlobalMaxPool", (1,))(lambda node, graph: converted(GlobalMaxPool(), node))
register("Mish", (18,))(lambda node, graph: converted(nn.Mish(), node))


@register("Gelu", (20,))
def _gelu(node, graph) -> OperationConverterResult:
    approx = node.attributes.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return converted(nn.GELU(approximate=approx), node)


# --- its own, fixed -------------------------------------------------------------------------------


def _layer_norm(node, graph) -> OperationConverterResult:
    axis = node.attributes.get("axis", -1)
    eps = node.attributes.get("epsilon", 1e-5)
    ins = node.input_values
    if axis != -1 or not all(v in graph.initializers for v in ins[1:] if v):
        return converted(OnnxLayerNorm(axis, eps), node)
    weight = graph.initializers[ins[1]].to_torch()
    module = nn.LayerNorm(tuple(weight.shape), eps=eps)
    with torch.no_grad():
        module.weight.copy_(weight)
        if len(ins) > 2 and ins[2]:
            module.bias.copy_(graph.initializers[ins[2]].to_torch())
        else:
            module.bias.zero_()
    return converted(module, node, (ins[0],))


_CONVERTER_REGISTRY[OperationDescription("", "LayerNormalization", 17)] = _layer_norm


def _do_slice(x, flip_dims, pos_axes_slices, neg_axes_slices):
    if flip_dims:
        x = torch.flip(x, dims=flip_dims)
    if pos_axes_slices:
        x = x[tuple(pos_axes_slices)]
    if neg_axes_slices:
        x = x[tuple(neg_axes_slices)]
    return x


slice_module._do_slice = _do_slice


class RankFreeBatchNorm(nn.Module):
    """Inference-mode batch normalisation over axis 1 of a tensor of any rank."""

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                 var: torch.Tensor, eps: float) -> None:
        super().__init__()
        for name, value in (("weight", scale), ("bias", bias), ("running_mean", mean),
                            ("running_var", var)):
            self.register_buffer(name, value.float())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def _rank_free(original: Converter) -> Converter:
    def batch_norm(node, graph) -> OperationConverterResult:
        ins, info = node.input_values, graph.value_info.get(node.input_values[0])
        if ((info is not None and len(info.type.tensor_type.shape.dim) >= 2)
                or len(node.output_values) != 1
                or not all(v in graph.initializers for v in ins[1:5])):
            return original(node, graph)
        scale, bias, mean, var = (constant(graph, v, node) for v in ins[1:5])
        eps = float(node.attributes.get("epsilon", 1e-5))
        return converted(RankFreeBatchNorm(scale, bias, mean, var, eps), node, (ins[0],))

    return batch_norm


for _key, _converter in list(_CONVERTER_REGISTRY.items()):
    if (_key.domain, _key.operation_type) == ("", "BatchNormalization"):
        _CONVERTER_REGISTRY[_key] = _rank_free(_converter)


def _module_name(node) -> str:
    """onnx2torch names a node's module ``domain/name`` with dots made slashes in the name but
    not in the domain, which torch refuses for ``com.microsoft`` ops."""
    return (f"{node.domain}/".replace(".", "_") + (node.name.replace(".", "/")
                                                    or node.op_type)).lstrip("/")


OnnxGraph.generate_node_name = staticmethod(_module_name)

__all__ = ["Converter", "OperationConverterResult", "RankFreeBatchNorm", "constant", "converted",
           "register"]
