"""Dynamically quantised ONNX graphs as float torch modules with gradients.

``quantize_dynamic`` quantises each activation per tensor at run time
(``DynamicQuantizeLinear``), runs an integer op on int8 / uint8 weights (``ConvInteger``,
``MatMulInteger``, ``DynamicQuantizeLSTM``) and rescales to float. Here the quantised values
are floats rounded exactly as onnxruntime rounds them, with a straight-through gradient, and
the integer ops run as float ops on (q - zero point): the float network's gradient, taken at
the quantised activations. A last-bit difference in a float kernel can move whole quantisation
steps downstream, so such graphs are compared with a wider tolerance. The range is the whole
tensor's, so each sample runs alone (``sample_axis``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .o2t import OperationConverterResult, constant, converted, register
from .rnn_ops import lstm_module, rnn_inputs, sequence_length

_U8_MAX = 255.0


def _uint8_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's per-tensor uint8 scale and zero point: the range of x widened to hold 0
    (scale 1 for an all-zero tensor)."""
    with torch.no_grad():
        lo = x.detach().amin().clamp(max=0)
        hi = x.detach().amax().clamp(min=0)
        scale = torch.where(hi > lo, (hi - lo) / _U8_MAX, torch.ones_like(hi))
        return scale, torch.round((-lo / scale).clamp(0, _U8_MAX))


def _quantise(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """saturate(round(x / scale) + zero_point), ties to even, with a straight-through gradient
    (d/dx = 1 / scale)."""
    soft = x / scale + zero_point
    hard = torch.round(x / scale).add(zero_point).clamp(0, _U8_MAX)
    return soft + (hard - soft).detach()


def fake_quantise(x: torch.Tensor) -> torch.Tensor:
    """x rounded to its per-tensor uint8 grid and back (what a quantised GEMM multiplies)."""
    scale, zero_point = _uint8_params(x)
    return (_quantise(x, scale, zero_point) - zero_point) * scale


class DynamicQuantize(nn.Module):
    """x -> (q, scale, zero_point), q the uint8 values as float."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale, zero_point = _uint8_params(x)
        return _quantise(x, scale, zero_point), scale, zero_point


class QuantisedLSTM(nn.Module):
    """DynamicQuantizeLSTM in float with straight-through rounding: the input quantised per
    tensor for X·Wᵀ, the hidden state per step for H·Rᵀ (as one thread does). Call convention
    of ``nn.LSTM``; weights in ONNX layout and gate order (i, o, f, c)."""

    def __init__(self, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)  # [dirs, 4H, I]
        self.register_buffer("r", r)  # [dirs, 4H, H]
        self.register_buffer("b", b[:, : w.shape[1]] + b[:, w.shape[1]:])  # Wb + Rb
        self.hidden_size = r.shape[-1]

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n_dirs, steps = self.w.shape[0], x.shape[0]
        if state is None:
            zeros = x.new_zeros(n_dirs, x.shape[1], self.hidden_size)
            state = (zeros, zeros)
        gx_all = torch.einsum("tni,dgi->dtng", fake_quantise(x), self.w)  # [dirs, T, N, 4H]
        ys, hs, cs = [], [], []
        for d in range(n_dirs):
            h, c = state[0][d], state[1][d]
            out = []
            for t in range(steps - 1, -1, -1) if d == 1 else range(steps):
                gates = gx_all[d, t] + fake_quantise(h) @ self.r[d].T + self.b[d]
                i, o, f, g = gates.chunk(4, -1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                out.append(h)
            if d == 1:
                out.reverse()
            ys.append(torch.stack(out))
            hs.append(h)
            cs.append(c)
        return torch.cat(ys, -1), (torch.stack(hs), torch.stack(cs))


class ConvOnShifted(nn.Module):
    """ConvInteger: conv(x - x_zero_point, w - w_zero_point), the weight shift folded in."""

    def __init__(self, weight: torch.Tensor, stride, padding, dilation, groups: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: torch.Tensor, x_zero_point: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        if x_zero_point is not None:
            x = x - x_zero_point.float()
        pad = self.padding
        if isinstance(pad, tuple) and len(pad) == 4:  # asymmetric: explicit zero padding
            x, pad = F.pad(x, pad), 0
        return F.conv2d(x, self.weight, None, self.stride, pad, self.dilation, self.groups)


class MatMulOnShifted(nn.Module):
    """MatMulInteger: (a - a_zero_point) @ (b - b_zero_point), the constant b shift folded in."""

    def __init__(self, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, a: torch.Tensor, a_zero_point: torch.Tensor | None = None) -> torch.Tensor:
        a = a.float()
        if a_zero_point is not None:
            zp = a_zero_point.float()
            a = a - (zp.unsqueeze(-1) if zp.ndim == 1 else zp)  # 1-d: one per row of a
        return a @ self.b


def _shifted(node, graph, value: int, point: int) -> torch.Tensor:
    """Constant input ``value`` minus its zero point (input ``point``), as float."""
    ins = node.input_values
    w = constant(graph, ins[value], node).float()
    if len(ins) > point and ins[point]:
        zp = constant(graph, ins[point], node).float()
        if zp.numel() > 1:  # per output channel (ConvInteger) / per column (MatMulInteger)
            zp = zp.view(-1, *([1] * (w.ndim - 1))) if node.operation_type == "ConvInteger" \
                else zp.view(*([1] * (w.ndim - 1)), -1)
        w = w - zp
    return w


_QUANTISING_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM"})


def is_dynamically_quantised(model) -> bool:
    """Does the graph quantise activations at run time (ranges per tensor, so per batch)?"""
    return any(n.op_type in _QUANTISING_OPS for n in model.graph.node)


def sample_axis(graph: nn.Module, probe: torch.Tensor) -> int | None:
    """The output axis that holds the batch: the one that grows from 1 to 2 with the input
    batch (None when that is not one axis, or a batch of 2 does not run)."""
    one = probe[:1]
    try:
        with torch.no_grad():
            a, b = graph(one).shape, graph(torch.cat([one, one])).shape
    except Exception:
        return None
    grew = [i for i, (m, n) in enumerate(zip(a, b, strict=False)) if (m, n) == (1, 2)]
    same = len(a) == len(b) and all(m == n for i, (m, n) in enumerate(zip(a, b, strict=True))
                                    if i not in grew)
    return grew[0] if len(grew) == 1 and same else None


@register("DynamicQuantizeLinear", (11,))
def _dynamic_quantize(node, graph) -> OperationConverterResult:
    return converted(DynamicQuantize(), node)


@register("ConvInteger", (10,))
def _conv_integer(node, graph) -> OperationConverterResult:
    a = node.attributes
    weight = _shifted(node, graph, 1, 3)
    if weight.ndim != 4:
        raise NotImplementedError(f"ConvInteger with a {weight.ndim - 2}-d kernel")
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise NotImplementedError(f"ConvInteger with auto_pad={a['auto_pad']}")
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    padding = (top, left) if (top, left) == (bottom, right) else (left, right, top, bottom)
    module = ConvOnShifted(weight, tuple(a.get("strides", (1, 1))), padding,
                           tuple(a.get("dilations", (1, 1))), int(a.get("group", 1)))
    ins = node.input_values
    return converted(module, node, (ins[0], ins[2] if len(ins) > 2 else ""))


@register("MatMulInteger", (10,))
def _matmul_integer(node, graph) -> OperationConverterResult:
    ins = node.input_values
    return converted(MatMulOnShifted(_shifted(node, graph, 1, 3)), node,
                     (ins[0], ins[2] if len(ins) > 2 else ""))


@register("DynamicQuantizeLSTM", (1,), domain="com.microsoft")
def _dynamic_quantize_lstm(node, graph) -> OperationConverterResult:
    """Inputs X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point,
    R_scale, R_zero_point; W is int8 [dirs, I, 4H] and R [dirs, H, 4H] (transposed against
    LSTM's), scales and zero points per direction [dirs] or per gate row [dirs, 4H]."""
    ins = list(node.input_values) + [""] * 12
    if ins[7]:
        raise NotImplementedError("DynamicQuantizeLSTM with peepholes (input P)")

    def dequantised(value: int, scale: int, point: int) -> torch.Tensor:
        q = constant(graph, ins[value], node).float()
        s = constant(graph, ins[scale], node).float()
        zp = constant(graph, ins[point], node).float() if ins[point] else torch.zeros_like(s)
        s, zp = (t.view(t.shape[0], 1, -1) for t in (s, zp))  # over [dirs, rows, 4H]
        return ((q - zp) * s).transpose(1, 2)

    w, r = dequantised(1, 8, 9), dequantised(2, 10, 11)
    b = constant(graph, ins[3], node).float() if ins[3] else None
    module = lstm_module(node, w, r, b, sequence_length(node, graph), make=QuantisedLSTM)
    return converted(module, node, rnn_inputs(node, graph))


__all__ = ["ConvOnShifted", "DynamicQuantize", "MatMulOnShifted", "QuantisedLSTM",
           "fake_quantise"]
