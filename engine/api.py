"""``advx.harden``: the Python API for services embedding the engine (no CLI needed)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..export.defaults import DEFAULT_TEMPLATES
from ..export.onnx.cache import export_cached
from ..export.onnx.verifier import OnnxVerifier
from ..export.solver import ConversionError, SolverParityError
from ..export.zoo import create_classifier, create_verifier, is_solver_name
from ..export.zoo.labels import LabelMap, LabelMapError, load_label_map
from .attacks import ATTACKS, Attack
from .attacks.checks import check_surrogate
from .attacks.ensemble import Ensemble
from .config import HardenConfig, Plan
from .defaults import DEFAULT_SURROGATES, DEFAULT_VERIFIERS
from .pixels import as_float
from .results import HardenResult
from .schedule.scheduler import Scheduler, Scorer
from .views.transforms import InputDiversity
from .views.view import eot_of

log = logging.getLogger(__name__)


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
                     device: torch.device, templates: str = DEFAULT_TEMPLATES,
                     label_map: LabelMap | None = None,
                     no_gradient: list[str] | None = None) -> list[nn.Module]:
    """Surrogate models over ``label_set``. A foreign solver whose graph has no torch
    equivalent (or fails parity) is left out with one warning naming why, and its name is
    appended to ``no_gradient`` (it still verifies); other errors raise."""
    models = []
    for s in surrogates:
        try:
            m = create_classifier(s, label_set, templates=templates, device=str(device),
                                  label_map=label_map) \
                if isinstance(s, str) else s.to(device).eval()
        except (ConversionError, SolverParityError) as e:
            log.warning("warning: %s has no gradient path (%s); it is used as a verifier only",
                        s, e)
            if no_gradient is not None:
                no_gradient.append(str(s))
            continue
        if tuple(getattr(m, "labels", label_set)) != tuple(label_set):
            raise ValueError(f"surrogate {getattr(m, 'name', m)} is not over the label set")
        check_surrogate(m, device=device)
        if device.type == "cpu" and getattr(m, "kind", None) == "imagenet":
            # oneDNN's convolutions run forward and backward faster in this layout, with
            # the same values to float rounding
            m.core.visual.to(memory_format=torch.channels_last)
        models.append(m)
    return models


def build_verifiers(verifiers: Sequence[str | Scorer], label_set: Sequence[str],
                    device: torch.device, templates: str = DEFAULT_TEMPLATES,
                    label_map: LabelMap | None = None) -> list[Scorer]:
    """Names become cached ONNX exports (fp16 on CUDA, fp32 on CPU); foreign solvers
    (``onnx:SPEC.json``) run their own graph in onnxruntime."""
    precision = "fp16" if device.type == "cuda" else "fp32"
    out = []
    for v in verifiers:
        if isinstance(v, str) and is_solver_name(v):
            v = create_verifier(v, label_set, device="cuda" if device.type == "cuda" else "cpu")
        elif isinstance(v, str):
            path = export_cached(v, label_set, precision=precision, templates=templates,
                                 label_map=label_map)
            v = OnnxVerifier(path, device="auto" if device.type == "cuda" else "cpu")
        out.append(v)
    return out


def check_known(models: Sequence[object], labels: Sequence[str]) -> None:
    """Every model must know every label a run asks about (true labels and decoys)."""
    for m in models:
        known, mlabels = getattr(m, "known", None), tuple(getattr(m, "labels", ()))
        if known is None:
            continue
        lacking = sorted({lab for lab in labels if lab in mlabels
                          and not known[mlabels.index(lab)]})
        if lacking:
            where = getattr(m, "spec_path", None) or "its spec"
            raise LabelMapError(
                f"{m.name} has no label for {', '.join(map(repr, lacking))}: map each to one of "
                f"its labels in \"label_map\" of {where} (e.g. \"label_map\": "
                f"{{\"{lacking[0]}\": \"<solver label>\"}}), or leave this solver out")


def default_label_set(labels: Sequence[str], label_map: LabelMap | None = None
                      ) -> tuple[str, ...]:
    """The sorted labels seen; one label alone is a binary challenge ("select all X") against
    the built-in negatives (X first)."""
    from ..export.zoo import binary_label_set

    seen = tuple(sorted(set(labels)))
    if len(seen) == 1:
        return binary_label_set(seen[0], label_map=label_map)
    return seen


def make_attack(ensemble: Ensemble, config: HardenConfig, plan: Plan, device: torch.device,
                generator: torch.Generator) -> Attack:
    return ATTACKS[plan.attack](
        ensemble,
        eps_01=config.eps_01,
        alpha_01=config.alpha_01,
        steps=config.steps,
        targeted=config.targeted,
        eot=eot_of(config.transforms, plan.eot_samples),
        diversity=InputDiversity(plan.diversity_prob) if plan.diversity_prob > 0 else None,
        skip_gamma=plan.skip_gamma,
        amp_dtype=amp_dtype(config, device),
        generator=generator,
    )


def batch_seed(seed: int, images: Sequence[torch.Tensor], labels: Sequence[str],
               targets: Sequence[str | None] | None) -> int:
    """A 63-bit seed derived from ``seed`` and the exact inputs of one ``run`` call."""
    import hashlib

    h = hashlib.sha256(f"{seed}|{list(labels)}|{list(targets or [])}".encode())
    for im in images:
        h.update(str(tuple(im.shape)).encode())
        h.update(im.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


class Hardener:
    """Models built once, then ``run`` on as many image batches as needed (the CLI streams
    folders through one Hardener). See :func:`harden` for the arguments."""

    def __init__(self, label_set: Sequence[str], *,
                 surrogates: Sequence[str | nn.Module] = DEFAULT_SURROGATES,
                 verifiers: Sequence[str | Scorer] = DEFAULT_VERIFIERS,
                 config: HardenConfig | None = None,
                 surrogate_weights: Sequence[float] | None = None,
                 templates: str = DEFAULT_TEMPLATES,
                 label_map: LabelMap | str | Mapping | None = None) -> None:
        from ..export.zoo import is_solver_name

        self.config = config = config or HardenConfig()
        self.label_set = tuple(label_set)
        if len(self.label_set) < 2 or len(set(self.label_set)) != len(self.label_set):
            raise ValueError(f"the label set needs two or more distinct labels, got {label_set}")
        self.label_map = load_label_map(label_map)
        shared = {s for s in surrogates if isinstance(s, str)} & {
            v for v in verifiers if isinstance(v, str)}
        held_out = sorted(n for n in shared if not is_solver_name(n))
        if held_out:  # a foreign solver as both is the point: its own graph verifies
            log.warning("warning: %s are both surrogate and verifier: the verifier is not held "
                        "out", held_out)
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        no_gradient: list[str] = []
        members = build_surrogates(surrogates, self.label_set, self.device, templates,
                                   self.label_map, no_gradient)
        verifiers = list(verifiers) + [n for n in no_gradient if n not in verifiers]
        if not members:
            raise ValueError(
                f"no surrogate left to attack ({', '.join(no_gradient)} cannot be converted to "
                f"torch); add one with a gradient path, e.g. --surrogates "
                f"{','.join([*no_gradient, *DEFAULT_SURROGATES])}")
        weights = surrogate_weights
        if weights is not None and no_gradient:
            weights = [w for s, w in zip(surrogates, weights, strict=True)
                       if str(s) not in no_gradient]
        self.ensemble = Ensemble(members, weights)
        self.verifiers = build_verifiers(verifiers, self.label_set, self.device, templates,
                                         self.label_map)
        surrogate_names = {getattr(m, "name", None) for m in members}
        self.white_box = bool(self.verifiers) and all(
            getattr(v, "name", None) in surrogate_names for v in self.verifiers)
        self.plan = Plan.of(config, self.white_box)
        self.scheduler = self._scheduler()
        self._real_parity_checked = False

    def with_config(self, config: HardenConfig) -> Hardener:
        """Another schedule (budget, steps, views) on the same models, built at no cost."""
        other = object.__new__(Hardener)
        other.__dict__.update(self.__dict__)
        other.config = config
        other.plan = Plan.of(config, self.white_box)
        other.generator = torch.Generator().manual_seed(config.seed)
        other.scheduler = other._scheduler()
        return other

    def _scheduler(self) -> Scheduler:
        return Scheduler(make_attack(self.ensemble, self.config, self.plan, self.device,
                                     self.generator),
                         list(self.ensemble.members), self.verifiers, self.label_set,
                         self.config, self.device, relax_mask=self.plan.relax_mask)

    def _check_real_parity(self, images: Sequence[torch.Tensor]) -> None:
        """Converted solvers against their own onnxruntime graph on the first real tiles. One
        that disagrees there would attack with wrong gradients: it is left out of the ensemble
        (still verifying), with a warning."""
        from ..export.solver import SolverClassifier, SolverParityError

        self._real_parity_checked = True
        members = list(self.ensemble.members)
        solvers = [m for m in members if isinstance(m, SolverClassifier)]
        if not solvers or not images:
            return
        batch = [im for im in images if im.shape == images[0].shape][:8]
        x = as_float(torch.stack(batch))
        failed = []
        for m in solvers:
            try:
                m.solver.check_parity(x)
            except SolverParityError as e:
                log.warning("warning: %s on the first %d tiles of this run: its torch "
                            "gradients would not be the solver's; it is used as a verifier "
                            "only", e, len(batch))
                failed.append(m)
        if not failed:
            return
        keep = [m for m in members if m not in failed]
        if not keep:
            raise SolverParityError(f"no surrogate left: {', '.join(m.name for m in failed)} "
                                    f"failed parity on this run's tiles")
        names = {v.name for v in self.verifiers}
        self.verifiers += [m.solver.verifier(self.label_set, device=self.device.type)
                           for m in failed if m.name not in names]
        self.ensemble = Ensemble(keep)
        self.scheduler = self._scheduler()

    def run(self, images: Sequence[ImageLike], labels: Sequence[str],
            targets: Sequence[str | None] | None = None,
            on_result: Callable[[HardenResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[HardenResult]:
        """``should_stop(i)``: once true, image ``i`` leaves before the next attack step and
        its result is None (the service's abandoned requests)."""
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        unknown = sorted(set(labels) - set(self.label_set))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the label set {self.label_set}")
        if targets is not None and len(targets) != len(labels):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        if self.config.targeted and (targets is None or any(t is None for t in targets)):
            raise ValueError("a targeted run needs one target label per image")
        if targets is not None:
            bad = [t for t, y in zip(targets, labels, strict=True)
                   if t is not None and (t == y or t not in self.label_set)]
            if bad:
                raise ValueError(f"targets must be in the label set and differ from the labels: "
                                 f"{bad}")
        asked = set(labels) | {t for t in targets or () if t is not None}
        check_known([*self.ensemble.members, *self.verifiers], sorted(asked))
        tensors = [to_tensor(im) for im in images]
        # the random stream is a function of the seed and of this call's inputs, not of what
        # ran before: a batch gives the same results in any process (Ray workers, a resumed
        # run, the service) as in one
        self.generator.manual_seed(batch_seed(self.config.seed, tensors, labels, targets))
        if not self._real_parity_checked:
            self._check_real_parity(tensors)
        index = {lab: i for i, lab in enumerate(self.label_set)}
        return self.scheduler.run(
            tensors, [index[y] for y in labels],
            [-1 if t is None else index[t] for t in targets] if targets is not None else None,
            on_result, should_stop,
        )


def harden(
    images: Sequence[ImageLike],
    labels: Sequence[str],
    *,
    label_set: Sequence[str] | None = None,
    surrogates: Sequence[str | nn.Module] = DEFAULT_SURROGATES,
    verifiers: Sequence[str | Scorer] = DEFAULT_VERIFIERS,
    config: HardenConfig | None = None,
    targets: Sequence[str | None] | None = None,
    surrogate_weights: Sequence[float] | None = None,
    templates: str = DEFAULT_TEMPLATES,
    label_map: LabelMap | str | Mapping | None = None,
    on_result: Callable[[HardenResult], None] | None = None,
    ray: Any = None,
) -> list[HardenResult]:
    """Perturb ``images`` so that the held-out ``verifiers`` get their ``labels`` wrong.

    Args:
        images: uint8 HxWx3 arrays, PIL images or [3, H, W] float tensors in [0, 1].
        labels: the true label of each image, members of ``label_set``.
        label_set: the labels a solver chooses among (default: the sorted labels seen; one
            label seen makes a binary challenge against the built-in negatives).
        surrogates: model names (see ``advx models``; ``onnx:SPEC.json`` for a foreign solver)
            or classifiers over ``label_set``, attacked with gradients.
        verifiers: model names (ImageNet / zero-shot models are exported to ONNX and cached;
            foreign solvers run their own graph) or scorers; an image is done once all of them
            are fooled, by their own decision rule, under every transform of
            ``config.transforms``.
        config: budgets, attack, schedule (:class:`HardenConfig`).
        targets: a decoy label per image (or None): the solver should pick / select the decoy
            (required for every image when ``config.targeted``).
        surrogate_weights: per-surrogate weights of the ensemble (default equal).
        templates: prompt template set of zero-shot models ("simple", "openai", "photo").
        label_map: labels -> ImageNet classes for ImageNet classifiers, a dict or a JSON file
            (``{"label": ["ImageNet class name or index", ...]}``), consulted before the
            built-in map.
        on_result: called with each result as soon as its image is finished.
        ray: ``"local"``, ``"auto"``, a cluster address or an ``advx.RayOptions``: the images
            go to Ray workers in runs of ``2 * config.batch_size`` (each the same as
            ``Hardener.run`` on that run in one process).

    Returns:
        One :class:`HardenResult` per image, in input order.
    """
    lmap = load_label_map(label_map)
    label_set = tuple(label_set) if label_set is not None else default_label_set(labels, lmap)
    if ray is not None:
        import functools

        from .folder.distributed import run_in_memory

        build = functools.partial(Hardener, label_set, surrogates=surrogates,
                                  verifiers=verifiers, config=config,
                                  surrogate_weights=surrogate_weights, templates=templates,
                                  label_map=lmap)
        return run_in_memory(ray, build, images, labels, targets,
                             2 * (config or HardenConfig()).batch_size, on_result)
    hardener = Hardener(label_set, surrogates=surrogates, verifiers=verifiers, config=config,
                        surrogate_weights=surrogate_weights, templates=templates, label_map=lmap)
    return hardener.run(images, labels, targets, on_result)
