"""``advx harden --task text`` as a function: stream the captchas a labels.csv lists through
one TextHardener, writing each hardened captcha and its record as soon as it is finished.

The files are those of an image run (records.py): the captchas at their relative paths under
OUT, ``results.jsonl`` (one record per captcha, appended and fsync'ed as each finishes; see
text_records.py for a text record), ``summary.json`` and ``report.html`` (text_report.py).
Unusable rows (a missing or unreadable image, an empty text, characters a solver cannot
read, a path listed twice with different texts) get an error record and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ... import __version__
from ...export.files import write_text_atomic
from ..config import HardenConfig
from ..errors import RunError
from ..images import ImageLoadError, load_image, save_image_atomic
from ..tasks.labels.dataset import DatasetError
from ..tasks.text.records import summarize_text, text_record
from ..tasks.text.report import write_text_report
from ..tasks.text.rows import TextRow, read_text_labels
from ..working import MIN_SIDE
from . import records as rec
from .run import Progress, check_dirs, chunked

if TYPE_CHECKING:  # torch: imported where a run builds its solvers
    from ..results import TextResult
    from ..tasks.text.api import TextHardener

LABELS = "labels.csv"  # the default labels file, in the input folder
RESUME_KEYS = ("asked",)  # besides the config: what --resume compares with the earlier run


@dataclass(frozen=True)
class TextJob:
    input_dir: Path
    out_dir: Path
    labels_csv: Path
    config: HardenConfig
    surrogates: tuple[str, ...] | None = None  # None: every built-in OCR solver installed
    verifiers: tuple[str, ...] | None = None
    resume: bool = False


@dataclass
class _Loaded:
    """A captcha loaded and handed to the engine, waiting for its result."""

    row: TextRow
    pixels: np.ndarray  # uint8 HxWx3
    notes: list[str]


def harden_text_folder(input_dir: str | Path, out_dir: str | Path, *,
                       labels_csv: str | Path | None = None,
                       config: HardenConfig | None = None,
                       surrogates: Sequence[str] | None = None,
                       verifiers: Sequence[str] | None = None,
                       resume: bool = False, show_progress: bool = True,
                       warn: Callable[[str], None] = print) -> dict:
    """Harden the text captchas listed in ``labels_csv`` (default ``input_dir/labels.csv``:
    a ``path,text`` header, paths relative to ``input_dir``) into ``out_dir``.

    ``surrogates`` / ``verifiers``: OCR solver names (default: every built-in one whose files
    are installed, see :data:`advx.engine.tasks.text.api.DEFAULT_TEXT_SOLVERS`); ``config``: default
    :func:`advx.engine.tasks.text.api.text_config`. ``resume=True`` finishes an earlier run in
    ``out_dir``, keeping each record whose path and text are unchanged. Returns the summary
    (also written to ``summary.json``; ``interrupted`` is set after Ctrl-C). Raises
    DatasetError / RunError / model errors before anything is written.
    """
    from ..tasks.text.api import text_config  # torch: loaded only by a run

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    job = TextJob(input_dir, out_dir, Path(labels_csv) if labels_csv else input_dir / LABELS,
                  config or text_config(), tuple(surrogates) if surrogates else None,
                  tuple(verifiers) if verifiers else None, resume)
    return run_text(job, show_progress=show_progress, warn=warn)


def run_text(job: TextJob, *, show_progress: bool = True,
             warn: Callable[[str], None] = print) -> dict:
    """Run ``job`` (see :func:`harden_text_folder`); returns the summary."""
    if not job.input_dir.is_dir():
        raise DatasetError(f"input folder not found: {job.input_dir}")
    if not job.labels_csv.is_file():
        raise DatasetError(f"labels file not found: {job.labels_csv}; a text run needs a CSV "
                           f"with a 'path,text' header (--labels)")
    rows = read_text_labels(job.labels_csv)
    if not rows:
        raise DatasetError(f"{job.labels_csv.name}: no entries after the header")
    check_dirs(job.input_dir, job.out_dir)
    cfg = job.config
    outputs = rec.output_paths([r.path for r in rows if r.problem is None], cfg.output_format)
    info = {"config": dataclasses.asdict(cfg),
            "asked": {"surrogates": list(job.surrogates) if job.surrogates else None,
                      "verifiers": list(job.verifiers) if job.verifiers else None}}
    kept = _kept(job, rows, outputs, info, warn)
    pending = [r for r in rows if r.problem is not None or r.path not in kept]
    order = {r.path: i for i, r in enumerate(rows)}
    ordered_kept = sorted(kept.values(), key=lambda r: order[r["path"]])

    t_setup = time.perf_counter()
    hardener, solvers = None, _earlier_solvers(job.out_dir)
    if any(r.problem is None for r in pending):
        hardener, solvers = _build_hardener(job)
    info["setup_seconds"] = round(time.perf_counter() - t_setup, 3)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rec.remove_temp_files(job.out_dir)
    results = job.out_dir / rec.RESULTS
    write_text_atomic(results, "".join(rec.dumps(r) + "\n" for r in ordered_kept))

    t0 = time.perf_counter()
    progress = Progress(len(rows), ordered_kept, show_progress)
    kept_hardened = progress.hardened
    interrupted = False
    try:
        with rec.RecordWriter(results) as writer:
            def record(r: dict) -> None:
                writer.append(r)
                progress.update(r)

            for chunk in chunked(pending, 2 * cfg.batch_size):
                batch = _prepare(job, hardener, chunk, record)
                if batch:
                    hardener.run([b.pixels for b in batch], [b.row.text for b in batch],
                                 on_result=lambda r, batch=batch: record(
                                     _deliver(job, hardener, batch[r.index], r, outputs)))
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        progress.close()
        with contextlib.suppress(Exception):  # the first error is the one to report
            _finish(job, len(rows), info, solvers, time.perf_counter() - t0, progress,
                    kept_hardened, False, error=f"{type(exc).__name__}: {exc}")
        raise
    progress.close()
    return _finish(job, len(rows), info, solvers, time.perf_counter() - t0, progress,
                   kept_hardened, interrupted)


def _kept(job: TextJob, rows: Sequence[TextRow], outputs: dict[str, str], info: dict,
          warn: Callable[[str], None]) -> dict[str, dict]:
    """path -> the earlier record a resumed run keeps: its output exists (or it is an error)
    and its text is still the row's."""
    results = job.out_dir / rec.RESULTS
    if not results.exists():
        return {}
    if not job.resume:
        raise RunError(f"{job.out_dir} already holds {rec.RESULTS} from an earlier run: pass "
                       f"--resume to finish that run, or choose another --out")
    old, bad = rec.read_records(results)
    if bad:
        warn(f"resume: skipped {bad} unreadable line(s) of {rec.RESULTS} (a torn write)")
    changed = rec.changed_options(job.out_dir, info, RESUME_KEYS)
    if changed:
        warn(f"resume: options differ from the earlier run ({', '.join(changed)}); finished "
             f"captchas keep their earlier settings")
    text = {r.path: r.text for r in rows if r.problem is None}
    return {p: r for p, r in rec.records_to_keep(job.out_dir, old, outputs).items()
            if r.get("text") == text[p]}


def _build_hardener(job: TextJob) -> tuple[TextHardener, dict]:
    """The solvers, loaded once (before OUT is touched), and what the summary says of them."""
    from ..tasks.text.api import TextHardener

    hardener = TextHardener(surrogates=job.surrogates, verifiers=job.verifiers,
                            config=job.config)
    names, left_out = hardener.solver_names, hardener.left_out
    return hardener, {**names, "left_out": left_out, "notes": list(hardener.notes)}


def _earlier_solvers(out_dir: Path) -> dict | None:
    """The solvers of the earlier run (a resumed run with nothing left loads none)."""
    try:
        return json.loads((out_dir / rec.SUMMARY).read_text(encoding="utf-8")).get("solvers")
    except (OSError, ValueError, AttributeError):
        return None


def _prepare(job: TextJob, hardener: TextHardener | None, chunk: Sequence[TextRow],
             record: Callable[[dict], None]) -> list[_Loaded]:
    """Load a chunk of captchas; an unusable one gets its error record at once (the reason
    names the CSV line)."""
    out = []
    for row in chunk:
        def fail(reason: str, notes: Sequence[str] = (), row: TextRow = row) -> None:
            record(rec.error_record(row.path, row.text, reason, [*row.notes, *notes],
                                    truth="text"))

        where = f"{job.labels_csv.name} line {row.line}"
        if row.problem is not None:
            fail(row.problem)
            continue
        try:
            loaded = load_image(job.input_dir / row.path)
        except ImageLoadError as e:
            fail(f"{where}: {e.reason}")
            continue
        h, w = loaded.pixels.shape[:2]
        if min(h, w) < MIN_SIDE:
            fail(f"{where}: image too small to harden: {w}x{h}; sides must be >= {MIN_SIDE} "
                 f"px", loaded.notes)
            continue
        why = hardener.check_text(row.text)
        if why:
            fail(f"{where}: {why}", loaded.notes)
            continue
        out.append(_Loaded(row, loaded.pixels, [*row.notes, *loaded.notes]))
    return out


def _deliver(job: TextJob, hardener: TextHardener, item: _Loaded, result: TextResult,
             outputs: dict[str, str]) -> dict:
    """Write the hardened captcha (atomically) and return its record."""
    cfg = job.config
    out = outputs[item.row.path]
    save_image_atomic(job.out_dir / out, result.image, fmt=cfg.output_format,
                      quality=cfg.jpeg_quality)
    charsets = {v.name: v.charset for v in hardener.verifiers}
    return text_record(item.row.path, out, result, charsets, item.notes)


def _finish(job: TextJob, total: int, info: dict, solvers: dict | None, seconds: float,
            progress: Progress, kept_hardened: int, interrupted: bool,
            error: str | None = None) -> dict:
    """Write summary.json and report.html for what results.jsonl holds now
    (``kept_hardened``: captchas hardened by an earlier run, not timed by this one)."""
    records, _ = rec.read_records(job.out_dir / rec.RESULTS)
    records.sort(key=lambda r: r["path"])
    new_hardened = progress.hardened - kept_hardened
    summary = {
        "task": "text",
        "advx_version": __version__,
        "input": str(job.input_dir),
        "labels": str(job.labels_csv),
        "output": str(job.out_dir),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": len(records) >= total,
        "interrupted": interrupted,
        "error": error,  # why the run stopped, when it failed
        **summarize_text(records, total=total),
        "seconds": round(seconds, 3),
        "seconds_per_captcha": round(seconds / new_hardened, 3) if new_hardened else None,
        "new_this_run": progress.new,
        "output_format": job.config.output_format,
        "solvers": solvers,
        **info,
    }
    write_text_atomic(job.out_dir / rec.SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_text_report(job.out_dir, records, summary, job.input_dir)
    return summary


__all__ = ["TextJob", "harden_text_folder", "run_text"]
