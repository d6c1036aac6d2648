"""Open-vocabulary detectors and segmenters from transformers as cells-task solvers: OWL-ViT,
OWLv2, Grounding DINO and CLIPSeg, named ``hf:REPO_OR_DIR`` (the ``hf`` backend reads the
config's ``model_type`` and builds one of these instead of a CLIP backbone).

Their classes are their text queries, and the queries are the labels of the challenges at
hand: :meth:`_Queries.set_queries` (the cells task binds them to each batch's labels), so they
answer any label. Each is a surrogate (:class:`ZeroShotModel`: the image processor mirrored in
torch, the head's candidate logits [N, A, C] for the vanishing loss) and a verifier
(:class:`ZeroShotVerifier`: the model's own image processor on the 8-bit image, its head's
ONNX export in onnxruntime (:mod:`.zeroshot_onnx`; Grounding DINO's head in torch, it has no
export), and the keeping rule of its transformers post-processing, detections in the image's
pixels).

The score floors are those of the transformers post-processing: OWL-ViT and OWLv2 keep a box
whose best query scores above 0.1 (``post_process_object_detection``, no NMS); Grounding DINO
one above 0.25 (``post_process_grounded_object_detection``). CLIPSeg's map has no
post-processing in transformers: a pixel counts from a probability of 0.5 (recognizer
min-max normalises the map, which leaves every map a region: no attack could empty it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..onnx.runtime import cpu_run_size
from ..solver.detect import Dense, Keep, decode_detr, decode_heatmap
from ..solver.detect_spec import DetectHead
from ..solver.detector import DetectorVerifier
from ..solver.spec import InputSpec, OutputSpec, SolverSpec
from .registry import register_entry
from .zeroshot_heads import HEADS, ProcessorPreprocess
from .zeroshot_onnx import OnnxNet, onnx_net


@dataclass(frozen=True)
class ZeroShotArch:
    """How one transformers model type detects, and what its post-processing keeps."""

    model_class: str  # the transformers class that loads it
    head: str  # a key of zeroshot_heads.HEADS
    fit: str  # how its processor brings an image to its input (ProcessorPreprocess)
    threshold: float  # the score floor of its transformers post-processing
    onnx: bool  # its verifier runs its head's ONNX export (.zeroshot_onnx says why not)


ARCHS = {
    "owlvit": ZeroShotArch("OwlViTForObjectDetection", "owl", "squash", 0.1, True),
    "owlv2": ZeroShotArch("Owlv2ForObjectDetection", "owl", "square", 0.1, True),
    "grounding-dino": ZeroShotArch("GroundingDinoForObjectDetection", "grounding_dino",
                                   "shortest", 0.25, False),
    "clipseg": ZeroShotArch("CLIPSegForImageSegmentation", "clipseg", "squash", 0.5, True),
}
ZERO_SHOT_TYPES = tuple(ARCHS)


def _input_spec(arch: ZeroShotArch, pre: ProcessorPreprocess) -> InputSpec:
    """Where the image lands in the model's input (what maps boxes and masks back)."""
    if arch.fit == "square":  # padded at the bottom and right: a top-left letterbox
        return InputSpec(size=pre.size, fit="letterbox", align="topleft", pad=0.0)
    if arch.fit == "shortest":  # boxes in [0, 1] of the image itself: a 1 x 1 "input"
        return InputSpec(size=(1, 1), fit="squash")
    return InputSpec(size=pre.size, fit="squash")


class ZeroShotDetector:
    """A loaded open-vocabulary detector or segmenter (see the module docstring): the model's
    head, its processor and the keeping rule; :meth:`surrogate` and :meth:`verifier` are its
    two faces, each with its own queries."""

    kind = "detect"

    def __init__(self, name: str, model_type: str, model: nn.Module, tokenizer: Any,
                 processor: Any, source: str) -> None:
        arch = ARCHS[model_type]
        self.name, self.model_type, self.arch, self.processor = name, model_type, arch, processor
        # what the ONNX export is made once for: the source and its files' version
        local = Path(source).is_dir()
        self.version = (str(Path(source).resolve()) if local else source, source_stamp(source))
        self.net = HEADS[arch.head](model.eval().requires_grad_(False), tokenizer)
        self.preprocess = ProcessorPreprocess(processor, arch.fit)
        head = self.net.kind
        # transformers' post-processing keeps every box above the floor with its best query,
        # without NMS (an IoU of 1 suppresses nothing)
        keep = Keep(score=arch.threshold, iou=1.0, per_class=False, top_class=True,
                    max_detections=1 << 30)
        self.spec = SolverSpec(
            model=Path(source), input=_input_spec(arch, self.preprocess),
            output=OutputSpec(name=self.net.outputs[0], kind=head, label_axis=-1,
                              detect=DetectHead(head, self.net.outputs, keep=keep)),
            labels=(), threshold=arch.threshold, name=name)
        self._lock = threading.Lock()  # a tokenizer is not safe across threads

    @property
    def head(self) -> DetectHead:
        return self.spec.output.detect

    def decode(self, outs: torch.Tensor | Sequence[torch.Tensor]) -> Dense:
        """The head's outputs -> candidates (boxes in the spec's input pixels)."""
        size = self.spec.input.size
        if self.net.kind == "heatmap":
            return decode_heatmap(outs, size=size)
        logits, boxes = outs
        return decode_detr(boxes, logits, size=size)

    def encode(self, queries: Sequence[str]) -> Any:
        with self._lock:
            return self.net.encode(queries)

    def process(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` from the model's own image processor, given the 8-bit images."""
        u8 = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        return self.processor(images=list(u8), input_data_format="channels_first",
                              return_tensors="pt")["pixel_values"]

    def surrogate(self) -> ZeroShotModel:
        return ZeroShotModel(self)

    def verifier(self, labels: Sequence[str] | None = None, *, device: str = "cpu"
                 ) -> ZeroShotVerifier:
        """The model as it runs: its head's ONNX export where it has one that holds parity
        (exported on first use), else its torch head."""
        graph = None
        if self.arch.onnx:
            graph = onnx_net(self.net, self.preprocess.size, self.version, name=self.name,
                             cuda=device not in ("cpu",))
        v = ZeroShotVerifier(self, graph)
        if labels:
            v.set_queries(labels)
        return v

    def __repr__(self) -> str:
        return f"ZeroShotDetector({self.name!r}, {self.arch.model_class})"


class _Queries:
    """Open vocabulary: the classes are the text queries, set to the labels asked
    (:meth:`set_queries`); a label is its own query."""

    open_vocabulary = True
    solver: ZeroShotDetector
    queries: tuple[str, ...] = ()
    encoded: Any = None
    spec: SolverSpec

    def set_queries(self, labels: Sequence[str]) -> None:
        """Query ``labels`` (each once, in order; encoded again only when they change)."""
        queries = tuple(dict.fromkeys(labels))
        if queries != self.queries or self.encoded is None:
            self.encoded = self.solver.encode(queries) if queries else None
            self.queries = queries
            self.spec = replace(self.solver.spec, labels=queries)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.queries

    def classes_of(self, label: str) -> tuple[int, ...]:
        return (self.queries.index(label),) if label in self.queries else ()

    def _run(self, net: Callable, x: torch.Tensor) -> Dense:
        if self.encoded is None:
            raise RuntimeError(f"{self.solver.name}: no text queries; set_queries(labels) "
                               f"first (a cells run sets them to its challenges' labels)")
        enc = self.encoded
        if isinstance(enc, torch.Tensor):
            enc = enc.to(x.device)
        return self.solver.decode(net(x, enc))


class ZeroShotModel(nn.Module, _Queries):
    """The gradient path: images -> the candidates' class logits [N, A, C] over the queries."""

    def __init__(self, solver: ZeroShotDetector) -> None:
        super().__init__()
        self.solver, self.name, self.spec = solver, solver.name, solver.spec
        self.net, self.preprocess = solver.net, solver.preprocess
        self.eval().requires_grad_(False)

    def dense(self, images: torch.Tensor) -> Dense:
        return self._run(self.net, self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(images).score_logits()


class ZeroShotVerifier(_Queries, DetectorVerifier):
    """The model as transformers runs it: its image processor on the 8-bit image, the model
    (``graph``: its ONNX export; None: its torch head), the keeping rule of its
    post-processing (:class:`DetectorVerifier` keeps and maps back)."""

    def __init__(self, solver: ZeroShotDetector, graph: OnnxNet | None = None) -> None:
        self.solver, self.name, self.spec = solver, solver.name, solver.spec
        self.graph = graph

    def __repr__(self) -> str:
        return f"ZeroShotVerifier({self.name!r})"

    @torch.no_grad()
    def dense(self, images: torch.Tensor) -> Dense:
        x = self.solver.process(images)
        net = self.graph if self.graph is not None else self.solver.net
        device = (torch.device("cpu") if self.graph is not None
                  else next(self.solver.net.parameters()).device)
        on_cuda = device.type != "cpu" or (self.graph is not None and "CUDA" in
                                            self.graph.session.get_providers()[0])
        step = len(x) if on_cuda else max(1, cpu_run_size(tuple(x.shape)))
        parts = [self._run(net, x[i : i + step].to(device)) for i in range(0, len(x), step)]
        return Dense(*(None if getattr(parts[0], f) is None else
                       torch.cat([getattr(p, f).cpu() for p in parts])
                       for f in ("boxes", "scores", "logits", "masks", "heatmaps")))


_CACHE: dict[tuple, ZeroShotDetector] = {}
_CACHE_LOCK = threading.Lock()


def source_stamp(source: str) -> tuple:
    """A local directory's version: its files' names, sizes and times (a hub id: none)."""
    src = Path(source)
    files = sorted(f for f in src.iterdir() if f.is_file()) if src.is_dir() else []
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def zero_shot_detector(name: str, source: str, config: Any) -> ZeroShotDetector:
    """The detector at ``source`` (a hub id or a local directory with its config, weights,
    tokenizer and image processor), loaded once per source version."""
    import transformers

    arch = ARCHS[config.model_type]
    key = (name, source, source_stamp(source))
    with _CACHE_LOCK:
        if key not in _CACHE:
            model = getattr(transformers, arch.model_class).from_pretrained(source,
                                                                            config=config)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            processor = transformers.AutoImageProcessor.from_pretrained(source)
            _CACHE[key] = ZeroShotDetector(name, config.model_type, model, tokenizer,
                                           processor, source)
        return _CACHE[key]


# --- named entries with hub weights (need internet on first use) ------------------------------

for _name, _desc in (
    ("hf:google/owlv2-base-patch16-ensemble", "OWLv2 B/16 open-vocabulary detector, 960 px "
                                              "(transformers); grid and click challenges"),
    ("hf:google/owlvit-base-patch32", "OWL-ViT B/32 open-vocabulary detector, 768 px "
                                      "(transformers); grid and click challenges"),
    ("hf:IDEA-Research/grounding-dino-tiny", "Grounding DINO tiny open-vocabulary detector "
                                             "(transformers); grid and click challenges"),
    ("hf:CIDAS/clipseg-rd64-refined", "CLIPSeg rd64 text-prompted segmenter, 352 px "
                                      "(transformers); grid challenges"),
):
    register_entry(_name, _desc, task="cells")

__all__ = ["ARCHS", "ZERO_SHOT_TYPES", "ZeroShotDetector", "ZeroShotModel", "ZeroShotVerifier",
           "source_stamp", "zero_shot_detector"]
