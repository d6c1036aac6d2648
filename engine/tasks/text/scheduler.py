"""Continuous batching for text CAPTCHAs: torch attack steps through the OCR surrogates' CTC
heads, then the OCR solvers read what would be delivered, under each view.

A captcha leaves as soon as every verifier misreads it (its reading differs from the truth under
its case rule) under each of its deciding views, or once more steps at its full budget stop
adding misread (verifier, view) pairs; a waiting captcha takes its place. Captchas of different
sizes are attacked in separate size buckets. The budget is the image scheduler's: rungs from
eps / 2^(rungs - 1) up to eps, shaped by a stroke mask (the change stays on and around the
strokes and on textured background, where a reader does not see it), and the delivered file's
SSIM held at the floor.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ....export.solver.charset import Charset
from ....export.solver.ctc import greedy_ctc
from ... import metrics
from ...attacks import Attack, AttackState
from ...attacks.ensemble import Ensemble
from ...config import HardenConfig
from ...pixels import as_float, quantise, stroke_mask, to_uint8
from ...results import TextResult
from ...schedule.budget import Budget
from ...schedule.scheduler import NO_PROGRESS_PASSES
from ...views.presets import get_preset
from ...views.view import View, views_of
from .losses import TextTargets, ctc_loss, ctc_margin, edit_distance, text_targets, unreadable

# nats: P(the truth) below e^-10 counts as far enough; past it a member's gradient is zero and
# the step goes to the members whose solvers still read the truth
CTC_CAP = 10.0


class TextEnsemble(Ensemble):
    """OCR surrogates attacked together. Each member's loss is the CTC loss of the truth under
    its own charset and case rule (capped at CTC_CAP); the ``labels`` the attack passes are row
    ids into the truths of :meth:`set_truths`."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 loss: Callable[[torch.Tensor, TextTargets], torch.Tensor] | None = None) -> None:
        super().__init__(models, weights)
        self.loss = loss or functools.partial(ctc_loss, cap=CTC_CAP)
        self.truths: list[TextTargets] = []

    def set_truths(self, texts: Sequence[str]) -> None:
        """Encode ``texts`` for every member (raises CharsetError naming the solver and the
        characters it cannot read)."""
        self.truths = [text_targets(m.charset, texts) for m in self.members]

    def member_loss(self, i, objective, logits, labels, targets) -> torch.Tensor:
        return self.loss(logits, self.truths[i].take(labels))


@dataclass
class Readings:
    """What each verifier read under each view scored (None: not scored, lazy)."""

    read: dict[str, dict[str, list[str | None]]]  # verifier -> view -> per row
    # [N] bool: every deciding (verifier, view) pair misreads, by the required margin
    done: torch.Tensor
    # [N] misread deciding pairs in scoring order up to the first that reads the truth, plus
    # that pair's CTC margin squashed into (0, 1): it rises before the reading changes
    score: torch.Tensor
    strict: torch.Tensor  # [N] bool: every pair misreads, reported views included (full only)


@dataclass
class _Slot:
    index: int
    t0: float
    before: dict[str, str]  # verifier -> reading of the clean captcha (own view)
    best_q: torch.Tensor
    best_done: bool
    best_score: float
    steps: int = 0
    rung: int = 0
    rung_steps: int = 0
    top_score: float = -math.inf
    stale: int = 0
    cap: float = 1.0
    fooled_at: int | None = None
    notes: list[str] = field(default_factory=list)


class TextScheduler(Budget):
    """``verifiers``: objects with ``name``, ``charset`` (a Charset) and ``read(images)`` ->
    strings (:class:`~advx.export.solver.text.TextVerifier`). ``relax_mask``: a last rung at
    eps everywhere (white-box runs)."""

    def __init__(self, attack: Attack, verifiers: Sequence, config: HardenConfig,
                 device: torch.device, *, relax_mask: bool = False) -> None:
        if not isinstance(attack.model, TextEnsemble):
            raise TypeError("a TextScheduler's attack needs a TextEnsemble")
        if not verifiers:
            raise ValueError("a text run needs at least one verifier (an OCR solver)")
        self.attack, self.ensemble, self.config, self.device = attack, attack.model, config, device
        self.verifiers = list(verifiers)
        self.charsets: dict[str, Charset] = {v.name: v.charset for v in self.verifiers}
        self.views: tuple[View, ...] = views_of(get_preset(config.transforms))
        self.deciding = {v.name: config.deciding for v in self.verifiers}
        # cheap views first: the lazy pass stops at the first pair that still reads the truth
        self.order = sorted(self.views, key=lambda w: w.cost)
        self.head_steps: dict[str, int] = {}  # verifier -> time steps of its last reading
        self.init_budget(config, relax_mask)

    # --- reading -------------------------------------------------------------------------------

    @torch.no_grad()
    def read(self, delivered: torch.Tensor, texts: Sequence[str], lazy: bool = False,
             views: Sequence[View] | None = None) -> Readings:
        """The verifiers' readings of ``delivered`` under each view (all of them, or in
        ``lazy`` mode only the deciding pairs a row still needs, cheap views first)."""
        t0 = time.perf_counter()
        n = len(delivered)
        alive = torch.ones(n, dtype=torch.bool)  # lazy: no deciding pair reads the truth yet
        right_any = torch.zeros(n, dtype=torch.bool)  # some deciding pair reads the truth
        wrong_all = torch.ones(n, dtype=torch.bool)  # every pair scored misreads
        score = torch.zeros(n)
        read: dict[str, dict[str, list[str | None]]] = {v.name: {} for v in self.verifiers}
        for w in (views or self.order):
            if lazy and not any(w.name in d for d in self.deciding.values()):
                continue  # reported views are read on the delivered file only
            rows = alive.nonzero().flatten() if lazy else torch.arange(n)
            if not len(rows):
                break
            seen = w.images(delivered[rows.to(delivered.device)])
            for v in self.verifiers:
                decides = w.name in self.deciding[v.name]
                if lazy and not decides:
                    continue
                keep = alive[rows] if lazy else torch.ones(len(rows), dtype=torch.bool)
                if not bool(keep.any()):
                    continue
                sub = rows[keep]
                got, margin = self._read_one(v, seen[keep.nonzero().flatten().to(seen.device)],
                                             [texts[r] for r in sub.tolist()])
                col = read[v.name].setdefault(w.name, [None] * n)
                need = self.config.required_margin
                for r, s, m in zip(sub.tolist(), got, margin.tolist(), strict=True):
                    col[r] = s
                    # beaten: misread, by the required margin on the truth's best alignment
                    held = self.charsets[v.name].same(s, texts[r]) or m < need
                    wrong_all[r] &= not held
                    if decides and not right_any[r]:
                        if held:  # the first deciding pair not beaten: how close it is
                            right_any[r] = True
                            score[r] += 1 / (1 + math.exp(-max(-50.0, min(50.0, m - need))))
                            alive[r] = False if lazy else alive[r]
                        else:
                            score[r] += 1
        self.time["verify"] += time.perf_counter() - t0
        return Readings(read, ~right_any, score, wrong_all & ~right_any)

    def _read_one(self, v, seen: torch.Tensor, texts: Sequence[str]
                  ) -> tuple[list[str], torch.Tensor]:
        """One verifier's readings of ``seen`` and its CTC margin on each truth (below 0 while
        it reads the truth on its best alignment): the progress signal between readings."""
        scores = v.scores(seen)
        head = v.solver.head
        reads = [v.charset.decode(r) for r in greedy_ctc(scores, head.blank)]
        logits = scores.clamp_min(1e-30).log() if head.scores == "softmax" else scores
        self.head_steps[v.name] = scores.shape[1]  # at the size of the bucket being read
        return reads, ctc_margin(logits, text_targets(v.charset, texts))

    # --- the budget ----------------------------------------------------------------------------

    def _hold_ssim(self, state: AttackState, slots: list[_Slot]) -> torch.Tensor:
        """Scale back the rows whose delivered SSIM fell under the floor; returns what would be
        delivered now."""
        delivered = self.deliver(quantise(state.adv))
        floor = self.config.ssim_floor
        if floor is None:
            return delivered
        low = (self._ssim(delivered, state.images) < floor).nonzero().flatten()
        if len(low):
            self.hold_ssim_floor(state, low.tolist(), slots)
            delivered[low] = self.deliver(quantise(state.adv[low]))
        return delivered

    # --- the loop ------------------------------------------------------------------------------

    def run(self, images: Sequence[torch.Tensor], texts: Sequence[str],
            on_result: Callable[[TextResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[TextResult | None]:
        """Harden ``images`` ([3, H, W]) showing ``texts``. A captcha for which
        ``should_stop(index)`` turns true leaves before the next step, without a result."""
        texts = list(texts)
        self.ensemble.set_truths(texts)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(tuple(img.shape[-2:]), []).append(i)
        results: dict[int, TextResult] = {}
        for idx in buckets.values():
            for r in self._run_bucket(images, texts, idx, should_stop):
                results[r.index] = r
                if on_result is not None:
                    on_result(r)
        return [results.get(i) for i in range(len(images))]

    def _admit(self, images, texts, new: list[int]):
        x = as_float(torch.stack([images[i] for i in new]).to(self.device))
        q = quantise(x)
        truths = [texts[i] for i in new]
        delivered = self.deliver(q)
        own = self.views[0]
        clean = self.read(delivered, truths, views=[own])  # every verifier, its own view
        done_now, score = torch.zeros(len(new), dtype=torch.bool), torch.zeros(len(new))
        misread = [j for j in range(len(new))
                   if all(not self.charsets[v].same(d[own.name][j], truths[j])
                          for v, d in clean.read.items())]
        if misread:  # misread as given: the other deciding views may still read it
            rest = self.read(delivered[misread], [truths[j] for j in misread], lazy=True)
            done_now[misread], score[misread] = rest.done, rest.score
        slots, done = [], []
        for j, i in enumerate(new):
            before = {v: d[own.name][j] for v, d in clean.read.items()}
            s = _Slot(i, time.perf_counter(), before, q[j], bool(done_now[j]), float(score[j]))
            if s.best_done:
                s.fooled_at = 0
                done.append(s)
            else:
                slots.append((j, s))
        keep = [j for j, _ in slots]
        state = mask = None
        if keep:
            state, mask = self.start(x[keep], stroke_mask)
        return [s for _, s in slots], done, state, mask

    def _run_bucket(self, images, texts, indices, should_stop=None):
        cfg = self.config
        pending = deque(indices)
        slots: list[_Slot] = []
        state: AttackState | None = None
        masks: torch.Tensor | None = None

        def drop(gone: set[int]) -> None:
            nonlocal slots, state, masks
            rows = torch.tensor([j for j in range(len(slots)) if j not in gone], dtype=torch.long)
            slots = [s for j, s in enumerate(slots) if j not in gone]
            state, masks = (state.take(rows), masks[rows]) if slots else (None, None)

        while pending or slots:
            if should_stop is not None:
                pending = deque(i for i in pending if not should_stop(i))
                gone = {j for j, s in enumerate(slots) if should_stop(s.index)}
                if gone:
                    drop(gone)
            n_new = min(cfg.batch_size - len(slots), len(pending))
            if n_new:
                fresh_slots, done, fresh, mask = self._admit(
                    images, texts, [pending.popleft() for _ in range(n_new)])
                if done:
                    yield from self._finish([(s, "already_fooled") for s in done], images, texts)
                if fresh is not None:
                    slots += fresh_slots
                    masks = mask if masks is None else torch.cat([masks, mask])
                    state = fresh if state is None else AttackState.cat([state, fresh])
            if not slots:
                continue
            k = min(cfg.verify_every, min(cfg.steps - s.steps for s in slots))
            verdict = None
            if k > 0:
                ids = torch.tensor([s.index for s in slots])
                t0 = time.perf_counter()
                n = 0
                for _ in range(k):
                    if should_stop is not None and any(should_stop(s.index) for s in slots):
                        break
                    self.attack.step(state, ids)
                    n += 1
                self.time["attack"] += time.perf_counter() - t0
                for s in slots:
                    s.steps += n
                    s.rung_steps += n
                if n < k:
                    continue
                delivered = self._hold_ssim(state, slots)
                q = quantise(state.adv)
                verdict = self.read(delivered, [texts[s.index] for s in slots], lazy=True)
            finished: list[tuple[int, str]] = []
            for j, s in enumerate(slots):
                reason = None
                if verdict is not None:
                    ok, sc = bool(verdict.done[j]), float(verdict.score[j])
                    if ok or (not s.best_done and sc >= s.best_score):
                        s.best_q, s.best_done, s.best_score = q[j], ok, sc
                    top = s.rung + 1 == len(self.rung_eps_01)
                    if ok:
                        s.fooled_at, reason = s.steps, "verifiers_fooled"
                    elif not top and s.rung_steps >= self.rung_steps:
                        self.widen(state, j, s, masks[j])
                    elif top:
                        s.stale = 0 if sc > s.top_score else s.stale + 1
                        s.top_score = max(s.top_score, sc)
                        if s.stale >= NO_PROGRESS_PASSES:
                            reason = "no_progress"
                if reason is None and s.steps >= cfg.steps:
                    reason = "max_steps"
                if reason:
                    finished.append((j, reason))
            if finished:
                yield from self._finish([(slots[j], r) for j, r in finished], images, texts)
                drop({j for j, _ in finished})

    def _finish(self, finished: list[tuple[_Slot, str]], images, texts) -> list[TextResult]:
        """Every view read on exactly what is delivered, in one batch."""
        orig = as_float(torch.stack([images[s.index] for s, _ in finished]).to(self.device))
        delivered = self.deliver(torch.stack([s.best_q for s, _ in finished]))
        truths = [texts[s.index] for s, _ in finished]
        full = self.read(delivered, truths, views=self.views)
        short = {v.name: unreadable(text_targets(v.charset, truths), self.head_steps[v.name])
                 for v in self.verifiers}
        linf, l2 = metrics.linf(delivered, orig), metrics.l2(delivered, orig)
        size = "x".join(map(str, orig.shape[-2:][::-1]))
        psnr, ssim = metrics.psnr(delivered, orig), metrics.ssim(delivered, orig)
        out = []
        for i, (s, reason) in enumerate(finished):
            truth = truths[i]
            read = {v: {w: col[i] for w, col in d.items()} for v, d in full.read.items()}
            cer = {v: {w: edit_distance(self.charsets[v].key(r), self.charsets[v].key(truth))
                       / len(truth) for w, r in d.items()} for v, d in read.items()}
            fooled = bool(full.done[i])
            notes = s.notes + [f"{v} cannot read {len(truth)} characters at {size} px: its "
                               f"head has {self.head_steps[v]} time steps"
                               for v, gone in short.items() if gone[i]]
            out.append(TextResult(
                index=s.index, image=to_uint8(s.best_q), text=truth,
                status="fooled" if fooled else "unfooled", stop_reason=reason, steps=s.steps,
                fooled_at=s.fooled_at if fooled else None,
                fooled_every_view=bool(full.strict[i]),
                deciding={n: list(d) for n, d in self.deciding.items()},
                read_before=s.before, read_after=read, cer_after=cer,
                linf=float(linf[i]) * 255, l2=float(l2[i]), psnr=float(psnr[i]),
                ssim=float(ssim[i]), seconds=time.perf_counter() - s.t0, notes=notes))
        return out
