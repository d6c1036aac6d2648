"""Continuous batching: k torch attack steps, then ONNX verification of what would be delivered.

An image leaves the batch as soon as every verifier is fooled by at least ``config.margin`` (in
logits, by its own decision rule: a wrong argmax, or a label no longer selected) under every
verification transform, and a waiting image takes its place. Images of different sizes are
attacked in separate size buckets.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from . import metrics
from .attacks import Attack, AttackState
from .config import HardenConfig
from .ensemble import decision_of
from .losses import fooling_margin
from .results import HardenResult
from .transforms import get_preset, jpeg_roundtrip


class Scorer(Protocol):
    """A verifier: anything with a name, labels and images [N,3,H,W] in [0,1] -> logits.

    An optional ``decision`` attribute ("closed" or "multilabel") says how its logits decide
    (see :mod:`.losses`); multi-label scorers also have ``known`` and ``probabilities``."""

    name: str
    labels: tuple[str, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def readout(model, label_set: Sequence[str], logits: torch.Tensor
            ) -> tuple[str, list[str], dict[str, float] | None]:
    """One image's logits [L] -> (top label, labels the model selects, P per known label of a
    multi-label model)."""
    top = label_set[int(logits.argmax())]
    if decision_of(model) != "multilabel":
        return top, [top], None
    known = getattr(model, "known", (True,) * len(label_set))
    probs = model.probabilities(logits[None].float())[0]
    selected = [lab for lab, z, k in zip(label_set, logits.tolist(), known, strict=True)
                if k and z >= 0]
    return top, selected, {lab: round(float(p), 5) for lab, p, k in
                           zip(label_set, probs.tolist(), known, strict=True) if k}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


@dataclass
class _Slot:
    index: int
    t0: float
    before: dict[str, torch.Tensor]  # model -> logits on the clean image
    best_q: torch.Tensor  # best quantised candidate so far (the clean image to begin with)
    best_margin: float
    best_margins: dict[str, float]
    best_logits: dict[str, torch.Tensor]  # verifier -> logits of the best candidate
    steps: int = 0
    fooled_at: int | None = None
    notes: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, attack: Attack, surrogates: Sequence[nn.Module],
                 verifiers: Sequence[Scorer], label_set: Sequence[str], config: HardenConfig,
                 device: torch.device) -> None:
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
        self.chunk = config.batch_size  # halved on out-of-memory
        self.time = {"attack": 0.0, "verify": 0.0}

    # --- delivery and verification ----------------------------------------------------------

    def deliver(self, q: torch.Tensor) -> torch.Tensor:
        """What the user receives: 8-bit pixels, JPEG-decoded when JPEG output is asked for."""
        if self.config.output_format == "jpeg":
            return jpeg_roundtrip(q, self.config.jpeg_quality)
        return q

    def _sync(self) -> None:
        if self.device.type == "cuda":  # so that the time split is not skewed by async kernels
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def verify(self, delivered: torch.Tensor, y: torch.Tensor, t: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Score the delivered images: min fooling margin over verifiers x transforms [N],
        per-verifier min margin, per-verifier logits of the untransformed image.
        ``t`` holds a decoy label per row, or -1."""
        self._sync()
        t0 = time.perf_counter()
        per_v, plain = {}, {}
        for v, perm in zip(self.verifiers, self.perms, strict=True):
            worst = None
            for i, tf in enumerate(self.preset.verify):
                logits = v(tf(delivered)).float().cpu()[:, perm]
                if i == 0:
                    plain[v.name] = logits
                m = fooling_margin(logits, y, t, decision_of(v))
                worst = m if worst is None else torch.minimum(worst, m)
            per_v[v.name] = worst
        self._sync()
        self.time["verify"] += time.perf_counter() - t0
        if not per_v:
            return torch.full((len(delivered),), float("inf")), per_v, plain
        return torch.stack(list(per_v.values())).amin(0), per_v, plain

    @torch.no_grad()
    def surrogate_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m.name: m(images).float().cpu() for m in self.surrogates}

    # --- attack steps with out-of-memory back-off ------------------------------------------

    def attack_steps(self, state: AttackState, y: torch.Tensor, t: torch.Tensor | None,
                     k: int) -> None:
        self._sync()
        t0 = time.perf_counter()
        for _ in range(k):
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

    # --- the loop ---------------------------------------------------------------------------

    def run(self, images: Sequence[torch.Tensor], labels: Sequence[int],
            targets: Sequence[int] | None = None,
            on_result: Callable[[HardenResult], None] | None = None) -> list[HardenResult]:
        """Harden ``images``; ``targets`` holds a decoy label index per image, or -1 for none."""
        targets = list(targets) if targets is not None else [-1] * len(images)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(tuple(img.shape[-2:]), []).append(i)
        results: dict[int, HardenResult] = {}
        for idx in buckets.values():
            for r in self._run_bucket(images, labels, targets, idx):
                results[r.index] = r
                if on_result is not None:
                    on_result(r)
        return [results[i] for i in range(len(images))]

    def _run_bucket(self, images, labels, targets, indices):
        cfg, dev = self.config, self.device
        pending = deque(indices)
        slots: list[_Slot] = []
        state: AttackState | None = None
        y_all, t_all = torch.tensor(list(labels)), torch.tensor(list(targets))
        while pending or slots:
            # admit waiting images into free slots; the already-fooled leave at once
            n_new = min(cfg.batch_size - len(slots), len(pending))
            if n_new:
                new = [pending.popleft() for _ in range(n_new)]
                x = as_float(torch.stack([images[i] for i in new]).to(dev))
                q = quantise(x)
                mins, per_v, plain = self.verify(self.deliver(q), y_all[new], t_all[new])
                slogits = self.surrogate_logits(q)
                keep = []
                for j, i in enumerate(new):
                    before = {n: z[j] for n, z in {**slogits, **plain}.items()}
                    slot = _Slot(i, time.perf_counter(), before, q[j], float(mins[j]),
                                 {k: float(v[j]) for k, v in per_v.items()},
                                 {k: z[j] for k, z in plain.items()})
                    if float(mins[j]) >= cfg.margin:
                        slot.fooled_at = 0
                        yield self._finish(slot, images[i], labels, targets, "already_fooled")
                    else:
                        slots.append(slot)
                        keep.append(j)
                if keep:
                    fresh = self.attack.init(x[keep])
                    state = fresh if state is None else AttackState.cat([state, fresh])
            if not slots:
                continue
            k = min(cfg.verify_every, min(cfg.steps - s.steps for s in slots))
            if k > 0:
                ids = [s.index for s in slots]
                tt = t_all[ids].to(dev) if bool((t_all[ids] >= 0).any()) else None
                self.attack_steps(state, y_all[ids].to(dev), tt, k)
                for s in slots:
                    s.steps += k
                q = quantise(state.adv)
                delivered = self.deliver(q)
                mins, per_v, plain = self.verify(delivered, y_all[ids], t_all[ids])
                ssims = (metrics.ssim(delivered, state.images).cpu()
                         if cfg.ssim_floor is not None else None)
            done: list[tuple[int, str]] = []
            for j, s in enumerate(slots):
                reason = None
                if k > 0 and ssims is not None and float(ssims[j]) < cfg.ssim_floor:
                    reason = "ssim_floor"  # keep the best candidate from before
                elif k > 0:
                    if float(mins[j]) >= s.best_margin:  # ties: the later, more attacked one
                        s.best_q, s.best_margin = q[j], float(mins[j])
                        s.best_margins = {n: float(v[j]) for n, v in per_v.items()}
                        s.best_logits = {n: z[j] for n, z in plain.items()}
                    if float(mins[j]) >= cfg.margin:
                        s.fooled_at, reason = s.steps, "verifiers_fooled"
                if reason is None and s.steps >= cfg.steps:
                    reason = "max_steps"
                if reason:
                    done.append((j, reason))
            for j, reason in done:
                s = slots[j]
                yield self._finish(s, images[s.index], labels, targets, reason)
            if done:
                gone = {j for j, _ in done}
                keep_rows = [j for j in range(len(slots)) if j not in gone]
                slots = [slots[j] for j in keep_rows]
                state = state.take(torch.tensor(keep_rows, dtype=torch.long)) if keep_rows else None

    def _readouts(self, logits: dict[str, torch.Tensor]):
        preds, selected, probs = {}, {}, {}
        for name, z in logits.items():
            top, sel, p = readout(self.models[name], self.label_set, z)
            preds[name], selected[name] = top, sel
            if p is not None:
                probs[name] = p
        return preds, selected, probs

    def _finish(self, s: _Slot, original: torch.Tensor, labels, targets, reason: str
                ) -> HardenResult:
        orig = as_float(original.to(self.device)[None])
        delivered = self.deliver(s.best_q[None])
        after = {n: z[0] for n, z in self.surrogate_logits(delivered).items()}
        after.update(s.best_logits)
        pred_b, sel_b, prob_b = self._readouts(s.before)
        pred_a, sel_a, prob_a = self._readouts(after)
        fooled = s.best_margin >= self.config.margin
        return HardenResult(
            index=s.index,
            image=to_uint8(s.best_q),
            label=self.label_set[labels[s.index]],
            target=self.label_set[targets[s.index]] if targets[s.index] >= 0 else None,
            status="fooled" if fooled else "unfooled",
            stop_reason=reason,
            steps=s.steps,
            fooled_at=s.fooled_at,
            predictions_before=pred_b,
            predictions_after=pred_a,
            selected_before=sel_b,
            selected_after=sel_a,
            probabilities_before=prob_b,
            probabilities_after=prob_a,
            margins=s.best_margins,
            linf=float(metrics.linf(delivered, orig)) * 255,
            l2=float(metrics.l2(delivered, orig)),
            psnr=float(metrics.psnr(delivered, orig)),
            ssim=float(metrics.ssim(delivered, orig)),
            seconds=time.perf_counter() - s.t0,
            notes=s.notes,
        )


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid that a saved image has."""
    return x.detach().clamp(0, 1).mul(255).round().div(255)


def to_uint8(x: torch.Tensor):
    return x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
