"""Converters that onnx2torch bases on shape inference, for graphs where it loses the shapes.

paddle2onnx graphs (PP-OCR) reshape with shapes computed at run time; shape inference then
leaves the tensors after the reshape without a rank. onnx2torch's BatchNormalization converter
picks ``BatchNorm1d/2d/3d`` from that rank and fails on rank 0. ``F.batch_norm`` takes any
rank, so such nodes run as a rank-free module with the same constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from torch import nn

from .o2t import OnnxMapping, OperationConverterResult, constant


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


def _rank_known(node, graph) -> bool:
    info = graph.value_info.get(node.input_values[0])
    return info is not None and len(info.type.tensor_type.shape.dim) >= 2


def _wrap(original):
    def batch_norm(node, graph) -> OperationConverterResult:
        ins = node.input_values
        if (_rank_known(node, graph) or len(node.output_values) != 1
                or not all(v in graph.initializers for v in ins[1:5])):
            return original(node, graph)
        scale, bias, mean, var = (constant(graph, v, node) for v in ins[1:5])
        module = RankFreeBatchNorm(scale, bias, mean, var,
                                   float(node.attributes.get("epsilon", 1e-5)))
        return OperationConverterResult(
            torch_module=module, onnx_mapping=OnnxMapping(inputs=(ins[0],),
                                                          outputs=node.output_values))

    batch_norm.rank_free = True
    return batch_norm


def install() -> None:
    """Wrap onnx2torch's BatchNormalization converters (idempotent)."""
    for key, converter in list(_CONVERTER_REGISTRY.items()):
        if (key.domain, key.operation_type) == ("", "BatchNormalization") and not getattr(
                converter, "rank_free", False):
            _CONVERTER_REGISTRY[OperationDescription(*key)] = _wrap(converter)


install()

__all__ = ["RankFreeBatchNorm", "install"]
