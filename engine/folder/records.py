"""The files of a harden run: where each output goes, results.jsonl and summary.json.

results.jsonl holds one JSON record per input, appended (and fsync'ed) only after its image is
on disk: a killed run loses at most the images in flight, and a resumed one keeps every record
whose output exists.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
REPORT_FILES = "report_files"
RESERVED = frozenset({RESULTS, SUMMARY, REPORT, REPORT_FILES})
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
# what io.save_image_atomic / write_text_atomic leave behind when killed mid-write
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def output_paths(paths: Sequence[str], fmt: str) -> dict[str, str]:
    """Input path -> output path (POSIX, relative) with the extension of ``fmt``; colliding
    inputs keep their old one (``a.jpg.png``), and the run's own files are never shadowed."""
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


def error_record(path: str, value: object, reason: str, notes: Iterable[str] = (), *,
                 truth: str = "label") -> dict:
    """An input that was not hardened; ``truth`` names the field of its truth, ``value``."""
    return {"path": path, "output": None, truth: value, "status": "error", "error": reason,
            "notes": list(notes)}


def result_record(path: str, output: str, engine_record: dict, notes: Iterable[str], *,
                  truth: str = "label") -> dict:
    """A hardened input's record: the engine's ``to_record()`` plus path, output and the load
    notes."""
    rec = dict(engine_record)
    rec.pop("index", None)  # the position within one engine call, meaningless here
    head = {"path": path, "output": output, truth: rec.pop(truth),
            "status": rec.pop("status"), "error": None,
            "notes": [*notes, *rec.pop("notes", [])]}
    return {**head, **rec}


@contextlib.contextmanager
def appending(path: Path) -> Iterator[Callable[[dict], None]]:
    """A function appending one record per line to results.jsonl, each flushed and fsync'ed."""
    with open(path, "a", encoding="utf-8") as fh:
        def append(record: dict) -> None:
            fh.write(dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

        yield append


def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of results.jsonl and how many lines were unreadable (torn by a kill)."""
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
    """Input path -> the record a resumed run keeps: the last one of each current input, if
    an error or if its expected output exists."""
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


def read_summary(out_dir: Path) -> dict:
    """A run's summary.json ({} when it is missing or unreadable)."""
    try:
        data = json.loads((out_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def changed_options(out_dir: Path, info: dict) -> list[str]:
    """The options of ``info`` (and ``config`` fields) that differ from the earlier run's."""
    old = read_summary(out_dir)
    # like with like: this run's options as summary.json holds them (tuples become lists)
    info = json.loads(json.dumps(info, default=str))
    changed = [k for k in info if k != "config" and k in old and old[k] != info[k]]
    changed += [f"config.{k}" for k, v in info["config"].items()
                if k in old.get("config", {}) and old["config"][k] != v]
    return changed


def remove_temp_files(out_dir: Path) -> None:
    """Delete the hidden temp files an atomic write leaves when the process is killed."""
    for dirpath, _dirs, files in os.walk(out_dir):
        for name in files:
            if _TEMP_FILE.match(name):
                Path(dirpath, name).unlink(missing_ok=True)


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values, to 4 decimals (None when there is none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return round(sum(vals) / len(vals), 4) if vals else None


def summarize(records: Sequence[dict], task, *, total: int) -> dict:
    """Counts and means over the records (``total`` = inputs in the run), the headline and
    the task's own figures."""
    status = Counter(r["status"] for r in records)
    hardened = [r for r in records if r["status"] != "error"]
    already = [r for r in hardened if r.get("stop_reason") == "already_fooled"]
    attacked = [r for r in hardened if r.get("stop_reason") != "already_fooled"]
    fooled = [r for r in attacked if r["status"] == "fooled"]
    by_step = Counter(int(r["fooled_at"]) for r in hardened
                      if r["status"] == "fooled" and r.get("fooled_at") is not None)
    ssim = distribution([r.get("ssim") for r in hardened])
    return {
        "headline": headline(hardened, task),
        "total": total,
        "done": len(records),
        "pending": max(0, total - len(records)),
        "fooled": status["fooled"],
        "unfooled": status["unfooled"],
        "errors": status["error"],
        # wrong under the deciding views before any attack: counted apart from the rates
        "already_fooled": len(already),
        "fooled_rate": round(len(fooled) / len(attacked), 4) if attacked else None,
        # strict: every verifier wrong under every view, the reported ones included
        "fooled_every_view_rate": (round(sum(bool(r.get("fooled_every_view"))
                                             for r in attacked) / len(attacked), 4)
                                   if attacked else None),
        "mean_psnr": finite_mean(r.get("psnr") for r in hardened),
        "mean_ssim": finite_mean(r.get("ssim") for r in hardened),
        "min_ssim": None if ssim is None else ssim["min"],
        "mean_linf": finite_mean(r.get("linf") for r in hardened),
        "mean_l2": finite_mean(r.get("l2") for r in hardened),
        "mean_steps": finite_mean(r.get("steps") for r in hardened),
        "mean_seconds_in_batch": finite_mean(r.get("seconds") for r in hardened),
        "fooled_by_step": {str(k): by_step[k] for k in sorted(by_step)},
        "stop_reasons": dict(sorted(Counter(str(r.get("stop_reason")) for r in hardened).items())),
        "ssim_distribution": ssim,
        **task.summary(hardened),
    }


def _right(record: dict, field: str, verifier: str, view: str) -> bool | None:
    """Whether ``verifier`` answered right under ``view`` (``field``: right_before or
    right_after; None: not recorded)."""
    got = ((record.get(field) or {}).get(verifier) or {}).get(view)
    return None if got is None else bool(got)


def deciding_of(record: dict, verifier: str) -> list[str]:
    """The views that decide for ``verifier`` on this item (all of them when unrecorded)."""
    return ((record.get("deciding") or {}).get(verifier)
            or list((record.get("right_after") or {}).get(verifier) or ()))


def headline(records: Sequence[dict], task) -> dict[str, dict]:
    """Per verifier, fooled under a view only where it answered right clean: ``beaten_rate``,
    the share of the items right clean under every deciding view (``solved_clean``) it answers
    wrong under all of them as delivered; per view ``right_clean``, ``fooled`` (of those),
    ``fooled_rate``, ``wrong_clean`` (counted apart) and the task's own figures."""
    rows = [r for r in records if isinstance(r.get("right_after"), dict)]
    out: dict[str, dict] = {}
    for v in dict.fromkeys(v for r in rows for v in r["right_after"]):
        mine = [r for r in rows if v in r["right_after"]]
        views = list(dict.fromkeys(w for r in mine for w in r["right_after"][v]))
        deciding = list(dict.fromkeys(w for r in mine for w in deciding_of(r, v)))
        solved = [r for r in mine
                  if all(_right(r, "right_before", v, w) for w in deciding_of(r, v))]
        beaten = [not any(_right(r, "right_after", v, w) for w in deciding_of(r, v))
                  for r in solved]
        by_view = {}
        for w in views:
            seen = [r for r in mine if _right(r, "right_after", v, w) is not None]
            clean = [r for r in seen if _right(r, "right_before", v, w)]
            fooled = sum(not _right(r, "right_after", v, w) for r in clean)
            by_view[w] = {
                "right_clean": len(clean),
                "wrong_clean": sum(_right(r, "right_before", v, w) is False for r in seen),
                "fooled": fooled,
                "fooled_rate": round(fooled / len(clean), 4) if clean else None,
                **task.view_figures(seen, v, w),
            }
        out[v] = {"beaten_rate": round(sum(beaten) / len(beaten), 4) if beaten else None,
                  "beaten": sum(beaten), "solved_clean": len(solved), "deciding": deciding,
                  "reported": [w for w in views if w not in deciding], "views": by_view}
    return out


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


