"""A detector or segmenter as an advx model: its preprocessing and decoding in torch, its graph
in torch (surrogate, with gradients) or in onnxruntime (verifier, as the solver runs it).

- :class:`DetectorModel` (torch): images [N, 3, H, W] in [0, 1] -> the class-score logits of
  every candidate [N, A, C] (anchors, grid cells, queries or heatmap pixels): what the
  vanishing loss pushes below the solver's score floor;
- :class:`DetectorVerifier` (onnxruntime): images -> per image the :class:`~.detect.Detection`
  the solver keeps (its score floor, its NMS), boxes and masks in the image's own pixels.

:meth:`DetectorSolver.check_parity` holds the torch path to onnxruntime: dense scores within
1e-3 and the same detections kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..onnx.runtime import cpu_run_size
from .detect import (
    Dense,
    Detection,
    decode_detr,
    decode_gfl,
    decode_heatmap,
    decode_yolo,
    prototype_masks,
)
from .detect_spec import DetectHead
from .ends import Preprocess
from .graph import GraphSolver, SolverParityError, image_input, parity_images
from .spec import InputSpec, SolverSpecError

SCORE_ATOL = 1e-3  # parity: dense scores (probabilities) of torch against onnxruntime
BOX_ATOL = 0.5  # parity: kept boxes, in input pixels


@dataclass
class DetectParity:
    """The torch path against onnxruntime on one batch."""

    max_abs_diff: float  # dense scores
    n: int
    kept: int  # detections kept by onnxruntime's answer, all matched by torch's


def placement(spec: InputSpec, height: int, width: int) -> tuple[float, float, float, float]:
    """Where an image of ``height`` x ``width`` lands in the graph's input: (x scale, y scale,
    left, top), input = image * scale + offset."""
    H, W = spec.size
    if spec.fit == "squash":
        return W / width, H / height, 0.0, 0.0
    k = min(H / height, W / width)  # solvers divide their boxes by this ratio
    if spec.align == "topleft":
        return k, k, 0.0, 0.0
    nh, nw = max(1, round(height * k)), max(1, round(width * k))
    return k, k, float((W - nw) // 2), float((H - nh) // 2)


def to_image(boxes: torch.Tensor, spec: InputSpec, height: int, width: int) -> torch.Tensor:
    """Boxes [..., 4] in the graph's input pixels -> the image's pixels, clipped to it."""
    sx, sy, left, top = placement(spec, height, width)
    scale = boxes.new_tensor([sx, sy, sx, sy])
    out = (boxes - boxes.new_tensor([left, top, left, top])) / scale
    return torch.minimum(out.clamp(min=0), boxes.new_tensor([width, height, width, height]))


def masks_to_image(masks: torch.Tensor, spec: InputSpec, height: int, width: int
                   ) -> torch.Tensor:
    """Mask logits [K, h, w] over the graph's input -> bool [K, height, width] over the image
    (the letterbox padding cut off)."""
    if not len(masks):
        return torch.zeros(0, height, width, dtype=torch.bool)
    H, W = spec.size
    x = F.interpolate(masks[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    sx, sy, left, top = placement(spec, height, width)
    x0, y0 = int(left), int(top)
    x = x[:, y0 : y0 + round(height * sy), x0 : x0 + round(width * sx)]
    return F.interpolate(x[None], size=(height, width), mode="bilinear",
                         align_corners=False)[0] > 0


class DetectPreprocess(Preprocess):
    """:class:`~.ends.Preprocess`, with the 8-bit rounding after the resize of a solver that
    resizes its 8-bit image (``quantize``; straight through)."""

    def forward(self, images: torch.Tensor, geometry=None) -> torch.Tensor:
        if not self.spec.quantize:
            return super().forward(images, geometry)
        s = self.spec
        from ..geometry import fit

        x = fit(images.float(), s.size, fit_mode=s.fit, pad=s.pad, mode=s.resize,
                antialias=s.antialias, align=s.align) * 255
        x = x + (x.round() - x).detach()
        if s.channels == "BGR":
            x = x.flip(1)
        x = x / 255 * self.scale + self.lo
        x = (x - self.mean) / self.std
        return (x.permute(0, 2, 3, 1) if s.layout == "NHWC" else x).contiguous()


class DetectorSolver(GraphSolver):
    """A detector or segmenter: a loaded spec and graph whose outputs decode to candidates."""

    kind = "detect"

    @property
    def head(self) -> DetectHead:
        return self.spec.output.detect

    def _read_io(self) -> None:
        spec, io = self.spec, self.io
        inp = self.input_info = image_input(spec, io)
        if inp.shape is not None:
            hw = tuple(inp.shape[a] for a in ((2, 3) if spec.input.layout == "NCHW" else (1, 2)))
            if all(isinstance(d, int) for d in hw) and hw != spec.input.size:
                raise SolverSpecError(f"input.size: the spec says {list(spec.input.size)} but "
                                      f"graph input {inp.describe()} takes {list(hw)}")
        outputs = {t.name: t for t in io.outputs}
        tensors = tuple(t or io.outputs[0].name for t in self.head.tensors)
        for t in tensors:
            if t not in outputs:
                raise SolverSpecError(f"output: the graph has no output {t!r}; its outputs are "
                                      f"{', '.join(o.describe() for o in io.outputs)}")
        self.tensors = tensors
        self.output_info = outputs[tensors[0]]

    def run_graph(self, session, x: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs (``tensors``) on a preprocessed batch."""
        arr = x.detach().float().cpu().numpy()
        arr = arr.astype(np.float16 if self.spec.input.dtype == "float16" else np.float32)
        on_cuda = "CUDA" in session.get_providers()[0]
        step = self.fixed_batch or max(1, len(arr) if on_cuda
                                       else min(len(arr), cpu_run_size(arr.shape)))
        parts = [session.run(list(self.tensors), {self.input_info.name: arr[i : i + step]})
                 for i in range(0, len(arr), step)]
        return [torch.cat([torch.from_numpy(np.asarray(p[k], dtype=np.float32)) for p in parts])
                for k in range(len(self.tensors))]

    def decode(self, outs: Sequence[torch.Tensor], logits: bool = False) -> Dense:
        """The graph's outputs -> candidates (``logits``: the yolo ``scores`` "logits" form
        keeps them for the gradient path)."""
        h, size, labels = self.head, self.spec.input.size, len(self.spec.labels)
        if h.kind == "yolo":
            d = decode_yolo(outs[0], classes=labels, objectness=h.objectness,
                            anchors_last=h.layout == "anchors_last", strides=h.strides or None,
                            size=size, scores=h.scores)
            if h.coefficients:
                x = outs[0].float()
                x = x.transpose(1, 2) if h.layout == "anchors_last" else x
                first = (5 if h.objectness else 4) + labels
                d.masks = prototype_masks(x[..., first : first + h.coefficients], outs[1])
            return d
        if h.kind == "gfl":
            n = len(h.strides)
            return decode_gfl(outs[:n], outs[n:], strides=h.strides, size=size,
                              reg_max=h.reg_max, offset=h.offset)
        if h.kind == "detr":
            return decode_detr(outs[0], outs[1], size=size, normalised=h.normalised)
        return decode_heatmap(outs[0], size=size)  # [N, C, h, w] (or [N, h, w]: one label)

    def score_logits(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, A, C] the candidates' class-score logits alone (what the vanishing loss takes:
        a GFL head's box distributions are not decoded)."""
        if self.head.kind == "gfl":
            p = torch.cat([o.float() for o in outs[: len(self.head.strides)]], 1)
            return Dense(p[..., :0], p).score_logits()
        return self.decode(outs).score_logits()

    def _probe(self) -> None:
        s = self.spec.input
        x = DetectPreprocess(s)(torch.rand(2, 3, 64, 80, generator=torch.Generator()
                                           .manual_seed(0)))
        outs = self.first_answer(x, f"a {s.layout} {s.dtype} batch of size {list(s.size)}")
        try:
            dense = self.decode(outs)
        except (ValueError, RuntimeError, IndexError) as e:
            raise SolverSpecError(f"output: the outputs {list(self.tensors)} (shapes "
                                  f"{[list(o.shape) for o in outs]}) do not decode as a "
                                  f"{self.head.kind} head: {e}") from e
        c = dense.scores.shape[-1]
        h = self.head
        if h.kind == "yolo":  # every channel accounted for: boxes, objectness, classes, masks
            width = outs[0].shape[1 if h.layout == "anchors_last" else -1]
            c = width - (5 if h.objectness else 4) - h.coefficients
        if c != len(self.spec.labels):
            raise SolverSpecError(f"labels: the spec lists {len(self.spec.labels)} labels but "
                                  f"the {self.head.kind} head gives {c} class scores (outputs "
                                  f"{[list(o.shape) for o in outs]})")
        if self.head.scores == "sigmoid" and self.head.kind in ("yolo", "gfl") and (
                dense.scores.min() < -1e-4 or dense.scores.max() > 1 + 1e-4):
            raise SolverSpecError(f"output.scores: \"sigmoid\" expects probabilities, but the "
                                  f"class scores span [{float(dense.scores.min()):.3g}, "
                                  f"{float(dense.scores.max()):.3g}]; use \"logits\"")

    # --- torch ---------------------------------------------------------------------------------

    def _activation(self) -> str | None:
        return None

    def _convert(self) -> None:
        images, probe = self._parity_batch()
        from .convert import batching, convert

        graph = convert(self.model, self.tensors if len(self.tensors) > 1 else self.tensors[0],
                        probe)
        if self.fixed_batch == 1:  # a graph built for one image (reshapes that fix the batch)
            graph.sample_axis = 0
            graph.alone = batching(graph._run, probe, 0)
        self._accept(graph, self.kind, images)

    def torch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.torch_graph()(x)
        return list(out) if isinstance(out, tuple) else [out]

    def _parity_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = parity_images(4, *self.spec.input.size, generator=torch.Generator()
                               .manual_seed(1))
        return images, DetectPreprocess(self.spec.input)(images[:1])

    def _parity(self, images: torch.Tensor) -> DetectParity:
        x = DetectPreprocess(self.spec.input)(images)
        ref = self.decode(self.run_graph(self.session(), x))
        with torch.no_grad():
            out = self._torch(x)
        got = self.decode(list(out) if isinstance(out, tuple) else [out])
        if got.scores.shape != ref.scores.shape:
            raise SolverParityError(f"{self.name}: torch scores {list(got.scores.shape)} != "
                                    f"onnxruntime {list(ref.scores.shape)}")
        worst = float((got.scores - ref.scores).abs().max())
        kept = 0
        for row in range(len(x)):
            a, b = self.head.keep(ref, row), self.head.keep(got, row)
            near = (a.scores - self.head.keep.score).abs() < 10 * SCORE_ATOL
            a_boxes = a.boxes[~near]
            same = len(a_boxes) == 0 or (len(b.boxes) > 0 and bool(
                (torch.cdist(a_boxes, b.boxes, p=float("inf")).min(1).values
                 <= BOX_ATOL).all()))
            if not same:
                raise SolverParityError(f"{self.name}: torch keeps other detections than "
                                        f"onnxruntime on parity image {row}")
            kept += len(a_boxes)
        if worst > SCORE_ATOL:
            raise SolverParityError(f"{self.name}: the torch conversion's scores differ from "
                                    f"onnxruntime's by up to {worst:.3g} (tolerance "
                                    f"{SCORE_ATOL})")
        return DetectParity(worst, len(x), kept)

    # --- the two faces -------------------------------------------------------------------------

    def surrogate(self) -> DetectorModel:
        """The gradient path (raises ConversionError / SolverParityError where there is none)."""
        return DetectorModel(self)

    def verifier(self, labels=None, *, device: str = "cpu") -> DetectorVerifier:
        return DetectorVerifier(self, device=device)


class _Faces:
    solver: DetectorSolver

    @property
    def labels(self) -> tuple[str, ...]:
        return self.solver.spec.labels

    def classes_of(self, label: str) -> tuple[int, ...]:
        """The solver's classes a CAPTCHA label stands for (empty: it does not know it)."""
        return self.solver.spec.solver_labels_for(label)


class DetectorModel(nn.Module, _Faces):
    """The gradient path: images -> candidate class-score logits [N, A, C]."""

    def __init__(self, solver: DetectorSolver) -> None:
        super().__init__()
        self.solver, self.name, self.spec = solver, solver.name, solver.spec
        self.graph = solver.torch_graph()
        self.preprocess = DetectPreprocess(solver.spec.input)
        self.eval().requires_grad_(False)

    def dense(self, images: torch.Tensor) -> Dense:
        out = self.graph(self.preprocess(images))
        return self.solver.decode(list(out) if isinstance(out, tuple) else [out])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.graph(self.preprocess(images))
        return self.solver.score_logits(list(out) if isinstance(out, tuple) else [out])


class DetectorVerifier(_Faces):
    """The solver as it runs: the same preprocessing, its graph in onnxruntime, its score
    floor and NMS; detections in the image's pixels."""

    def __init__(self, solver: DetectorSolver, *, device: str = "cpu") -> None:
        self.solver, self.name, self.spec = solver, solver.name, solver.spec
        self.session = solver.session(cuda=device not in ("cpu",))
        self.preprocess = DetectPreprocess(solver.spec.input)

    def __repr__(self) -> str:
        return f"DetectorVerifier({self.name!r})"

    def dense(self, images: torch.Tensor) -> Dense:
        with torch.no_grad():
            x = self.preprocess(images.detach().float().cpu())
            return self.solver.decode(self.solver.run_graph(self.session, x))

    def __call__(self, images: torch.Tensor) -> list[Detection]:
        """Per image: what the solver keeps, in the image's pixels."""
        dense = self.dense(images)
        h, w = images.shape[-2:]
        return [self.keep(dense, row, h, w) for row in range(len(images))]

    def keep(self, dense: Dense, row: int, height: int, width: int) -> Detection:
        spec, head = self.spec, self.solver.head
        if dense.heatmaps is not None:  # a segmenter: one region per class above the floor
            heat = dense.heatmaps[row]
            masks = masks_to_image(heat - _logit(spec.threshold), spec.input, height, width)
            classes = torch.tensor([c for c in range(len(masks)) if masks[c].any()],
                                   dtype=torch.long)
            m = masks[classes]
            boxes = torch.stack([_bbox(k) for k in m]) if len(m) else torch.zeros(0, 4)
            return Detection(boxes, torch.sigmoid(heat.flatten(1).amax(1))[classes], classes, m)
        kept = head.keep(dense, row)
        boxes = to_image(kept.boxes, spec.input, height, width)
        masks = None
        if dense.masks is not None:
            idx = _indices(dense, kept, row)
            masks = masks_to_image(dense.masks[row][idx], spec.input, height, width)
            inside = torch.zeros_like(masks)
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                inside[k, y0:y1, x0:x1] = True
            masks &= inside
        return Detection(boxes, kept.scores, kept.classes, masks)


def _logit(p: float) -> float:
    import math

    return math.log(p) - math.log1p(-p)


def _bbox(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def _indices(dense: Dense, kept: Detection, row: int) -> torch.Tensor:
    """The candidate index of each kept detection (by its box and score)."""
    boxes, scores = dense.boxes[row], dense.scores[row]
    out = []
    for b, s, c in zip(kept.boxes, kept.scores, kept.classes, strict=True):
        d = (boxes - b).abs().sum(-1) + (scores[:, c] - s).abs()
        out.append(int(d.argmin()))
    return torch.tensor(out, dtype=torch.long)


__all__ = ["DetectParity", "DetectPreprocess", "DetectorModel", "DetectorSolver",
           "DetectorVerifier", "masks_to_image", "placement", "to_image"]
