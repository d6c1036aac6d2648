"""``advx harden`` as a function: stream a labelled folder through one Hardener, writing each
image and its record as soon as it is finished (see records.py for the files and resume)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ... import __version__
from ...export.defaults import DEFAULT_TEMPLATES
from ...export.files import write_text_atomic
from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE, DEFAULT_SURROGATES, DEFAULT_VERIFIERS
from ..errors import RunError
from ..images import ImageLoadError, load_image, save_image_atomic
from ..tasks.labels.dataset import discover
from ..working import MIN_SIDE, downscale, full_size_delivery, working_size
from . import records as rec
from .distributed import Batch, RayOptions, RayPool
from .report import write_report


@dataclass(frozen=True)
class HardenJob:
    input_dir: Path
    out_dir: Path
    labels_csv: Path | None = None
    label_set: tuple[str, ...] | None = None  # None: the sorted labels seen
    surrogates: tuple[str, ...] = DEFAULT_SURROGATES
    verifiers: tuple[str, ...] = DEFAULT_VERIFIERS
    config: HardenConfig = field(default_factory=HardenConfig)
    templates: str = DEFAULT_TEMPLATES
    resume: bool = False
    max_side: int = DEFAULT_MAX_SIDE  # longer sides above this are attacked on a downscaled copy
    label_map: Path | None = None  # JSON labels -> ImageNet classes, before the built-in map
    decoy: str | None = None  # push tiles of other labels to be selected as this one
    ray: RayOptions | None = None  # spread the images over Ray workers


@dataclass
class Outcome:
    summary: dict
    interrupted: bool
    resume_hint: str


@dataclass
class _Pending:
    """An input loaded and handed to the engine, waiting for its result."""

    path: str
    label: str
    notes: list[str]
    working: np.ndarray | None = None  # the downscaled copy of a large image
    full_size: tuple[int, int] | None = None  # (W, H) of a large image


class Progress:
    """Counts what is done; shows a tqdm bar on stderr unless quiet."""

    def __init__(self, total: int, kept: Sequence[dict], show: bool) -> None:
        self.fooled = sum(r["status"] == "fooled" for r in kept)
        self.hardened = sum(r["status"] != "error" for r in kept)
        self.new = 0
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
            self.fooled += record["status"] == "fooled"
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resolve_label_set(labels_seen: Sequence[str], given: Sequence[str] | None,
                      label_map=None) -> tuple[str, ...]:
    """--label-set, or the sorted labels seen; one label alone is a binary challenge ("select
    all X") against the built-in negatives."""
    if not given:
        from ..api import default_label_set  # torch: see _build_hardener

        return default_label_set(labels_seen, label_map)
    unknown = sorted(set(labels_seen) - set(given))
    if unknown:
        raise RunError(f"labels {unknown} of the input are not in --label-set {','.join(given)}")
    return tuple(given)


def check_dirs(input_dir: Path, out_dir: Path) -> None:
    inp, out = input_dir.resolve(), out_dir.resolve()
    if out.is_relative_to(inp) or inp.is_relative_to(out):
        raise RunError(f"--out {out_dir} and INPUT {input_dir} must not contain one another "
                       f"(INPUT is never modified); choose another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out_dir} exists and is not a folder")


def chunked(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def run_info(job: HardenJob, label_set: Sequence[str]) -> dict:
    """What produced the outputs (compared on --resume)."""
    return {"config": dataclasses.asdict(job.config), "surrogates": list(job.surrogates),
            "verifiers": list(job.verifiers), "templates": job.templates,
            "label_set": list(label_set), "max_side": job.max_side,
            "label_map": str(Path(job.label_map).resolve()) if job.label_map else None,
            # the map itself, so that `advx eval` of the outputs needs no path that may not
            # resolve from where it runs
            "label_map_entries": (json.loads(Path(job.label_map).read_text(encoding="utf-8"))
                                  if job.label_map else None),
            "decoy": job.decoy}


_RESUME_KEYS = ("surrogates", "verifiers", "templates", "label_set", "max_side", "label_map",
                "decoy")


def _changed_options(out_dir: Path, info: dict) -> list[str]:
    return rec.changed_options(out_dir, info, _RESUME_KEYS)


def run_harden(job: HardenJob, *, show_progress: bool = True,
               warn: Callable[[str], None] = print) -> Outcome:
    """Harden every input of ``job`` not yet done; write results.jsonl, summary.json and
    report.html. Raises RunError / DatasetError / model errors before touching ``out_dir``;
    returns with ``interrupted`` set on Ctrl-C (what is finished is kept)."""
    if job.labels_csv is None and (job.input_dir / rec.RESULTS).exists():
        raise RunError(f"{job.input_dir} is an advx output folder (it has {rec.RESULTS}); its "
                       f"{rec.REPORT_FILES}/ would be read as a label. To harden its images "
                       f"again, list them in a --labels CSV")
    from ...export.zoo import load_label_map  # torch: see _build_hardener

    items = discover(job.input_dir, job.labels_csv)
    label_map = load_label_map(job.label_map)
    label_set = resolve_label_set([it.label for it in items], job.label_set, label_map)
    if job.decoy is not None and job.decoy not in label_set:
        raise RunError(f"--decoy {job.decoy!r} is not in the label set "
                       f"({', '.join(label_set[:12])}{', ...' if len(label_set) > 12 else ''})")
    check_dirs(job.input_dir, job.out_dir)
    outputs = rec.output_paths([it.path for it in items], job.config.output_format)
    results = job.out_dir / rec.RESULTS
    info = run_info(job, label_set)
    kept: dict[str, dict] = {}
    if results.exists():
        if not job.resume:
            raise RunError(f"{job.out_dir} already holds {rec.RESULTS} from an earlier run: pass "
                           f"--resume to finish that run, or choose another --out")
        old, bad = rec.read_records(results)
        kept = rec.records_to_keep(job.out_dir, old, outputs)
        if bad:
            warn(f"resume: skipped {bad} unreadable line(s) of {rec.RESULTS} (a torn write)")
        changed = _changed_options(job.out_dir, info)
        if changed:
            warn(f"resume: options differ from the earlier run ({', '.join(changed)}); "
                 f"finished images keep their earlier settings")
    pending = [it for it in items if it.path not in kept]
    index = {it.path: i for i, it in enumerate(items)}
    ordered_kept = sorted(kept.values(), key=lambda r: index[r["path"]])

    t_setup = time.perf_counter()
    asked = sorted({it.label for it in pending} | ({job.decoy} if job.decoy else set()))
    hardener = pool = None
    if pending and job.ray is not None:
        pool = RayPool(job.ray, functools.partial(_build_hardener, job, label_set, label_map,
                                                  asked))
        info["ray_workers"] = pool.size
    elif pending:
        hardener = _build_hardener(job, label_set, label_map, asked)
    info["setup_seconds"] = round(time.perf_counter() - t_setup, 3)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rec.remove_temp_files(job.out_dir)
    write_text_atomic(results, "".join(rec.dumps(r) + "\n" for r in ordered_kept))

    t0 = time.perf_counter()
    progress = Progress(len(items), ordered_kept, show_progress)
    interrupted = False
    try:
        with rec.RecordWriter(results) as writer:
            def record(r: dict) -> None:
                writer.append(r)
                progress.update(r)

            def deliver(batch, result) -> None:
                record(_deliver(job, batch.context[result.index], result, outputs))

            batches = (b for c in chunked(pending, 2 * job.config.batch_size)
                       if (b := _prepare(job, c, record)) is not None)
            if pool is not None:
                pool.run(batches, deliver)
            else:
                for b in batches:
                    hardener.run(b.images, b.labels, b.targets,
                                 on_result=lambda r, b=b: deliver(b, r))
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:
        progress.close()
        with contextlib.suppress(Exception):  # the first error is the one to report
            _finish(job, len(items), info, time.perf_counter() - t0, progress.new, False,
                    error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if pool is not None:
            pool.close()
    progress.close()
    summary = _finish(job, len(items), info, time.perf_counter() - t0, progress.new,
                      interrupted)
    hint = (f"advx harden {shlex.quote(str(job.input_dir))} --out {shlex.quote(str(job.out_dir))}"
            f" --resume  (with the options used before)")
    return Outcome(summary, interrupted, hint)


def _build_hardener(job: HardenJob, label_set: Sequence[str], label_map,
                    asked: Sequence[str]):
    """The models, checked to know every label the run asks about (before OUT is touched)."""
    # The engine's torch side (the API, the zoo) is imported where a run builds its models, in
    # this process or in each Ray worker: the folder package itself loads without torch.
    from ..api import Hardener, check_known

    hardener = Hardener(label_set, surrogates=job.surrogates, verifiers=job.verifiers,
                        config=job.config, templates=job.templates, label_map=label_map)
    check_known([*hardener.ensemble.members, *hardener.verifiers], asked)
    return hardener


def _prepare(job: HardenJob, chunk, record: Callable[[dict], None]):
    """Load a chunk of inputs (large ones downscaled to their working copy); unreadable or
    too-small ones get their error record at once. None when nothing is left to attack."""
    images, labels, pending = [], [], []
    for it in chunk:
        try:
            loaded = load_image(job.input_dir / it.path)
        except ImageLoadError as e:
            record(rec.error_record(it.path, it.label, e.reason))
            continue
        px, notes = loaded.pixels, list(loaded.notes)
        h, w = px.shape[:2]
        size = working_size(w, h, job.max_side)
        if min(size or (w, h)) < MIN_SIDE:
            why = f"image too small to harden: {w}x{h}" + (
                f" (working copy {size[0]}x{size[1]})" if size else "")
            record(rec.error_record(it.path, it.label, f"{why}; sides must be >= {MIN_SIDE} px",
                                    notes))
            continue
        p = _Pending(it.path, it.label, notes)
        if size is not None:
            p.working, p.full_size = downscale(px, size), (w, h)
            px = p.working
        images.append(px)
        labels.append(it.label)
        pending.append(p)
    if not images:
        return None
    targets = None if job.decoy is None else [None if y == job.decoy else job.decoy
                                              for y in labels]
    return Batch(images, labels, targets, pending)


def _deliver(job: HardenJob, p: _Pending, result, outputs: dict[str, str]) -> dict:
    """Write the hardened image (atomically) and return its record."""
    cfg = job.config
    image, notes, extra = result.image, list(p.notes), {}
    if p.working is not None:
        try:  # reloaded rather than kept in memory
            original = load_image(job.input_dir / p.path).pixels
        except ImageLoadError as e:
            return rec.error_record(p.path, p.label, f"unreadable on reload: {e.reason}", notes)
        if original.shape[1::-1] != p.full_size:
            return rec.error_record(p.path, p.label, "the input changed during the run", notes)
        image, extra, scale = full_size_delivery(original, p.working, result.image, cfg)
        if scale < 1:  # rare: the floor holds at full size too
            notes.append(f"perturbation scaled by {scale:.3f} at full size to hold SSIM >= "
                         f"{cfg.ssim_floor}")
        wh, ww = p.working.shape[:2]
        notes.append(f"attacked at {ww}x{wh}; perturbation upsampled to full size "
                     f"{p.full_size[0]}x{p.full_size[1]}; status, predictions and margins refer "
                     f"to the working copy, metrics to the full-size image")
    out = outputs[p.path]
    save_image_atomic(job.out_dir / out, image, fmt=cfg.output_format, quality=cfg.jpeg_quality)
    record = rec.result_record(p.path, out, result.to_record(), notes)
    record.update(extra)
    return record


def _finish(job: HardenJob, total: int, info: dict, seconds: float, new: int,
            interrupted: bool, error: str | None = None) -> dict:
    """Write summary.json and report.html for what results.jsonl holds now."""
    records, _ = rec.read_records(job.out_dir / rec.RESULTS)
    records.sort(key=lambda r: r["path"])
    summary = {
        "advx_version": __version__,
        "input": str(job.input_dir),
        "output": str(job.out_dir),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": len(records) >= total,
        "interrupted": interrupted,
        "error": error,  # why the run stopped, when it failed
        **rec.summarize(records, total=total),
        "images_per_s": round(new / seconds, 4) if seconds > 0 and new else None,
        "seconds": round(seconds, 3),
        "new_this_run": new,
        **info,
    }
    write_text_atomic(job.out_dir / rec.SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_report(job.out_dir, records, summary, job.input_dir)
    return summary


def harden_folder(input_dir: str | Path, out_dir: str | Path, *,
                  labels_csv: str | Path | None = None,
                  label_set: Sequence[str] | None = None,
                  surrogates: Sequence[str] = DEFAULT_SURROGATES,
                  verifiers: Sequence[str] = DEFAULT_VERIFIERS,
                  config: HardenConfig | None = None,
                  templates: str = DEFAULT_TEMPLATES,
                  label_map: str | Path | None = None,
                  decoy: str | None = None,
                  max_side: int = DEFAULT_MAX_SIDE,
                  resume: bool = False,
                  ray: str | RayOptions | None = None,
                  show_progress: bool = False,
                  warn: Callable[[str], None] = print) -> Outcome:
    """Harden a labelled folder into ``out_dir`` exactly as ``advx harden`` does: images at
    their relative paths, ``results.jsonl`` (a record per input, appended as each finishes),
    ``summary.json`` and ``report.html``; ``resume=True`` finishes an interrupted run.

    ``ray``: ``"local"``, ``"auto"``, a cluster address or :class:`RayOptions` to spread the
    images over Ray workers (records are the same as in one process with the same seed).
    Returns the summary; raises :class:`~advx.engine.errors.RunError` and the typed dataset
    and model errors before anything is written.
    """
    job = HardenJob(
        input_dir=Path(input_dir), out_dir=Path(out_dir),
        labels_csv=Path(labels_csv) if labels_csv else None,
        label_set=tuple(label_set) if label_set else None,
        surrogates=tuple(surrogates), verifiers=tuple(verifiers),
        config=config or HardenConfig(), templates=templates,
        label_map=Path(label_map) if label_map else None, decoy=decoy, max_side=max_side,
        resume=resume, ray=RayOptions(ray) if isinstance(ray, str) else ray)
    return run_harden(job, show_progress=show_progress, warn=warn)
