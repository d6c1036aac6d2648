"""Detector and segmenter heads: their raw outputs decoded into dense candidates, and the
detections a solver keeps from them.

Every head decodes to one dense form, per image: ``boxes`` [A, 4] (x0, y0, x1, y1 in the
graph's input pixels) and ``scores`` [A, C] (a probability per class, before any threshold),
A being the head's anchors, grid cells or queries; masks, where the head has them, as
``masks`` [A, h, w] logits (YOLO-seg: one per anchor, from its coefficients and the
prototypes) or ``heatmaps`` [C, h, w] logits (CLIPSeg: one per class). The gradient path takes
the dense scores (the logits behind them, where the graph applies the activation); the
verdict takes the detections: the candidates above the solver's score floor, through its NMS.

Heads (``output.kind`` of a solver spec, :mod:`.detect_spec`):

- ``yolo``: one tensor. v8 / v11: [N, 4 + C, A] (centre x, y, width, height, then the class
  scores); v5 / YOLOX: [N, A, 5 + C] with an objectness column (score = objectness x class).
  A graph that leaves decoding outside (YOLOX's raw output) gives offsets per grid cell:
  x = (dx + col) * stride, w = exp(dw) * stride, cells in stride order, row-major.
- ``gfl`` (NanoDet): per stride, class scores [N, cells, C] and box distributions
  [N, cells, 4 * (reg_max + 1)]: each side (left, top, right, bottom) is the expected bin of a
  softmax over reg_max + 1 bins, times the stride, from the cell centre ((col + offset) *
  stride, (row + offset) * stride).
- ``detr`` (OWLv2, Grounding DINO): boxes [N, Q, 4] (centre x, y, w, h, normalised to the
  input) and class logits [N, Q, C] (sigmoid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Dense:
    """A batch of decoded candidates (see the module docstring)."""

    boxes: torch.Tensor  # [N, A, 4] x0, y0, x1, y1 in input pixels
    scores: torch.Tensor  # [N, A, C] probabilities
    logits: torch.Tensor | None = None  # [N, A, C] the logits of ``scores`` (None: log-odds)
    masks: torch.Tensor | None = None  # [N, A, h, w] per-candidate mask logits (YOLO-seg)
    heatmaps: torch.Tensor | None = None  # [N, C, h, w] per-class mask logits (CLIPSeg)

    def score_logits(self) -> torch.Tensor:
        """[N, A, C] logits of the scores (the gradient path's quantity)."""
        if self.logits is not None:
            return self.logits
        p = self.scores.clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)


@dataclass
class Detection:
    """What a solver keeps of one image: boxes in the image's own pixels."""

    boxes: torch.Tensor  # [K, 4] x0, y0, x1, y1
    scores: torch.Tensor  # [K]
    classes: torch.Tensor  # [K] long
    masks: torch.Tensor | None = None  # [K, H, W] bool, in the image's pixels


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def grid_points(strides: Sequence[int], size: tuple[int, int], offset: float = 0.0,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell of every stride's grid (in stride order, row-major): its (col, row) + offset
    [A, 2] and its stride [A, 1]."""
    pts, st = [], []
    for s in strides:
        gh, gw = math.ceil(size[0] / s), math.ceil(size[1] / s)
        ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device),
                                indexing="ij")
        pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float() + offset)
        st.append(torch.full((gh * gw, 1), float(s), device=device))
    return torch.cat(pts), torch.cat(st)


def decode_yolo(out: torch.Tensor, *, classes: int, objectness: bool, anchors_last: bool,
                strides: Sequence[int] | None = None, size: tuple[int, int] | None = None,
                scores: str = "sigmoid") -> Dense:
    """A YOLO-family output (see the module docstring). ``anchors_last``: v8 / v11's
    [N, 4 + C, A]; else [N, A, (5 | 4) + C]. ``strides``: decode raw grid offsets (YOLOX).
    ``scores``: "sigmoid" (the graph applies it) or "logits" (advx applies it)."""
    x = out.float()
    if anchors_last:
        x = x.transpose(1, 2)
    box = x[..., :4]
    first = 5 if objectness else 4
    cls = x[..., first : first + classes]
    if strides is not None:
        grid, stride = grid_points(strides, size, device=x.device)
        if grid.shape[0] != box.shape[1]:
            raise ValueError(f"the grids of strides {list(strides)} at {size} have "
                             f"{grid.shape[0]} cells, the output {box.shape[1]} anchors")
        box = torch.cat([(box[..., :2] + grid) * stride, box[..., 2:4].exp() * stride], -1)
    if scores == "logits":
        logits = cls
        if objectness:
            # log-odds of obj x cls: the gradient keeps both factors
            lp = F.logsigmoid(x[..., 4:5]) + F.logsigmoid(cls)
            logits = lp - torch.log(-torch.expm1(lp).clamp(max=-1e-12)).clamp(min=-80)
        return Dense(cxcywh_to_xyxy(box), torch.sigmoid(logits), logits)
    p = cls * x[..., 4:5] if objectness else cls
    return Dense(cxcywh_to_xyxy(box), p)


def decode_gfl(scores: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], *,
               strides: Sequence[int], size: tuple[int, int], reg_max: int,
               offset: float = 0.5, logits: Sequence[torch.Tensor] | None = None) -> Dense:
    """NanoDet's GFL head, one tensor pair per stride (see the module docstring)."""
    centres, stride = grid_points(strides, size, offset, device=boxes[0].device)
    p = torch.cat([s.float() for s in scores], 1)
    d = torch.cat([b.float() for b in boxes], 1)
    n, a, _ = d.shape
    if centres.shape[0] != a:
        raise ValueError(f"the grids of strides {list(strides)} at {size} have "
                         f"{centres.shape[0]} cells, the outputs {a}")
    bins = torch.arange(reg_max + 1, device=d.device, dtype=d.dtype)
    dist = (d.view(n, a, 4, reg_max + 1).softmax(-1) * bins).sum(-1) * stride
    xy = centres * stride
    xyxy = torch.cat([xy - dist[..., :2], xy + dist[..., 2:]], -1)
    hi = torch.tensor([size[1], size[0], size[1], size[0]], device=d.device, dtype=d.dtype)
    xyxy = torch.minimum(xyxy.clamp(min=0), hi)
    lg = torch.cat([x.float() for x in logits], 1) if logits is not None else None
    return Dense(xyxy, p, lg)


def decode_detr(boxes: torch.Tensor, logits: torch.Tensor, *, size: tuple[int, int],
                normalised: bool = True) -> Dense:
    """DETR-family outputs: [N, Q, 4] centre boxes and [N, Q, C] class logits (sigmoid)."""
    b = cxcywh_to_xyxy(boxes.float())
    if normalised:
        b = b * torch.tensor([size[1], size[0], size[1], size[0]], device=b.device)
    z = logits.float()
    return Dense(b, torch.sigmoid(z), z)


def decode_heatmap(heat: torch.Tensor, *, size: tuple[int, int]) -> Dense:
    """A segmenter's per-class logit maps [N, C, h, w] (or [N, h, w] for one class): every
    pixel a candidate whose box is the whole input."""
    heat = heat.float()
    heat = heat[:, None] if heat.ndim == 3 else heat
    n = heat.shape[0]
    z = heat.flatten(2).transpose(1, 2)  # [N, h*w, C]
    whole = heat.new_tensor([0, 0, size[1], size[0]]).expand(n, z.shape[1], 4)
    return Dense(whole, torch.sigmoid(z), z, heatmaps=heat)


def prototype_masks(coefficients: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """YOLO-seg: [N, A, k] coefficients and [N, k, h, w] prototypes -> [N, A, h, w] logits."""
    n, k, h, w = prototypes.shape
    return (coefficients.float() @ prototypes.float().view(n, k, h * w)).view(n, -1, h, w)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[K, 4] x [M, 4] -> [K, M] intersection over union (boxes x0, y0, x1, y1)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices kept, best first (ties: the earlier index)."""
    order = torch.argsort(-scores, stable=True)
    keep: list[int] = []
    while len(order):
        i = int(order[0])
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou]
    return torch.tensor(keep, dtype=torch.long)


@dataclass(frozen=True)
class Keep:
    """How a solver keeps detections: a score floor, NMS per class or across classes, a cap."""

    score: float = 0.25  # candidates scoring above this
    iou: float = 0.45  # NMS: a box overlapping a kept one by more than this is dropped
    per_class: bool = True  # NMS within each class (False: across classes)
    top_class: bool = False  # each candidate keeps only its best class (ddddocr, YOLOX demos)
    max_detections: int = 300

    def __call__(self, dense: Dense, row: int) -> Detection:
        boxes, scores = dense.boxes[row].detach(), dense.scores[row].detach()
        if self.top_class:
            best, cls = scores.max(-1)
            cand = (best > self.score).nonzero().flatten()
            cand_cls, cand_scores = cls[cand], best[cand]
        else:
            a, c = (scores > self.score).nonzero(as_tuple=True)
            cand, cand_cls, cand_scores = a, c, scores[a, c]
        b = boxes[cand]
        if self.per_class and len(cand):
            shift = (cand_cls.float() * (b.max() + 1))[:, None]  # classes never overlap
            kept = nms(b + shift, cand_scores, self.iou)
        else:
            kept = nms(b, cand_scores, self.iou) if len(cand) else torch.zeros(0, dtype=torch.long)
        kept = kept[: self.max_detections]
        return Detection(b[kept], cand_scores[kept], cand_cls[kept])


__all__ = ["Dense", "Detection", "Keep", "box_iou", "cxcywh_to_xyxy", "decode_detr",
           "decode_gfl", "decode_heatmap", "decode_yolo", "grid_points", "nms", "prototype_masks"]
