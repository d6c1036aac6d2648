"""Continuous batching: k torch attack steps, then ONNX verification of what would be delivered.

An image leaves the batch as soon as every verifier is fooled by at least
``config.required_margin`` (in logits, by its own decision rule: a wrong argmax, or a label no
longer selected) under each of its deciding views (:mod:`advx.engine.views.presets`; reported views are
scored on the delivered file but never keep an image), or once more steps at its full budget stop
raising its score on those views, and a waiting image takes its place. Images of different sizes
are attacked in separate size buckets.

Each image spends only what it needs: its budget starts at eps / 2^(rungs - 1) and widens one
rung at a time while it stays unfooled, shaped per pixel by a texture mask (flat regions, where
people see noise, get a fraction of it; a last rung lifts the mask for images that need it), and
the delivered file's SSIM is held at the floor by scaling the perturbation back where a step
would cross it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import metrics
from ..attacks import Attack, AttackState
from ..attacks.ensemble import is_oom
from ..config import HardenConfig
from ..pixels import as_float, quantise, texture_mask, to_uint8
from ..results import HardenResult
from ..tasks.labels.scoring import (
    Scorer,
    Verdict,
    accepts_geometry,
    readouts,
    score_views,
    view_selections,
)
from ..views.presets import get_preset
from ..views.view import View, views_of
from .budget import Budget

# an unbeaten image leaves after this many verification passes at its full budget that raised
# its score on the deciding views by nothing
NO_PROGRESS_PASSES = 2


@dataclass
class _Slot:
    index: int
    t0: float
    before: dict[str, torch.Tensor]  # model -> logits on the clean image
    before_views: dict[str, dict[str, torch.Tensor]]  # verifier -> view -> clean logits
    best_q: torch.Tensor  # best quantised candidate so far (the clean image to begin with)
    best_fooling_margin: float  # its min fooling margin over verifiers x views
    best_score: float  # its capped margin sum (Verdict.score)
    steps: int = 0
    rung: int = 0
    rung_steps: int = 0  # steps spent at the current rung
    top_score: float = -math.inf  # the best score seen at the top rung
    stale: int = 0  # verification passes at the top rung that did not raise it
    cap: float = 1.0  # budget scale left after the SSIM floor pulled it back
    fooled_at: int | None = None
    notes: list[str] = field(default_factory=list)


class Scheduler(Budget):
    def __init__(self, attack: Attack, surrogates: Sequence[nn.Module],
                 verifiers: Sequence[Scorer], label_set: Sequence[str], config: HardenConfig,
                 device: torch.device, *, relax_mask: bool = False) -> None:
        """``relax_mask``: a last rung at eps everywhere for images the masked budget cannot
        fool (white-box runs)."""
        self.attack, self.config, self.device = attack, config, device
        self.label_set = tuple(label_set)
        self.surrogates = list(surrogates)
        self.verifiers = list(verifiers)
        self.models = {m.name: m for m in [*self.surrogates, *self.verifiers]}
        self.perms = []
        for v in self.verifiers:
            if set(v.labels) != set(self.label_set):
                raise ValueError(f"verifier {v.name} scores labels {v.labels}, "
                                 f"not the label set {self.label_set}")
            self.perms.append(torch.tensor([v.labels.index(lab) for lab in self.label_set]))
        self.preset = get_preset(config.transforms)
        self.views: tuple[View, ...] = views_of(self.preset)
        # the views that decide for each verifier: all of them for one that is also a
        # surrogate (its own denoising and re-encoding are within reach of its gradients)
        surrogate_names = {getattr(m, "name", None) for m in self.surrogates}
        every = tuple(w.name for w in self.views)
        self.deciding = {v.name: every if v.name in surrogate_names else config.deciding
                         for v in self.verifiers}
        geometric = [w.name for w in self.views if w.geometry is not None]
        for v in self.verifiers:
            if geometric and not accepts_geometry(v):
                raise ValueError(f"verifier {v.name} cannot take another preprocessing, which "
                                 f"the views {geometric} of preset {self.preset.name!r} need: "
                                 f"give its __call__ a geometry= argument, or choose a preset "
                                 f"without them")
        self.chunk = config.batch_size  # halved on out-of-memory
        self.init_budget(config, relax_mask)

    # --- verification -----------------------------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":  # so that the time split is not skewed by async kernels
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def verify(self, delivered: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
               lazy: bool = False) -> Verdict:
        """Score the delivered images under every view of the matrix (:func:`score_views`,
        timed); ``lazy`` during the attack."""
        self._sync()
        t0 = time.perf_counter()
        verdict = score_views(self.verifiers, self.perms, self.views, delivered, y, t,
                              self.config.required_margin, lazy,
                              [self.deciding[v.name] for v in self.verifiers])
        self._sync()
        self.time["verify"] += time.perf_counter() - t0
        return verdict

    @torch.no_grad()
    def surrogate_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m.name: m(images).float().cpu() for m in self.surrogates}

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

    # --- the loop ---------------------------------------------------------------------------

    def _decoys(self, t_all: torch.Tensor, ids: list[int]) -> torch.Tensor | None:
        """The decoy label of each of these images on the device, or None when none has one."""
        t = t_all[ids]
        return t.to(self.device) if bool((t >= 0).any()) else None

    def run(self, images: Sequence[torch.Tensor], labels: Sequence[int],
            targets: Sequence[int] | None = None,
            on_result: Callable[[HardenResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[HardenResult | None]:
        """Harden ``images``; ``targets`` holds a decoy label index per image, or -1 for none.
        An image for which ``should_stop(index)`` turns true (and stays true: a request whose
        caller is gone) leaves before the next attack step, without a result (None)."""
        targets = list(targets) if targets is not None else [-1] * len(images)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(tuple(img.shape[-2:]), []).append(i)
        results: dict[int, HardenResult] = {}
        for idx in buckets.values():
            for r in self._run_bucket(images, labels, targets, idx, should_stop):
                results[r.index] = r
                if on_result is not None:
                    on_result(r)
        return [results.get(i) for i in range(len(images))]

    def _admit(self, images, y_all, t_all, new: list[int]):
        """Score the clean images; those already fooled leave at once."""
        cfg, dev = self.config, self.device
        x = as_float(torch.stack([images[i] for i in new]).to(dev))
        q = quantise(x)
        verdict = self.verify(self.deliver(q), y_all[new], t_all[new])
        slog = self.surrogate_logits(q)
        slots, done = [], []
        for j, i in enumerate(new):
            before = {n: z[j] for n, z in {**slog, **verdict.own}.items()}
            views = {v: {w: z[j] for w, z in d.items()} for v, d in verdict.logits.items()}
            slot = _Slot(i, time.perf_counter(), before, views, q[j], float(verdict.mins[j]),
                         float(verdict.score[j]))
            if slot.best_fooling_margin >= cfg.required_margin:
                slot.fooled_at = 0
                done.append(slot)
            else:
                slots.append((j, slot))
        keep = [j for j, _ in slots]
        state = mask = None
        if keep:
            state, mask = self.start(x[keep], texture_mask)
        return [s for _, s in slots], done, state, mask

    def _run_bucket(self, images, labels, targets, indices, should_stop=None):
        cfg, dev = self.config, self.device
        pending = deque(indices)
        slots: list[_Slot] = []
        state: AttackState | None = None
        masks: torch.Tensor | None = None
        y_all, t_all = torch.tensor(list(labels)), torch.tensor(list(targets))
        while pending or slots:
            if should_stop is not None:  # images the caller gave up on leave, unanswered
                pending = deque(i for i in pending if not should_stop(i))
                gone = {j for j, s in enumerate(slots) if should_stop(s.index)}
                if gone:
                    rows = torch.tensor([j for j in range(len(slots)) if j not in gone],
                                        dtype=torch.long)
                    slots = [s for j, s in enumerate(slots) if j not in gone]
                    state, masks = (state.take(rows), masks[rows]) if slots else (None, None)
            n_new = min(cfg.batch_size - len(slots), len(pending))
            if n_new:
                new_slots, done, fresh, mask = self._admit(
                    images, y_all, t_all, [pending.popleft() for _ in range(n_new)])
                if done:
                    yield from self._finish([(s, "already_fooled") for s in done], images,
                                            labels, targets)
                if fresh is not None:
                    slots += new_slots
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
                    continue  # the images given up on leave first
                delivered = self.deliver(quantise(state.adv))
                if cfg.ssim_floor is not None:
                    low = (self._ssim(delivered, state.images) < cfg.ssim_floor).nonzero()
                    if len(low):
                        rows = low.flatten().tolist()
                        self.hold_ssim_floor(state, rows, slots)
                        delivered[rows] = self.deliver(quantise(state.adv[rows]))
                q = quantise(state.adv)
                verdict = self.verify(delivered, y_all[ids], t_all[ids], lazy=True)
            done: list[tuple[int, str]] = []
            for j, s in enumerate(slots):
                reason = None
                if verdict is not None:
                    m, sc = float(verdict.mins[j]), float(verdict.score[j])
                    need = cfg.required_margin
                    if m >= need or (s.best_fooling_margin < need and sc >= s.best_score):
                        # fooled beats everything; else the most views fooled (ties: later)
                        s.best_q, s.best_fooling_margin, s.best_score = q[j], m, sc
                    top = s.rung + 1 == len(self.rung_eps_01)
                    if m >= cfg.required_margin:
                        s.fooled_at, reason = s.steps, "verifiers_fooled"
                    elif not top and s.rung_steps >= self.rung_steps:
                        self.widen(state, j, s, masks[j])
                    elif top:  # more steps stop helping: the deciding views gain nothing
                        s.stale = 0 if sc > s.top_score + 1e-3 else s.stale + 1
                        s.top_score = max(s.top_score, sc)
                        if s.stale >= NO_PROGRESS_PASSES:
                            reason = "no_progress"
                if reason is None and s.steps >= cfg.steps:
                    reason = "max_steps"
                if reason:
                    done.append((j, reason))
            if done:
                yield from self._finish([(slots[j], reason) for j, reason in done], images,
                                        labels, targets)
                gone = {j for j, _ in done}
                keep_rows = [j for j in range(len(slots)) if j not in gone]
                slots = [slots[j] for j in keep_rows]
                if keep_rows:
                    rows = torch.tensor(keep_rows, dtype=torch.long)
                    state, masks = state.take(rows), masks[rows]
                else:
                    state, masks = None, None

    def _finish(self, finished: list[tuple[_Slot, str]], images, labels, targets
                ) -> list[HardenResult]:
        """Results of images leaving together (one size bucket): their best candidates are
        verified under every view, on exactly what is delivered, in one batch."""
        orig = as_float(torch.stack([images[s.index] for s, _ in finished]).to(self.device))
        delivered = self.deliver(torch.stack([s.best_q for s, _ in finished]))
        y = torch.tensor([labels[s.index] for s, _ in finished])
        t = torch.tensor([targets[s.index] for s, _ in finished])
        verdict = self.verify(delivered, y, t)  # every view, on exactly what is delivered
        slog = self.surrogate_logits(delivered)
        linf, l2 = metrics.linf(delivered, orig), metrics.l2(delivered, orig)
        psnr, ssim = metrics.psnr(delivered, orig), metrics.ssim(delivered, orig)
        return [self._result(s, reason, i, verdict, slog, labels, targets,
                             (linf[i], l2[i], psnr[i], ssim[i]))
                for i, (s, reason) in enumerate(finished)]

    def _result(self, s: _Slot, reason: str, i: int, verdict, slog, labels, targets,
                figures) -> HardenResult:
        after = {n: z[i] for n, z in slog.items()}
        after.update({n: z[i] for n, z in verdict.own.items()})
        pred_b, sel_b, prob_b = readouts(self.models, self.label_set, s.before)
        pred_a, sel_a, prob_a = readouts(self.models, self.label_set, after)
        fooled = float(verdict.mins[i]) >= self.config.required_margin
        every_view = float(verdict.strict[i]) >= self.config.required_margin
        linf, l2, psnr, ssim = (float(v) for v in figures)
        return HardenResult(
            index=s.index,
            image=to_uint8(s.best_q),
            label=self.label_set[labels[s.index]],
            target=self.label_set[targets[s.index]] if targets[s.index] >= 0 else None,
            status="fooled" if fooled else "unfooled",
            fooled_every_view=every_view,
            deciding={n: list(d) for n, d in self.deciding.items()},
            stop_reason=reason,
            steps=s.steps,
            fooled_at=s.fooled_at if fooled else None,
            predictions_before=pred_b,
            predictions_after=pred_a,
            selected_before=sel_b,
            selected_after=sel_a,
            probabilities_before=prob_b,
            probabilities_after=prob_a,
            margins={n: float(m[i]) for n, m in verdict.per_verifier.items()},
            margins_by_view={n: {w: float(m[i]) for w, m in d.items()}
                             for n, d in verdict.by_view.items()},
            selected_by_view_before=view_selections(self.models, self.label_set,
                                                    s.before_views, None),
            selected_by_view_after=view_selections(self.models, self.label_set,
                                                   verdict.logits, i),
            linf=linf * 255,
            l2=l2,
            psnr=psnr,
            ssim=ssim,
            seconds=time.perf_counter() - s.t0,
            notes=s.notes,
        )
