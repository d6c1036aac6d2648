"""The shared machinery of iterative gradient attacks; each attack adds one update rule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ...export.geometry import Geometry
from ..tasks.labels.losses import Objective
from ..views.transforms import InputDiversity
from ..views.view import Eot
from .ensemble import Ensemble
from .sgm import skip_gradient

ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str):
    """Class decorator: register an attack under ``name`` (a name already taken is refused)."""

    def add(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is already registered ({ATTACKS[name].__name__})")
        ATTACKS[name] = cls
        cls.name = name
        return cls

    return add


@dataclass
class AttackState:
    """Per-image attack state, in [0, 1] pixel units; rows can be taken out and put back."""

    images: torch.Tensor  # originals, [N, 3, H, W] in [0, 1]
    adv: torch.Tensor  # current candidates
    momentum: torch.Tensor  # accumulated gradient (MI-FGSM), zeros otherwise
    budget: torch.Tensor  # [N, 1, H, W] per-pixel L-inf bound, [0, 1] units
    alpha_01: torch.Tensor  # [N, 1, 1, 1] step size, [0, 1] units

    _FIELDS = ("images", "adv", "momentum", "budget", "alpha_01")

    def take(self, idx: torch.Tensor | slice) -> AttackState:
        return AttackState(*(getattr(self, f)[idx] for f in self._FIELDS))

    def put(self, idx: torch.Tensor | slice, part: AttackState) -> None:
        self.adv[idx], self.momentum[idx] = part.adv, part.momentum

    @staticmethod
    def cat(parts: list[AttackState]) -> AttackState:
        return AttackState(*(torch.cat([getattr(p, f) for p in parts])
                             for f in AttackState._FIELDS))

    def __len__(self) -> int:
        return len(self.images)


class Attack:
    """Base class: ``forward(images, labels, targets=None)`` returns adversarial images in [0, 1].
    ``model`` is an :class:`Ensemble` (or one classifier, wrapped); ``eot`` what expectation
    over transformation draws from; ``skip_gamma`` the skip-gradient factor (None: off)."""

    name = ""

    def __init__(self, model: nn.Module, *, eps_01: float, alpha_01: float, steps: int = 10,
                 random_start: bool = True, targeted: bool = False, eot: Eot | None = None,
                 diversity: InputDiversity | None = None,
                 skip_gamma: float | None = None, amp_dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.model = model if isinstance(model, Ensemble) else Ensemble([model])
        self.eps_01, self.alpha_01, self.steps = eps_01, alpha_01, steps
        self.random_start = random_start
        self.targeted = targeted  # every row needs a decoy target
        self.objective = Objective()
        self.eot = eot
        self.eot_samples = eot.samples if eot is not None else 1
        self.diversity = diversity
        self.skip_gamma = skip_gamma
        self.amp_dtype = amp_dtype
        self.generator = generator

    # --- one public call -----------------------------------------------------------------

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """``targets``: a decoy label per row (-1: none, push away from ``labels``)."""
        state = self.init(images)
        for _ in range(self.steps):
            self.step(state, labels, targets)
        return state.adv

    __call__ = forward

    # --- step-wise API (used by the scheduler) ---------------------------------------------

    def init(self, images: torch.Tensor, budget: torch.Tensor | None = None,
             alpha: torch.Tensor | None = None) -> AttackState:
        """State for ``images``; ``budget`` (per pixel, default eps everywhere) and ``alpha``
        (per image, default the attack's) let a scheduler spend less on some images."""
        images = images.detach()
        n, _, h, w = images.shape
        budget = (torch.full((n, 1, h, w), float(self.eps_01), device=images.device)
                  if budget is None else budget.to(images.device).expand(n, 1, h, w).clone())
        alpha = (torch.full((n, 1, 1, 1), float(self.alpha_01), device=images.device)
                 if alpha is None else alpha.to(images.device).view(n, 1, 1, 1).clone())
        adv = self.random_init(images, budget) if self.random_start else images.clone()
        return AttackState(images, adv, torch.zeros_like(images), budget, alpha)

    def step(self, state: AttackState, labels: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:
        """One update of every row of ``state``; returns the loss before the update."""
        if self.targeted and (targets is None or bool((targets < 0).any())):
            raise ValueError("a targeted attack needs a target for every row")
        loss, grad = self.gradient(self.look_ahead(state), labels, targets)
        state.adv = self.update(state, grad).detach()
        return loss

    def look_ahead(self, state: AttackState) -> torch.Tensor:
        """Where this step's gradient is taken: the current candidates (NI-FGSM looks ahead)."""
        return state.adv

    def gradient(self, adv: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient of the ensemble, averaged over EOT samples, through DI."""
        autocast = (torch.autocast(adv.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        loss_sum, grad_sum = 0.0, torch.zeros_like(adv)
        for _ in range(self.eot_samples):
            with (skip_gradient(self.model, self.skip_gamma) if self.skip_gamma is not None
                  else contextlib.nullcontext()):
                loss, grad = self.model.loss_and_grad(adv, labels, self.objective,
                                                      self._input_transform, autocast, targets,
                                                      self.draw_geometry())
            loss_sum, grad_sum = loss_sum + loss, grad_sum + grad
        return loss_sum / self.eot_samples, grad_sum / self.eot_samples

    def draw_geometry(self) -> Geometry | None:
        """A geometry drawn for one gradient (EOT over solvers' preprocessing), or None: the
        surrogates' own."""
        if self.eot is None or self.eot.geometry is None:
            return None
        return self.eot.geometry(self.generator)

    def _input_transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.eot is not None:
            x = self.eot.sample(x, self.generator)
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
