"""Continuous batching, for every task: k attack steps, then verification of exactly what would
be delivered. An item leaves as soon as every verifier is fooled by ``required_margin`` under
each of its deciding views, or once more steps at its full budget stop raising its score, and a
waiting item takes its place. Its budget starts at eps / 2^(rungs - 1) and widens one rung at a
time while it stays unfooled, shaped by the task's mask, its SSIM held at the floor.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import metrics
from ..attacks import Attack, AttackState
from ..config import HardenConfig
from ..devices import is_oom
from ..pixels import as_float, quantise, ssim_scale
from ..results import HardenResult
from ..tasks.base import Models, Verdict
from ..views.presets import get_preset
from ..views.transforms import jpeg_roundtrip
from ..views.view import View, views_of

# an unbeaten item leaves after this many verification passes at its full budget that raised
# its score on the deciding views by nothing
NO_PROGRESS_PASSES = 2


@dataclass
class Slot:
    """An item in the batch."""

    index: int
    t0: float
    before: Any  # what the task keeps of the clean item (its answers)
    best_q: torch.Tensor  # best quantised candidate so far (the clean item to begin with)
    best_done: bool  # it beats every deciding (verifier, view) pair
    best_score: float  # its score (Verdict.score)
    steps: int = 0
    rung: int = 0
    rung_steps: int = 0  # steps spent at the current rung
    top_score: float = -math.inf  # the best score seen at the top rung
    stale: int = 0  # verification passes at the top rung that did not raise it
    cap: float = 1.0  # budget scale left after the SSIM floor pulled it back
    fooled_at: int | None = None
    notes: list[str] = field(default_factory=list)


class Scheduler:
    """``relax_mask``: a last rung at eps everywhere for items the masked budget cannot fool
    (white-box runs)."""

    def __init__(self, attack: Attack, models: Models, config: HardenConfig,
                 device: torch.device, *, relax_mask: bool = False) -> None:
        self.attack, self.models, self.config, self.device = attack, models, config, device
        self.views: tuple[View, ...] = views_of(get_preset(config.transforms))
        self.check = models.verification(self.views, config)
        self.chunk = config.batch_size  # halved on out-of-memory
        self.time = {"attack": 0.0, "verify": 0.0, "ssim": 0.0}
        # the eps rungs an unfooled item climbs (masked, then with relax_mask a last rung at
        # eps everywhere) and the steps spent on each
        rungs = config.eps_rungs
        self.rung_eps_01 = [config.eps / 255 / 2 ** (rungs - 1 - r) for r in range(rungs)]
        self.rung_masked = [config.texture_mask is not None] * rungs
        if config.texture_mask is not None and relax_mask:
            self.rung_eps_01.append(config.eps / 255)
            self.rung_masked.append(False)
        per = max(1, (config.steps // 2) // len(self.rung_eps_01))
        self.rung_steps = config.verify_every * math.ceil(per / config.verify_every)

    def _sync(self) -> None:
        if self.device.type == "cuda":  # so that the time split is not skewed by async kernels
            torch.cuda.synchronize(self.device)

    def _timed(self, fn: Callable[..., Verdict], *args) -> Verdict:
        self._sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            verdict = fn(*args)
        self._sync()
        self.time["verify"] += time.perf_counter() - t0
        return verdict

    # --- attack steps with out-of-memory back-off ------------------------------------------

    def attack_steps(self, state: AttackState, y: torch.Tensor, t: torch.Tensor | None,
                     k: int, stop: Callable[[], bool] | None = None) -> int:
        """Up to ``k`` steps; fewer when ``stop()`` turns true before one. Returns the steps."""
        self._sync()
        t0 = time.perf_counter()
        for n in range(k):
            if stop is not None and stop():
                k = n
                break
            start = 0
            while start < len(state):
                sl = slice(start, min(len(state), start + self.chunk))
                try:
                    part = state.take(sl)
                    self.attack.step(part, y[sl], None if t is None else t[sl])
                    state.put(sl, part)
                    start = sl.stop
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not is_oom(e) or self.chunk == 1:
                        raise
                    self.chunk //= 2
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
        self._sync()
        self.time["attack"] += time.perf_counter() - t0
        return k

    # --- the per-item budget ---------------------------------------------------------------

    def start(self, xs: torch.Tensor) -> tuple[AttackState, torch.Tensor]:
        """The attack state of newly admitted images ``xs`` on the first rung, and their mask
        (the task's; all ones without a texture mask)."""
        floor = self.config.texture_mask
        mask = self.models.mask(xs, floor) if floor is not None else torch.ones_like(xs[:, :1])
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

    def widen(self, state: AttackState, j: int, slot, mask: torch.Tensor) -> None:
        """One rung up: a larger eps (and step) for an image that is still not fooled."""
        slot.rung += 1
        slot.rung_steps = 0
        eps_01 = self.rung_eps_01[slot.rung] * slot.cap
        state.budget[j] = mask * eps_01 if self.rung_masked[slot.rung] else eps_01
        state.alpha_01[j] = self._alpha_01(eps_01)

    def _alpha_01(self, eps_01: float) -> float:
        return self.config.alpha_01 * eps_01 / self.config.eps_01

    # --- the loop ---------------------------------------------------------------------------

    def run(self, images: Sequence[torch.Tensor], y: torch.Tensor, t: torch.Tensor,
            on_result: Callable[[HardenResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[HardenResult | None]:
        """Harden ``images`` ([3, H, W]; ``y``, ``t``: :meth:`Models.encode`'s). An item for
        which ``should_stop(index)`` turns true leaves before the next step, its result None."""
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(tuple(img.shape[-2:]), []).append(i)
        results: dict[int, HardenResult] = {}
        for idx in buckets.values():
            for r in self._run_bucket(images, y, t, idx, should_stop):
                results[r.index] = r
                if on_result is not None:
                    on_result(r)
        return [results.get(i) for i in range(len(images))]

    def _admit(self, images, y_all, t_all, new: list[int]):
        """Score the clean items; those already fooled leave at once."""
        x = as_float(torch.stack([images[i] for i in new]).to(self.device))
        q = quantise(x)
        verdict = self._timed(self.check.admit, self.deliver(q), q, y_all[new], t_all[new])
        slots, done = [], []
        for j, i in enumerate(new):
            slot = Slot(i, time.perf_counter(), self.check.before(verdict, j), q[j],
                        bool(verdict.done[j]), float(verdict.score[j]))
            if slot.best_done:
                slot.fooled_at = 0
                done.append(slot)
            else:
                slots.append((j, slot))
        keep = [j for j, _ in slots]
        state = mask = None
        if keep:
            state, mask = self.start(x[keep])
        return [s for _, s in slots], done, state, mask

    def _decoys(self, t_all: torch.Tensor, ids: list[int]) -> torch.Tensor | None:
        """The decoy of each of these items on the device, or None when none has one."""
        t = t_all[ids]
        return t.to(self.device) if bool((t >= 0).any()) else None

    def _run_bucket(self, images, y_all, t_all, indices, should_stop=None):
        cfg, dev = self.config, self.device
        pending = deque(indices)
        slots: list[Slot] = []
        state: AttackState | None = None
        masks: torch.Tensor | None = None

        def drop(gone: set[int]) -> None:
            nonlocal slots, state, masks
            rows = torch.tensor([j for j in range(len(slots)) if j not in gone], dtype=torch.long)
            slots = [s for j, s in enumerate(slots) if j not in gone]
            state, masks = (state.take(rows), masks[rows]) if slots else (None, None)

        while pending or slots:
            if should_stop is not None:  # items the caller gave up on leave, unanswered
                pending = deque(i for i in pending if not should_stop(i))
                gone = {j for j, s in enumerate(slots) if should_stop(s.index)}
                if gone:
                    drop(gone)
            n_new = min(cfg.batch_size - len(slots), len(pending))
            if n_new:
                fresh_slots, done, fresh, mask = self._admit(
                    images, y_all, t_all, [pending.popleft() for _ in range(n_new)])
                if done:
                    yield from self._finish([(s, "already_fooled") for s in done], images,
                                            y_all, t_all)
                if fresh is not None:
                    slots += fresh_slots
                    masks = mask if masks is None else torch.cat([masks, mask])
                    state = fresh if state is None else AttackState.cat([state, fresh])
            if not slots:
                continue
            k = min(cfg.verify_every, min(cfg.steps - s.steps for s in slots))
            verdict = None
            if k > 0:
                ids = [s.index for s in slots]
                stop = None if should_stop is None else (
                    lambda live=slots: any(should_stop(s.index) for s in live))
                n = self.attack_steps(state, y_all[ids].to(dev), self._decoys(t_all, ids), k,
                                      stop)
                for s in slots:
                    s.steps += n
                    s.rung_steps += n
                if n < k:
                    continue  # the items given up on leave first
                delivered = self._hold_ssim(state, slots)
                q = quantise(state.adv)
                verdict = self._timed(self.check.lazy, delivered, y_all[ids], t_all[ids])
            finished: list[tuple[int, str]] = []
            for j, s in enumerate(slots):
                reason = None
                if verdict is not None:
                    ok, sc = bool(verdict.done[j]), float(verdict.score[j])
                    if ok or (not s.best_done and sc >= s.best_score):
                        # fooled beats everything; else the most views fooled (ties: later)
                        s.best_q, s.best_done, s.best_score = q[j], ok, sc
                    top = s.rung + 1 == len(self.rung_eps_01)
                    if ok:
                        s.fooled_at, reason = s.steps, "verifiers_fooled"
                    elif not top and s.rung_steps >= self.rung_steps:
                        self.widen(state, j, s, masks[j])
                    elif top:  # more steps stop helping: the deciding views gain nothing
                        s.stale = 0 if sc > s.top_score + self.check.progress_tol \
                            else s.stale + 1
                        s.top_score = max(s.top_score, sc)
                        if s.stale >= NO_PROGRESS_PASSES:
                            reason = "no_progress"
                if reason is None and s.steps >= cfg.steps:
                    reason = "max_steps"
                if reason:
                    finished.append((j, reason))
            if finished:
                yield from self._finish([(slots[j], r) for j, r in finished], images, y_all,
                                        t_all)
                drop({j for j, _ in finished})

    def _hold_ssim(self, state: AttackState, slots: list[Slot]) -> torch.Tensor:
        """Scale back (bisection) the perturbations and budgets of rows whose delivered SSIM
        fell under the floor; returns what would be delivered now."""
        delivered = self.deliver(quantise(state.adv))
        floor = self.config.ssim_floor
        if floor is None:
            return delivered
        low = (self._ssim(delivered, state.images) < floor).nonzero().flatten()
        if len(low):
            rows = low.tolist()
            idx = torch.tensor(rows)
            x, delta = state.images[idx], state.adv[idx] - state.images[idx]
            lo = ssim_scale(x, delta, floor, self.deliver, self._ssim)
            k = lo.view(-1, 1, 1, 1).to(x.device)
            state.adv[idx] = x + k * delta
            state.budget[idx] = state.budget[idx] * k
            for j, f in zip(rows, lo.tolist(), strict=True):
                slots[j].cap *= max(f, 1e-3)
            delivered[rows] = self.deliver(quantise(state.adv[rows]))
        return delivered

    def _finish(self, finished: list[tuple[Slot, str]], images, y_all, t_all
                ) -> list[HardenResult]:
        """Results of items leaving together (one size bucket): their best candidates are
        verified under every view, on exactly what is delivered, in one batch."""
        orig = as_float(torch.stack([images[s.index] for s, _ in finished]).to(self.device))
        delivered = self.deliver(torch.stack([s.best_q for s, _ in finished]))
        ids = [s.index for s, _ in finished]
        verdict = self._timed(self.check.final, delivered, orig, y_all[ids], t_all[ids])
        linf, l2 = metrics.linf(delivered, orig), metrics.l2(delivered, orig)
        psnr, ssim = metrics.psnr(delivered, orig), metrics.ssim(delivered, orig)
        out = []
        for i, (s, reason) in enumerate(finished):
            figures = {"linf": float(linf[i]) * 255, "l2": float(l2[i]), "psnr": float(psnr[i]),
                       "ssim": float(ssim[i]), "seconds": time.perf_counter() - s.t0}
            out.append(self.check.result(s, reason, i, verdict, figures))
        return out
