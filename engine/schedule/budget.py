"""The per-image budget of a hardening run, shared by the image and text schedulers."""

from __future__ import annotations

import math
import time

import torch

from .. import metrics
from ..attacks import Attack, AttackState
from ..config import HardenConfig
from ..pixels import ssim_scale
from ..views.transforms import jpeg_roundtrip


class Budget:
    """The per-image budget both schedulers share: the eps rungs an unfooled image climbs
    (masked, then with ``relax_mask`` a last rung at eps everywhere), the step size that goes
    with each, the SSIM floor, and what is delivered. Needs ``config``, ``attack`` and
    ``time``; slots have ``rung``, ``rung_steps`` and ``cap``."""

    config: HardenConfig
    attack: Attack
    time: dict[str, float]

    def init_budget(self, config: HardenConfig, relax_mask: bool) -> None:
        self.time = {"attack": 0.0, "verify": 0.0, "ssim": 0.0}
        rungs = config.eps_rungs
        self.rung_eps_01 = [config.eps / 255 / 2 ** (rungs - 1 - r) for r in range(rungs)]
        self.rung_masked = [config.texture_mask is not None] * rungs
        if config.texture_mask is not None and relax_mask:
            self.rung_eps_01.append(config.eps / 255)
            self.rung_masked.append(False)
        per = max(1, (config.steps // 2) // len(self.rung_eps_01))
        self.rung_steps = config.verify_every * math.ceil(per / config.verify_every)

    def start(self, xs: torch.Tensor, mask_fn) -> tuple[AttackState, torch.Tensor]:
        """The attack state of newly admitted images ``xs`` on the first rung, and their mask
        (``mask_fn(xs, floor)``; all ones without a texture mask)."""
        floor = self.config.texture_mask
        mask = mask_fn(xs, floor) if floor is not None else torch.ones_like(xs[:, :1])
        eps0 = self.rung_eps_01[0]
        state = self.attack.init(xs, mask * eps0, torch.full((len(xs),), self._alpha_01(eps0)))
        return state, mask

    def deliver(self, q: torch.Tensor) -> torch.Tensor:
        """What the user receives: 8-bit pixels, JPEG-decoded when JPEG output is asked for."""
        if self.config.output_format == "jpeg":
            return jpeg_roundtrip(q, self.config.jpeg_quality)
        return q

    def _ssim(self, delivered: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        s = metrics.ssim(delivered, originals).cpu()
        self.time["ssim"] += time.perf_counter() - t0
        return s

    def hold_ssim_floor(self, state: AttackState, rows: list[int], slots: list) -> None:
        """Scale the perturbation of ``rows`` back (bisection on a factor) until the delivered
        file's SSIM is at least the floor again; their budgets shrink by the same factor."""
        idx = torch.tensor(rows)
        x, delta = state.images[idx], state.adv[idx] - state.images[idx]
        lo = ssim_scale(x, delta, self.config.ssim_floor, self.deliver, self._ssim)
        k = lo.view(-1, 1, 1, 1).to(x.device)
        state.adv[idx] = x + k * delta
        state.budget[idx] = state.budget[idx] * k
        for j, f in zip(rows, lo.tolist(), strict=True):
            slots[j].cap *= max(f, 1e-3)

    def widen(self, state: AttackState, j: int, slot, mask: torch.Tensor) -> None:
        """One rung up: a larger eps (and step) for an image that is still not fooled."""
        slot.rung += 1
        slot.rung_steps = 0
        eps_01 = self.rung_eps_01[slot.rung] * slot.cap
        state.budget[j] = mask * eps_01 if self.rung_masked[slot.rung] else eps_01
        state.alpha_01[j] = self._alpha_01(eps_01)

    def _alpha_01(self, eps_01: float) -> float:
        return self.config.alpha_01 * eps_01 / self.config.eps_01
