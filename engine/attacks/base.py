"""The shared machinery of iterative gradient attacks; each attack adds one update rule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..ensemble import Ensemble, decision_of, micro_batch_size
from ..features import ghost_branches, skip_gradient
from ..features import guides as feature_guides
from ..geometry import Geometry
from ..losses import Objective
from ..transforms import InputDiversity, smooth_gradient, ti_kernel
from ..views import Preset, sample_eot


@dataclass
class AttackState:
    """Per-image attack state; rows can be taken out and put back (continuous batching).

    ``budget`` is each pixel's L-inf bound (a perceptual mask times the image's current eps:
    smooth regions get less than textured ones) and ``alpha_01`` each image's step size, both
    in [0, 1] pixel units (the config's ``eps`` and ``alpha`` are in /255)."""

    images: torch.Tensor  # originals, [N, 3, H, W] in [0, 1]
    adv: torch.Tensor  # current candidates
    momentum: torch.Tensor  # accumulated gradient (MI-FGSM), zeros otherwise
    budget: torch.Tensor  # [N, 1, H, W] per-pixel L-inf bound, [0, 1] units
    alpha_01: torch.Tensor  # [N, 1, 1, 1] step size, [0, 1] units
    # per surrogate, its feature-level guide [N, C, h, w] (features.py) or None; () when off
    guides: tuple[torch.Tensor | None, ...] = ()

    _FIELDS = ("images", "adv", "momentum", "budget", "alpha_01")

    def take(self, idx: torch.Tensor | slice) -> AttackState:
        return AttackState(*(getattr(self, f)[idx] for f in self._FIELDS),
                           guides=tuple(None if g is None else g[idx] for g in self.guides))

    def put(self, idx: torch.Tensor | slice, part: AttackState) -> None:
        self.adv[idx], self.momentum[idx] = part.adv, part.momentum

    @staticmethod
    def cat(parts: list[AttackState]) -> AttackState:
        guides = tuple(None if gs[0] is None else torch.cat(gs)
                       for gs in zip(*(p.guides for p in parts), strict=True))
        return AttackState(*(torch.cat([getattr(p, f) for p in parts])
                             for f in AttackState._FIELDS), guides=guides)

    def __len__(self) -> int:
        return len(self.images)


class Attack:
    """Base class: ``forward(images, labels, targets=None)`` returns adversarial images in [0, 1].

    ``model`` is an :class:`Ensemble` (or one classifier, wrapped). Normalisation lives in the
    models; attacks see images in [0, 1] only.
    """

    def __init__(self, model: nn.Module, *, eps_01: float, alpha_01: float, steps: int = 10,
                 random_start: bool = True, loss: str = "margin", targeted: bool = False,
                 eot: Preset | None = None, eot_samples: int = 1,
                 diversity: InputDiversity | None = None, ti_size: int = 0,
                 augments: tuple = (), fia_copies: int = 0, fia_drop: float = 0.3,
                 skip_gamma: float | None = None, ghost: float = 0.0,
                 members_per_step: int | None = None,
                 amp_dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.model = model if isinstance(model, Ensemble) else Ensemble([model])
        self.eps_01, self.alpha_01, self.steps = eps_01, alpha_01, steps
        self.random_start = random_start
        self.targeted = targeted  # every row needs a decoy target
        self.objective = Objective(loss)
        self.eot, self.eot_samples = eot, eot_samples
        self.diversity = diversity
        self.augments = tuple(augments)  # transfer augmentations (SSA, Admix), in order
        self.kernel = ti_kernel(ti_size) if ti_size else None
        # feature-level loss (FIA): this many randomly masked clean copies make each guide
        self.fia_copies, self.fia_drop = fia_copies, fia_drop
        self.skip_gamma = skip_gamma  # SGM: residual-branch gradients scaled by this
        self.ghost = ghost  # ghost networks: residual branches scaled by U[1 -+ ghost] per pass
        # surrogates drawn at random for each gradient (None: every member every time)
        self.members_per_step = members_per_step
        self.amp_dtype = amp_dtype
        self.generator = generator
        # adaptive EOT: one weight per transform of the preset (None: uniform), set by the
        # scheduler from what the last verification found still failing
        self.eot_weights: torch.Tensor | None = None

    # --- one public call -----------------------------------------------------------------

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """``targets``: a decoy label per row (-1: none, push away from ``labels``)."""
        state = self.init(images, labels=labels, targets=targets)
        for _ in range(self.steps):
            self.step(state, labels, targets)
        return state.adv

    __call__ = forward

    # --- step-wise API (used by the scheduler) ---------------------------------------------

    def init(self, images: torch.Tensor, budget: torch.Tensor | None = None,
             alpha: torch.Tensor | None = None, *, labels: torch.Tensor | None = None,
             targets: torch.Tensor | None = None) -> AttackState:
        """State for ``images``; ``budget`` (per pixel, default eps everywhere) and ``alpha``
        (per image, default the attack's) let a scheduler spend less on some images. A
        feature-level attack needs the ``labels`` (and decoy ``targets``) for its guides."""
        images = images.detach()
        n, _, h, w = images.shape
        budget = (torch.full((n, 1, h, w), float(self.eps_01), device=images.device)
                  if budget is None else budget.to(images.device).expand(n, 1, h, w).clone())
        alpha = (torch.full((n, 1, 1, 1), float(self.alpha_01), device=images.device)
                 if alpha is None else alpha.to(images.device).view(n, 1, 1, 1).clone())
        adv = self.random_init(images, budget) if self.random_start else images.clone()
        guides: tuple[torch.Tensor | None, ...] = ()
        if self.fia_copies:
            if labels is None:
                raise ValueError("a feature-level (FIA) attack needs the labels at init")
            guides = self.guides(images, labels, targets)
        return AttackState(images, adv, torch.zeros_like(images), budget, alpha, guides)

    def guides(self, images: torch.Tensor, labels: torch.Tensor,
               targets: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """Each surrogate's FIA guide for ``images`` (None for a model without a known layer)."""
        chunk = micro_batch_size(tuple(images.shape[1:]), images.device)
        return tuple(feature_guides(m, images, labels.to(images.device),
                            None if targets is None else targets.to(images.device),
                            copies=self.fia_copies, drop=self.fia_drop,
                            generator=self.generator, chunk=chunk, decision=decision_of(m))
                     for m in self.model.members)

    def step(self, state: AttackState, labels: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:
        """One update of every row of ``state``; returns the loss before the update."""
        self.check_targets(targets)
        loss, grad = self.gradient(self.look_ahead(state), labels, targets,
                                   state.guides or None)
        if self.kernel is not None:
            grad = smooth_gradient(grad, self.kernel)
        state.adv = self.update(state, grad).detach()
        return loss

    def look_ahead(self, state: AttackState) -> torch.Tensor:
        """Where this step's gradient is taken: the current candidates (NI-FGSM looks ahead)."""
        return state.adv

    def check_targets(self, targets: torch.Tensor | None) -> None:
        if self.targeted and (targets is None or bool((targets < 0).any())):
            raise ValueError("a targeted attack needs a target for every row")

    def gradient(self, adv: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None,
                 guides: tuple[torch.Tensor | None, ...] | None = None,
                 model: Ensemble | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient, averaged over EOT samples, through DI, of ``model`` (default:
        the attack's ensemble; ``guides`` one per member of it)."""
        model = model or self.model
        autocast = (torch.autocast(adv.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        loss_sum, grad_sum = 0.0, torch.zeros_like(adv)
        for _ in range(self.eot_samples):
            with (skip_gradient(model, self.skip_gamma) if self.skip_gamma is not None
                  else contextlib.nullcontext(),
                  ghost_branches(model, self.ghost, self.generator) if self.ghost
                  else contextlib.nullcontext()):
                loss, grad = model.loss_and_grad(adv, labels, self.objective,
                                                 self._input_transform, autocast, targets, guides,
                                                 self.draw_members(model), self.draw_geometry())
            loss_sum, grad_sum = loss_sum + loss, grad_sum + grad
        return loss_sum / self.eot_samples, grad_sum / self.eot_samples

    def draw_members(self, model: Ensemble) -> list[int] | None:
        """The members that take part in one gradient: ``members_per_step`` of them drawn
        without replacement from the attack's generator, or None (all)."""
        n, k = len(model.members), self.members_per_step
        if k is None or k >= n:
            return None
        return sorted(torch.randperm(n, generator=self.generator)[:k].tolist())

    def draw_geometry(self) -> Geometry | None:
        """A geometry drawn for one gradient (the preset's EOT over solvers' preprocessing),
        or None: the surrogates' own."""
        if self.eot is None or self.eot.geometry is None:
            return None
        return self.eot.geometry(self.generator)

    def _input_transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.eot is not None:
            x = sample_eot(self.eot, x, self.generator, self.eot_weights)
        for aug in self.augments:
            x = aug(x, self.generator)
        if self.diversity is not None:
            x = self.diversity(x, self.generator)
        return x

    # --- what subclasses define ------------------------------------------------------------

    def random_init(self, images: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(images.shape, generator=self.generator, device="cpu")
        noise = (2 * noise - 1).to(images.device) * budget
        return (images + noise).clamp(0, 1)

    def update(self, state: AttackState, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project(self, state: AttackState, adv: torch.Tensor) -> torch.Tensor:
        """Onto each pixel's L-inf bound around the originals, and the pixel range."""
        return torch.min(torch.max(adv, state.images - state.budget),
                         state.images + state.budget).clamp(0, 1)
