"""Registering our converters with onnx2torch's converter registry (no fork of it).

``register`` adds a converter for an op onnx2torch lacks; where a later onnx2torch ships its
own for the same op and version, that one is kept. ``constant`` reads a node input that must
be a constant (weights), with an error that names the node. Importing this module also fixes
onnx2torch's module names for ops of dotted domains (com.microsoft).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

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


def _module_name(node) -> str:
    """onnx2torch names a node's module ``domain/name`` with dots made slashes in the name but
    not in the domain, which torch refuses for ``com.microsoft`` ops."""
    return (f"{node.domain}/".replace(".", "_") + (node.name.replace(".", "/")
                                                    or node.op_type)).lstrip("/")


OnnxGraph.generate_node_name = staticmethod(_module_name)


def constant(graph: OnnxGraph, name: str, node: OnnxNode) -> torch.Tensor:
    """A node input that the torch module folds in (weights, zero points)."""
    if name not in graph.initializers:
        raise NotImplementedError(f"{node.operation_type} node {node.name!r}: input {name!r} "
                                  f"is computed in the graph; only constant weights are "
                                  f"supported")
    return graph.initializers[name].to_torch()


__all__ = ["Converter", "OnnxMapping", "OperationConverterResult", "constant", "register"]
