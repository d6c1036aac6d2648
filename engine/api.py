"""``advx.harden`` and :class:`Hardener`: the Python API for services embedding the engine, one
for every task (``task="labels"``: image tiles against classifiers; ``task="text"``: text
captchas against OCR solvers; see :mod:`advx.engine.tasks`)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .attacks import ATTACKS, Attack
from .config import HardenConfig, Plan
from .devices import amp_dtype, resolve_device
from .results import HardenResult
from .schedule.scheduler import Scheduler
from .tasks import Task, get_task
from .tasks.base import Models
from .views.transforms import InputDiversity
from .views.view import eot_of

ImageLike = Any  # np.ndarray uint8 HxWx3 | PIL.Image.Image | torch.Tensor [3, H, W] in [0, 1]


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


def make_attack(ensemble, config: HardenConfig, plan: Plan, device: torch.device,
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


def batch_seed(seed: int, images: Sequence[torch.Tensor], truths: Sequence[Any],
               targets: Sequence[Any] | None) -> int:
    """A 63-bit seed derived from ``seed`` and the exact inputs of one ``run`` call."""
    h = hashlib.sha256(f"{seed}|{list(truths)}|{list(targets or [])}".encode())
    for im in images:
        h.update(str(tuple(im.shape)).encode())
        h.update(im.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


class Hardener:
    """A task's models built once, then ``run`` on as many batches as needed (folder runs,
    services and Ray workers keep one alive). See :func:`harden` for the arguments."""

    def __init__(self, task: str | Task = "labels", *, surrogates: Sequence | None = None,
                 verifiers: Sequence | None = None, config: HardenConfig | None = None,
                 **options: Any) -> None:
        self.task = get_task(task)
        unknown = sorted(set(options) - set(self.task.options))
        if unknown:
            raise TypeError(f"the {self.task.name} task takes no option {', '.join(unknown)} "
                            f"(it takes: {', '.join(self.task.options) or 'none'})")
        self.config = config = (config or HardenConfig()).for_task(self.task)
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.models: Models = self.task.load(surrogates, verifiers, config=config,
                                             device=self.device, **options)
        self._build()
        self._real_parity_checked = False

    def _build(self) -> None:
        names = {getattr(m, "name", None) for m in self.models.surrogates}
        self.white_box = bool(self.models.verifiers) and all(
            getattr(v, "name", None) in names for v in self.models.verifiers)
        self.plan = self.task.plan(self.config, self.white_box)
        attack = make_attack(self.models.ensemble(), self.config, self.plan, self.device,
                             self.generator)
        self.scheduler = Scheduler(attack, self.models, self.config, self.device,
                                   relax_mask=self.plan.relax_mask)

    @property
    def surrogates(self) -> list:
        return self.models.surrogates

    @property
    def verifiers(self) -> list:
        return self.models.verifiers

    def with_config(self, config: HardenConfig) -> Hardener:
        """Another schedule (budget, steps, views) on the same models, built at no cost."""
        other = object.__new__(Hardener)
        other.__dict__.update(self.__dict__)
        other.config = config.for_task(self.task)
        other.generator = torch.Generator().manual_seed(config.seed)
        other._build()
        return other

    def problem(self, truth: Any) -> str | None:
        """Why ``truth`` cannot be an item's truth for these models (None: it can)."""
        return self.models.problem(truth)

    def check(self, truths: Sequence[Any], targets: Sequence[Any] | None = None
              ) -> list[str | None]:
        """Why each truth cannot be hardened here (None: it can), before any image is read;
        raises for what no item can be (a model that lacks a label the run asks about)."""
        problems = [self.models.problem(t) for t in truths]
        ok = [i for i, p in enumerate(problems) if p is None]
        if ok:
            self.models.encode([truths[i] for i in ok],
                               None if targets is None else [targets[i] for i in ok])
        return problems

    def describe(self) -> dict:
        """The models loaded, as a run's summary names them."""
        m = self.models
        return {"surrogates": [s.name for s in m.surrogates],
                "verifiers": [v.name for v in m.verifiers],
                "left_out": dict(m.left_out), "notes": list(m.notes)}

    def run(self, images: Sequence[ImageLike], truths: Sequence[Any],
            targets: Sequence[Any] | None = None,
            on_result: Callable[[HardenResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[HardenResult | None]:
        """``should_stop(i)``: once true, item ``i`` leaves before the next attack step and
        its result is None (the service's abandoned requests)."""
        truths = list(truths)
        if len(truths) != len(images):
            raise ValueError(f"{len(images)} images but {len(truths)} {self.task.truth}s")
        if self.config.targeted and (targets is None or any(t is None for t in targets)):
            raise ValueError("a targeted run needs one target per image")
        y, t = self.models.encode(truths, targets)
        tensors = [to_tensor(im) for im in images]
        small = [tuple(x.shape[-2:]) for x in tensors if min(x.shape[-2:]) < 8]
        if small:
            raise ValueError(f"images of {small[0][1]}x{small[0][0]} px are too small; an "
                             f"image needs at least 8 px on each side")
        # the random stream is a function of the seed and of this call's inputs, not of what
        # ran before: a batch gives the same results in any process (Ray workers, a resumed
        # run, the service) as in one
        self.generator.manual_seed(batch_seed(self.config.seed, tensors, truths, targets))
        if not self._real_parity_checked:
            self._real_parity_checked = True
            if self.models.check_parity(tensors):
                self._build()
        return self.scheduler.run(tensors, y, t, on_result, should_stop)


def harden(images: Sequence[ImageLike], truths: Sequence[Any], *, task: str | Task = "labels",
           surrogates: Sequence | None = None, verifiers: Sequence | None = None,
           config: HardenConfig | None = None, targets: Sequence[Any] | None = None,
           on_result: Callable[[HardenResult], None] | None = None, ray: Any = None,
           **options: Any) -> list[HardenResult]:
    """Perturb ``images`` so that the ``verifiers`` answer them wrong; one result per image
    (the task's :class:`~advx.engine.results.HardenResult`), in input order.

    Args:
        images: uint8 HxWx3 arrays, PIL images or [3, H, W] float tensors in [0, 1].
        truths: each image's truth (``labels``: its label; ``text``: the text it shows).
        task: a registered task (:mod:`advx.engine.tasks`).
        surrogates: models attacked with gradients, by name (``advx models``; ``onnx:SPEC.json``
            for a foreign solver) or as modules (default: the task's).
        verifiers: models that must be fooled under each deciding view (default: the task's).
        config: budgets, attack, schedule, views (:class:`HardenConfig`).
        targets: a decoy per image (or None), for tasks that take one.
        on_result: called with each result as soon as its image is finished.
        ray: ``"local"``, ``"auto"``, a cluster address or an ``advx.RayOptions``: Ray workers
            harden runs of ``2 * config.batch_size`` images, as ``Hardener.run`` would.
        options: the task's own (``labels``: ``label_set``, default the sorted labels seen;
            ``label_map``, ``templates``, ``surrogate_weights``).
    """
    from .errors import RunError

    t = get_task(task)
    try:
        options = t.plan_run(list(truths), options)
    except RunError as e:  # an argument error here, as Hardener.run raises for the same truths
        raise ValueError(str(e)) from e
    options.pop("decoy", None)
    # picklable: Ray workers build their own
    build = functools.partial(Hardener, t.name, surrogates=surrogates, verifiers=verifiers,
                              config=config, **options)
    if ray is not None:
        from .folder.distributed import run_in_memory

        return run_in_memory(ray, build, images, truths, targets,
                             2 * (config or HardenConfig()).batch_size, on_result)
    return build().run(images, truths, targets, on_result)


__all__ = ["Hardener", "ImageLike", "batch_seed", "harden", "to_tensor"]
