"""The labels task's models: classifiers over a label set, attacked with a margin loss and
verified by their own decision rule under each view of the run. Surrogates are names (built in
torch) or modules; verifiers are names (registry models exported to ONNX and cached; a foreign
solver's own graph) or scorers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ....export.defaults import DEFAULT_TEMPLATES
from ....export.onnx.cache import export_cached
from ....export.onnx.verifier import OnnxVerifier
from ....export.solver import ConversionError, SolverClassifier, SolverParityError
from ....export.zoo import create_classifier, create_verifier, is_solver_name
from ....export.zoo.labels import LabelMap, LabelMapError, load_label_map
from ...attacks.checks import check_surrogate
from ...attacks.ensemble import Ensemble, takes_geometry
from ...config import HardenConfig
from ...defaults import DEFAULT_SURROGATES, DEFAULT_VERIFIERS
from ...pixels import as_float, texture_mask, to_uint8
from ...tasks.base import Verdict
from ...views.view import View
from .result import LabelResult
from .scoring import Scorer, readouts, score_views, view_selections

log = logging.getLogger(__name__)


def build_surrogates(surrogates: Sequence[str | nn.Module], label_set: Sequence[str],
                     device: torch.device, templates: str = DEFAULT_TEMPLATES,
                     label_map: LabelMap | None = None,
                     no_gradient: list[str] | None = None) -> list[nn.Module]:
    """Surrogate models over ``label_set``. A foreign solver whose graph has no torch
    equivalent (or fails parity) is left out with one warning naming why, and its name is
    appended to ``no_gradient`` (it still verifies); other errors raise."""
    models = []
    for s in surrogates:
        try:
            m = create_classifier(s, label_set, templates=templates, device=str(device),
                                  label_map=label_map) \
                if isinstance(s, str) else s.to(device).eval()
        except (ConversionError, SolverParityError) as e:
            log.warning("warning: %s has no gradient path (%s); it is used as a verifier only",
                        s, e)
            if no_gradient is not None:
                no_gradient.append(str(s))
            continue
        if tuple(getattr(m, "labels", label_set)) != tuple(label_set):
            raise ValueError(f"surrogate {getattr(m, 'name', m)} is not over the label set")
        check_surrogate(m, device=device)
        if device.type == "cpu" and getattr(m, "kind", None) == "imagenet":
            # oneDNN's convolutions run forward and backward faster in this layout, with
            # the same values to float rounding
            m.core.visual.to(memory_format=torch.channels_last)
        models.append(m)
    return models


def build_verifiers(verifiers: Sequence[str | Scorer], label_set: Sequence[str],
                    device: torch.device, templates: str = DEFAULT_TEMPLATES,
                    label_map: LabelMap | None = None) -> list[Scorer]:
    """Names become cached ONNX exports (fp16 on CUDA, fp32 on CPU); foreign solvers
    (``onnx:SPEC.json``) run their own graph in onnxruntime."""
    precision = "fp16" if device.type == "cuda" else "fp32"
    out = []
    for v in verifiers:
        if isinstance(v, str) and is_solver_name(v):
            v = create_verifier(v, label_set, device="cuda" if device.type == "cuda" else "cpu")
        elif isinstance(v, str):
            path = export_cached(v, label_set, precision=precision, templates=templates,
                                 label_map=label_map)
            v = OnnxVerifier(path, device="auto" if device.type == "cuda" else "cpu")
        out.append(v)
    return out


def check_known(models: Sequence[object], labels: Sequence[str]) -> None:
    """Every model must know every label a run asks about (true labels and decoys)."""
    for m in models:
        known, mlabels = getattr(m, "known", None), tuple(getattr(m, "labels", ()))
        if known is None:
            continue
        lacking = sorted({lab for lab in labels if lab in mlabels
                          and not known[mlabels.index(lab)]})
        if lacking:
            where = getattr(m, "spec_path", None) or "its spec"
            raise LabelMapError(
                f"{m.name} has no label for {', '.join(map(repr, lacking))}: map each to one of "
                f"its labels in \"label_map\" of {where} (e.g. \"label_map\": "
                f"{{\"{lacking[0]}\": \"<solver label>\"}}), or leave this solver out")


def default_label_set(labels: Sequence[str], label_map: LabelMap | None = None
                      ) -> tuple[str, ...]:
    """The sorted labels seen; one label alone is a binary challenge ("select all X") against
    the built-in negatives (X first)."""
    from ....export.zoo import binary_label_set

    seen = tuple(sorted(set(labels)))
    if len(seen) == 1:
        return binary_label_set(seen[0], label_map=label_map)
    return seen


class LabelModels:
    """Surrogates and verifiers over one label set (see the module docstring)."""

    def __init__(self, label_set: Sequence[str], surrogates: Sequence[str | nn.Module] | None,
                 verifiers: Sequence[str | Scorer] | None, *, device: torch.device,
                 templates: str = DEFAULT_TEMPLATES,
                 label_map: LabelMap | str | Mapping | None = None,
                 surrogate_weights: Sequence[float] | None = None) -> None:
        self.label_set = tuple(label_set)
        if len(self.label_set) < 2 or len(set(self.label_set)) != len(self.label_set):
            raise ValueError(f"the label set needs two or more distinct labels, got {label_set}")
        surrogates = DEFAULT_SURROGATES if surrogates is None else surrogates
        verifiers = DEFAULT_VERIFIERS if verifiers is None else verifiers
        self.label_map = load_label_map(label_map)
        self.templates, self.device = templates, device
        shared = {s for s in surrogates if isinstance(s, str)} & {
            v for v in verifiers if isinstance(v, str)}
        held_out = sorted(n for n in shared if not is_solver_name(n))
        if held_out:  # a foreign solver as both is the point: its own graph verifies
            log.warning("warning: %s are both surrogate and verifier: the verifier is not held "
                        "out", held_out)
        no_gradient: list[str] = []
        self.surrogates = build_surrogates(surrogates, self.label_set, device, templates,
                                           self.label_map, no_gradient)
        verifiers = list(verifiers) + [n for n in no_gradient if n not in verifiers]
        if not self.surrogates:
            raise ValueError(
                f"no surrogate left to attack ({', '.join(no_gradient)} cannot be converted to "
                f"torch); add one with a gradient path, e.g. --surrogates "
                f"{','.join([*no_gradient, *DEFAULT_SURROGATES])}")
        self.weights = surrogate_weights
        if self.weights is not None and no_gradient:
            self.weights = [w for s, w in zip(surrogates, self.weights, strict=True)
                            if str(s) not in no_gradient]
        self.verifiers = build_verifiers(verifiers, self.label_set, device, templates,
                                         self.label_map)
        self.notes = [f"{n}: verifier only (no gradient path)" for n in no_gradient]
        self.left_out: dict[str, str] = {}
        self._ensemble = Ensemble(self.surrogates, self.weights)

    def ensemble(self) -> Ensemble:
        return self._ensemble

    def problem(self, truth: Any) -> str | None:
        if truth not in self.label_set:
            more = ", ..." if len(self.label_set) > 12 else ""
            return (f"label {truth!r} is not in the label set "
                    f"({', '.join(self.label_set[:12])}{more})")
        return None

    def encode(self, truths: Sequence[str], targets: Sequence[str | None] | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = list(truths)
        unknown = sorted(set(labels) - set(self.label_set))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the label set {self.label_set}")
        if targets is not None and len(targets) != len(labels):
            raise ValueError(f"{len(labels)} images but {len(targets)} targets")
        if targets is not None:
            bad = [t for t, y in zip(targets, labels, strict=True)
                   if t is not None and (t == y or t not in self.label_set)]
            if bad:
                raise ValueError(f"targets must be in the label set and differ from the labels: "
                                 f"{bad}")
        asked = set(labels) | {t for t in targets or () if t is not None}
        check_known([*self.surrogates, *self.verifiers], sorted(asked))
        index = {lab: i for i, lab in enumerate(self.label_set)}
        y = torch.tensor([index[lab] for lab in labels])
        t = torch.tensor([-1 if d is None else index[d] for d in targets] if targets is not None
                         else [-1] * len(labels))
        return y, t

    def mask(self, images: torch.Tensor, floor: float) -> torch.Tensor:
        return texture_mask(images, floor)

    def verification(self, views: Sequence[View], config: HardenConfig) -> LabelVerification:
        return LabelVerification(self, views, config)

    def check_parity(self, images: Sequence[torch.Tensor]) -> list[str]:
        """Converted solvers against their own onnxruntime graph on the first real tiles. One
        that disagrees there would attack with wrong gradients: it leaves the surrogates (and
        still verifies), with a warning. Returns the names of those that left."""
        solvers = [m for m in self.surrogates if isinstance(m, SolverClassifier)]
        if not solvers or not images:
            return []
        batch = [im for im in images if im.shape == images[0].shape][:8]
        x = as_float(torch.stack(batch))
        failed = []
        for m in solvers:
            try:
                m.solver.check_parity(x)
            except SolverParityError as e:
                log.warning("warning: %s on the first %d tiles of this run: its torch "
                            "gradients would not be the solver's; it is used as a verifier "
                            "only", e, len(batch))
                failed.append(m)
        if not failed:
            return []
        keep = [m for m in self.surrogates if m not in failed]
        if not keep:
            raise SolverParityError(f"no surrogate left: {', '.join(m.name for m in failed)} "
                                    f"failed parity on this run's tiles")
        names = {v.name for v in self.verifiers}
        self.verifiers += [m.solver.verifier(self.label_set, device=self.device.type)
                           for m in failed if m.name not in names]
        self.surrogates = keep
        self._ensemble = Ensemble(keep)
        return [m.name for m in failed]


class LabelVerification:
    """The verifiers' answers under the views of one schedule (see :func:`score_views`)."""

    progress_tol = 1e-3  # a capped margin sum: rises below this are noise

    def __init__(self, models: LabelModels, views: Sequence[View], config: HardenConfig
                 ) -> None:
        self.models, self.views, self.config = models, tuple(views), config
        label_set = models.label_set
        self.perms = []
        for v in models.verifiers:
            if set(v.labels) != set(label_set):
                raise ValueError(f"verifier {v.name} scores labels {v.labels}, "
                                 f"not the label set {label_set}")
            self.perms.append(torch.tensor([v.labels.index(lab) for lab in label_set]))
        # the views that decide for each verifier: all of them for one that is also a
        # surrogate (its own denoising and re-encoding are within reach of its gradients)
        surrogate_names = {getattr(m, "name", None) for m in models.surrogates}
        every = tuple(w.name for w in self.views)
        self.deciding = {v.name: every if v.name in surrogate_names else config.deciding
                         for v in models.verifiers}
        geometric = [w.name for w in self.views if w.geometry is not None]
        for v in models.verifiers:
            if geometric and not takes_geometry(v):
                raise ValueError(f"verifier {v.name} cannot take another preprocessing, which "
                                 f"the views {geometric} of preset {config.transforms!r} need: "
                                 f"give its __call__ a geometry= argument, or choose a preset "
                                 f"without them")
        self.by_name = {m.name: m for m in [*models.surrogates, *models.verifiers]}

    def _scores(self, delivered, y, t, lazy: bool = False):
        return score_views(self.models.verifiers, self.perms, self.views, delivered, y, t,
                           self.config.required_margin, lazy,
                           [self.deciding[v.name] for v in self.models.verifiers])

    def _surrogate_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m.name: m(images).float().cpu() for m in self.models.surrogates}

    def _verdict(self, scores, detail=None) -> Verdict:
        return Verdict(scores.mins >= self.config.required_margin, scores.score, detail)

    def admit(self, delivered, clean, y, t) -> Verdict:
        scores = self._scores(delivered, y, t)
        return self._verdict(scores, (scores, self._surrogate_logits(clean)))

    def before(self, verdict: Verdict, row: int) -> tuple[dict, dict]:
        """(model -> logits on the clean tile, verifier -> view -> logits)."""
        scores, slog = verdict.detail
        before = {n: z[row] for n, z in {**slog, **scores.own}.items()}
        views = {v: {w: z[row] for w, z in d.items()} for v, d in scores.logits.items()}
        return before, views

    def lazy(self, delivered, y, t) -> Verdict:
        return self._verdict(self._scores(delivered, y, t, lazy=True))

    def final(self, delivered, originals, y, t) -> Verdict:
        scores = self._scores(delivered, y, t)
        return self._verdict(scores, (scores, self._surrogate_logits(delivered), y, t))

    def result(self, slot, reason: str, i: int, verdict: Verdict,
               figures: Mapping[str, float]) -> LabelResult:
        scores, slog, y, t = verdict.detail
        label_set, need = self.models.label_set, self.config.required_margin
        before_logits, before_views = slot.before
        after = {n: z[i] for n, z in slog.items()}
        after.update({n: z[i] for n, z in scores.own.items()})
        pred_b, sel_b, prob_b = readouts(self.by_name, label_set, before_logits)
        pred_a, sel_a, prob_a = readouts(self.by_name, label_set, after)
        fooled = float(scores.mins[i]) >= need
        label, target = label_set[int(y[i])], (label_set[int(t[i])] if int(t[i]) >= 0 else None)
        views_b = view_selections(self.by_name, label_set, before_views, None)
        views_a = view_selections(self.by_name, label_set, scores.logits, i)
        return LabelResult(
            index=slot.index,
            image=to_uint8(slot.best_q),
            label=label,
            target=target,
            status="fooled" if fooled else "unfooled",
            fooled_every_view=float(scores.strict[i]) >= need,
            deciding={n: list(d) for n, d in self.deciding.items()},
            stop_reason=reason,
            steps=slot.steps,
            fooled_at=slot.fooled_at if fooled else None,
            predictions_before=pred_b,
            predictions_after=pred_a,
            selected_before=sel_b,
            selected_after=sel_a,
            probabilities_before=prob_b,
            probabilities_after=prob_a,
            margins={n: float(m[i]) for n, m in scores.per_verifier.items()},
            margins_by_view={n: {w: float(m[i]) for w, m in d.items()}
                             for n, d in scores.by_view.items()},
            selected_by_view_before=views_b,
            selected_by_view_after=views_a,
            right_before=_right(views_b, label, target),
            right_after=_right(views_a, label, target),
            notes=slot.notes,
            **figures,
        )


def _right(selections: Mapping[str, Mapping[str, list[str]]], label: str, target: str | None
           ) -> dict[str, dict[str, bool]]:
    """verifier -> view -> its answer is still the one the attacker has to change: it selects
    the tile's label (a decoy row: it does not select the decoy)."""
    return {v: {w: (target not in sel) if target is not None else (label in sel)
                for w, sel in d.items()} for v, d in selections.items()}


__all__ = ["LabelModels", "LabelVerification", "build_surrogates", "build_verifiers",
           "check_known", "default_label_set"]
