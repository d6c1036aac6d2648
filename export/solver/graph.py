"""A solver's ONNX graph: load it safely, list its inputs and outputs, check them against the
spec, expose the logits behind a final sigmoid or softmax, and :class:`GraphSolver`, what every
head kind (labels, text) builds on."""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..onnx.runtime import available_providers, make_session
from .convert import ConversionError, ConvertedGraph, convert, only_output
from .spec import SolverSpec, SolverSpecError

log = logging.getLogger(__name__)


class SolverParityError(RuntimeError):
    """The converted torch graph and onnxruntime disagree beyond the tolerance."""

# ops that only move values around: a sigmoid before them can be moved after them
_MOVERS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, numpy dtype name, shape (int, symbol or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name} ({self.dtype}, shape unknown)"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype}, [{dims}])"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorInfo, ...]  # image inputs (initializers excluded)
    outputs: tuple[TensorInfo, ...]
    opset: int
    metadata: dict[str, str]  # the graph's metadata_props (e.g. YOLO stores class names here)


def load_graph(path: Path, field: str = "model"):
    """onnx.load + onnx.checker; a missing, truncated or invalid file is a SolverSpecError."""
    import onnx

    if not path.is_file():
        raise SolverSpecError(f"{field}: {path} not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise SolverSpecError(f"{field}: {path} is not a readable ONNX file (truncated or "
                              f"corrupt?): {type(e).__name__}: {str(e)[:200]}") from e
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise SolverSpecError(f"{field}: {path} fails onnx.checker: {str(e)[:300]}") from e
    return model


def _tensor_info(vi) -> TensorInfo:
    from onnx.helper import tensor_dtype_to_np_dtype

    t = vi.type.tensor_type
    try:
        dtype = tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:
        dtype = f"onnx-type-{t.elem_type}"
    if not t.HasField("shape"):
        return TensorInfo(vi.name, dtype, None)
    return TensorInfo(vi.name, dtype, tuple(
        int(d.dim_value) if d.HasField("dim_value") else str(d.dim_param)
        if d.HasField("dim_param") else None for d in t.shape.dim))


def graph_io(model) -> GraphIO:
    init = {i.name for i in model.graph.initializer}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    return GraphIO(
        inputs=tuple(_tensor_info(v) for v in model.graph.input if v.name not in init),
        outputs=tuple(_tensor_info(v) for v in model.graph.output),
        opset=int(opset),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def image_input(spec: SolverSpec, io: GraphIO) -> TensorInfo:
    """The graph input the spec means (``input.name``, or the only input): the one advx feeds,
    a 4-d batch of the spec's dtype; a contradiction names its field."""
    i = spec.input
    names = ", ".join(t.describe() for t in io.inputs)
    if not io.inputs:
        raise SolverSpecError(f"{spec.model}: the graph has no inputs")
    if i.name is not None:
        inp = next((t for t in io.inputs if t.name == i.name), None)
        if inp is None:
            raise SolverSpecError(f"input.name: the graph has no input {i.name!r}; its inputs "
                                  f"are {names}")
    elif len(io.inputs) == 1:
        inp = io.inputs[0]
    else:
        raise SolverSpecError(f"input.name: the graph has {len(io.inputs)} inputs ({names}); "
                              f"name the image input")
    extra = ", ".join(t.describe() for t in io.inputs if t.name != inp.name)
    if extra:
        raise SolverSpecError(f"input.name: the graph needs inputs besides the image ({extra}); "
                              f"advx feeds only the image")
    if inp.dtype != i.dtype:
        raise SolverSpecError(f"input.dtype: the spec says {i.dtype} but graph input "
                              f"{inp.describe()} is {inp.dtype}")
    if inp.shape is not None and len(inp.shape) != 4:
        raise SolverSpecError(f"input.name: graph input {inp.describe()} is not a 4-d image "
                              f"batch")
    return inp


def producer_chain(model, output: str) -> list:
    """The nodes behind ``output``, back through ops that only move values around, up to the
    first that computes (included)."""
    producers = {out: n for n in model.graph.node for out in n.output}
    chain, name = [], output
    while (node := producers.get(name)) is not None:
        chain.append(node)
        if node.op_type not in _MOVERS:
            break
        name = node.input[0]
    return chain


def strip_activation(model, output: str, activation: str):
    """A copy of ``model`` whose ``output`` skips its final ``activation`` (Sigmoid /
    Softmax: a saturated probability has no useful gradient, its logit has), or None."""
    chain = producer_chain(model, output)
    if not chain or chain[-1].op_type != activation or (activation == "Softmax"
                                                         and len(chain) > 1):
        return None
    index = list(model.graph.node).index(chain[-1])
    stripped = copy.deepcopy(model)
    node = stripped.graph.node[index]
    node.op_type = "Identity"
    del node.attribute[:]
    return stripped


def probe_output(model, path: Path, inp: TensorInfo, tensor: str, shape: list[int],
                 dtype: str = "float32") -> np.ndarray | None:
    """Tensor ``tensor`` of the graph (at ``path``; an inner tensor cuts it there) on a seeded
    random input of ``shape`` (None where it does not run)."""
    try:
        with tempfile.TemporaryDirectory() as d:
            if not any(o.name == tensor for o in model.graph.output):
                path = Path(d) / "probe.onnx"
                path.write_bytes(only_output(model, tensor).SerializeToString())
            session = make_session(path, "fp32")
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        feed = (x * 255).astype(np.uint8) if dtype == "uint8" else x.astype(dtype)
        return np.asarray(session.run([tensor], {inp.name: feed})[0])
    except Exception:
        return None


def parity_images(n: int, height: int, width: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Structured test images: half smooth colour fields with texture, half uniform noise."""
    low = torch.rand(n, 3, 6, 6, generator=generator)
    smooth = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.rand(n, 3, height, width, generator=generator)
    mix = torch.where(torch.arange(n).view(-1, 1, 1, 1) % 2 == 0, 0.85 * smooth + 0.15 * noise,
                      noise)
    return mix.clamp(0, 1)


# what the answer of a kind comes out of, and what that activation's input holds
_ACTIVATIONS = {"multilabel": "Sigmoid", "softmax": "Softmax"}
_BEHIND = {"Sigmoid": "multilabel_logits", "Softmax": "logits"}


class GraphSolver:
    """A spec and its graph, whatever the head: in onnxruntime (the verifier) and, converted on
    first use and held to onnxruntime by parity, in torch (the surrogate). A head kind fills in
    the methods that raise NotImplementedError here."""

    kind: str  # what the graph's answer holds: "logits", "softmax", "multilabel", ...

    def __init__(self, spec: SolverSpec, *, name: str | None = None) -> None:
        self.spec = spec
        self.name = name or spec.name or (f"onnx:{spec.path.name}" if spec.path else "onnx")
        self.torch_kind = self.kind  # what the converted graph gives (logits behind the end)
        self.parity = None  # the conversion's parity check
        self._sessions: dict[bool, object] = {}
        self._torch: ConvertedGraph | None = None
        self._torch_error: Exception | None = None
        self._lock = threading.RLock()  # a parity check may build a surrogate of the graph
        try:
            self.model = load_graph(spec.model)
            self.io = graph_io(self.model)
            self.runnable = self.model  # what onnxruntime runs
            self._read_io()
            shape = self.input_info.shape
            self.fixed_batch = shape[0] if shape and isinstance(shape[0], int) else None
            self._probe()
        except SolverSpecError as e:  # name the spec file too
            if spec.path and not str(e).startswith(str(spec.path)):
                raise SolverSpecError(f"{spec.path}: {e}") from e
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.spec.model.name})"

    def _read_io(self) -> None:
        """Set ``input_info`` and ``output_info`` (and ``runnable``: the graph cut at an inner
        answer tensor)."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Check the graph's first answer (:meth:`first_answer`) against the spec."""
        raise NotImplementedError

    def run_graph(self, session, x):
        """The graph's answer on a preprocessed batch."""
        raise NotImplementedError

    def _parity_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles for the parity check of a conversion, and a graph input to convert with."""
        raise NotImplementedError

    def _parity(self, images: torch.Tensor):
        """The torch path against onnxruntime on ``images`` (raises SolverParityError)."""
        raise NotImplementedError

    def first_answer(self, x, described: str):
        """The graph's answer on ``x``; where it fails, a SolverSpecError that says on what."""
        try:
            return self.run_graph(self.session(), x)
        except SolverSpecError:
            raise
        except Exception as e:
            raise SolverSpecError(f"model: {self.spec.model} fails on {described}: "
                                  f"{str(e)[:300]}") from e

    def session(self, cuda: bool = False):
        """The graph in onnxruntime (on CUDA where asked and available), made once."""
        if cuda not in self._sessions:
            use_cuda = cuda and "CUDAExecutionProvider" in available_providers()
            precision = "fp16" if self.spec.input.dtype == "float16" else "fp32"
            try:
                with tempfile.TemporaryDirectory() as d:
                    path = self.spec.model
                    if self.runnable is not self.model:
                        path = Path(d) / "cut.onnx"
                        path.write_bytes(self.runnable.SerializeToString())
                    self._sessions[cuda] = make_session(path, precision, cuda=use_cuda)
            except Exception as e:
                raise SolverSpecError(f"model: onnxruntime cannot load {self.spec.model}: "
                                      f"{str(e)[:300]}") from e
        return self._sessions[cuda]

    def torch_graph(self) -> ConvertedGraph:
        """The converted graph (raises ConversionError / SolverParityError if there is none)."""
        with self._lock:
            if self._torch is None and self._torch_error is None:
                try:
                    self._convert()
                except (ConversionError, SolverParityError) as e:
                    self._torch_error = e
            if self._torch_error is not None:
                raise self._torch_error
            return self._torch

    def _activation(self) -> str | None:
        """The final activation whose input the gradient path takes (None: the answer)."""
        return _ACTIVATIONS.get(self.kind)

    def _convert(self) -> None:
        images, probe = self._parity_batch()
        out, activation = self.output_info.name, self._activation()
        stripped = strip_activation(self.model, out, activation) if activation else None
        if stripped is not None:
            try:
                return self._accept(convert(stripped, out, probe), _BEHIND[activation], images)
            except (ConversionError, SolverParityError) as e:
                log.debug("%s: logits behind the %s not usable (%s)", self.name, activation, e)
        self._accept(convert(self.model, out, probe), self.kind, images)

    def _accept(self, graph: ConvertedGraph, kind: str, images: torch.Tensor) -> None:
        """Take ``graph`` (whose answer holds ``kind``) where it passes the parity check."""
        self._torch, self.torch_kind = graph, kind
        try:
            self.parity = self._parity(images)
        except Exception:
            self._torch, self.torch_kind = None, self.kind
            raise

    def check_parity(self, images: torch.Tensor):
        """Torch against onnxruntime on real tiles ([N, 3, H, W] in [0, 1]; raises
        SolverParityError where they disagree)."""
        self.torch_graph()
        return self._parity(images.float().cpu())


__all__ = ["GraphIO", "GraphSolver", "SolverParityError", "TensorInfo", "graph_io",
           "image_input", "load_graph", "parity_images", "probe_output", "producer_chain",
           "strip_activation"]
