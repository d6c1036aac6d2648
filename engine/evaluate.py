"""``advx eval`` as a library call, for every task: how the models answer a set of items under
each view of a preset, and how often a hardened set fools them.

The set is a folder as ``advx harden`` reads it, or an advx run's output folder (its records
name the hardened images, their inputs and truths; its summary.json the task, the originals'
folder and the options). With the originals, a model is fooled on an item under a view when it
answered the original right and answers the hardened one wrong; items it answered wrong clean
are counted apart. An item that cannot be evaluated is skipped, its reason listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from .errors import RunError
from .folder.records import RESULTS, SUMMARY, read_records, read_summary
from .images import ImageLoadError, load_image
from .tasks.base import LABELS_CSV, Task, get_task
from .views.presets import get_preset
from .views.view import views_of
from .working import MIN_SIDE  # the smallest side a run hardens (and serve takes)

CHUNK = 128  # items decoded and answered at a time


@dataclass(frozen=True)
class EvalRow:
    where: str  # where the item was listed ("labels.csv line 3"), for its skip reason
    path: str  # the image evaluated, POSIX, relative to the set's folder
    truth: Any
    clean: str | None = None  # its original, relative to the clean folder (None: none)


@dataclass
class EvalSet:
    task: Task
    root: Path
    rows: list[EvalRow]
    source: str  # "folder" | "advx run"
    clean_root: Path | None = None  # the originals' folder (None: no fooled figures)
    run: dict = field(default_factory=dict)  # the run's summary.json (an advx run)
    skipped: list[str] = field(default_factory=list)  # "where: why", one per item left out
    notes: list[str] = field(default_factory=list)


def relative_file(root: Path, raw: str) -> tuple[str | None, str | None]:
    """(``raw`` as a POSIX path inside ``root``, None), or (None, why it is not a file there)."""
    raw = raw.strip()
    if not raw:
        return None, "empty path"
    rel = PurePosixPath(raw.replace("\\", "/"))
    if rel.is_absolute() or Path(raw).is_absolute() or Path(raw).drive:
        return None, f"path {raw!r} must be relative to {root}"
    if ".." in rel.parts:
        return None, f"path {raw!r} points outside {root}"
    full = root / rel
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside:
        return None, f"path {raw!r} leads outside {root} (a link)"
    if not full.is_file():
        return None, f"no file {rel.as_posix()!r} under {root}"
    return rel.as_posix(), None


def load_set(input_dir: Path, task: str | Task | None = None, labels_csv: Path | None = None,
             clean_dir: Path | None = None) -> EvalSet:
    """A folder as a task reads it, or an advx run's output folder (its task and originals
    found through summary.json unless given)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise RunError(f"input folder not found: {input_dir}")
    if clean_dir is not None and not Path(clean_dir).is_dir():
        raise RunError(f"--clean {clean_dir} is not a folder")
    clean = Path(clean_dir) if clean_dir is not None else None
    if not (input_dir / RESULTS).exists():
        t = get_task(task or "labels")
        rows, skipped = [], []
        for r in t.read_rows(input_dir, labels_csv):
            where = (f"{Path(labels_csv or LABELS_CSV).name} line {r.line}" if r.line
                     else r.path)
            why = r.problem or relative_file(input_dir, r.path)[1]
            if why is None and clean is not None:
                why = relative_file(clean, r.path)[1]
                why = None if why is None else f"its original: {why}"
            if why is not None:
                skipped.append(why if r.problem else f"{where}: {why}")
                continue
            rows.append(EvalRow(where, r.path, r.truth, r.path if clean is not None else None))
        return EvalSet(t, input_dir, rows, "folder", clean, {}, skipped)
    if labels_csv is not None:
        raise RunError(f"{input_dir} is an advx output folder (it has {RESULTS}); --labels "
                       f"is for folders of inputs")
    run = read_summary(input_dir)
    t = get_task(run.get("task") or task or "labels")
    if task is not None and get_task(task).name != t.name:
        raise RunError(f"{input_dir} holds a {t.name} run; evaluate it with --task {t.name}")
    notes = []
    if clean is None:
        given = run.get("input")
        if isinstance(given, str) and Path(given).is_dir():
            clean = Path(given)
        else:
            notes.append(f"the originals of this run ({SUMMARY}: input {given!r}) are not "
                         f"found: no fooled figures; pass --clean DIR for them")
    records, bad = read_records(input_dir / RESULTS)
    rows, skipped = [], [f"{RESULTS}: {bad} unreadable line(s)"] if bad else []
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: r["path"]):
        where = f"{RESULTS} {r['path']!r}"
        if r.get("status") == "error" or not isinstance(r.get("output"), str):
            skipped.append(f"{where}: not hardened ({r.get('error') or 'no output'})")
            continue
        key, why = relative_file(input_dir, r["output"])
        if why is None and key in seen:
            why = f"{key!r} listed again"
        src = None
        if why is None and clean is not None:
            src, why = relative_file(clean, r["path"])
            why = None if why is None else f"its original: {why}"
        if why is not None:
            skipped.append(f"{where}: {why}")
            continue
        seen.add(key)
        rows.append(EvalRow(where, key, r.get(t.truth), src))
    if not rows:
        raise RunError(f"{input_dir / RESULTS} lists no hardened images")
    return EvalSet(t, input_dir, rows, "advx run", clean, run, skipped, notes)


def read_pixels(path: Path) -> tuple[torch.Tensor | None, str | None]:
    """[3, H, W] uint8, or None and why not."""
    try:
        px = load_image(path).pixels
    except ImageLoadError as e:
        return None, e.reason
    if min(px.shape[:2]) < MIN_SIDE:
        return None, (f"{px.shape[1]}x{px.shape[0]} px is too small (sides of at least "
                      f"{MIN_SIDE} px)")
    return torch.from_numpy(px.copy()).permute(2, 0, 1).contiguous(), None


def _extend(into: dict, more: dict) -> None:
    for name, views in more.items():
        for w, got in views.items():
            into.setdefault(name, {}).setdefault(w, []).extend(got)


def read_set(data: EvalSet, scorers: Sequence, views: Sequence
             ) -> tuple[list[Any], dict, dict | None]:
    """Each scorer's answer under each view of every readable item (and of its original); the
    others go to ``data.skipped``."""
    task = data.task
    truths: list[Any] = []
    answers: dict = {}
    clean: dict | None = {} if data.clean_root is not None else None
    todo = []
    for row in data.rows:
        why = task.eval_problem(scorers, row.truth)
        if why is not None:
            data.skipped.append(f"{row.where}: {why}")
        else:
            todo.append(row)
    for lo in range(0, len(todo), CHUNK):
        ok, ims, originals = [], [], []
        for row in todo[lo : lo + CHUNK]:
            im, why = read_pixels(data.root / row.path)
            if im is not None and clean is not None:
                orig, why = read_pixels(data.clean_root / row.clean)
                why = None if why is None else f"its original {row.clean}: {why}"
            if why is not None:
                data.skipped.append(f"{row.where}: {why}")
                continue
            ok.append(row)
            ims.append(im)
            if clean is not None:
                originals.append(orig)
        if not ok:
            continue
        truths += [r.truth for r in ok]
        _extend(answers, task.answers(scorers, ims, views, [r.truth for r in ok]))
        if clean is not None:
            _extend(clean, task.answers(scorers, originals, views, [r.truth for r in ok]))
    return truths, answers, clean


def figures(task: Task, scorers: Sequence, truths: Sequence[Any], answers: Mapping,
            clean: Mapping | None = None, deciding: Sequence[str] = ()) -> list[dict]:
    """Per scorer and view: ``right_rate``; with the originals ``right_clean_rate`` and the
    ``fooled_rate`` among the items right clean; and the task's own figures."""
    out = []
    for s in scorers:
        for w, got in answers[s.name].items():
            rows = [{"truth": t, "answer": a} for t, a in zip(truths, got, strict=True)]
            right = [task.right(a, t, s) for t, a in zip(truths, got, strict=True)]
            row = {"model": s.name, "view": w, "deciding": w in deciding, "n": len(truths),
                   "right": sum(right),
                   "right_rate": round(sum(right) / len(truths), 4) if truths else None}
            if clean is not None:
                before = clean[s.name][w]
                for r, c in zip(rows, before, strict=True):
                    r["clean"] = c
                was = [task.right(c, t, s) for t, c in zip(truths, before, strict=True)]
                fooled = sum(a and not b for a, b in zip(was, right, strict=True))
                row.update(right_clean=sum(was),
                           right_clean_rate=round(sum(was) / len(truths), 4),
                           fooled=fooled,
                           fooled_rate=round(fooled / sum(was), 4) if sum(was) else None)
            row.update({k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in task.eval_figures(rows, s).items()})
            out.append(row)
    return out


def scoring_options(task: Task, run: Mapping[str, Any], truths: Sequence[Any],
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The task's options to read ``truths`` with: ``options`` over an advx run's own (its
    ``summary.json``: the label set, templates and label map it was hardened with)."""
    given = {k: run[k] for k in ("label_set", "templates") if run.get(k) and k in task.options}
    if run.get("label_map_entries") is not None and "label_map" in task.options:
        given["label_map"] = run["label_map_entries"]
    opts = task.plan_run(truths, {**given, **{k: v for k, v in (options or {}).items()
                                              if v is not None}})
    opts.pop("decoy", None)
    return opts


def evaluate_folder(input_dir: str | Path, models: Sequence[str] | None = None, *,
                    task: str | None = None, labels_csv: str | Path | None = None,
                    clean_dir: str | Path | None = None, transforms: str | None = None,
                    device: str = "auto", **options: Any) -> dict:
    """``advx eval``: answer the items of ``input_dir`` with ``models`` (default: the task's
    verifiers) under each view of ``transforms`` (default: an advx run's own, else the task's
    preset). ``task`` and ``options`` default to an advx run's own (else ``labels``). Returns
    the set, the models read with and ``left_out``, the items evaluated and ``skipped``,
    ``notes`` and :func:`figures`'s rows as ``results``."""
    data = load_set(Path(input_dir), task, Path(labels_csv) if labels_csv else None,
                    Path(clean_dir) if clean_dir else None)
    t = data.task
    unknown = sorted(set(options) - set(t.options))
    if unknown:
        raise RunError(f"the {t.name} task takes no option {', '.join(unknown)}")
    truths = [r.truth for r in data.rows]
    opts = scoring_options(t, data.run, truths, options)
    scorers, left_out = t.load_scorers(models, device=device, truths=truths, **opts)
    if not scorers:
        raise RunError(f"no model to evaluate with: {'; '.join(left_out)}")
    preset = get_preset(transforms or (data.run.get("config") or {}).get("transforms")
                        or t.preset)
    got_truths, answers, clean = read_set(data, scorers, views_of(preset))
    if not got_truths:
        shown = "; ".join(data.skipped[:5]) or "the set lists none"
        raise RunError(f"no item of {input_dir} could be evaluated ({shown})")
    return {"task": t.name, "input": str(input_dir), "source": data.source,
            "clean": None if data.clean_root is None else str(data.clean_root),
            "transforms": preset.name, "models": [s.name for s in scorers],
            "left_out": left_out, "items": len(got_truths), "skipped": data.skipped,
            "notes": data.notes,
            **({"label_set": list(opts["label_set"])} if "label_set" in opts else {}),
            "results": figures(t, scorers, got_truths, answers, clean, preset.deciding)}


__all__ = ["EvalRow", "EvalSet", "evaluate_folder", "figures", "load_set", "read_pixels",
           "read_set", "relative_file", "scoring_options"]
