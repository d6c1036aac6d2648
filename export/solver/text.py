"""A text (OCR) solver as an advx model: its preprocessing and CTC head in torch (with gradients)
and its graph in onnxruntime (the verifier, exactly as the package runs it).

Both take images [N, 3, H, W] in [0, 1] and give per-step scores [N, T, C] with the package's
reading rule applied, so greedy CTC of them reads as the package does: :class:`TextModel`
(torch, preprocessing as differentiable weight matrices) and :class:`TextVerifier` (the library
and the original graph). :meth:`TextSolver.check_parity` holds them to the same strings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..onnx.spec import Tolerance
from . import resample
from .charset import Charset
from .convert import batching, each_alone, only_output
from .ctc import SequenceParity, greedy_ctc, sequence_parity
from .graph import GraphSolver, TensorInfo, image_input, parity_images
from .spec import InputSpec, SolverSpec, SolverSpecError
from .text_spec import CTCHead, input_width

NEVER = -1.0e4  # the logit of a class the package's decoder never emits


# --- preprocessing: in torch with gradients, and by the library itself -------------------------


def _to_units(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """0-255 pixel values -> the graph's units (range, then mean / std)."""
    lo, hi = spec.range
    if (lo, hi) != (0.0, 255.0):
        x = x / 255 * (hi - lo) + lo
    channels = x.shape[1]
    mean = torch.tensor(spec.mean[:channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[:channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        x = (x - mean) / std
    return x


def _pad(x: torch.Tensor, spec: InputSpec, width: int) -> torch.Tensor:
    """Right-pad [N, C, H, w] (graph units) to ``width`` columns of the spec's pad pixel."""
    if x.shape[-1] >= width:
        return x
    fill = torch.full((1, x.shape[1], 1, 1), spec.pad * 255, dtype=x.dtype, device=x.device)
    fill = _to_units(fill, spec).expand(x.shape[0], -1, x.shape[2], width - x.shape[-1])
    return torch.cat([x, fill], -1)


class TextPreprocess(nn.Module):
    """Tiles [N, 3, h, w] in [0, 1] -> the graph's input [N, C, H, W], in torch with gradients:
    resize as PIL (``antialias``) or OpenCV would, 8-bit rounding after each step where the
    package works on 8-bit images (``quantize``, straight through), grey or BGR, units, pad."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        resized, padded = input_width(s, *images.shape[-2:])
        x = images.float() * 255
        if s.quantize:  # the delivered file is 8-bit
            x = resample.clip8(resample._ste_round(x))
        x = resample.resize(x, (s.size[0], resized), s.resize, pil=s.antialias,
                            quantize=s.quantize)
        if s.channels == "GREY":
            x = resample.grey(x, pil=s.antialias, quantize=s.quantize)
        elif s.channels == "BGR":
            x = x.flip(1)
        return _pad(_to_units(x, s), s, padded).contiguous()


def reference_input(images: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """The same as :class:`TextPreprocess`, by the library itself on each 8-bit image (PIL's
    ``Image.resize`` / ``convert("L")`` or ``cv2.resize`` / ``cvtColor``): float32
    [N, C, H, W], what the package feeds its graph."""
    if not spec.quantize:  # the package resizes float images: the torch path is the reference
        with torch.no_grad():
            return TextPreprocess(spec)(images.detach().cpu()).numpy()
    resized, padded = input_width(spec, *images.shape[-2:])
    pixels = torch.floor(images.detach().float().cpu() * 255 + 0.5).clamp(0, 255)
    out = []
    for rgb in pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy():
        r = resample.library_resize(np.ascontiguousarray(rgb), (spec.size[0], resized),
                                    spec.resize, pil=spec.antialias)
        if spec.channels == "GREY":
            arr = resample.library_grey(r, pil=spec.antialias)[None]
        else:
            arr = (r[..., ::-1] if spec.channels == "BGR" else r).transpose(2, 0, 1)
        out.append(np.ascontiguousarray(arr).astype(np.float32))
    x = _pad(_to_units(torch.from_numpy(np.stack(out)), spec), spec, padded)
    return x.numpy().astype(np.float32)


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
        self.from_probabilities = solver.torch_kind == "softmax"
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
        z = _steps(self.graph(x).float(), self.head)
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


class TextSolver(GraphSolver):
    """A loaded ctc spec and its graph, read as the package reads it."""

    def __init__(self, spec: SolverSpec, *, name: str | None = None) -> None:
        if spec.output.ctc is None:
            raise SolverSpecError("output.kind: a TextSolver needs a \"ctc\" output")
        self.head = spec.output.ctc
        self.tolerance = spec.tolerance or Tolerance()
        self.never_fill = NEVER if self.head.scores == "logits" else 0.0
        super().__init__(spec, name=name)
        self.charset = Charset.of(self.head, self.name)

    @property
    def kind(self) -> str:
        return self.head.scores

    @property
    def per_sample(self) -> bool:
        """Each image runs alone: per-tensor quantisation ranges, or a batch of one."""
        return self.quantised or self.fixed_batch == 1

    # --- the graph -----------------------------------------------------------------------------

    def _read_io(self) -> None:
        from .quant_ops import is_dynamically_quantised

        spec, inp = self.spec.input, image_input(self.spec, self.io)
        if inp.shape is not None:
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
        self.input_info = inp
        outputs = [o.name for o in self.io.outputs]
        self.output = self.spec.output.name or outputs[0]
        # the tensor read (its declared type; an inner tensor's shape is not declared)
        self.output_info = next((o for o in self.io.outputs if o.name == self.output),
                                TensorInfo(self.output, "float32", None))
        if self.output not in outputs:
            try:  # an inner tensor (the logits before an ArgMax or a decoder): cut there
                self.runnable = only_output(self.model, self.output)
            except ValueError as e:
                raise SolverSpecError(f"output.name: the graph has no tensor {self.output!r}; "
                                      f"its outputs are {', '.join(outputs)}") from e
        self.quantised = is_dynamically_quantised(self.model)

    def probe_images(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        """Deterministic test tiles at the solver's size (a 8:3 tile for a free width)."""
        h, w = self.spec.input.size
        return parity_images(n, h if w is not None else 60, w if w is not None else 160,
                             generator=torch.Generator().manual_seed(seed))

    def _probe(self) -> None:
        """Is the graph's answer a CTC head of the charset?"""
        x = reference_input(self.probe_images(1), self.spec.input)
        raw = self.first_answer(x, f"an input of shape {list(x.shape)}")
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

    def _parity_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.probe_images(2, seed=1)
        return images, TextPreprocess(self.spec.input)(images[:1])

    def _parity(self, images: torch.Tensor) -> SequenceParity:
        """The same strings, scores within the spec's tolerance."""
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


__all__ = ["NEVER", "TextModel", "TextPreprocess", "TextSolver", "TextVerifier", "read_steps",
           "reference_input"]
