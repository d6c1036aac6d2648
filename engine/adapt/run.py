"""The check's driver (see :mod:`advx.engine.adapt`): split, retrain per size, read, the
counter-moves, and the output folder that a rerun goes on from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...export.files import write_text_atomic
from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE
from ..devices import resolve_device
from ..errors import RunError
from ..evaluate import EvalSet, figures, load_set, read_pixels, read_set, scoring_options
from ..folder.run import harden_folder
from ..tasks.base import Task
from ..views.presets import get_preset
from ..views.view import views_of
from .report import headline, write_report
from .split import Split, split_rows
from .train import fit

RESULT = "adapt.json"


@dataclass(frozen=True)
class AdaptConfig:
    sizes: tuple[int, ...] = (0, 50, 200, 1000)  # hardened items each copy trains on (0: none)
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4  # Adam
    held_out: float = 0.2  # share of the run's items (whole sources) never trained on
    seed: int = 0
    counter_moves: bool = True  # fresh perturbations and a second round (two more hardenings)

    def __post_init__(self) -> None:
        if not self.sizes or any(n < 0 for n in self.sizes):
            raise ValueError(f"sizes must be non-negative training set sizes, not {self.sizes}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")


class _Check:
    """One check's state in its output folder."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out, self.path = out, out / RESULT
        header = json.loads(json.dumps(header))  # as read back (tuples as lists)
        self.state = {**header, "stages": [], "rows": []}
        if self.path.exists():
            old = json.loads(self.path.read_text())
            changed = [k for k in header if old.get(k) != header[k]]
            if changed:
                raise RunError(f"{out} holds a check with other {', '.join(changed)}; choose "
                               f"another --out")
            self.state = old

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def add(self, stage: str, rows: Sequence[dict]) -> None:
        self.state["rows"] += rows
        self.state["stages"].append(stage)
        write_text_atomic(self.path, json.dumps(self.state, indent=1) + "\n")


def _images(data: EvalSet, rows) -> list[torch.Tensor]:
    out = []
    for r in rows:
        px, why = read_pixels(data.root / r.path)
        if px is None:
            raise RunError(f"{r.where}: {why}")
        out.append(px)
    return out


def adapt_run(run_dir: str | Path, out_dir: str | Path, *, solver: str | None = None,
              config: AdaptConfig = AdaptConfig(), device: str = "auto",
              echo: Callable[[str], None] = print, show_progress: bool = False) -> dict:
    """Retrain ``solver`` (default: the run's first verifier) on the hardened items of the advx
    run in ``run_dir`` and read its held-out items after each epoch (see the package's
    docstring). Writes ``adapt.json`` (as it goes), ``split.json``, the retrained models and
    ``report.html`` to ``out_dir``; returns adapt.json's content."""
    data = load_set(Path(run_dir))
    if data.source != "advx run":
        raise RunError(f"{run_dir} is not an advx output folder: harden it first")
    if data.clean_root is None:
        raise RunError(f"the originals of {run_dir} are not found: {'; '.join(data.notes)}")
    task, run = data.task, data.run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = solver or (run.get("verifiers") or task.default_models()[1])[0]
    cfg = dataclasses.replace(config, sizes=tuple(sorted(set(config.sizes))))
    split = split_rows(data.rows, data.clean_root, cfg.held_out, cfg.seed)
    sizes = tuple(n for n in cfg.sizes if n <= len(split.train))
    if not sizes:
        raise RunError(f"{len(split.train)} items to train on: every size of {cfg.sizes} is "
                       f"larger; give smaller --sizes")
    if len(sizes) < len(cfg.sizes):
        echo(f"note: {len(split.train)} items to train on: sizes above it left out")
    check = _Check(out, {"run": str(Path(run_dir).resolve()), "task": task.name,
                         "solver": name, "config": {**dataclasses.asdict(cfg), "sizes": sizes}})
    write_text_atomic(out / "split.json", json.dumps(split.record(), indent=1) + "\n")
    dev = resolve_device(device)
    opts = scoring_options(task, run, [r.truth for r in data.rows])
    preset = get_preset((run.get("config") or {}).get("transforms") or task.preset)
    ctx = _Context(task, data, split, opts, views_of(preset), preset.deciding, dev, check,
                   echo, show_progress)
    echo(f"{len(split.train)} items to train on, {len(split.held)} held out "
         f"({len({r.clean.split('/')[0] for r in split.held})} sources); solver {name}")
    held = dataclasses.replace(data, rows=list(split.held), skipped=[])
    models = {}
    for n in sizes:
        models[n] = ctx.retrain(name, n, cfg, cfg.seed, held)
    if cfg.counter_moves and max(sizes) > 0:
        ctx.counter_moves(name, models, cfg, run, held)
    check.state["headline"] = headline(check.state, ctx.views[0].name)
    write_text_atomic(check.path, json.dumps(check.state, indent=1) + "\n")
    write_report(out, check.state)
    return check.state


@dataclass
class _Context:
    task: Task
    data: EvalSet
    split: Split
    opts: dict[str, Any]
    views: tuple
    deciding: tuple
    device: torch.device
    check: _Check
    echo: Callable[[str], None]
    show_progress: bool

    def read(self, where: EvalSet, model: str, tags: dict) -> list[dict]:
        """``model``'s answers on ``where`` (hardened, and its originals) under each view."""
        where = dataclasses.replace(where, skipped=[])
        truths = [r.truth for r in where.rows]
        scorers, _ = self.task.load_scorers([model], device=str(self.device), truths=truths,
                                            **self.opts)
        got, answers, clean = read_set(where, scorers, self.views)
        rows = figures(self.task, scorers, got, answers, clean, self.deciding)
        return [{**tags, **r, "model": model} for r in rows]

    def retrain(self, name: str, n: int, cfg: AdaptConfig, seed: int, held: EvalSet,
                tag: str = "") -> str:
        """The copy of ``name`` trained on the first ``n`` training items (``n`` = 0: the
        solver as it is), read on the held-out items after each epoch; its model name."""
        stage = f"n{n}{tag}"
        if n == 0:
            if not self.check.done(stage):
                self.check.add(stage, self.read(held, name, {"set": "held-out", "trained_on": 0,
                                                             "epoch": 0, "copy": "original"}))
            return name
        folder = self.check.out / "models" / stage
        spec = folder / "solver.json"
        if self.check.done(f"{stage}/e{cfg.epochs}"):
            return f"onnx:{spec}"
        rows = self.split.train[:n]  # a prefix of the training items split_rows checked
        images = _images(self.data, rows)
        trainee = self.task.trainee(name, device=self.device, **self.opts)
        label = f"{name}@{n}{tag}"
        example = torch.stack([im for im in images if im.shape == images[0].shape][:4]
                              ).float() / 255  # what the written graph is traced and checked on
        bar = _bar(self.show_progress, n * cfg.epochs, f"retraining on {n}{tag}")

        def on_epoch(epoch: int) -> None:
            if self.check.done(f"{stage}/e{epoch}"):
                return
            model = trainee.save(folder, example, label)
            self.check.add(f"{stage}/e{epoch}", self.read(
                held, model, {"set": "held-out", "trained_on": n, "epoch": epoch,
                              "copy": "independent" if tag else "retrained"}))
            right = [r for r in self.check.state["rows"][-len(self.views):]
                     if r["view"] == self.views[0].name]
            if right:
                self.echo(f"  {label} epoch {epoch}: reads {_pct(right[0]['right_rate'])} of "
                          f"the held-out hardened items, {_pct(right[0]['right_clean_rate'])} "
                          f"clean ({self.views[0].name})")

        fit(trainee, images, [r.truth for r in rows], epochs=cfg.epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=self.device,
            checkpoint=folder / "checkpoint.pt", on_epoch=on_epoch,
            progress=lambda k: bar.update(k))
        bar.close()
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        return f"onnx:{spec}"

    def harden(self, folder: str, run: dict, seed: int, add: Sequence[str] = ()) -> EvalSet:
        """The held-out originals hardened again as the run did, with ``seed`` (and the models
        ``add`` among its surrogates and verifiers)."""
        task, out = self.task, self.check.out / folder
        csv = self.check.out / "held-out.csv"
        if not csv.exists():
            lines = [f"path,{task.truth}"] + [
                f"{_cell(r.clean)},{_cell(task.truth_text(r.truth))}" for r in self.split.held]
            write_text_atomic(csv, "\n".join(lines) + "\n")
        conf = {k: tuple(v) if isinstance(v, list) else v
                for k, v in (run.get("config") or {}).items()}
        config = dataclasses.replace(HardenConfig(**conf), seed=seed)
        sur, ver = task.default_models()
        surrogates = [*(run.get("surrogates") or sur), *add]
        verifiers = [*(run.get("verifiers") or ver), *add]
        options = {k: run[k] for k in task.options if run.get(k) is not None}
        self.echo(f"hardening the held-out originals again ({folder}, seed {seed})")
        harden_folder(self.data.clean_root, out, task=task.name, labels_csv=csv,
                      surrogates=surrogates, verifiers=verifiers, config=config,
                      max_side=run.get("max_side") or DEFAULT_MAX_SIDE,
                      resume=(out / "results.jsonl").exists(),
                      show_progress=self.show_progress, warn=self.echo, **options)
        return load_set(out)

    def counter_moves(self, name: str, models: dict[int, str], cfg: AdaptConfig, run: dict,
                      held: EvalSet) -> None:
        top = max(models)
        seed = int((run.get("config") or {}).get("seed", 0))
        if not self.check.done("fresh"):
            fresh = self.harden("fresh", run, seed + 1)
            rows = []
            for n, model in models.items():
                rows += self.read(fresh, model, {"set": "fresh", "trained_on": n,
                                                 "epoch": cfg.epochs if n else 0,
                                                 "copy": "retrained" if n else "original"})
            self.check.add("fresh", rows)
        other = self.retrain(name, top, cfg, cfg.seed + 1, held, tag="-independent")
        if not self.check.done("second-round"):
            second = self.harden("second-round", run, seed + 2, add=[models[top]])
            rows = []
            for copy, model in (("original", name), ("retrained", models[top]),
                                ("independent", other)):
                rows += self.read(second, model, {"set": "second-round", "trained_on":
                                                  0 if copy == "original" else top,
                                                  "epoch": 0 if copy == "original"
                                                  else cfg.epochs, "copy": copy})
            self.check.add("second-round", rows)


def _cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _bar(show: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not show, leave=False)


__all__ = ["RESULT", "AdaptConfig", "adapt_run"]
