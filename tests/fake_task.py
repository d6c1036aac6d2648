"""A third task, written as a user would add one: one module, one registry entry.

``shade``: an image is "dark" or "bright"; a solver answers one of the two (two logits) and is
fooled when it answers the other. Its models are tiny nets named ``shade-net-<seed>``; its
labels CSV reads ``path,shade``. Nothing outside this module knows it: the scheduler, the
folder run and report, the service and the command line take it as they take the built-in
tasks (tests/test_tasks.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advx.engine.attacks.ensemble import Ensemble
from advx.engine.pixels import texture_mask, to_uint8
from advx.engine.results import HardenResult
from advx.engine.tasks import Task, Verdict
from advx.engine.views.view import SeenTiles, by_cost, look

SHADES = ("dark", "bright")


class ShadeNet(nn.Module):
    """Two logits from a small random conv net plus the mean brightness (so that a clean image
    is answered right, and the attack has real work to do)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.name = f"shade-net-{seed}"
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 40 * (x.mean((1, 2, 3)) - 0.5) + 0.1 * self.net(x)[:, 0]
        return torch.stack([-z, z], 1)


@dataclass(kw_only=True)
class ShadeResult(HardenResult):
    task = "shade"
    shade: str
    answers_after: dict[str, dict[str, str]]


class ShadeEnsemble(Ensemble):
    def member_loss(self, i, objective, logits, labels, targets) -> torch.Tensor:
        other = logits.gather(1, (1 - labels)[:, None])[:, 0]
        return (other - logits.gather(1, labels[:, None])[:, 0]).clamp(max=20)


class ShadeModels:
    def __init__(self, surrogates, verifiers) -> None:
        def build(names):
            return [n if isinstance(n, nn.Module) else ShadeNet(int(n.rsplit("-", 1)[1]))
                    for n in names]

        self.surrogates = build(surrogates or ["shade-net-0"])
        self.verifiers = build(verifiers or ["shade-net-1"])
        self.notes: list[str] = []
        self.left_out: dict[str, str] = {}
        self._ensemble = ShadeEnsemble(self.surrogates)

    def ensemble(self):
        return self._ensemble

    def problem(self, truth: Any) -> str | None:
        return None if truth in SHADES else f"shade {truth!r} is neither dark nor bright"

    def encode(self, truths, targets):
        if targets is not None and any(t is not None for t in targets):
            raise ValueError("shade runs are untargeted")
        bad = [t for t in truths if t not in SHADES]
        if bad:
            raise ValueError(f"shades must be dark or bright, got {bad}")
        y = torch.tensor([SHADES.index(t) for t in truths])
        return y, torch.full_like(y, -1)

    def mask(self, images, floor):
        return texture_mask(images, floor)

    def verification(self, views, config):
        return ShadeVerification(self, views, config)

    def check_parity(self, images):
        return []


class ShadeVerification:
    progress_tol = 1e-3

    def __init__(self, models: ShadeModels, views, config) -> None:
        self.models, self.views, self.config = models, tuple(views), config
        self.deciding = {v.name: config.deciding for v in models.verifiers}

    def _pass(self, delivered, y, views=None) -> Verdict:
        need = self.config.required_margin
        n = len(delivered)
        done, score = torch.ones(n, dtype=torch.bool), torch.zeros(n)
        answers: dict[str, dict[str, list[str]]] = {v.name: {} for v in self.models.verifiers}
        views = by_cost(views or self.views)
        seen, rows = SeenTiles(delivered, views), torch.arange(n)
        for w in views:
            tiles = seen(w, rows)
            for v in self.models.verifiers:
                z = look(v, tiles, w).float().cpu()
                margin = z.gather(1, (1 - y)[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]
                answers[v.name][w.name] = [SHADES[int(i)] for i in z.argmax(1)]
                if w.name in self.deciding[v.name]:
                    done &= margin >= need
                    score += margin.clamp(max=need)
        return Verdict(done, score, answers)

    def admit(self, delivered, clean, y, t):
        return self._pass(delivered, y)

    def before(self, verdict: Verdict, row: int):
        return {v: {w: a[row] for w, a in d.items()} for v, d in verdict.detail.items()}

    def lazy(self, delivered, y, t):
        return self._pass(delivered, y, [w for w in self.views
                                         if any(w.name in d for d in self.deciding.values())])

    def final(self, delivered, originals, y, t):
        v = self._pass(delivered, y)
        v.detail = (v.detail, [SHADES[int(i)] for i in y])
        return v

    def result(self, slot, reason, i, verdict, figures) -> ShadeResult:
        answers, truths = verdict.detail
        after = {v: {w: a[i] for w, a in d.items()} for v, d in answers.items()}
        fooled = bool(verdict.done[i])
        return ShadeResult(
            index=slot.index, image=to_uint8(slot.best_q), shade=truths[i],
            status="fooled" if fooled else "unfooled", stop_reason=reason, steps=slot.steps,
            fooled_at=slot.fooled_at if fooled else None, fooled_every_view=fooled,
            deciding={n: list(d) for n, d in self.deciding.items()},
            right_before={v: {w: a == truths[i] for w, a in d.items()}
                          for v, d in slot.before.items()},
            right_after={v: {w: a == truths[i] for w, a in d.items()} for v, d in after.items()},
            answers_after=after, notes=slot.notes, **figures)


class ShadeTask(Task):
    name = "shade"
    truth = "shade"
    noun = "image"
    preset = "jpeg"
    columns = "path,shade"
    about = "dark or bright images against shade nets (a test's own task)"

    def load(self, surrogates, verifiers, *, config, device, **options):
        return ShadeModels(surrogates, verifiers)

    def default_models(self):
        return ("shade-net-0",), ("shade-net-1",)

    def load_scorers(self, names, *, device, **options):
        return ShadeModels(None, names).verifiers, []

    def answers(self, scorers, images, views, truths):
        from advx.engine.pixels import as_float

        x = as_float(torch.stack(list(images)))
        return {s.name: {w.name: [SHADES[int(i)] for i in look(s, w.images(x), w).argmax(1)]
                         for w in views} for s in scorers}

    def right(self, answer: Any, truth: Any, scorer: Any) -> bool:
        return answer == truth

    def report_gallery(self, out_dir: Path, input_root: Path, records: Sequence[dict]
                       ) -> list[str]:
        return [f"<p class='shade'>{r['path']}: {r['shade']} -> "
                f"{sorted({a for d in r['answers_after'].values() for a in d.values()})}</p>"
                for r in records]

    def view_figures(self, rows: Sequence[dict], verifier: str, view: str
                     ) -> Mapping[str, Any]:
        return {"answered_bright": sum(r["answers_after"][verifier][view] == "bright"
                                       for r in rows)}


def write_shades(folder: Path, n: int = 4, size: int = 24, seed: int = 0) -> Path:
    """``n`` images alternately dark and bright (noisy), and their labels.csv."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,shade"]
    for i in range(n):
        shade = SHADES[i % 2]
        base = 0.4 if shade == "dark" else 0.6
        px = np.clip(rng.normal(base, 0.08, (size, size, 3)), 0, 1)
        Image.fromarray((px * 255).astype(np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{shade}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"
