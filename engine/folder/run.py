"""``advx harden`` as a function, for every task: the items of a folder streamed through one
Hardener (or Ray workers), each hardened image and its record written as soon as it is
finished. An unusable item gets an error record and the run goes on; an image over
``max_side`` is attacked on a downscaled working copy where the task allows it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...export.files import write_text_atomic
from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE
from ..errors import RunError
from ..images import ImageLoadError, load_image, save_image_atomic
from ..rows import Row
from ..tasks.base import LABELS_CSV, Task, get_task
from ..working import MIN_SIDE, downscale, full_size_delivery, working_size
from . import records as rec
from .distributed import Batch, RayOptions, RayPool
from .html import write_report


@dataclass(frozen=True)
class HardenJob:
    input_dir: Path
    out_dir: Path
    task: str = "labels"
    labels_csv: Path | None = None  # None: the task's folder layout, or INPUT/labels.csv
    surrogates: tuple[str, ...] | None = None  # None: the task's defaults
    verifiers: tuple[str, ...] | None = None
    config: HardenConfig = field(default_factory=HardenConfig)
    # the task's own options (labels: label_set, label_map (a JSON file), templates, decoy)
    options: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False
    max_side: int = DEFAULT_MAX_SIDE  # longer sides above this: a working copy (or refused)
    ray: RayOptions | None = None  # spread the images over Ray workers


@dataclass
class Outcome:
    summary: dict
    interrupted: bool
    resume_hint: str


@dataclass
class _Pending:
    """An input loaded and handed to the engine, waiting for its result."""

    row: Row
    notes: list[str]
    working: np.ndarray | None = None  # the downscaled copy of a large image
    full_size: tuple[int, int] | None = None  # (W, H) of a large image


class Progress:
    """Counts what is done; shows a tqdm bar on stderr unless quiet."""

    def __init__(self, total: int, kept: Sequence[dict], show: bool) -> None:
        self.fooled = sum(r["status"] == "fooled" for r in kept)
        self.hardened = sum(r["status"] != "error" for r in kept)
        self.new = self.new_hardened = 0
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=len(kept), unit="img", desc="hardening",
                            dynamic_ncols=True, leave=True)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None and self.hardened:
            self.bar.set_postfix_str(f"fooled {self.fooled / self.hardened:.0%}", refresh=False)

    def update(self, record: dict) -> None:
        self.new += 1
        if record["status"] != "error":
            self.hardened += 1
            self.new_hardened += 1
            self.fooled += record["status"] == "fooled"
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_dirs(input_dir: Path, out_dir: Path) -> None:
    inp, out = input_dir.resolve(), out_dir.resolve()
    if out.is_relative_to(inp) or inp.is_relative_to(out):
        raise RunError(f"--out {out_dir} and INPUT {input_dir} must not contain one another "
                       f"(INPUT is never modified); choose another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out_dir} exists and is not a folder")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _plain(value: Any) -> bool:
    """A JSON scalar, or a list of them (not None, not a loaded object)."""
    values = value if isinstance(value, tuple | list) else [value]
    return all(isinstance(v, str | int | float | bool) for v in values)


def run_info(job: HardenJob, task: Task, config: HardenConfig,
             resolved: Mapping[str, Any] | None = None) -> dict:
    """What produced the outputs (compared on --resume): the options given and those the task
    resolved from the items (``resolved``, :meth:`Task.plan_run`'s: labels' label set)."""
    return {
        "task": task.name, "config": dataclasses.asdict(config),
        "surrogates": None if job.surrogates is None else list(job.surrogates),
        "verifiers": None if job.verifiers is None else list(job.verifiers),
        "max_side": job.max_side,
        **{k: _jsonable(v) for k, v in (resolved or {}).items()
           if k not in job.options and _plain(v)},
        **{k: _jsonable(v) for k, v in job.options.items()}, **task.run_info(job.options)}


def run_harden(job: HardenJob, *, show_progress: bool = True,
               warn: Callable[[str], None] = print) -> Outcome:
    """Harden every input of ``job`` not yet done (see :func:`harden_folder`); on Ctrl-C,
    returns with ``interrupted`` set, what is finished kept."""
    task = get_task(job.task)
    if job.labels_csv is None and (job.input_dir / rec.RESULTS).exists():
        raise RunError(f"{job.input_dir} is an advx output folder (it has {rec.RESULTS}); to "
                       f"harden its images again, list them in a --labels CSV")
    unknown = sorted(set(job.options) - set(task.options))
    if unknown:
        raise RunError(f"the {task.name} task takes no option {', '.join(unknown)}")
    config = job.config.for_task(task)
    rows = task.read_rows(job.input_dir, job.labels_csv)
    check_dirs(job.input_dir, job.out_dir)
    usable = [r for r in rows if r.problem is None]
    options = task.plan_run([r.truth for r in usable], job.options)
    outputs = rec.output_paths([r.path for r in usable], config.output_format)
    info = run_info(job, task, config, options)
    kept = _kept(job, task, rows, outputs, info, warn)
    pending = [r for r in rows if r.problem is not None or r.path not in kept]
    order = {r.path: i for i, r in enumerate(rows)}
    ordered_kept = sorted(kept.values(), key=lambda r: order[r["path"]])

    t_setup = time.perf_counter()
    todo = [r for r in pending if r.problem is None]
    targets = task.targets([r.truth for r in todo], options)
    decoys = dict(zip((r.path for r in todo), targets or [None] * len(todo), strict=True))
    models, hardener, pool = rec.read_summary(job.out_dir).get("models"), None, None
    problems: dict[str, str] = {}
    if todo:
        build = functools.partial(  # picklable: Ray workers build their own
            _hardener, task.name, surrogates=job.surrogates, verifiers=job.verifiers,
            config=config, **{k: v for k, v in options.items() if k != "decoy"})
        if job.ray is not None:
            pool = RayPool(job.ray, build)
            info["ray_workers"] = len(pool.actors)
            try:
                checked, models = pool.check([r.truth for r in todo], targets)
            except BaseException:  # the workers (and a local Ray instance) end with the run
                pool.close()
                raise
        else:
            hardener = build()
            checked = hardener.check([r.truth for r in todo], targets)
            models = hardener.describe()
        problems = {r.path: why for r, why in zip(todo, checked, strict=True) if why}
    info["setup_seconds"] = round(time.perf_counter() - t_setup, 3)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rec.remove_temp_files(job.out_dir)
    results = job.out_dir / rec.RESULTS
    write_text_atomic(results, "".join(rec.dumps(r) + "\n" for r in ordered_kept))

    t0 = time.perf_counter()
    progress = Progress(len(rows), ordered_kept, show_progress)
    interrupted = False
    try:
        with rec.appending(results) as append:
            def record(r: dict) -> None:
                append(r)
                progress.update(r)

            def deliver(batch, result) -> None:
                record(_deliver(job, task, config, batch.context[result.index], result,
                                outputs))

            n = 2 * config.batch_size
            batches = (b for i in range(0, len(pending), n)
                       if (b := _prepare(job, task, pending[i : i + n], problems, decoys,
                                         record)) is not None)
            if pool is not None:
                pool.run(batches, deliver)
            else:
                for b in batches:
                    hardener.run(b.images, b.truths, b.targets,
                                 on_result=lambda r, b=b: deliver(b, r))
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        progress.close()
        with contextlib.suppress(Exception):  # the first error is the one to report
            _finish(job, task, len(rows), info, models, time.perf_counter() - t0, progress,
                    False, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if pool is not None:
            pool.close()
    progress.close()
    summary = _finish(job, task, len(rows), info, models, time.perf_counter() - t0, progress,
                      interrupted)
    hint = (f"advx harden {shlex.quote(str(job.input_dir))} --out {shlex.quote(str(job.out_dir))}"
            + (f" --task {task.name}" if task.name != "labels" else "")
            + " --resume  (with the options used before)")
    return Outcome(summary, interrupted, hint)


def _kept(job: HardenJob, task: Task, rows: Sequence[Row], outputs: dict[str, str],
          info: dict, warn: Callable[[str], None]) -> dict[str, dict]:
    """path -> the earlier record a resumed run keeps: its output exists (or it is an error)
    and its truth is still the row's."""
    results = job.out_dir / rec.RESULTS
    if not results.exists():
        return {}
    if not job.resume:
        raise RunError(f"{job.out_dir} already holds {rec.RESULTS} from an earlier run: pass "
                       f"--resume to finish that run, or choose another --out")
    old, bad = rec.read_records(results)
    if bad:
        warn(f"resume: skipped {bad} unreadable line(s) of {rec.RESULTS} (a torn write)")
    changed = rec.changed_options(job.out_dir, info)
    if changed:
        warn(f"resume: options differ from the earlier run ({', '.join(changed)}); finished "
             f"images keep their earlier settings")
    truth = {r.path: r.truth for r in rows if r.problem is None}
    return {p: r for p, r in rec.records_to_keep(job.out_dir, old, outputs).items()
            if r.get(task.truth) == truth[p] or r["status"] == "error"}


def _hardener(task: str, **kw: Any):
    # torch is imported where the models are built, here or in each Ray worker: a Ray
    # driver never loads it
    from ..api import Hardener

    return Hardener(task, **kw)


def _prepare(job: HardenJob, task: Task, chunk: Sequence[Row], problems: Mapping[str, str],
             decoys: Mapping[str, Any], record: Callable[[dict], None]) -> Batch | None:
    """Load a chunk of inputs (large ones downscaled to their working copy, where the task
    allows it); unusable ones get their error record at once. None when nothing is left."""
    images, pending = [], []
    for row in chunk:
        # a row read from a CSV (line > 0): the one given, else the task's INPUT/labels.csv
        where = (f"{Path(job.labels_csv or LABELS_CSV).name} line {row.line}: " if row.line
                 else "")

        def fail(reason: str, notes: Sequence[str] = (), row: Row = row) -> None:
            record(rec.error_record(row.path, row.truth, reason, [*row.notes, *notes],
                                    truth=task.truth))

        if row.problem is not None:
            fail(row.problem)
            continue
        if row.path in problems:
            fail(where + problems[row.path])
            continue
        try:
            loaded = load_image(job.input_dir / row.path)
        except ImageLoadError as e:
            fail(where + e.reason)
            continue
        px, notes = loaded.pixels, list(loaded.notes)
        h, w = px.shape[:2]
        size = working_size(w, h, job.max_side)
        if size is not None and not task.rescale:
            fail(f"{where}{w}x{h} px is over --max-side {job.max_side}: a {task.noun} is "
                 f"hardened at its own size", notes)
            continue
        if min(size or (w, h)) < MIN_SIDE:
            why = f"image too small to harden: {w}x{h}" + (
                f" (working copy {size[0]}x{size[1]})" if size else "")
            fail(f"{where}{why}; sides must be >= {MIN_SIDE} px", notes)
            continue
        p = _Pending(row, [*row.notes, *notes])
        if size is not None:
            p.working, p.full_size = downscale(px, size), (w, h)
            px = p.working
        images.append(px)
        pending.append(p)
    if not images:
        return None
    targets = [decoys.get(p.row.path) for p in pending]
    return Batch(images, [p.row.truth for p in pending],
                 targets if any(t is not None for t in targets) else None, pending)


def _deliver(job: HardenJob, task: Task, config: HardenConfig, p: _Pending, result,
             outputs: dict[str, str]) -> dict:
    """Write the hardened image (atomically) and return its record."""
    image, notes, extra = result.image, list(p.notes), {}
    path = p.row.path
    if p.working is not None:
        try:  # reloaded rather than kept in memory
            original = load_image(job.input_dir / path).pixels
        except ImageLoadError as e:
            return rec.error_record(path, p.row.truth, f"unreadable on reload: {e.reason}",
                                    notes, truth=task.truth)
        if original.shape[1::-1] != p.full_size:
            return rec.error_record(path, p.row.truth, "the input changed during the run",
                                    notes, truth=task.truth)
        image, extra, scale = full_size_delivery(original, p.working, result.image, config)
        if scale < 1:  # rare: the floor holds at full size too
            notes.append(f"perturbation scaled by {scale:.3f} at full size to hold SSIM >= "
                         f"{config.ssim_floor}")
        wh, ww = p.working.shape[:2]
        notes.append(f"attacked at {ww}x{wh}; perturbation upsampled to full size "
                     f"{p.full_size[0]}x{p.full_size[1]}; status, answers and margins refer "
                     f"to the working copy, metrics to the full-size image")
    out = outputs[path]
    save_image_atomic(job.out_dir / out, image, fmt=config.output_format,
                      quality=config.jpeg_quality)
    record = rec.result_record(path, out, result.to_record(), notes, truth=task.truth)
    record.update(extra)
    return record


def _finish(job: HardenJob, task: Task, total: int, info: dict, models: dict | None,
            seconds: float, progress: Progress, interrupted: bool,
            error: str | None = None) -> dict:
    """Write summary.json and report.html for what results.jsonl holds now."""
    records, _ = rec.read_records(job.out_dir / rec.RESULTS)
    records.sort(key=lambda r: r["path"])
    new = progress.new_hardened
    summary = {
        "task": task.name,
        "advx_version": __version__,
        "input": str(job.input_dir),
        "labels": None if job.labels_csv is None else str(job.labels_csv),
        "output": str(job.out_dir),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": len(records) >= total,
        "interrupted": interrupted,
        "error": error,  # why the run stopped, when it failed
        **rec.summarize(records, task, total=total),
        "images_per_s": round(new / seconds, 4) if seconds > 0 and new else None,
        "seconds_per_image": round(seconds / new, 3) if new else None,
        "seconds": round(seconds, 3),
        "new_this_run": progress.new,
        "models": models,
        **info,
    }
    write_text_atomic(job.out_dir / rec.SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_report(job.out_dir, records, summary, job.input_dir, task)
    return summary


def harden_folder(input_dir: str | Path, out_dir: str | Path, *, task: str = "labels",
                  labels_csv: str | Path | None = None,
                  surrogates: Sequence[str] | None = None,
                  verifiers: Sequence[str] | None = None,
                  config: HardenConfig | None = None,
                  max_side: int = DEFAULT_MAX_SIDE,
                  resume: bool = False,
                  ray: str | RayOptions | None = None,
                  show_progress: bool = False,
                  warn: Callable[[str], None] = print,
                  **options: Any) -> Outcome:
    """Harden a folder into ``out_dir`` exactly as ``advx harden`` does (``resume=True``
    finishes an interrupted run). ``options``: the task's own (``labels``: ``label_set``,
    ``label_map`` (a JSON file), ``templates``, ``decoy``); ``ray``: ``"local"``, ``"auto"``, a
    cluster address or :class:`RayOptions`, the same records as in one process. Raises
    :class:`~advx.engine.errors.RunError` and the dataset and model errors before anything is
    written."""
    job = HardenJob(
        input_dir=Path(input_dir), out_dir=Path(out_dir), task=task,
        labels_csv=Path(labels_csv) if labels_csv else None,
        surrogates=tuple(surrogates) if surrogates else None,
        verifiers=tuple(verifiers) if verifiers else None,
        config=config or HardenConfig(), options=options, max_side=max_side,
        resume=resume, ray=RayOptions(ray) if isinstance(ray, str) else ray)
    return run_harden(job, show_progress=show_progress, warn=warn)
