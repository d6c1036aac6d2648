"""A label solver as an advx model: its graph in torch (surrogate) or in onnxruntime (verifier),
both giving images [N, 3, H, W] in [0, 1] -> [N, L] *decision logits* over the run's labels:
the argmax label for a closed set; logit(P(l)) - logit(threshold) for a multi-label solver
(selected >= 0). Labels the solver does not know are never chosen (:data:`UNKNOWN`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..geometry import Geometry
from ..onnx.runtime import cpu_run_size
from .convert import ConversionError
from .ends import Decoder, Preprocess, _logit_of
from .graph import GraphSolver, SolverParityError, TensorInfo, image_input, parity_images
from .spec import SolverSpecError


@dataclass
class GraphParity:
    """The torch path against onnxruntime on one batch of inputs."""

    max_abs_diff: float
    n: int
    decision_agreement: float


# --- the two paths -------------------------------------------------------------------------------


class _SolverModel:
    """What the torch and onnxruntime paths share: name, labels and the decision rule."""

    name: str
    labels: tuple[str, ...]
    decision: str
    thresholds: tuple[float, ...]  # per label of the run (of its first solver label)
    known: tuple[bool, ...]

    def _setup(self, solver: Solver, labels: Sequence[str], kind: str | None = None) -> None:
        self.name, self.labels, self.solver = solver.name, tuple(labels), solver
        spec = self.spec = solver.spec
        self.spec_path, self.decision = spec.path, spec.decision
        cols = [spec.solver_labels_for(lab) for lab in self.labels]
        self.known = tuple(bool(c) for c in cols)
        self.thresholds = tuple(spec.threshold_of(c[0]) if c else 0.5 for c in cols)
        self.preprocess = Preprocess(spec.input)
        self.decoder = Decoder(spec, labels, kind)  # ``kind``: what the answer holds

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Decision logits -> the solver's P(label) (multi-label solvers)."""
        off = torch.tensor([_logit_of(t) for t in self.thresholds], device=logits.device)
        return torch.sigmoid(logits + off)


class SolverClassifier(nn.Module, _SolverModel):
    """The gradient path: preprocessing + converted graph + decoder, all in torch."""

    def __init__(self, solver: Solver, labels: Sequence[str]) -> None:
        super().__init__()
        self.graph = solver.torch_graph()
        self._setup(solver, labels, solver.torch_kind)
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
        self.session = solver.session(cuda=device not in ("cpu",))
        self.device = "cuda" if "CUDA" in self.session.get_providers()[0] else "cpu"

    def __repr__(self) -> str:
        return f"SolverVerifier({self.name!r}, {self.device})"

    def __call__(self, images: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        with torch.no_grad():
            x = self.preprocess(images.detach().float().cpu(), geometry)
            return self.decoder(self.solver.run_graph(self.session, x))


# --- the solver as loaded from its spec -----------------------------------------------------------


class Solver(GraphSolver):
    """A label solver: a loaded spec and graph whose answer scores the spec's labels."""

    @property
    def kind(self) -> str:
        return self.spec.output.kind

    def _read_io(self) -> None:
        spec, io = self.spec, self.io
        i, o = spec.input, spec.output
        inp = self.input_info = image_input(spec, io)
        if inp.shape is not None:
            c_axis, hw = (1, (2, 3)) if i.layout == "NCHW" else (3, (1, 2))
            if isinstance(inp.shape[c_axis], int) and inp.shape[c_axis] != 3:
                other = "NHWC" if i.layout == "NCHW" else "NCHW"
                raise SolverSpecError(f"input.layout: the spec says {i.layout} but graph input "
                                      f"{inp.describe()} has {inp.shape[c_axis]} channels "
                                      f"there; is it {other}?")
            graph_hw = tuple(inp.shape[a] for a in hw)
            if all(isinstance(d, int) for d in graph_hw) and graph_hw != i.size:
                raise SolverSpecError(f"input.size: the spec says {list(i.size)} but graph "
                                      f"input {inp.describe()} takes {list(graph_hw)} (height, "
                                      f"width)")
        out = next((t for t in io.outputs if t.name == o.name), None) if o.name else io.outputs[0]
        if out is None:
            raise SolverSpecError(f"output.name: the graph has no output {o.name!r}; its "
                                  f"outputs are {', '.join(t.describe() for t in io.outputs)}")
        self.output_info = out
        if out.shape is not None:
            self._check_shape(out.shape)

    def _check_shape(self, shape: tuple) -> None:
        """The answer's (static or observed) shape against output.* and labels."""
        o, name, rank = self.spec.output, self.output_info.name, len(shape)
        if o.label_axis >= rank:
            raise SolverSpecError(f"output.label_axis: {o.label_axis} is past the last axis of "
                                  f"output {name!r} (rank {rank}, shape {list(shape)})")
        n, labels = shape[o.label_axis], len(self.spec.labels)
        if isinstance(n, int) and n - o.label_start != labels:
            start = f" after label_start {o.label_start}" if o.label_start else ""
            raise SolverSpecError(
                f"labels: the spec lists {labels} labels but output {name!r} has "
                f"{n - o.label_start}{start} along label_axis {o.label_axis} (shape "
                f"{list(shape)})")
        if o.reduce == "none" and rank > 2:
            raise SolverSpecError(f"output.reduce: output {name!r} has shape {list(shape)}: "
                                  f"axes besides the batch and labels (grid cells, boxes) must "
                                  f"be folded with \"reduce\": \"max\" or \"mean\"")

    def run_graph(self, session, x: torch.Tensor) -> torch.Tensor:
        """Run the graph on a preprocessed batch (float, graph layout) -> answer tensor."""
        a, dtype = x.detach().float().cpu().numpy(), self.spec.input.dtype
        arr = (np.clip(np.rint(a), 0, 255).astype(np.uint8) if dtype == "uint8"  # as fed
               else a.astype(np.float16 if dtype == "float16" else np.float32))
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
        """Does the graph's answer have the spec's shape, and hold what its kind says?"""
        g = torch.Generator().manual_seed(0)
        s, o, kind = self.spec.input, self.spec.output, self.kind
        raw = self.first_answer(Preprocess(s)(torch.rand(2, 3, 64, 64, generator=g)),
                                f"a {s.layout} {s.dtype} batch of size {list(s.size)}")
        self._check_shape(tuple(raw.shape))
        self._answer_rank = raw.ndim
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

    def _activation(self) -> str | None:
        activation = super()._activation()  # a softmax over more than the labels stays
        return None if activation == "Softmax" and self._answer_rank > 2 else activation

    def _parity_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = parity_images(6, *self.spec.input.size, generator=torch.Generator().manual_seed(1))
        return images, Preprocess(self.spec.input)(images)

    def _parity(self, images: torch.Tensor) -> GraphParity:
        """Raw answers within tolerance, and the same decisions over the solver's labels."""
        spec, kind = self.spec, self.torch_kind
        x = Preprocess(spec.input)(images)
        ref = self.run_graph(self.session(), x)
        with torch.no_grad():
            raw = self._torch(x)
        got = raw
        if kind != self.kind:  # the logits behind the activation: through it
            got = torch.sigmoid(raw) if kind == "multilabel_logits" else raw.softmax(
                spec.output.label_axis)
        if got.shape != ref.shape:
            raise SolverParityError(f"{self.name}: torch answer shape {list(got.shape)} != "
                                    f"onnxruntime {list(ref.shape)}")
        half = spec.input.dtype == "float16" or self.io.inputs[0].dtype == "float16"
        atol, rtol = (2e-2, 2e-2) if half else (1e-3, 1e-3)
        diff = (got - ref).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        a = Decoder(spec, spec.labels, kind).solver_scores(raw)
        b = Decoder(spec, spec.labels).solver_scores(ref)
        if spec.decision == "multilabel":
            off = torch.tensor([_logit_of(spec.threshold_of(i)) for i in range(len(spec.labels))])
            decisive = (b - off).abs() > 0.1
            agree = ((a >= off) == (b >= off)) | ~decisive
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

    # --- the two faces -------------------------------------------------------------------------

    def classifier(self, labels: Sequence[str]) -> SolverClassifier:
        return SolverClassifier(self, labels)

    def verifier(self, labels: Sequence[str], *, device: str = "cpu") -> SolverVerifier:
        return SolverVerifier(self, labels, device=device)


__all__ = ["ConversionError", "Solver", "SolverClassifier", "SolverVerifier", "TensorInfo"]
