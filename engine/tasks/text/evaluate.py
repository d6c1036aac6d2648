"""What OCR solvers read on a folder of text captchas, under each view of the ``text`` preset,
and how often hardened captchas fool them: ``advx eval --task text`` as a library call
(:func:`evaluate_text_folder`).

The set is a folder with a CSV whose header names ``path`` and ``text`` (other columns
ignored; paths relative to the folder; read as ``advx harden --task text`` reads it), or the
output folder of an advx text run: its results.jsonl gives each hardened captcha, the input it
came from and its text, its summary.json the input folder (where the originals are). With the
originals (``clean``: the same relative paths; for a run, the inputs its records name) a solver
is fooled on a captcha under a view when it read the original right under that view and
misreads the hardened one. A row that cannot be evaluated (a path outside the folder, one
listed with two texts, a missing, unreadable or tiny image or original, an empty truth or one a
solver cannot read) is skipped and its reason listed; the figures, those of
:func:`~advx.engine.tasks.text.eval.fooled_table`, are over the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from ....export.solver.charset import truth_problem
from ...errors import RunError
from ...folder.records import RESULTS, SUMMARY, read_records
from ...images import ImageLoadError, load_image
from ...views.presets import get_preset
from ...views.view import views_of
from ...working import MIN_SIDE  # the smallest side a run hardens (and serve takes)
from .api import TEXT_PRESET
from .eval import Reads, fooled_table, read_views
from .rows import read_text_labels

CHUNK = 256  # captchas decoded and read at a time


@dataclass(frozen=True)
class TextRow:
    where: str  # where the row was listed ("labels.csv line 3"), for its skip reason
    path: str  # the captcha evaluated, POSIX, relative to the set's folder
    text: str  # its truth
    clean: str | None = None  # its original, relative to the clean folder (None: none)


@dataclass
class TextEvalSet:
    root: Path
    rows: list[TextRow]
    source: str  # "folder" | "advx run"
    clean_root: Path | None = None  # the originals' folder (None: read rates only)
    skipped: list[str] = field(default_factory=list)  # "where: why", one per row left out
    notes: list[str] = field(default_factory=list)


def relative_file(root: Path, raw: str) -> tuple[str | None, str | None]:
    """(``raw`` as a POSIX path inside ``root``, None), or (None, why it is not a file there):
    empty, absolute, climbing out with ``..`` or a link, or missing."""
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


def read_text_csv(root: Path, labels_csv: Path, clean_root: Path | None = None
                  ) -> tuple[list[TextRow], list[str]]:
    """The rows of a labels CSV (read as a text run reads it:
    :func:`~advx.engine.tasks.text.rows.read_text_labels`) that name a file under ``root``
    (and an original under ``clean_root``), and why the others are skipped. Raises
    DatasetError for a file that is not such a CSV."""
    name = Path(labels_csv).name
    rows, skipped = [], []
    for r in read_text_labels(Path(labels_csv)):
        where = f"{name} line {r.line}"
        why = r.problem
        if why is None:
            why = relative_file(root, r.path)[1]
            why = None if why is None else f"{where}: {why}"
        if why is None and clean_root is not None:
            why = relative_file(clean_root, r.path)[1]
            why = None if why is None else f"{where}: its original: {why}"
        if why is not None:
            skipped.append(why)  # the problem names its line(s) already
            continue
        rows.append(TextRow(where, r.path, r.text, r.path if clean_root is not None else None))
    return rows, skipped


def _run_rows(root: Path, clean_root: Path | None) -> tuple[list[TextRow], list[str]]:
    """The hardened captchas an advx text run's results.jsonl lists, and why others are out."""
    records, bad = read_records(root / RESULTS)
    if records and all("text" not in r and "label" in r for r in records):
        raise RunError(f"{root} holds an image run (its records have labels, not texts); "
                       f"evaluate it with --task image")
    rows, skipped = [], [f"{RESULTS}: {bad} unreadable line(s)"] if bad else []
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: r["path"]):
        where = f"{RESULTS} {r['path']!r}"
        if r.get("status") == "error" or not isinstance(r.get("output"), str):
            skipped.append(f"{where}: not hardened ({r.get('error') or 'no output'})")
            continue
        key, why = relative_file(root, r["output"])
        if why is None and key in seen:
            why = f"{key!r} listed again"
        if why is None and clean_root is not None:
            src, why = relative_file(clean_root, r["path"])
            why = None if why is None else f"its original: {why}"
        if why is not None:
            skipped.append(f"{where}: {why}")
            continue
        seen.add(key)
        rows.append(TextRow(where, key, r.get("text"),
                            src if clean_root is not None else None))
    return rows, skipped


def load_text_set(input_dir: Path, labels_csv: Path | None = None,
                  clean_dir: Path | None = None) -> TextEvalSet:
    """A folder listed by a ``path,text`` CSV, or an advx text run's output folder (its
    originals found through summary.json unless ``clean_dir`` says where they are)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise RunError(f"input folder not found: {input_dir}")
    if clean_dir is not None and not Path(clean_dir).is_dir():
        raise RunError(f"--clean {clean_dir} is not a folder")
    clean = Path(clean_dir) if clean_dir is not None else None
    if (input_dir / RESULTS).exists():
        if labels_csv is not None:
            raise RunError(f"{input_dir} is an advx output folder (it has {RESULTS}); --labels "
                           f"is for folders of captchas")
        notes = []
        if clean is None:
            try:
                given = json.loads((input_dir / SUMMARY).read_text("utf-8"))["input"]
            except (OSError, ValueError, KeyError, TypeError):
                given = None
            if isinstance(given, str) and Path(given).is_dir():
                clean = Path(given)
            else:
                notes.append(f"the originals of this run ({SUMMARY}: input {given!r}) are not "
                             f"found: read rates only; pass --clean DIR for the fooled figures")
        rows, skipped = _run_rows(input_dir, clean)
        return TextEvalSet(input_dir, rows, "advx run", clean, skipped, notes)
    if labels_csv is None:
        raise RunError(f"{input_dir}: text captchas need --labels CSV (columns path,text)")
    rows, skipped = read_text_csv(input_dir, Path(labels_csv), clean)
    return TextEvalSet(input_dir, rows, "folder", clean, skipped)


def load_text_solvers(names: Sequence[str] | None = None) -> tuple[list, list[str]]:
    """:func:`advx.engine.tasks.text.api.load_text_solvers`, with "name: why" for each solver left
    out; a RunError when none loads."""
    from .api import load_text_solvers as load

    solvers, gone = load(names)
    left_out = [f"{n}: {why}" for n, why in gone.items()]
    if not solvers:
        raise RunError(f"none of the built-in OCR solvers loads: {'; '.join(left_out)}")
    return solvers, left_out


def _pixels(path: Path) -> tuple[torch.Tensor | None, str | None]:
    """[3, H, W] uint8, or None and why not."""
    try:
        px = load_image(path).pixels
    except ImageLoadError as e:
        return None, e.reason
    if min(px.shape[:2]) < MIN_SIDE:
        return None, (f"{px.shape[1]}x{px.shape[0]} px is too small to read (sides of at least "
                      f"{MIN_SIDE} px)")
    return torch.from_numpy(px.copy()).permute(2, 0, 1).contiguous(), None


def _extend(into: Reads, more: Reads) -> None:
    for name, views in more.items():
        for w, reads in views.items():
            into.setdefault(name, {}).setdefault(w, []).extend(reads)


def read_set(verifiers: Sequence, data: TextEvalSet, views: Sequence, charsets: dict,
             chunk: int = CHUNK) -> tuple[list[str], Reads, Reads | None]:
    """Each verifier's reading under each view of every row that can be read (and of its
    original), a chunk of rows at a time; the others go to ``data.skipped``."""
    texts: list[str] = []
    reads: Reads = {}
    clean: Reads | None = {} if data.clean_root is not None else None
    todo = []
    for row in data.rows:
        why = truth_problem(row.text, charsets.values())
        if why is not None:
            data.skipped.append(f"{row.where}: {why}")
        else:
            todo.append(row)
    for lo in range(0, len(todo), chunk):
        ok, ims, originals = [], [], []
        for row in todo[lo : lo + chunk]:
            im, why = _pixels(data.root / row.path)
            if im is not None and clean is not None:
                orig, why = _pixels(data.clean_root / row.clean)
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
        texts += [r.text for r in ok]
        _extend(reads, read_views(verifiers, ims, views))
        if clean is not None:
            _extend(clean, read_views(verifiers, originals, views))
    return texts, reads, clean


def text_figures(charsets: dict, texts: Sequence[str], reads: Reads, clean: Reads | None = None,
                 deciding: Sequence[str] = ()) -> list[dict]:
    """One row per solver and view: the read rate and mean CER of ``reads``; with the
    originals' ``clean`` readings, their read rate and CER too and ``fooled`` among the
    captchas read right clean under that view (``fooled_rate`` of those)."""
    given = fooled_table(charsets, texts, reads)
    before = fooled_table(charsets, texts, clean) if clean is not None else None
    pairs = fooled_table(charsets, texts, clean, reads) if clean is not None else None
    rows = []
    for name, views in given.items():
        for w, g in views.items():
            row = {"solver": name, "view": w, "deciding": w in deciding, "n": g["n"],
                   "read": g["read_clean"], "read_rate": g["read_clean_rate"], "cer": g["cer"]}
            if pairs is not None:
                p = pairs[name][w]
                row.update(read_clean=p["read_clean"], read_clean_rate=p["read_clean_rate"],
                           cer_clean=before[name][w]["cer"], fooled=p["fooled"],
                           fooled_rate=p["fooled_rate"])
            rows.append(row)
    return rows


def evaluate_text_folder(input_dir: str | Path, solvers: Sequence[str] | None = None, *,
                         labels_csv: str | Path | None = None,
                         clean_dir: str | Path | None = None, device: str = "auto") -> dict:
    """``advx eval --task text``: read the captchas of ``input_dir`` (see the module docstring)
    with every solver of ``solvers`` (default: every built-in OCR solver that loads), as its
    package reads them, under each view of the ``text`` preset.

    Returns the set (``input``, ``source``, ``clean``), the ``solvers`` read with and those
    ``left_out``, the ``captchas`` evaluated, the rows ``skipped`` (where: why), ``notes`` and
    :func:`text_figures`'s rows as ``results``.
    """
    from ...api import resolve_device

    data = load_text_set(Path(input_dir), Path(labels_csv) if labels_csv else None,
                         Path(clean_dir) if clean_dir else None)
    loaded, left_out = load_text_solvers(solvers)
    dev = resolve_device(device)
    verifiers = [s.verifier(device=dev.type) for s in loaded]
    charsets = {s.name: s.charset for s in loaded}
    preset = get_preset(TEXT_PRESET)
    texts, reads, clean = read_set(verifiers, data, views_of(preset), charsets)
    if not texts:
        shown = "; ".join(data.skipped[:5]) or "the set lists none"
        raise RunError(f"no captcha of {input_dir} could be evaluated ({shown})")
    return {"task": "text", "input": str(input_dir), "source": data.source,
            "clean": None if data.clean_root is None else str(data.clean_root),
            "transforms": TEXT_PRESET, "solvers": list(charsets), "left_out": left_out,
            "captchas": len(texts), "skipped": data.skipped, "notes": data.notes,
            "results": text_figures(charsets, texts, reads, clean, preset.deciding)}


__all__ = ["TextEvalSet", "TextRow", "evaluate_text_folder", "load_text_set",
           "load_text_solvers", "read_set", "read_text_csv", "relative_file", "text_figures"]
