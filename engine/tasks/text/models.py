"""The text task's models: OCR solvers (built in, or ``onnx:SPEC.json`` with a ``ctc`` output)
attacked through their torch twins with the CTC loss of the truth and verified by their own
graphs in onnxruntime. A verifier is fooled under a view when its reading differs from the
truth by the required margin (:func:`ctc_margin`); the score counts the misread deciding
(verifier, view) pairs up to the first that reads the truth, plus that pair's margin squashed
into (0, 1), so it rises before the reading changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ....export.solver.charset import Charset, truth_problem
from ....export.solver.ctc import greedy_ctc
from ....export.solver.text import TextSolver
from ....export.zoo.ocr import TEXT_ENTRIES, text_solver
from ...attacks.ensemble import Ensemble
from ...config import HardenConfig
from ...pixels import to_uint8
from ...views.view import SeenTiles, View, by_cost
from ..base import Verdict
from ..solvers import SolverFamily
from .losses import TextTargets, ctc_loss, ctc_margin, edit_distance, text_targets, unreadable
from .mask import stroke_mask
from .result import DEFAULT_SOLVERS, TextResult

# nats: P(the truth) below e^-10 counts as far enough; past it a member's gradient is zero and
# the step goes to the members whose solvers still read the truth
CTC_CAP = 10.0


OCR = SolverFamily("text solver", TextSolver, TEXT_ENTRIES, text_solver, DEFAULT_SOLVERS,
                   'a "ctc" output', lambda s: s.text_model())
load_text_solver, load_text_solvers = OCR.load, OCR.load_all


class TextEnsemble(Ensemble):
    """OCR surrogates attacked together. Each member's loss is the CTC loss of the truth under
    its own charset and case rule (capped at CTC_CAP); the ``labels`` the attack passes are row
    ids into the truths of :meth:`set_truths`."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.truths: list[TextTargets] = []

    def set_truths(self, texts: Sequence[str]) -> None:
        """Encode ``texts`` for every member (raises CharsetError naming the solver and the
        characters it cannot read)."""
        self.truths = [text_targets(m.charset, texts) for m in self.members]

    def member_loss(self, i, objective, logits, labels, targets) -> torch.Tensor:
        return ctc_loss(logits, self.truths[i].take(labels), cap=CTC_CAP)


class TextModels:
    """OCR surrogates (their torch twins) and verifiers (their graphs), loaded once (see the
    module docstring). :meth:`encode` binds the truths of the run that follows."""

    def __init__(self, surrogates: Sequence | None, verifiers: Sequence | None, *,
                 device: torch.device) -> None:
        models, surrogates, verifiers, self.left_out, self.notes = OCR.models(
            surrogates, verifiers, device)
        self.surrogates = models
        self.solvers = {s.name: s for s in [*surrogates, *verifiers]}
        self.verifiers = [v.verifier(device=device.type) for v in verifiers]
        self.charsets: dict[str, Charset] = {v.name: v.charset for v in self.verifiers}
        self._ensemble = TextEnsemble(models)
        self.truths: list[str] = []

    def ensemble(self) -> TextEnsemble:
        return self._ensemble

    def problem(self, truth: object) -> str | None:
        return truth_problem(truth, [s.charset for s in self.solvers.values()])

    def encode(self, truths: Sequence[str], targets: Sequence | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if targets is not None and any(t is not None for t in targets):
            raise ValueError("text runs are untargeted: a solver is fooled when its reading "
                             "differs from the truth")
        from ....export.solver.charset import CharsetError

        for text in truths:
            why = self.problem(text)
            if why:
                raise CharsetError(why)
        self.truths = list(truths)
        self._ensemble.set_truths(self.truths)
        n = len(self.truths)
        return torch.arange(n), torch.full((n,), -1)

    def mask(self, images: torch.Tensor, floor: float) -> torch.Tensor:
        return stroke_mask(images, floor)

    def verification(self, views: Sequence[View], config: HardenConfig) -> TextVerification:
        return TextVerification(self, views, config)

    def check_parity(self, images) -> list[str]:
        return []  # each twin was held to its graph when it was converted


@dataclass
class Readings:
    """What each verifier read under each view scored (None: not scored, lazy)."""

    read: dict[str, dict[str, list[str | None]]]  # verifier -> view -> per row
    done: torch.Tensor  # [N] bool: every deciding pair misreads, by the required margin
    score: torch.Tensor  # [N] see the module docstring
    strict: torch.Tensor  # [N] bool: every pair misreads, reported views included


class TextVerification:
    """The OCR verifiers' readings under the views of one schedule."""

    progress_tol = 0.0

    def __init__(self, models: TextModels, views: Sequence[View], config: HardenConfig) -> None:
        self.models, self.views, self.config = models, tuple(views), config
        self.deciding = {v.name: config.deciding for v in models.verifiers}
        # cheap views first: the lazy pass stops at the first pair that still reads the truth
        self.order = by_cost(self.views)
        self.head_steps: dict[str, int] = {}  # verifier -> time steps of its last reading

    def read(self, delivered: torch.Tensor, texts: Sequence[str], lazy: bool = False,
             views: Sequence[View] | None = None) -> Readings:
        """The verifiers' readings of ``delivered`` under each view (all of them, or in
        ``lazy`` mode only the deciding pairs a row still needs, cheap views first)."""
        n = len(delivered)
        alive = torch.ones(n, dtype=torch.bool)  # lazy: no deciding pair reads the truth yet
        right_any = torch.zeros(n, dtype=torch.bool)  # some deciding pair reads the truth
        wrong_all = torch.ones(n, dtype=torch.bool)  # every pair scored misreads
        score = torch.zeros(n)
        verifiers = self.models.verifiers
        read: dict[str, dict[str, list[str | None]]] = {v.name: {} for v in verifiers}
        order = [w for w in (views or self.order)
                 if not lazy or any(w.name in d for d in self.deciding.values())]
        seen = SeenTiles(delivered, order)
        need = self.config.required_margin
        for w in order:
            rows = alive.nonzero().flatten() if lazy else torch.arange(n)
            if not len(rows):
                break
            tiles = seen(w, rows)
            for v in verifiers:
                decides = w.name in self.deciding[v.name]
                if lazy and not decides:
                    continue
                keep = alive[rows] if lazy else torch.ones(len(rows), dtype=torch.bool)
                if not bool(keep.any()):
                    continue
                sub = rows[keep]
                got, margin = self._read_one(v, tiles[keep.nonzero().flatten().to(tiles.device)],
                                             [texts[r] for r in sub.tolist()])
                col = read[v.name].setdefault(w.name, [None] * n)
                for r, s, m in zip(sub.tolist(), got, margin.tolist(), strict=True):
                    col[r] = s
                    # beaten: misread, by the required margin on the truth's best alignment
                    held = self.models.charsets[v.name].same(s, texts[r]) or m < need
                    wrong_all[r] &= not held
                    if decides and not right_any[r]:
                        if held:  # the first deciding pair not beaten: how close it is
                            right_any[r] = True
                            score[r] += 1 / (1 + math.exp(-max(-50.0, min(50.0, m - need))))
                            alive[r] = False if lazy else alive[r]
                        else:
                            score[r] += 1
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

    def _texts(self, y: torch.Tensor) -> list[str]:
        return [self.models.truths[int(i)] for i in y]

    def admit(self, delivered, clean, y, t) -> Verdict:
        """Every verifier reads the clean captcha under its own view; one that all misread
        there is read under the other deciding views too (it may be done at once)."""
        truths = self._texts(y)
        own = self.views[0]
        clean_reads = self.read(delivered, truths, views=[own])
        n = len(truths)
        done, score = torch.zeros(n, dtype=torch.bool), torch.zeros(n)
        charsets = self.models.charsets
        misread = [j for j in range(n)
                   if all(not charsets[v].same(d[own.name][j], truths[j])
                          for v, d in clean_reads.read.items())]
        if misread:  # misread as given: the other deciding views may still read it
            rest = self.read(delivered[misread], [truths[j] for j in misread], lazy=True)
            done[misread], score[misread] = rest.done, rest.score
        return Verdict(done, score)

    def before(self, verdict: Verdict, row: int) -> None:
        return None  # the clean captcha is read under every view when it leaves

    def lazy(self, delivered, y, t) -> Verdict:
        r = self.read(delivered, self._texts(y), lazy=True)
        return Verdict(r.done, r.score)

    def final(self, delivered, originals, y, t) -> Verdict:
        truths = self._texts(y)
        full = self.read(delivered, truths)
        clean = self.read(originals, truths)
        short = {v.name: unreadable(text_targets(v.charset, truths), self.head_steps[v.name])
                 for v in self.models.verifiers}
        return Verdict(full.done, full.score, (full, clean, truths, short))

    def result(self, slot, reason: str, i: int, verdict: Verdict,
               figures: Mapping[str, float]) -> TextResult:
        full, clean, truths, short = verdict.detail
        truth, charsets = truths[i], self.models.charsets
        after = {v: {w: col[i] for w, col in d.items()} for v, d in full.read.items()}
        before = {v: {w: col[i] for w, col in d.items()} for v, d in clean.read.items()}
        cer = {v: {w: edit_distance(charsets[v].key(r), charsets[v].key(truth)) / len(truth)
                   for w, r in d.items()} for v, d in after.items()}
        h, w = slot.best_q.shape[-2:]
        notes = slot.notes + [f"{v} cannot read {len(truth)} characters at {w}x{h} px: its "
                              f"head has {self.head_steps[v]} time steps"
                              for v, gone in short.items() if gone[i]]
        fooled = bool(full.done[i])
        return TextResult(
            index=slot.index, image=to_uint8(slot.best_q), text=truth,
            status="fooled" if fooled else "unfooled", stop_reason=reason, steps=slot.steps,
            fooled_at=slot.fooled_at if fooled else None,
            fooled_every_view=bool(full.strict[i]),
            deciding={n: list(d) for n, d in self.deciding.items()},
            read_before=before, read_after=after, cer_after=cer,
            right_before={v: {w: charsets[v].same(r, truth) for w, r in d.items()}
                          for v, d in before.items()},
            right_after={v: {w: charsets[v].same(r, truth) for w, r in d.items()}
                         for v, d in after.items()},
            notes=notes, **figures)


__all__ = ["CTC_CAP", "TextEnsemble", "TextModels", "TextVerification", "load_text_solver",
           "load_text_solvers"]
