"""``advx.harden``: the Python API for services embedding the engine (no CLI needed)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .attacks import ATTACK_CLASSES, Attack
from .checks import check_surrogate
from .config import HardenConfig
from .ensemble import Ensemble
from .results import HardenResult
from .scheduler import Scheduler, Scorer
from .transforms import InputDiversity, get_preset

log = logging.getLogger(__name__)

DEFAULT_SURROGATES: tuple[str, ...] = ("effnet-lite0", "effnet-lite1")
DEFAULT_VERIFIERS: tuple[str, ...] = ("effnet-lite2",)

ImageLike = Any  # np.ndarray uint8 HxWx3 | PIL.Image.Image | torch.Tensor [3, H, W] in [0, 1]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def amp_dtype(config: HardenConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if config.amp == "fp16" else torch.bfloat16


def to_tensor(image: ImageLike) -> torch.Tensor:
    """One image -> [3, H, W]; uint8 stays uint8 (converted per batch), floats must be in [0,1]."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"tensor images must be [3, H, W], got {tuple(t.shape)}")
        if t.dtype != torch.uint8 and (t.min() < 0 or t.max() > 1):
            raise ValueError("float tensor images must lie in [0, 1]")
        return t if t.dtype == torch.uint8 else t.float()
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"array images must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)


def build_surrogates(surrogates: Sequence[str | nn.Module], label_set: Sequence[str],
                     device: torch.device, templates: str = "simple") -> list[nn.Module]:
    from .zoo import create_classifier

    models = []
    for s in surrogates:
        m = create_classifier(s, label_set, templates=templates, device=str(device)) \
            if isinstance(s, str) else s.to(device).eval()
        if tuple(getattr(m, "labels", label_set)) != tuple(label_set):
            raise ValueError(f"surrogate {getattr(m, 'name', m)} is not over the label set")
        check_surrogate(m, device=device)
        models.append(m)
    return models


def build_verifiers(verifiers: Sequence[str | Scorer], label_set: Sequence[str],
                    device: torch.device, templates: str = "simple") -> list[Scorer]:
    """Names become cached ONNX exports: fp16 on CUDA, fp32 on CPU."""
    from ..export import OnnxVerifier, export_cached

    precision = "fp16" if device.type == "cuda" else "fp32"
    out = []
    for v in verifiers:
        if isinstance(v, str):
            path = export_cached(v, label_set, precision=precision, templates=templates)
            v = OnnxVerifier(path, device="auto" if device.type == "cuda" else "cpu")
        out.append(v)
    return out


def make_attack(ensemble: Ensemble, config: HardenConfig, device: torch.device,
                generator: torch.Generator) -> Attack:
    cls = ATTACK_CLASSES[config.attack]
    kwargs: dict[str, Any] = {}
    if config.attack == "mifgsm":
        kwargs["decay"] = config.momentum
    return cls(
        ensemble,
        eps=config.eps_l2 if config.attack == "pgd-l2" else config.eps / 255,
        alpha=config.step_size,
        steps=config.steps,
        random_start=config.random_start,
        loss=config.loss,
        targeted=config.targeted,
        eot=get_preset(config.transforms),
        eot_samples=config.eot_samples,
        diversity=InputDiversity(config.diversity_prob) if config.diversity_prob > 0 else None,
        ti_size=config.ti_kernel,
        amp_dtype=amp_dtype(config, device),
        generator=generator,
        **kwargs,
    )


class Hardener:
    """Models built once, then ``run`` on as many image batches as needed (the CLI streams
    folders through one Hardener). See :func:`harden` for the arguments."""

    def __init__(self, label_set: Sequence[str], *,
                 surrogates: Sequence[str | nn.Module] = DEFAULT_SURROGATES,
                 verifiers: Sequence[str | Scorer] = DEFAULT_VERIFIERS,
                 config: HardenConfig | None = None,
                 surrogate_weights: Sequence[float] | None = None,
                 templates: str = "simple") -> None:
        self.config = config = config or HardenConfig()
        self.label_set = tuple(label_set)
        if len(self.label_set) < 2 or len(set(self.label_set)) != len(self.label_set):
            raise ValueError(f"the label set needs two or more distinct labels, got {label_set}")
        shared = {s for s in surrogates if isinstance(s, str)} & {
            v for v in verifiers if isinstance(v, str)}
        if shared:
            log.warning("%s are both surrogate and verifier: the verifier is not held out", shared)
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.ensemble = Ensemble(build_surrogates(surrogates, self.label_set, self.device,
                                                  templates), surrogate_weights)
        self.verifiers = build_verifiers(verifiers, self.label_set, self.device, templates)
        self.scheduler = Scheduler(
            make_attack(self.ensemble, config, self.device, self.generator),
            list(self.ensemble.members), self.verifiers, self.label_set, config, self.device,
        )

    def run(self, images: Sequence[ImageLike], labels: Sequence[str],
            targets: Sequence[str] | None = None,
            on_result: Callable[[HardenResult], None] | None = None) -> list[HardenResult]:
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        unknown = sorted(set(labels) - set(self.label_set))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the label set {self.label_set}")
        if self.config.targeted:
            if targets is None or len(targets) != len(labels):
                raise ValueError("a targeted run needs one target label per image")
            bad = [t for t, y in zip(targets, labels, strict=True)
                   if t == y or t not in self.label_set]
            if bad:
                raise ValueError(f"targets must be in the label set and differ from the labels: "
                                 f"{bad}")
        index = {lab: i for i, lab in enumerate(self.label_set)}
        return self.scheduler.run(
            [to_tensor(im) for im in images], [index[y] for y in labels],
            [index[t] for t in targets] if self.config.targeted else None, on_result,
        )


def harden(
    images: Sequence[ImageLike],
    labels: Sequence[str],
    *,
    label_set: Sequence[str] | None = None,
    surrogates: Sequence[str | nn.Module] = DEFAULT_SURROGATES,
    verifiers: Sequence[str | Scorer] = DEFAULT_VERIFIERS,
    config: HardenConfig | None = None,
    targets: Sequence[str] | None = None,
    surrogate_weights: Sequence[float] | None = None,
    templates: str = "simple",
    on_result: Callable[[HardenResult], None] | None = None,
) -> list[HardenResult]:
    """Perturb ``images`` so that the held-out ``verifiers`` get their ``labels`` wrong.

    Args:
        images: uint8 HxWx3 arrays, PIL images or [3, H, W] float tensors in [0, 1].
        labels: the true label of each image, members of ``label_set``.
        label_set: the labels a solver chooses among (default: the sorted labels seen).
        surrogates: model names (see ``advx models``) or classifiers over ``label_set``,
            attacked with gradients.
        verifiers: held-out model names (exported to ONNX and cached) or scorers; an image is
            done once all of them are fooled under every transform of ``config.transforms``.
        config: budgets, attack, schedule (:class:`HardenConfig`).
        targets: decoy labels, one per image, for ``config.targeted`` runs.
        surrogate_weights: per-surrogate weights of the ensemble (default equal).
        templates: prompt template set of zero-shot models ("simple", "openai", "photo").
        on_result: called with each result as soon as its image is finished.

    Returns:
        One :class:`HardenResult` per image, in input order.
    """
    label_set = tuple(label_set) if label_set is not None else tuple(sorted(set(labels)))
    hardener = Hardener(label_set, surrogates=surrogates, verifiers=verifiers, config=config,
                        surrogate_weights=surrogate_weights, templates=templates)
    return hardener.run(images, labels, targets, on_result)
