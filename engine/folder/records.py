"""The files of a harden run: where each output goes, results.jsonl (append-only, resumable)
and summary.json.

results.jsonl holds one JSON record per input. A record is appended (and fsync'ed) only after
its image is on disk, so a run killed at any moment loses at most the images in flight; a
resumed run keeps every record whose output exists, compacts the file and does the rest.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Self, TextIO

import numpy as np

from ..tasks.labels.grids import grid_solve_rate_sets, sample_grids

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
REPORT_FILES = "report_files"
RESERVED = frozenset({RESULTS, SUMMARY, REPORT, REPORT_FILES})
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
# what io.save_image_atomic / write_text_atomic leave behind when killed mid-write
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def output_paths(paths: Sequence[str], fmt: str) -> dict[str, str]:
    """Input path -> output path (both POSIX, relative): the same path with the extension of
    ``fmt``. Inputs that would collide (``a.jpg`` and ``a.png``) keep their old extension in the
    name (``a.jpg.png``); outputs never shadow the run's own files (``_report.html.png``)."""
    ext = EXTENSIONS[fmt]
    base = {p: PurePosixPath(p).with_suffix(ext) for p in paths}
    clashes = Counter(base.values())
    taken: set[str] = set()
    out: dict[str, str] = {}
    for p in sorted(paths):
        cand = base[p]
        if clashes[cand] > 1:
            cand = cand.with_name(PurePosixPath(p).name + ext)
        if cand.parts[0] in RESERVED:
            cand = PurePosixPath("_" + cand.parts[0], *cand.parts[1:])
        name, n = str(cand), 1
        while name in taken:
            name = str(cand.with_name(f"{cand.stem}~{n}{ext}"))
            n += 1
        taken.add(name)
        out[p] = name
    return out


def _finite(value: Any) -> Any:
    """JSON has no inf / nan: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(record: dict) -> str:
    return json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)


def error_record(path: str, label: str, reason: str, notes: Iterable[str] = (), *,
                 truth: str = "label") -> dict:
    """An input that was not hardened; ``truth`` names the field of its answer (``label``, or
    ``text`` for a text captcha)."""
    return {"path": path, "output": None, truth: label, "status": "error", "error": reason,
            "notes": list(notes)}


def result_record(path: str, output: str, engine_record: dict, notes: Iterable[str], *,
                  truth: str = "label") -> dict:
    """A hardened input's record: the engine's ``to_record()`` (``HardenResult``, or
    ``TextResult`` with ``truth="text"``) plus path, output and the load notes (before the
    engine's own notes)."""
    rec = dict(engine_record)
    rec.pop("index", None)  # the position within one engine call, meaningless here
    head = {"path": path, "output": output, truth: rec.pop(truth),
            "status": rec.pop("status"), "error": None,
            "notes": [*notes, *rec.pop("notes", [])]}
    return {**head, **rec}


class RecordWriter:
    """Appends one record per line to results.jsonl, each flushed and fsync'ed."""

    def __init__(self, path: Path) -> None:
        self.fh: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, record: dict) -> None:
        self.fh.write(dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of results.jsonl and the number of lines skipped as unreadable (a line torn
    by a kill, or not a record)."""
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("path"), str) and "status" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def records_to_keep(out_dir: Path, records: Iterable[dict], outputs: dict[str, str]
                    ) -> dict[str, dict]:
    """Input path -> the record a resumed run keeps: the last record of each current input that
    is an error, or whose output is the expected file and exists."""
    kept: dict[str, dict] = {}
    for rec in records:
        path = rec["path"]
        if path not in outputs:
            continue  # the input is gone (or the format changed its name)
        if rec["status"] == "error" or (
            rec.get("output") == outputs[path] and (out_dir / outputs[path]).is_file()
        ):
            kept[path] = rec
        else:
            kept.pop(path, None)
    return kept


def changed_options(out_dir: Path, info: dict, keys: Iterable[str]) -> list[str]:
    """The options of ``info`` (``keys``, and each ``config`` field) that differ from those
    the earlier run's summary.json holds (compared on --resume; none when it is unreadable)."""
    try:
        old = json.loads((out_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    # like with like: this run's options as summary.json holds them (tuples become lists)
    info = json.loads(json.dumps(info, default=str))
    changed = [k for k in keys if k in old and old[k] != info.get(k)]
    changed += [f"config.{k}" for k, v in info["config"].items()
                if k in old.get("config", {}) and old["config"][k] != v]
    return changed


def remove_temp_files(out_dir: Path) -> int:
    """Delete the hidden temp files an atomic write leaves when the process is killed."""
    n = 0
    for dirpath, _dirs, files in os.walk(out_dir):
        for name in files:
            if _TEMP_FILE.match(name):
                Path(dirpath, name).unlink(missing_ok=True)
                n += 1
    return n


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values, to 4 decimals (None when there is none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return round(sum(vals) / len(vals), 4) if vals else None


def summarize(records: Sequence[dict], *, total: int) -> dict:
    """Counts and means over the records (``total`` = inputs in the run)."""
    status = Counter(r["status"] for r in records)
    hardened = [r for r in records if r["status"] != "error"]
    fooled = [r for r in hardened if r["status"] == "fooled"]
    by_step = Counter(int(r["fooled_at"]) for r in fooled if r.get("fooled_at") is not None)
    views = per_view(hardened)
    return {
        "headline": headline(hardened, views),
        "total": total,
        "done": len(records),
        "pending": max(0, total - len(records)),
        "fooled": status["fooled"],
        "unfooled": status["unfooled"],
        "errors": status["error"],
        "fooled_rate": round(len(fooled) / len(hardened), 4) if hardened else None,
        # strict: every verifier wrong under every view, the reported ones included
        "fooled_every_view_rate": (round(sum(bool(r.get("fooled_every_view"))
                                             for r in hardened) / len(hardened), 4)
                                   if hardened else None),
        "mean_psnr": finite_mean(r.get("psnr") for r in hardened),
        "mean_ssim": finite_mean(r.get("ssim") for r in hardened),
        "mean_linf": finite_mean(r.get("linf") for r in hardened),
        "mean_l2": finite_mean(r.get("l2") for r in hardened),
        "mean_steps": finite_mean(r.get("steps") for r in hardened),
        "fooled_by_step": {str(k): by_step[k] for k in sorted(by_step)},
        "stop_reasons": dict(sorted(Counter(str(r.get("stop_reason")) for r in hardened).items())),
        "per_model": per_model(hardened),
        "per_view": views,
        "ssim_distribution": distribution([r.get("ssim") for r in hardened]),
    }


def distribution(values: Iterable[float | None]) -> dict | None:
    """Quantiles and a 10-bin histogram (over [min, 1]) of the finite values."""
    vals = np.array([float(v) for v in values if v is not None and math.isfinite(float(v))])
    if not len(vals):
        return None
    q = np.percentile(vals, [0, 5, 25, 50, 75, 100])
    edges = np.linspace(min(float(vals.min()), 0.9), 1.0, 11)
    counts, _ = np.histogram(vals, bins=edges)
    return {"min": round(float(q[0]), 4), "p05": round(float(q[1]), 4),
            "p25": round(float(q[2]), 4), "median": round(float(q[3]), 4),
            "p75": round(float(q[4]), 4), "max": round(float(q[5]), 4),
            "histogram": {"edges": [round(float(e), 4) for e in edges],
                          "counts": [int(c) for c in counts]}}


def _grids(rows: Sequence[dict], grids: int, seed: int):
    """(label -> index, each row's label index, the seeded 3x3 grids) of ``rows``; the index
    grows as selections name further labels."""
    index: dict[str, int] = {}
    y = [index.setdefault(r["label"], len(index)) for r in rows]
    return index, y, sample_grids(y, grids, seed)


def per_view(records: Sequence[dict], grids: int = 200, seed: int = 0) -> dict[str, dict]:
    """Per verifier and per view of the matrix: the share of tiles it gets wrong (fooling
    margin >= 0: its own decision is wrong) and its 3x3 grid solve rate, before and after."""
    rows = [r for r in records if isinstance(r.get("margins_by_view"), dict)
            and isinstance(r.get("selected_by_view_after"), dict)]
    if not rows:
        return {}
    index, y, challenge = _grids(rows, grids, seed)
    out: dict[str, dict] = {}
    verifiers = sorted({v for r in rows for v in r["margins_by_view"]})
    for v in verifiers:
        views = list(dict.fromkeys(w for r in rows for w in (r["margins_by_view"].get(v) or {})))
        stats = {}
        for w in views:
            margins = [(r["margins_by_view"].get(v) or {}).get(w) for r in rows]
            known = [m for m in margins if m is not None]
            entry = {"fooled_rate": round(sum(m >= 0 for m in known) / len(known), 4)
                     if known else None}
            for when in ("before", "after"):
                sel = [(r.get(f"selected_by_view_{when}") or {}).get(v, {}).get(w)
                       for r in rows]
                if all(s is not None for s in sel):
                    sets = [{index.setdefault(lab, len(index)) for lab in s} for s in sel]
                    rate = grid_solve_rate_sets(sets, y, challenge)
                    entry[f"grid_solve_rate_{when}"] = None if rate is None else round(rate, 4)
            stats[w] = entry
        out[v] = stats
    return out


def _wrong(margin: float | None) -> bool:
    """A fooling margin read by the solver's own rule: >= 0 means its answer is wrong."""
    return margin is not None and margin >= 0


def still_right(record: dict) -> dict[str, list[str]]:
    """verifier -> the views under which it still reads the tile's label (fooling margin < 0:
    its own decision is right)."""
    return {v: [w for w, m in views.items() if m is not None and not _wrong(m)]
            for v, views in (record.get("margins_by_view") or {}).items()}


def headline(records: Sequence[dict], views: dict[str, dict] | None = None) -> dict[str, dict]:
    """What an operator acts on, per verifier: the share of tiles it gets wrong under all of its
    deciding views at once (by its own decision rule), the views that decide for it, and under
    each view its 3x3 grid solve rate before and after (``views``: :func:`per_view` of the same
    records, computed here when not given)."""
    views = per_view(records) if views is None else views
    out: dict[str, dict] = {}
    for v, by_view in views.items():
        rows = [r for r in records if v in (r.get("margins_by_view") or {})]
        deciding = list(dict.fromkeys(w for r in rows for w in (r.get("deciding") or {}).get(
            v, r["margins_by_view"][v])))
        beaten = [all(_wrong(r["margins_by_view"][v].get(w)) for w in
                      (r.get("deciding") or {}).get(v, r["margins_by_view"][v])) for r in rows]
        out[v] = {
            "beaten_rate": round(sum(beaten) / len(beaten), 4) if beaten else None,
            "deciding": deciding,
            "grid_solve_rate": {w: {"before": e.get("grid_solve_rate_before"),
                                    "after": e.get("grid_solve_rate_after")}
                                for w, e in by_view.items()},
        }
    return out


def per_model(records: Sequence[dict], grids: int = 200, seed: int = 0) -> dict[str, dict]:
    """Per model, by its own decision rule: how often it selects a tile for the tile's label,
    and how many seeded 3x3 grids ("select all X") it solves, before and after hardening."""
    rows = [r for r in records if isinstance(r.get("selected_before"), dict)
            and isinstance(r.get("selected_after"), dict)]
    if not rows:
        return {}
    index, y, challenge = _grids(rows, grids, seed)
    models = sorted({m for r in rows for m in r["selected_before"]})
    out = {}
    for m in models:
        have = [i for i, r in enumerate(rows) if m in r["selected_before"]
                and m in r["selected_after"]]
        if len(have) != len(rows):
            continue
        sets = {}
        for when in ("before", "after"):
            sets[when] = [{index.setdefault(lab, len(index)) for lab in r[f"selected_{when}"][m]}
                          for r in rows]
        stats: dict = {}
        for when in ("before", "after"):
            hits = sum(y[i] in sets[when][i] for i in range(len(rows)))
            stats[f"select_rate_{when}"] = round(hits / len(rows), 4)
            rate = grid_solve_rate_sets(sets[when], y, challenge)
            stats[f"grid_solve_rate_{when}"] = None if rate is None else round(rate, 4)
        probs = [(r.get("probabilities_before") or {}).get(m, {}).get(r["label"]) for r in rows]
        after = [(r.get("probabilities_after") or {}).get(m, {}).get(r["label"]) for r in rows]
        if all(p is not None for p in probs + after):
            stats["mean_p_label_before"] = finite_mean(probs)
            stats["mean_p_label_after"] = finite_mean(after)
        out[m] = stats
    return out
