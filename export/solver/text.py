"""A text (OCR) solver as an advx model: its preprocessing and CTC head in torch (with gradients)
and its graph in onnxruntime (the verifier, exactly as the package runs it).

Both paths take images [N, 3, H, W] in [0, 1] (one size per batch) and give per-step scores
[N, T, C] with the package's reading rule applied (time steps it never reads dropped, classes it
never emits pinned far below the rest), so a plain greedy CTC reading of them is the package's
reading:

- :class:`TextModel` (torch): PIL / OpenCV preprocessing as differentiable weight matrices
  (:mod:`.resample`), the converted graph, logits out: what the attack differentiates;
- :class:`TextVerifier` (onnxruntime): the library itself (PIL / OpenCV on the 8-bit image),
  the original graph (a dynamically quantised one image at a time), the graph's own scores.

:meth:`TextSolver.check_parity` compares the two on real images: the same strings, scores
within the spec's ``tolerance``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..onnx.runtime import make_session
from ..onnx.spec import Tolerance
from .charset import Charset
from .convert import ConversionError, ConvertedGraph, batching, convert, each_alone, only_output
from .ctc import SequenceParity, greedy_ctc, sequence_parity
from .graph import TensorInfo, graph_io, load_graph, strip_activation
from .parity import SolverParityError, parity_images
from .spec import SolverSpec, SolverSpecError
from .text_input import TextPreprocess, reference_input
from .text_spec import CTCHead

log = logging.getLogger(__name__)

NEVER = -1.0e4  # the logit of a class the package's decoder never emits


# --- the CTC head: from the graph's answer to the package's per-step scores ---------------------


def _steps(raw: torch.Tensor, head: CTCHead) -> torch.Tensor:
    """[T, N, C] or [N, T, C] -> [N, T', C]: the time steps the package reads."""
    x = raw.transpose(0, 1) if head.layout == "TNC" else raw
    return x[:, : x.shape[1] - head.ignore_last_steps] if head.ignore_last_steps else x


def _pin(x: torch.Tensor, head: CTCHead, fill: float) -> torch.Tensor:
    """Set the classes the package never emits to ``fill``."""
    if not head.never_emit:
        return x
    cols = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    cols[list(head.never_emit)] = True
    return x.masked_fill(cols, fill)


def read_steps(raw: torch.Tensor, head: CTCHead, fill: float) -> torch.Tensor:
    """The graph's answer ([T, N, C] or [N, T, C]) -> [N, T', C]: the steps the package reads,
    the classes it never emits set to ``fill``."""
    return _pin(_steps(raw, head), head, fill)


# --- the two paths -------------------------------------------------------------------------------


class TextModel(nn.Module):
    """The gradient path: images [N, 3, H, W] in [0, 1] -> logits [N, T, C] per time step."""

    def __init__(self, solver: TextSolver) -> None:
        super().__init__()
        self.name, self.spec, self.charset = solver.name, solver.spec, solver.charset
        self.head = solver.head
        self.preprocess = TextPreprocess(solver.spec.input)
        self.graph = solver.torch_graph()
        self.from_probabilities = solver.torch_scores == "softmax"
        self.eval().requires_grad_(False)
        # a graph declared for one image at a time: batched where it answers each sample as
        # alone anyway, else each sample sees a batch of one (see convert.batching)
        self.alone = "batch"
        if solver.fixed_batch == 1:
            probe = self.preprocess(torch.rand(1, 3, 60, 160,
                                               generator=torch.Generator().manual_seed(0)))
            self.alone = batching(self._answer, probe)

    decision = "text"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return each_alone(self._answer, self.preprocess(images), how=self.alone)

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return self._steps(self.graph(x))

    def _steps(self, raw: torch.Tensor) -> torch.Tensor:
        z = _steps(raw.float(), self.head)
        if self.from_probabilities:  # a softmax that could not be cut off: its log
            z = z.clamp_min(1e-30).log()
        return _pin(z, self.head, NEVER)

    def read(self, images: torch.Tensor) -> list[str]:
        """What the package would read, by this path."""
        with torch.no_grad():
            return [self.charset.decode(r) for r in greedy_ctc(self(images), self.head.blank)]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={self.head.classes}"


class TextVerifier:
    """The solver exactly as it runs: the library's preprocessing, the original graph in
    onnxruntime, the package's reading rule."""

    def __init__(self, solver: TextSolver, *, device: str = "cpu") -> None:
        self.solver, self.name, self.charset = solver, solver.name, solver.charset
        self.session = solver.session(cuda=device not in ("cpu",))

    decision = "text"

    def __repr__(self) -> str:
        return f"TextVerifier({self.name!r})"

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """[N, T, C]: the graph's scores (logits or probabilities, as it gives them) on the
        steps the package reads; classes it never emits pinned below the rest."""
        s = self.solver
        raw = s.run_graph(self.session, reference_input(images, s.spec.input))
        return read_steps(torch.from_numpy(raw), s.head, s.never_fill)

    def read(self, images: torch.Tensor) -> list[str]:
        return [self.charset.decode(r)
                for r in greedy_ctc(self.scores(images), self.solver.head.blank)]

    def __call__(self, images: torch.Tensor) -> list[str]:
        return self.read(images)


# --- the solver as loaded from its spec ----------------------------------------------------------


class TextSolver:
    """A loaded ctc spec and its graph. The torch conversion is made (and checked against
    onnxruntime) on first use; a graph that cannot be converted still verifies."""

    def __init__(self, spec: SolverSpec, *, name: str | None = None) -> None:
        if spec.output.ctc is None:
            raise SolverSpecError("output.kind: a TextSolver needs a \"ctc\" output")
        self.spec, self.head = spec, spec.output.ctc
        self.name = name or spec.name or (f"onnx:{spec.path.name}" if spec.path else "onnx")
        self.charset = Charset.of(self.head, self.name)
        self.tolerance = spec.tolerance or Tolerance()
        self.never_fill = NEVER if self.head.scores == "logits" else 0.0
        self._sessions: dict[bool, object] = {}
        self._torch: ConvertedGraph | None = None
        self._torch_error: Exception | None = None
        self.torch_scores = self.head.scores  # what the converted graph gives
        self.parity: SequenceParity | None = None
        self._lock = threading.RLock()  # the parity check builds a TextModel
        try:
            self._load()
        except SolverSpecError as e:
            if spec.path and not str(e).startswith(str(spec.path)):
                raise SolverSpecError(f"{spec.path}: {e}") from e
            raise

    def __repr__(self) -> str:
        return f"TextSolver({self.name!r}, {self.spec.model.name})"

    # --- the graph -----------------------------------------------------------------------------

    def _load(self) -> None:
        from .quant_ops import is_dynamically_quantised

        spec = self.spec
        self.model = load_graph(spec.model)
        self.io = graph_io(self.model)
        self.input_info = self._input()
        outputs = [o.name for o in self.io.outputs]
        self.output = spec.output.name or outputs[0]
        # the tensor read (its declared type; an inner tensor's shape is not declared)
        self.output_info = next((o for o in self.io.outputs if o.name == self.output),
                                TensorInfo(self.output, "float32", None))
        if self.output not in outputs:
            try:  # an inner tensor (the logits before an ArgMax or a decoder): cut there
                self.runnable = only_output(self.model, self.output)
            except ValueError as e:
                raise SolverSpecError(f"output.name: the graph has no tensor {self.output!r}; "
                                      f"its outputs are {', '.join(outputs)}") from e
        else:
            self.runnable = self.model
        shape = self.input_info.shape
        self.fixed_batch = shape[0] if shape and isinstance(shape[0], int) else None
        self.quantised = is_dynamically_quantised(self.model)
        # per-tensor quantisation ranges (or a batch of one): each image runs alone
        self.per_sample = self.quantised or self.fixed_batch == 1
        self._probe()

    def _input(self):
        spec, io = self.spec.input, self.io
        names = ", ".join(t.describe() for t in io.inputs)
        if spec.name is not None:
            match = [t for t in io.inputs if t.name == spec.name]
            if not match:
                raise SolverSpecError(f"input.name: the graph has no input {spec.name!r}; its "
                                      f"inputs are {names}")
            inp = match[0]
        elif len(io.inputs) == 1:
            inp = io.inputs[0]
        else:
            raise SolverSpecError(f"input.name: the graph has {len(io.inputs)} inputs "
                                  f"({names}); name the image input")
        if len(io.inputs) > 1:
            raise SolverSpecError(f"input.name: the graph needs inputs besides the image "
                                  f"({names}); advx feeds only the image")
        if inp.dtype != "float32":
            raise SolverSpecError(f"input.dtype: graph input {inp.describe()} is not float32")
        if inp.shape is not None:
            if len(inp.shape) != 4:
                raise SolverSpecError(f"input.name: graph input {inp.describe()} is not a 4-d "
                                      f"image batch")
            want = 1 if spec.channels == "GREY" else 3
            if isinstance(inp.shape[1], int) and inp.shape[1] != want:
                raise SolverSpecError(
                    f"input.channels: the spec says {spec.channels} ({want} channel"
                    f"{'s' if want > 1 else ''}) but graph input {inp.describe()} takes "
                    f"{inp.shape[1]}")
            h, w = inp.shape[2], inp.shape[3]
            if isinstance(h, int) and h != spec.size[0]:
                raise SolverSpecError(f"input.size: the spec says height {spec.size[0]} but "
                                      f"graph input {inp.describe()} takes {h}")
            if isinstance(w, int) and spec.size[1] != w:
                raise SolverSpecError(f"input.size: graph input {inp.describe()} takes width "
                                      f"{w}; the spec says {spec.size[1]}")
        return inp

    def probe_images(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        """Deterministic test tiles at the solver's size (a 8:3 tile for a free width)."""
        h, w = self.spec.input.size
        h_tile = h if w is not None else 60
        w_tile = w if w is not None else 160
        return parity_images(n, h_tile, w_tile, generator=torch.Generator().manual_seed(seed))

    def _probe(self) -> None:
        """Run the graph once: does it load, and is its answer a CTC head of the charset?"""
        x = reference_input(self.probe_images(1), self.spec.input)
        try:
            raw = self.run_graph(self.session(), x)
        except SolverSpecError:
            raise
        except Exception as e:
            raise SolverSpecError(f"model: {self.spec.model} fails on an input of shape "
                                  f"{list(x.shape)}: {str(e)[:300]}") from e
        shape, head = list(raw.shape), self.head
        if raw.ndim != 3:
            raise SolverSpecError(f"output.name: output {self.output!r} has shape {shape}; a "
                                  f"ctc head gives [T, N, C] or [N, T, C] scores")
        if raw.shape[-1] != head.classes:
            raise SolverSpecError(
                f"output.charset: the charset has {head.classes} symbols but output "
                f"{self.output!r} has {raw.shape[-1]} classes (its last axis, shape {shape})")
        batch_axis = 1 if head.layout == "TNC" else 0
        if raw.shape[batch_axis] != 1:
            other = "NTC" if head.layout == "TNC" else "TNC"
            raise SolverSpecError(f"output.layout: one image gives {shape}, with "
                                  f"{raw.shape[batch_axis]} on the batch axis of "
                                  f"{head.layout}; is it {other}?")
        steps = raw.shape[1 - batch_axis]
        if steps <= head.ignore_last_steps:
            raise SolverSpecError(f"output.ignore_last_steps: {head.ignore_last_steps} of "
                                  f"{steps} time steps leaves none to read")
        if head.scores == "softmax":
            sums = raw.sum(-1)
            if raw.min() < -1e-4 or not np.allclose(sums, 1, atol=1e-2):
                raise SolverSpecError(f"output.scores: \"softmax\" expects probabilities that "
                                      f"sum to 1 over the classes, but output {self.output!r} "
                                      f"does not; use \"logits\"")

    # --- onnxruntime ---------------------------------------------------------------------------

    def session(self, cuda: bool = False):
        if cuda not in self._sessions:
            from ..onnx.runtime import available_providers

            use_cuda = cuda and "CUDAExecutionProvider" in available_providers()
            try:
                if self.runnable is self.model:
                    self._sessions[cuda] = make_session(self.spec.model, "fp32", cuda=use_cuda)
                else:
                    with tempfile.TemporaryDirectory() as d:
                        cut = Path(d) / "cut.onnx"
                        cut.write_bytes(self.runnable.SerializeToString())
                        self._sessions[cuda] = make_session(cut, "fp32", cuda=use_cuda)
            except Exception as e:
                raise SolverSpecError(f"model: onnxruntime cannot load {self.spec.model}: "
                                      f"{str(e)[:300]}") from e
        return self._sessions[cuda]

    def run_graph(self, session, x: np.ndarray) -> np.ndarray:
        """The graph's answer on preprocessed inputs (a batch of one where it must be)."""
        axis = 1 if self.head.layout == "TNC" else 0
        name = self.input_info.name
        if self.per_sample or (self.fixed_batch and self.fixed_batch != len(x)):
            outs = [session.run([self.output], {name: x[i : i + 1]})[0]
                    for i in range(len(x))]
            return np.concatenate(outs, axis).astype(np.float32)
        return np.asarray(session.run([self.output], {name: x})[0], dtype=np.float32)

    # --- torch ---------------------------------------------------------------------------------

    def torch_graph(self) -> ConvertedGraph:
        """The converted graph (raises ConversionError / SolverParityError if there is none)."""
        with self._lock:
            if self._torch is None and self._torch_error is None:
                try:
                    self._torch = self._convert()
                except (ConversionError, SolverParityError) as e:
                    self._torch_error = e
            if self._torch_error is not None:
                raise self._torch_error
            return self._torch

    def _convert(self) -> ConvertedGraph:
        images = self.probe_images(2, seed=1)
        probe = TextPreprocess(self.spec.input)(images[:1])
        if self.head.scores == "softmax":
            stripped = strip_activation(self.model, self.output, "Softmax")
            if stripped is not None:
                try:
                    graph = convert(stripped, self.output, probe)
                    self._torch, self.torch_scores = graph, "logits"
                    self.parity = self._parity(images)
                    return graph
                except (ConversionError, SolverParityError) as e:
                    log.debug("%s: logits behind the softmax not usable (%s)", self.name, e)
                    self._torch, self.torch_scores = None, "softmax"
        graph = convert(self.model, self.output, probe)
        self._torch = graph
        self.parity = self._parity(images)
        return graph

    def _parity(self, images: torch.Tensor) -> SequenceParity:
        model = TextModel(self)
        if self.per_sample:  # exactly as the package runs it
            model.alone = "loop"
        with torch.no_grad():
            got = model(images)
        ref = self.verifier().scores(images)
        if self.head.scores == "softmax":
            got = got.softmax(-1)
        t = self.tolerance
        return sequence_parity(got, ref, self.head.blank, atol=t.atol, rtol=t.rtol,
                               margin=t.decisive_gap, name=self.name)

    # --- the two faces -------------------------------------------------------------------------

    def text_model(self) -> TextModel:
        """The gradient path (raises ConversionError / SolverParityError where there is none)."""
        return TextModel(self)

    def verifier(self, labels=None, *, device: str = "cpu") -> TextVerifier:
        return TextVerifier(self, device=device)

    def check_parity(self, images: torch.Tensor) -> SequenceParity:
        """Torch against onnxruntime on real tiles ([N, 3, H, W] in [0, 1], one size): the same
        strings, scores within the spec's tolerance (raises SolverParityError otherwise)."""
        self.torch_graph()
        return self._parity(images.float().cpu())


__all__ = ["NEVER", "TextModel", "TextPreprocess", "TextSolver", "TextVerifier", "read_steps",
           "reference_input"]
