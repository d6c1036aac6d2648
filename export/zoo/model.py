"""The one interface every model presents: images in [0, 1], NCHW, any size -> label logits.

An :class:`ImageClassifier` is ``Resize`` (geometry, torch, differentiable) followed by a
:class:`ClassifierCore` (normalise -> image tower -> head). The core takes images at the model's
input size and is what the export stage turns into one self-contained ONNX graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import resize
from .fold import fold_batchnorm


@dataclass(frozen=True)
class PreprocessCfg:
    """Preprocessing tied to a weights entry (applied in torch so gradients flow)."""

    size: int  # square input side the tower expects
    mean: tuple[float, float, float]  # per-channel mean, images in [0, 1]
    std: tuple[float, float, float]  # per-channel std
    interpolation: str = "bicubic"  # "bicubic" | "bilinear"
    crop_pct: float = 1.0  # resize shorter side to size / crop_pct, then centre-crop size

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, not {self.interpolation}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")


@dataclass
class Backbone:
    """What a backend builds: an image tower plus what is needed to make a head."""

    name: str  # canonical model name
    visual: nn.Module  # normalised images at cfg.size -> features (zero-shot) or 1000 logits
    preprocess: PreprocessCfg
    kind: str  # "zero_shot" | "imagenet"
    encode_text: Callable[[list[str]], torch.Tensor] | None = None  # zero-shot only
    logit_scale: float = 100.0
    logit_bias: float | None = None  # SigLIP-style models


class Resize(nn.Module):
    """Resize the shorter side to ``size / crop_pct`` and centre-crop ``size`` (differentiable);
    a ``geometry`` (:class:`advx.export.geometry.Geometry`) replaces this resize and crop: the
    same network behind another solver's preprocessing."""

    def __init__(self, cfg: PreprocessCfg) -> None:
        super().__init__()
        self.size = cfg.size
        self.short = math.floor(cfg.size / cfg.crop_pct)
        self.mode = cfg.interpolation

    def forward(self, images: torch.Tensor, geometry=None) -> torch.Tensor:
        if geometry is not None:
            return geometry.apply(images, (self.size, self.size))
        h, w = images.shape[-2:]
        k = self.short / min(h, w)
        images = resize(images, (max(self.size, round(h * k)), max(self.size, round(w * k))),
                        self.mode)
        h, w = images.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return images[..., top : top + self.size, left : left + self.size]


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)


class ZeroShotHead(nn.Module):
    """logits = scale * normalise(image features) @ normalised label embeddings.T (+ bias)."""

    def __init__(self, label_features: torch.Tensor, logit_scale: float,
                 logit_bias: float | None = None) -> None:
        super().__init__()
        self.register_buffer("label_features", F.normalize(label_features.float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features.float(), dim=-1)
        logits = self.logit_scale * f @ self.label_features.float().t()
        return logits if self.logit_bias is None else logits + self.logit_bias


class ClassSetHead(nn.Module):
    """Closed-set classifier -> labels: each label's logit is the logsumexp over its class set."""

    def __init__(self, class_sets: Sequence[Sequence[int]], num_classes: int) -> None:
        super().__init__()
        mask = torch.full((len(class_sets), num_classes), float("-inf"))
        for i, classes in enumerate(class_sets):
            if not classes:
                raise ValueError(f"label {i} maps to no class")
            mask[i, list(classes)] = 0.0
        self.register_buffer("log_mask", mask)
        self.class_sets = tuple(tuple(c) for c in class_sets)

    def forward(self, class_logits: torch.Tensor) -> torch.Tensor:
        z = class_logits.float().unsqueeze(1) + self.log_mask.float()  # [N, L, C]
        m = z.amax(dim=-1, keepdim=True)  # finite: every set is non-empty
        return (m + (z - m).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)


class ClassifierCore(nn.Module):
    """Images at the input size, in [0, 1] -> float32 label logits (the tower may run in half
    precision; normalisation and the head always in float32)."""

    def __init__(self, normalize: Normalize, visual: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.normalize, self.visual, self.head = normalize, visual, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images.float()).to(next(self.visual.parameters()).dtype)
        return self.head(self.visual(x).float())


class ImageClassifier(nn.Module):
    """images in [0, 1], NCHW, any size -> logits over ``labels``."""

    def __init__(self, backbone: Backbone, labels: Sequence[str], head: nn.Module,
                 templates: str | None = None) -> None:
        super().__init__()
        self.name = backbone.name
        self.labels = tuple(labels)
        self.templates = templates
        self.preprocess_cfg = backbone.preprocess
        self.kind = backbone.kind
        self.resize = Resize(backbone.preprocess)
        self.core = ClassifierCore(
            Normalize(backbone.preprocess.mean, backbone.preprocess.std), backbone.visual, head
        )
        self.eval().requires_grad_(False)
        # frozen for good: batch norms fold into their convolutions (checked on a probe)
        param = next(self.core.parameters(), None)
        probe = torch.rand(2, 3, self.input_size, self.input_size,
                           generator=torch.Generator().manual_seed(0))
        self.folded_layers = (0 if param is None
                              else fold_batchnorm(self.core, probe.to(param.device)))

    @property
    def input_size(self) -> int:
        return self.preprocess_cfg.size

    def forward(self, images: torch.Tensor, geometry=None) -> torch.Tensor:
        """``geometry`` replaces the weights' own resize and crop (see :class:`Resize`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        return self.core(self.resize(images, geometry))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, labels={len(self.labels)}, size={self.input_size}"
