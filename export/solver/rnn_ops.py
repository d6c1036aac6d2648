"""ONNX LSTM and GRU as torch modules, registered with onnx2torch (it has no converter for them).

Weights must be constant; refused: layout 1, unequal sequence_lens, other activations, clip,
peepholes, coupled gates. GRU with ``linear_before_reset=0`` (the ONNX default) runs a per-step
cell, which ``nn.GRU`` cannot express. Gate orders: ONNX LSTM i, o, f, c (torch i, f, g, o);
GRU z, r, h (torch r, z, n).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .o2t import OperationConverterResult, constant, converted, register

# torch gate k is ONNX gate _ORDER[k]
_LSTM_ORDER = (0, 2, 3, 1)
_GRU_ORDER = (1, 0, 2)
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _gates(weight: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Reorder the gate blocks stacked along axis 0 of one direction's weight or bias."""
    return torch.cat([weight.chunk(len(order))[k] for k in order])


def _check_attributes(node, op: str, n_dirs: int) -> None:
    a = node.attributes
    acts = a.get("activations")
    if acts is not None and [s.lower() for s in acts] != [
            s.lower() for s in _DEFAULT_ACTIVATIONS[op]] * n_dirs:
        raise NotImplementedError(f"{op} with activations {acts} (only the defaults)")
    if a.get("clip") is not None:
        raise NotImplementedError(f"{op} with clip={a['clip']}")
    if a.get("input_forget", 0):
        raise NotImplementedError(f"{op} with input_forget=1 (coupled input and forget gates)")
    if a.get("layout", 0):
        raise NotImplementedError(f"{op} with layout=1 (batch first)")


class OnnxRecurrent(nn.Module):
    """One ONNX LSTM / GRU node: ``x`` and optional initial states -> (Y [T, dirs, N, H], Y_h
    [, Y_c] [dirs, N, H])."""

    def __init__(self, rnn: nn.Module, direction: str, seq_len: int | None, *,
                 lstm: bool) -> None:
        super().__init__()
        self.rnn = rnn  # nn.LSTM / nn.GRU or a module with their call convention
        self.lstm = lstm  # the state is (h, c), not h
        self.direction = direction
        self.seq_len = seq_len  # sequence_lens given as a constant: all sequences this long

    def train(self, mode: bool = True) -> OnnxRecurrent:
        """``nn.LSTM`` / ``nn.GRU`` stay in training mode: with one layer and no dropout it
        computes the same, and cuDNN refuses the backward pass (the attack's input gradient)
        of an RNN in eval mode."""
        super().train(mode)
        if isinstance(self.rnn, nn.LSTM | nn.GRU):
            self.rnn.train(True)
        return self

    def forward(self, x: torch.Tensor, sequence_lens: torch.Tensor | None = None,
                initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if sequence_lens is not None and bool((sequence_lens != x.shape[0]).any()):
            raise RuntimeError("sequence_lens shorter than the sequence are not supported")
        if self.seq_len is not None and self.seq_len != x.shape[0]:
            raise RuntimeError(f"sequence_lens {self.seq_len} != sequence length {x.shape[0]}")
        if self.direction == "reverse":  # torch has no reverse-only RNN: run forward on x flipped
            x = x.flip(0)
        n_dirs = 2 if self.direction == "bidirectional" else 1
        hidden = self.rnn.hidden_size
        if self.lstm:
            if initial_h is None and initial_c is None:
                y, (h, c) = self.rnn(x)
            else:
                shape = (n_dirs, x.shape[1], hidden)
                h0 = initial_h if initial_h is not None else x.new_zeros(shape)
                c0 = initial_c if initial_c is not None else x.new_zeros(shape)
                y, (h, c) = self.rnn(x, (h0.contiguous(), c0.contiguous()))
            states = (h, c)
        else:
            y, h = self.rnn(x) if initial_h is None else self.rnn(x, initial_h.contiguous())
            states = (h,)
        if self.direction == "reverse":
            y = y.flip(0)
        # torch concatenates the directions on the feature axis: [T, N, dirs * H]
        y = y.reshape(y.shape[0], y.shape[1], n_dirs, hidden).permute(0, 2, 1, 3)
        return (y, *states)


class ManualGRU(nn.Module):
    """A GRU with the reset gate applied before the recurrent product (ONNX
    ``linear_before_reset=0``): h' = tanh(W_h x + R_h (r * h) + Wb_h + Rb_h)."""

    def __init__(self, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        # ONNX layout and gate order (z, r, h), one row of each per direction
        self.register_buffer("w", w)
        self.register_buffer("r", r)
        self.register_buffer("b", b)
        self.hidden_size = r.shape[-1]

    def forward(self, x: torch.Tensor,
                h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n_dirs, hidden = self.w.shape[0], self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(n_dirs, x.shape[1], hidden)
        ys, hs = [], []
        for d in range(n_dirs):
            r_z, r_r, r_h = self.r[d].chunk(3)
            wb_z, wb_r, wb_h, rb_z, rb_r, rb_h = self.b[d].chunk(6)
            gx = x @ self.w[d].T  # the input products for all steps at once
            h, out = h0[d], []
            steps = range(x.shape[0] - 1, -1, -1) if d == 1 else range(x.shape[0])
            for t in steps:
                gz, gr, gh = gx[t].chunk(3, -1)
                z = torch.sigmoid(gz + h @ r_z.T + wb_z + rb_z)
                r = torch.sigmoid(gr + h @ r_r.T + wb_r + rb_r)
                h_new = torch.tanh(gh + (r * h) @ r_h.T + wb_h + rb_h)
                h = (1 - z) * h_new + z * h
                out.append(h)
            if d == 1:
                out.reverse()
            ys.append(torch.stack(out))
            hs.append(h)
        return torch.cat(ys, -1), torch.stack(hs)


def sequence_length(node, graph) -> int | None:
    """The length every sequence has where sequence_lens is a constant (None: not given)."""
    name = node.input_values[4] if len(node.input_values) > 4 else ""
    if not name or name not in graph.initializers:
        return None
    lens = graph.initializers[name].to_torch()
    if not bool((lens == lens.flatten()[0]).all()):
        raise NotImplementedError(f"{node.operation_type} with sequence_lens of different "
                                  f"lengths {lens.tolist()}")
    return int(lens.flatten()[0])


def rnn_inputs(node, graph) -> tuple[str, ...]:
    """X, sequence_lens, initial_h, initial_c (empty names for absent ones); the weights are
    folded into the module."""
    ins = list(node.input_values) + [""] * 8
    seq = ins[4] if ins[4] and ins[4] not in graph.initializers else ""
    extra = (seq, ins[5]) if node.operation_type == "GRU" else (seq, ins[5], ins[6])
    return (ins[0], *extra)


def lstm_module(node, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None,
                seq_len: int | None, make: Callable[..., nn.Module] | None = None
                ) -> OnnxRecurrent:
    """The torch module for an LSTM node given float weights in ONNX layout:
    W [dirs, 4H, I], R [dirs, 4H, H], B [dirs, 8H] or None. ``make(W, R, B)`` builds another
    recurrence with ``nn.LSTM``'s call convention instead (ONNX layout and gate order)."""
    a = node.attributes
    direction = a.get("direction", "forward")
    n_dirs = 2 if direction == "bidirectional" else 1
    _check_attributes(node, "LSTM", n_dirs)
    hidden = int(a.get("hidden_size", r.shape[-1]))
    if w.shape[0] != n_dirs or r.shape[-1] != hidden:
        raise NotImplementedError(f"LSTM weights of shape {list(w.shape)} / {list(r.shape)} "
                                  f"for {direction} with hidden_size {hidden}")
    if make is None:
        rnn = nn.LSTM(w.shape[-1], hidden, bidirectional=n_dirs == 2)
        _load(rnn, w, r, b, _LSTM_ORDER)
    else:
        rnn = make(w, r, b if b is not None else torch.zeros(n_dirs, 8 * hidden))
    return OnnxRecurrent(rnn, direction, seq_len, lstm=True)


def _load(rnn: nn.LSTM | nn.GRU, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None,
          order: tuple[int, ...]) -> None:
    gates = len(order) * rnn.hidden_size
    with torch.no_grad():
        for d in range(w.shape[0]):
            tail = "_reverse" if d == 1 else ""
            getattr(rnn, f"weight_ih_l0{tail}").copy_(_gates(w[d], order))
            getattr(rnn, f"weight_hh_l0{tail}").copy_(_gates(r[d], order))
            wb = b[d, :gates] if b is not None else torch.zeros(gates)
            rb = b[d, gates:] if b is not None else torch.zeros(gates)
            getattr(rnn, f"bias_ih_l0{tail}").copy_(_gates(wb, order))
            getattr(rnn, f"bias_hh_l0{tail}").copy_(_gates(rb, order))


def _weights(node, graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    ins = node.input_values
    w, r = constant(graph, ins[1], node), constant(graph, ins[2], node)
    b = constant(graph, ins[3], node) if len(ins) > 3 and ins[3] else None
    return w.float(), r.float(), None if b is None else b.float()


@register("LSTM", (1, 7, 14, 22))
def _lstm(node, graph) -> OperationConverterResult:
    if len(node.input_values) > 7 and node.input_values[7]:
        raise NotImplementedError("LSTM with peepholes (input P)")
    module = lstm_module(node, *_weights(node, graph), sequence_length(node, graph))
    return converted(module, node, rnn_inputs(node, graph))


@register("GRU", (1, 3, 7, 14, 22))
def _gru(node, graph) -> OperationConverterResult:
    a = node.attributes
    direction = a.get("direction", "forward")
    n_dirs = 2 if direction == "bidirectional" else 1
    _check_attributes(node, "GRU", n_dirs)
    w, r, b = _weights(node, graph)
    hidden = int(a.get("hidden_size", r.shape[-1]))
    if b is None:
        b = torch.zeros(n_dirs, 6 * hidden)
    if a.get("linear_before_reset", 0):
        rnn = nn.GRU(w.shape[-1], hidden, bidirectional=n_dirs == 2)
        _load(rnn, w, r, b, _GRU_ORDER)
    else:
        rnn = ManualGRU(w, r, b)
    module = OnnxRecurrent(rnn, direction, sequence_length(node, graph), lstm=False)
    return converted(module, node, rnn_inputs(node, graph))


__all__ = ["ManualGRU", "OnnxRecurrent", "lstm_module", "rnn_inputs",
           "sequence_length"]
