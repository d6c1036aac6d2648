"""The cells task's models: detectors and segmenters (the built-in ``ddddocr-det`` and
``nanodet``, or ``onnx:SPEC.json`` specs with a detector head), attacked through their torch
twins with the vanishing loss and verified by their own graphs in onnxruntime, keeping
detections as their packages do; and open-vocabulary ones from transformers
(``hf:REPO_OR_DIR``: OWL-ViT, OWLv2, Grounding DINO, CLIPSeg), whose text queries are bound to
the labels of the challenges at hand (:func:`bind_queries`), so they answer any label.

The vanishing loss pushes the score of every candidate (anchor, grid cell, query, heatmap
pixel) for the challenge's label below the solver's score floor by :data:`VANISH_MARGIN`
logits: the object is no longer detected anywhere, so no cell is selected, no point covered
and no character found. A verifier is fooled on a challenge under a view when its answer is
not the truth's and every candidate of the label stands the required margin below the floor
(so that a last faint detection cannot come back under a filter); the score between readings
counts the beaten deciding (verifier, view) pairs up to the first that still holds, plus
1 / (1 + the mass of that pair's candidates the loss still pushes): it falls smoothly where the
best candidate alone would stall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ....export.solver.detector import DetectorSolver
from ....export.zoo.detectors import DETECT_ENTRIES, detector
from ....export.zoo.zeroshot_detectors import ZeroShotDetector
from ...attacks.ensemble import Ensemble
from ...config import HardenConfig
from ...pixels import texture_mask, to_uint8
from ...views.view import SeenTiles, View, by_cost
from ..base import Verdict
from ..solvers import SolverFamily
from . import challenge as chal
from .result import DEFAULT_DETECTORS, CellsResult

VANISH_MARGIN = 1.0  # logits below the solver's score floor that the loss aims for


DETECTORS = SolverFamily("detector", DetectorSolver, DETECT_ENTRIES, detector,
                         DEFAULT_DETECTORS, "a detector head (yolo, gfl, detr or heatmap)",
                         lambda s: s.surrogate(), others=(ZeroShotDetector,))
load_detector, load_detectors = DETECTORS.load, DETECTORS.load_all


def knows(model, label: str) -> bool:
    """Whether a detector answers ``label``: one of its classes, or any (open vocabulary)."""
    return getattr(model, "open_vocabulary", False) or bool(model.classes_of(label))


def bind_queries(models: Sequence, labels: Sequence[str]) -> None:
    """Open-vocabulary models query ``labels`` (those of the challenges at hand)."""
    for m in models:
        if getattr(m, "open_vocabulary", False):
            m.set_queries(labels)


def floor_logit(solver: DetectorSolver) -> float:
    p = solver.spec.threshold
    return math.log(p) - math.log1p(-p)


def vanish_loss(logits: torch.Tensor, classes: torch.Tensor, floor: float,
                margin: float = VANISH_MARGIN) -> torch.Tensor:
    """[N] (to maximise): minus the sum, over every candidate and each class in ``classes``
    ([N, C] 0/1), of how far its logit ([N, A, C]) stands above ``floor - margin``."""
    excess = (logits.float() - (floor - margin)).clamp(min=0) * classes[:, None, :]
    return -excess.flatten(1).sum(1)


def label_classes(faces: Sequence, labels: Sequence[str], device=None) -> list[torch.Tensor]:
    """Per model: [N, C] 0/1, the model's classes each label stands for."""
    out = []
    for m in faces:
        mask = torch.zeros(len(labels), len(m.labels), device=device)
        for r, lab in enumerate(labels):
            mask[r, list(m.classes_of(lab))] = 1.0
        out.append(mask)
    return out


class CellsEnsemble(Ensemble):
    """Detector surrogates attacked together with the vanishing loss; the ``labels`` the attack
    passes are row ids into the challenges of :meth:`set_labels`."""

    def set_labels(self, labels: Sequence[str]) -> None:
        self.classes = label_classes(self.members, labels)
        self.floors = [floor_logit(m.solver) for m in self.members]

    def member_loss(self, i, objective, logits, labels, targets) -> torch.Tensor:
        classes = self.classes[i].to(logits.device)[labels.to(logits.device)]
        return vanish_loss(logits, classes, self.floors[i])


class CellsModels:
    """Detector surrogates (their torch twins) and verifiers (their graphs), loaded once (see
    the module docstring). :meth:`encode` binds the challenges of the run that follows.
    ``truth_from``: the verifier whose clean answer is the truth of a grid challenge that gives
    neither cells nor a box (default: the first verifier)."""

    def __init__(self, surrogates: Sequence | None, verifiers: Sequence | None, *,
                 device: torch.device, truth_from: str | None = None) -> None:
        models, _, verifiers, self.left_out, self.notes = DETECTORS.models(
            surrogates, verifiers, device)
        self.surrogates = models
        self.verifiers = [v.verifier(device=device.type) for v in verifiers]
        names = [v.name for v in self.verifiers]
        if truth_from is not None and truth_from not in names:
            raise ValueError(f"truth_from {truth_from!r} is not one of the verifiers "
                             f"({', '.join(names)})")
        self.truth_from = truth_from or names[0]
        self._ensemble = CellsEnsemble(models)
        self.challenges: list[dict] = []

    def ensemble(self) -> CellsEnsemble:
        return self._ensemble

    def problem(self, truth: object) -> str | None:
        try:
            ch = chal.parse(truth)
        except chal.ChallengeError as e:
            return str(e)
        label = ch["label"]
        if not any(knows(v, label) for v in self.verifiers):
            v = self.verifiers[0]
            return (f"label {label!r}: no verifier detects it ({v.name}'s classes: "
                    f"{', '.join(v.labels[:12])}{', ...' if len(v.labels) > 12 else ''}; a "
                    f"spec's label_map maps a CAPTCHA label to them)")
        source = next(v for v in self.verifiers if v.name == self.truth_from)
        if chal.needs_truth(ch) and not knows(source, label):
            return (f"label {label!r}: the challenge gives neither cells nor a box, and "
                    f"{source.name}, whose clean answer would be its truth, cannot detect it")
        if not any(knows(m, label) for m in self.surrogates):
            return f"label {label!r}: no surrogate detects it"
        return None

    def encode(self, truths: Sequence, targets: Sequence | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if targets is not None and any(t is not None for t in targets):
            raise ValueError("cells runs are untargeted: a detector is fooled when its answer "
                             "is not the truth's")
        for t in truths:
            why = self.problem(t)
            if why:
                raise ValueError(why)
        self.challenges = [chal.parse(dict(t)) for t in truths]
        labels = [c["label"] for c in self.challenges]
        bind_queries([*self.surrogates, *self.verifiers], labels)
        self._ensemble.set_labels(labels)
        n = len(truths)
        return torch.arange(n), torch.full((n,), -1)

    def mask(self, images: torch.Tensor, floor: float) -> torch.Tensor:
        return texture_mask(images, floor)

    def verification(self, views: Sequence[View], config: HardenConfig) -> CellsVerification:
        return CellsVerification(self, views, config)

    def check_parity(self, images) -> list[str]:
        return []  # each twin was held to its graph when it was converted


def read(verifier, tiles: torch.Tensor, challenges: Sequence[Mapping], size: tuple[int, int]
         ) -> tuple[list[list], list[float], list[float], list[dict]]:
    """One verifier on ``tiles`` (one view's, at the item's own ``size`` (H, W)): per challenge
    its answer, its margin (the label's best candidate below the score floor, in logits), the
    mass of its candidates still within :data:`VANISH_MARGIN` of the floor (what the vanishing
    loss sees: it falls smoothly while the best candidate may hold) and its detections of the
    label (boxes in the item's pixels, for the report)."""
    dense = verifier.dense(tiles)
    logits = dense.score_logits()
    floor = floor_logit(verifier.solver)
    th, tw = tiles.shape[-2:]
    h, w = size
    answers, margins, masses, found = [], [], [], []
    for row, ch in enumerate(challenges):
        classes = list(verifier.classes_of(ch["label"]))
        det = verifier.keep(dense, row, th, tw)
        keep = torch.isin(det.classes, torch.tensor(classes, dtype=torch.long))
        boxes = det.boxes[keep].numpy().astype(np.float64) * [w / tw, h / th, w / tw, h / th]
        masks = None if det.masks is None else det.masks[keep].numpy()
        answers.append(chal.answer(ch, boxes, h, w, masks))
        z = logits[row][:, classes]
        margins.append(floor - float(z.max()) if classes else math.inf)
        masses.append(float((z - (floor - VANISH_MARGIN)).clamp(min=0).sum()))
        found.append({"boxes": [[round(float(v), 1) for v in b] for b in boxes],
                      "scores": [round(float(s), 3) for s in det.scores[keep]]})
    return answers, margins, masses, found


@dataclass
class Readings:
    """Each verifier's answers under each view (None: not scored, lazy)."""

    answers: dict[str, dict[str, list]]  # verifier -> view -> per row
    found: dict[str, dict[str, list]]  # verifier -> view -> per row its detections of the label
    done: torch.Tensor  # [N] bool: every deciding pair beaten
    score: torch.Tensor  # [N]
    strict: torch.Tensor  # [N] bool: every pair beaten, reported views included


class CellsVerification:
    """The detector verifiers' answers under the views of one schedule."""

    progress_tol = 0.0

    def __init__(self, models: CellsModels, views: Sequence[View], config: HardenConfig) -> None:
        self.models, self.views, self.config = models, tuple(views), config
        self.deciding = {v.name: config.deciding for v in models.verifiers}
        self.order = by_cost(self.views)
        self.truths: dict[int, tuple[list, str]] = {}  # row id -> (truth answer, its source)

    def truth(self, y: int, h: int, w: int) -> list:
        return self.truths[y][0] if y in self.truths else chal.truth_answer(
            self.models.challenges[y], h, w)

    def read(self, delivered: torch.Tensor, ids: Sequence[int], lazy: bool = False,
             views: Sequence[View] | None = None) -> Readings:
        n = len(delivered)
        h, w = delivered.shape[-2:]
        challenges = [self.models.challenges[i] for i in ids]
        truths = [self.truth(i, h, w) for i in ids]
        alive = torch.ones(n, dtype=torch.bool)
        held_any = torch.zeros(n, dtype=torch.bool)
        beaten_all = torch.ones(n, dtype=torch.bool)
        score = torch.zeros(n)
        answers: dict[str, dict[str, list]] = {v.name: {} for v in self.models.verifiers}
        found: dict[str, dict[str, list]] = {v.name: {} for v in self.models.verifiers}
        order = [x for x in (views or self.order)
                 if not lazy or any(x.name in d for d in self.deciding.values())]
        seen = SeenTiles(delivered, order)
        need = self.config.required_margin
        for view in order:
            rows = alive.nonzero().flatten() if lazy else torch.arange(n)
            if not len(rows):
                break
            tiles = seen(view, rows)
            for v in self.models.verifiers:
                decides = view.name in self.deciding[v.name]
                if lazy and not decides:
                    continue
                keep = alive[rows] if lazy else torch.ones(len(rows), dtype=torch.bool)
                # a detector answers only the challenges whose label it knows
                keep &= torch.tensor([bool(v.classes_of(challenges[r]["label"]))
                                      for r in rows.tolist()], dtype=torch.bool)
                if not bool(keep.any()):
                    continue
                sub = rows[keep].tolist()
                got, margins, masses, dets = read(
                    v, tiles[keep.nonzero().flatten().to(tiles.device)].cpu(),
                    [challenges[r] for r in sub], (h, w))
                col = answers[v.name].setdefault(view.name, [None] * n)
                fcol = found[v.name].setdefault(view.name, [None] * n)
                for r, a, m, mass, d in zip(sub, got, margins, masses, dets, strict=True):
                    col[r], fcol[r] = a, d
                    held = a == truths[r] or m < need
                    beaten_all[r] &= not held
                    if decides and not held_any[r]:
                        if held:  # how close: the candidates' mass above the aim
                            held_any[r] = True
                            score[r] += 1 / (1 + mass)
                            alive[r] = False if lazy else alive[r]
                        else:
                            score[r] += 1
        return Readings(answers, found, ~held_any, score, beaten_all & ~held_any)

    def _fill_truths(self, clean: torch.Tensor, y: torch.Tensor) -> None:
        """Grid challenges without cells or a box: the truth is ``truth_from``'s clean answer
        under its own view."""
        ids = [int(i) for i in y if chal.needs_truth(self.models.challenges[int(i)])
               and int(i) not in self.truths]
        if not ids:
            return
        v = next(v for v in self.models.verifiers if v.name == self.models.truth_from)
        rows = [j for j, i in enumerate(y.tolist()) if i in ids]
        got, _, _, _ = read(v, clean[rows].cpu(), [self.models.challenges[i] for i in ids],
                         tuple(clean.shape[-2:]))
        for i, a in zip(ids, got, strict=True):
            self.truths[i] = (a, v.name)

    def admit(self, delivered, clean, y, t) -> Verdict:
        """The truths a solver gives are taken; every verifier answers the clean challenge under
        its own view; one that all answer wrong there is checked under the other deciding
        views too (it may be done at once)."""
        self._fill_truths(clean, y)
        ids = y.tolist()
        own = self.views[0]
        first = self.read(delivered, ids, views=[own])
        n = len(ids)
        done, score = torch.zeros(n, dtype=torch.bool), torch.zeros(n)
        h, w = delivered.shape[-2:]
        wrong = [j for j in range(n) if all(d[own.name][j] != self.truth(ids[j], h, w)
                                            for d in first.answers.values() if own.name in d)]
        if wrong:
            rest = self.read(delivered[wrong], [ids[j] for j in wrong], lazy=True)
            done[wrong], score[wrong] = rest.done, rest.score
        return Verdict(done, score)

    def before(self, verdict: Verdict, row: int) -> None:
        return None

    def lazy(self, delivered, y, t) -> Verdict:
        r = self.read(delivered, y.tolist(), lazy=True)
        return Verdict(r.done, r.score)

    def final(self, delivered, originals, y, t) -> Verdict:
        ids = y.tolist()
        full = self.read(delivered, ids)
        clean = self.read(originals, ids)
        return Verdict(full.done, full.score, (full, clean, ids))

    def result(self, slot, reason: str, i: int, verdict: Verdict,
               figures: Mapping[str, float]) -> CellsResult:
        full, clean, ids = verdict.detail
        y = ids[i]
        h, w = slot.best_q.shape[-2:]
        truth = self.truth(y, h, w)
        def item(readings: dict) -> dict:  # the verifiers that answered this challenge
            return {v: {x: col[i] for x, col in d.items()} for v, d in readings.items()
                    if any(col[i] is not None for col in d.values())}

        after, before = item(full.answers), item(clean.answers)
        fooled = bool(full.done[i])
        return CellsResult(
            index=slot.index, image=to_uint8(slot.best_q), challenge=self.models.challenges[y],
            truth_answer=truth, truth_from=self.truths[y][1] if y in self.truths else "given",
            status="fooled" if fooled else "unfooled", stop_reason=reason, steps=slot.steps,
            fooled_at=slot.fooled_at if fooled else None,
            fooled_every_view=bool(full.strict[i]),
            deciding={n: list(d) for n, d in self.deciding.items() if n in after},
            answer_before=before, answer_after=after,
            found_before=item(clean.found), found_after=item(full.found),
            right_before={v: {x: a == truth for x, a in d.items()} for v, d in before.items()},
            right_after={v: {x: a == truth for x, a in d.items()} for v, d in after.items()},
            notes=list(slot.notes), **figures)


__all__ = ["VANISH_MARGIN", "CellsEnsemble", "CellsModels", "CellsVerification",
           "bind_queries", "knows", "load_detector", "load_detectors", "read", "vanish_loss"]
