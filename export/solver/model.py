"""A foreign solver as an advx model: its preprocessing and output in torch, its graph in torch
(surrogate, with gradients) or in onnxruntime (verifier, exactly as the solver runs it).

Both paths present the interface of every advx model: images [N, 3, H, W] in [0, 1] -> [N, L]
*decision logits* over the run's label set, read by the solver's own rule:

- closed set (``logits`` / ``softmax``): the solver picks the argmax label;
- multi-label (``multilabel`` / ``multilabel_logits``): label l is selected when
  P(l) >= threshold, so its decision logit is logit(P(l)) - logit(threshold) (selected >= 0).

Labels the solver does not know get a constant column (:data:`UNKNOWN`): never chosen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..geometry import Geometry
from ..onnx.runtime import available_providers, cpu_run_size, make_session
from .convert import ConversionError, ConvertedGraph, convert
from .ends import Decoder, Preprocess, _logit_of, to_graph_array
from .graph import GraphIO, TensorInfo, check_output_shape, graph_io, load_graph, resolve_io
from .graph import strip_activation as _strip
from .parity import GraphParity, SolverParityError, parity_images
from .spec import SolverSpec, SolverSpecError

log = logging.getLogger(__name__)

# --- the two paths -------------------------------------------------------------------------------


class _SolverModel:
    """What the torch and onnxruntime paths share: name, labels and the decision rule."""

    name: str
    labels: tuple[str, ...]
    decision: str
    thresholds: tuple[float, ...]  # per label of the run (of its first solver label)
    known: tuple[bool, ...]

    def _setup(self, solver: Solver, labels: Sequence[str]) -> None:
        self.name, self.labels = solver.name, tuple(labels)
        spec = solver.spec
        self.spec_path = spec.path
        self.decision = spec.decision
        cols = [spec.solver_labels_for(lab) for lab in self.labels]
        self.known = tuple(bool(c) for c in cols)
        self.thresholds = tuple(spec.threshold_of(c[0]) if c else 0.5 for c in cols)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Decision logits -> the solver's P(label) (multi-label solvers)."""
        off = torch.tensor([_logit_of(t) for t in self.thresholds], device=logits.device)
        return torch.sigmoid(logits + off)


class SolverClassifier(nn.Module, _SolverModel):
    """The gradient path: preprocessing + converted graph + decoder, all in torch."""

    def __init__(self, solver: Solver, labels: Sequence[str]) -> None:
        super().__init__()
        self._setup(solver, labels)
        self.spec, self.solver = solver.spec, solver
        self.preprocess = Preprocess(solver.spec.input)
        self.graph = solver.torch_graph()
        self.decoder = Decoder(solver.spec, labels, solver.torch_kind)
        self.eval().requires_grad_(False)

    @property
    def input_size(self) -> int:
        """The longer side of the graph's input."""
        return max(self.spec.input.size)

    def forward(self, images: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        return self.decoder(self.graph(self.preprocess(images, geometry)))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, labels={len(self.labels)}, decision={self.decision}"


class SolverVerifier(_SolverModel):
    """The solver exactly as it runs: the same preprocessing, its graph in onnxruntime."""

    def __init__(self, solver: Solver, labels: Sequence[str], *, device: str = "cpu") -> None:
        self._setup(solver, labels)
        self.solver = solver
        self.preprocess = Preprocess(solver.spec.input)
        self.decoder = Decoder(solver.spec, labels)
        self.session = solver.session(cuda=device not in ("cpu",))
        self.device = "cuda" if "CUDA" in self.session.get_providers()[0] else "cpu"

    def __repr__(self) -> str:
        return f"SolverVerifier({self.name!r}, {self.device})"

    def raw(self, images: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        """The answer tensor for images [N, 3, H, W] in [0, 1]."""
        with torch.no_grad():
            x = self.preprocess(images.detach().float().cpu(), geometry)
        return self.solver.run_graph(self.session, x)

    def __call__(self, images: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder(self.raw(images, geometry))


# --- the solver as loaded from its spec -----------------------------------------------------------


class Solver:
    """A loaded spec and graph. The torch conversion is made (and parity-checked) on first use
    as a surrogate; a graph that cannot be converted stays usable as a verifier."""

    def __init__(self, spec: SolverSpec, *, name: str | None = None) -> None:
        self.spec = spec
        self.name = name or spec.name or (f"onnx:{spec.path.name}" if spec.path else "onnx")
        try:
            self._load()
        except SolverSpecError as e:  # name the spec file too
            if spec.path and not str(e).startswith(str(spec.path)):
                raise SolverSpecError(f"{spec.path}: {e}") from e
            raise

    def _load(self) -> None:
        spec = self.spec
        self.model = load_graph(spec.model)
        self.io: GraphIO = graph_io(self.model)
        self.input_info, self.output_info = resolve_io(spec, self.io)
        self.fixed_batch = (self.input_info.shape[0]
                            if self.input_info.shape and isinstance(self.input_info.shape[0], int)
                            else None)
        self._sessions: dict[bool, object] = {}
        self._torch: ConvertedGraph | None = None
        self._torch_error: Exception | None = None
        self.torch_kind: str = spec.output.kind
        self.parity: GraphParity | None = None
        self._lock = threading.Lock()
        self._probe()

    # --- onnxruntime ---------------------------------------------------------------------------

    def session(self, cuda: bool = False):
        if cuda not in self._sessions:
            use_cuda = cuda and "CUDAExecutionProvider" in available_providers()
            try:
                precision = "fp16" if self.spec.input.dtype == "float16" else "fp32"
                self._sessions[cuda] = make_session(self.spec.model, precision, cuda=use_cuda)
            except Exception as e:
                raise SolverSpecError(f"model: onnxruntime cannot load {self.spec.model}: "
                                      f"{str(e)[:300]}") from e
        return self._sessions[cuda]

    def run_graph(self, session, x: torch.Tensor) -> torch.Tensor:
        """Run the graph on a preprocessed batch (float, graph layout) -> answer tensor."""
        arr = to_graph_array(x, self.spec.input.dtype)
        on_cuda = "CUDA" in session.get_providers()[0]
        step = self.fixed_batch or max(1, len(arr) if on_cuda
                                       else min(len(arr), cpu_run_size(arr.shape)))
        outs = []
        for i in range(0, len(arr), step):
            chunk = arr[i : i + step]
            pad = step - len(chunk) if self.fixed_batch else 0
            if pad:  # a graph with a fixed batch size: fill the last batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            (out,) = session.run([self.output_info.name], {self.input_info.name: chunk})
            outs.append(torch.from_numpy(np.asarray(out, dtype=np.float32))[: step - pad])
        return torch.cat(outs)

    def _probe(self) -> None:
        """Run the graph once: does it load, and does its answer have the spec's shape?"""
        g = torch.Generator().manual_seed(0)
        x = Preprocess(self.spec.input)(torch.rand(2, 3, 64, 64, generator=g))
        try:
            raw = self.run_graph(self.session(), x)
        except SolverSpecError:
            raise
        except Exception as e:
            raise SolverSpecError(f"model: {self.spec.model} fails on a "
                                  f"{self.spec.input.layout} {self.spec.input.dtype} batch of "
                                  f"size {list(self.spec.input.size)}: {str(e)[:300]}") from e
        check_output_shape(self.spec, self.output_info.name, tuple(raw.shape))
        kind, o = self.spec.output.kind, self.spec.output
        scores = raw.movedim(o.label_axis, 1)[:, o.label_start:]
        if kind == "multilabel" and (scores.min() < -1e-4 or scores.max() > 1 + 1e-4):
            raise SolverSpecError(
                f"output.kind: \"multilabel\" expects probabilities in [0, 1], but output "
                f"{self.output_info.name!r} gave values in [{float(scores.min()):.3g}, "
                f"{float(scores.max()):.3g}]; use \"multilabel_logits\" (sigmoid applied by "
                f"advx)")
        if kind == "softmax":
            sums = scores.sum(1)
            if scores.min() < -1e-4 or not torch.allclose(sums, torch.ones_like(sums),
                                                          atol=1e-2):
                raise SolverSpecError(
                    f"output.kind: \"softmax\" expects probabilities that sum to 1 over "
                    f"label_axis {o.label_axis}, but output {self.output_info.name!r} does not "
                    f"(sums {float(sums.min()):.3g}..{float(sums.max()):.3g}); use \"logits\"")

    # --- torch ---------------------------------------------------------------------------------

    def torch_graph(self) -> ConvertedGraph:
        """The converted graph (raises ConversionError / SolverParityError if there is none)."""
        with self._lock:
            if self._torch is None and self._torch_error is None:
                try:
                    self._torch, self.torch_kind, self.parity = self._convert()
                except (ConversionError, SolverParityError) as e:
                    self._torch_error = e
            if self._torch_error is not None:
                raise self._torch_error
            return self._torch

    def _convert(self) -> tuple[ConvertedGraph, str, GraphParity]:
        g = torch.Generator().manual_seed(1)
        images = parity_images(6, *self.spec.input.size, generator=g)
        x = Preprocess(self.spec.input)(images)
        ref = self.run_graph(self.session(), x)
        out = self.output_info.name
        activation = {"multilabel": "Sigmoid", "softmax": "Softmax"}.get(self.spec.output.kind)
        stripped = _strip(self.model, out, activation) if activation else None
        if stripped is not None and activation == "Softmax" and ref.ndim > 2:
            stripped = None
        if stripped is not None:
            try:
                graph = convert(stripped, out, x)
                kind = {"Sigmoid": "multilabel_logits", "Softmax": "logits"}[activation]
                with torch.no_grad():
                    z = graph(x)
                got = torch.sigmoid(z) if activation == "Sigmoid" else z.softmax(
                    self.spec.output.label_axis)
                return graph, kind, self._check(got, ref, z, kind)
            except (ConversionError, SolverParityError) as e:
                log.debug("%s: logits behind the %s not usable (%s)", self.name, activation, e)
        graph = convert(self.model, out, x)
        with torch.no_grad():
            got = graph(x)
        return graph, self.spec.output.kind, self._check(got, ref, got, self.spec.output.kind)

    def _check(self, got: torch.Tensor, ref: torch.Tensor, raw: torch.Tensor,
               kind: str) -> GraphParity:
        """Raw answers within tolerance, and the same decisions over the solver's labels."""
        if got.shape != ref.shape:
            raise SolverParityError(f"{self.name}: torch answer shape {list(got.shape)} != "
                                    f"onnxruntime {list(ref.shape)}")
        half = self.spec.input.dtype == "float16" or self.io.inputs[0].dtype == "float16"
        atol, rtol = (2e-2, 2e-2) if half else (1e-3, 1e-3)
        diff = (got - ref).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        labels = self.spec.labels
        a = Decoder(self.spec, labels, kind).solver_scores(raw)
        b = Decoder(self.spec, labels).solver_scores(ref)
        if self.spec.decision == "multilabel":
            off = torch.tensor([_logit_of(self.spec.threshold_of(i)) for i in range(len(labels))])
            decisive = (b - off).abs() > 0.1
            agree = ((a >= off) == (b >= off)) | ~decisive
            agreement = float(agree.float().mean())
        else:
            top2 = b.topk(min(2, b.shape[1]), 1).values
            decisive = (top2[:, 0] - top2[:, -1]) > 0.05
            agree = (a.argmax(1) == b.argmax(1)) | ~decisive
            agreement = float(agree.float().mean())
        if bool((diff > atol + rtol * ref.abs()).any()) or agreement < 1.0:
            raise SolverParityError(
                f"{self.name}: the torch conversion differs from onnxruntime by up to "
                f"{worst:.3g} (tolerance {atol} + {rtol}·|x|), decisions agree on "
                f"{agreement:.0%}")
        return GraphParity(worst, int(ref.shape[0]), agreement)

    def check_parity(self, images: torch.Tensor) -> GraphParity:
        """Torch against onnxruntime on real tiles ([N, 3, H, W] in [0, 1])."""
        graph = self.torch_graph()
        x = Preprocess(self.spec.input)(images.float().cpu())
        ref = self.run_graph(self.session(), x)
        with torch.no_grad():
            raw = graph(x)
        got = raw
        if self.torch_kind != self.spec.output.kind:
            got = torch.sigmoid(raw) if self.torch_kind == "multilabel_logits" else raw.softmax(
                self.spec.output.label_axis)
        return self._check(got, ref, raw, self.torch_kind)

    # --- the two faces -------------------------------------------------------------------------

    def classifier(self, labels: Sequence[str]) -> SolverClassifier:
        return SolverClassifier(self, labels)

    def verifier(self, labels: Sequence[str], *, device: str = "cpu") -> SolverVerifier:
        return SolverVerifier(self, labels, device=device)


__all__ = ["ConversionError", "Solver", "SolverClassifier", "SolverVerifier", "TensorInfo"]
