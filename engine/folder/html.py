"""report.html, a self-contained page next to a run's outputs, for every task: the headline,
the run's figures, the fooled rate against attack steps, the items not hardened and the task's
gallery; and what the tasks' parts of it share (style, formatting, links, item images)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ...export.files import write_text_atomic
from ..images import ImageLoadError, load_image, save_image_atomic
from .records import REPORT, REPORT_FILES

GALLERY_LIMIT = 500
DIFF_GAIN = 10  # difference images: 0.5 + DIFF_GAIN * (hardened - original)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.gallery td{font-size:12px} .gallery img{max-width:256px;max-height:256px;image-rendering:auto}
.fooled{color:#0a0;font-weight:bold} .unfooled{color:#c60;font-weight:bold}
.error{color:#c00;font-weight:bold} .note{color:#666}
.right{background:#fdd;font-weight:bold} .wrong{background:#dfd}
.reads td,.reads th{font:12px ui-monospace,monospace}
.crops img{image-rendering:pixelated;display:block;margin:2px 0}
"""


def fmt(value: object, spec: str = "") -> str:
    """A figure for HTML: a dash for None, ``spec`` for floats, lists joined."""
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and spec:
        return escape(format(value, spec))
    if isinstance(value, list | tuple):
        return escape(", ".join(map(str, value)))
    return escape(str(value))


def pct(value: float | None) -> str:
    """A share as a whole percentage (plain text), a dash for None."""
    return "-" if value is None else f"{value:.0%}"


def href(target: Path, out_dir: Path) -> str | None:
    """A relative URL from the report to ``target`` (None where there is none, e.g. another
    drive)."""
    try:
        rel = os.path.relpath(target, out_dir)
    except ValueError:
        return None
    return quote(Path(rel).as_posix())


def difference(original: np.ndarray, hardened: np.ndarray) -> np.ndarray:
    """0.5 + DIFF_GAIN * (hardened - original), grey where unchanged (uint8)."""
    diff = 0.5 + DIFF_GAIN * (hardened.astype(np.float32) - original.astype(np.float32)) / 255
    return np.clip(np.rint(diff * 255), 0, 255).astype(np.uint8)


def item_images(out_dir: Path, input_root: Path, record: dict, kinds: Iterable[str],
                make: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
                tag: str = "") -> dict[str, str]:
    """kind -> the PNG (relative to ``out_dir``) of ``make(original, hardened)``'s images,
    written unless up to date ({} when a file cannot be read)."""
    key = hashlib.sha1(record["path"].encode("utf-8")).hexdigest()[:16]
    names = {k: f"{REPORT_FILES}/{key}_{tag}{k}.png" for k in kinds}
    src_out = out_dir / str(record.get("output") or "")
    src_in = input_root / record["path"]
    try:
        newest = max(src_out.stat().st_mtime_ns, src_in.stat().st_mtime_ns)
        if all((out_dir / n).is_file() and (out_dir / n).stat().st_mtime_ns >= newest
               for n in names.values()):
            return names
        hardened, original = load_image(src_out).pixels, load_image(src_in).pixels
    except (OSError, ImageLoadError):
        return {}
    made = make(original, hardened)
    for kind, pixels in made.items():
        save_image_atomic(out_dir / names[kind], pixels, fmt="png")
    return {k: names[k] for k in made}


def links(out_dir: Path, input_root: Path, record: dict) -> dict[str, str | None]:
    """kind -> where clicking an item's image leads (its original, its hardened file)."""
    return {"original": href(input_root / record["path"], out_dir),
            "hardened": quote(str(record.get("output") or ""))}


def errors_table(heading: str, key: str, errors: Sequence[dict]) -> list[str]:
    """The table of the items that could not be hardened (none: nothing)."""
    if not errors:
        return []
    return [f"<h2>{heading} ({len(errors)})</h2>",
            f"<table><tr><th>path</th><th>{key}</th><th>reason</th></tr>",
            *(f"<tr><td>{escape(r['path'])}</td><td>{escape(str(r.get(key)))}</td>"
              f"<td>{escape(str(r.get('error')))}</td></tr>" for r in errors),
            "</table>"]


def write_report(out_dir: Path, records: Sequence[dict], summary: dict, input_root: Path,
                 task) -> Path:
    """Write ``out_dir/report.html`` (and its images) for ``records``; returns its path."""
    out_dir, input_root = Path(out_dir), Path(input_root)
    records = sorted(records, key=lambda r: r["path"])
    hardened = [r for r in records if r["status"] != "error"]
    errors = [r for r in records if r["status"] == "error"]
    shown = hardened[:GALLERY_LIMIT]
    noun = f"{task.noun}s"
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        f"<title>advx report: {escape(task.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>advx harden report: {escape(task.name)} ({escape(noun)})</h1>",
        headline_html(summary.get("headline") or {}, task),
        _summary_table(summary, noun),
        *task.report_sections(summary),
        _ssim_table(summary.get("ssim_distribution")),
        "<h2>Fooled rate against attack steps</h2>",
        fooled_rate_svg(hardened, int(summary.get("config", {}).get("steps") or 0)),
        f"<p class='note'>Share of hardened {noun} verified fooled after at most that many "
        f"attack steps (0 = already wrong before any attack).</p>",
        *errors_table(f"{noun.capitalize()} not hardened", task.truth, errors),
        f"<h2>{noun.capitalize()} ({len(hardened)})</h2>",
    ]
    if len(hardened) > len(shown):
        parts.append(f"<p class='note'>The gallery shows the first {len(shown)} of "
                     f"{len(hardened)} hardened {noun} (by path); results.jsonl lists all.</p>")
    parts += [*task.report_gallery(out_dir, input_root, shown), "</body></html>\n"]
    path = out_dir / REPORT
    write_text_atomic(path, "\n".join(parts))
    return path


def headline_html(headline: dict, task) -> str:
    """The headline (:func:`~.records.headline`) per verifier, as HTML."""
    if not headline:
        return ""
    noun = f"{task.noun}s"
    parts = ["<h2>What the solvers still solve</h2>"]
    for name, h in headline.items():
        deciding, views = h.get("deciding") or [], h.get("views") or {}
        head = "".join(f"<th>{escape(w)}{'' if w in deciding else ' (reported)'}</th>"
                       for w in views)
        rows = [("right clean", [str(e.get("right_clean")) for e in views.values()]),
                ("fooled (of those)", [f"{e.get('fooled')} ({fmt(e.get('fooled_rate'), '.0%')})"
                                       for e in views.values()]),
                ("wrong clean (apart)", [str(e.get("wrong_clean")) for e in views.values()])]
        extra: dict[str, list[str]] = {}
        for e in views.values():
            for label, value in task.headline_rows(e):
                extra.setdefault(label, []).append(value)
        rows += [(k, v) for k, v in extra.items() if len(v) == len(views)]
        body = "".join(f"<tr><th>{escape(k)}</th>" + "".join(f"<td>{escape(c)}</td>" for c in v)
                       + "</tr>" for k, v in rows)
        parts.append(f"<p><b>{escape(name)}</b> answered {h.get('solved_clean')} {noun} right "
                     f"clean under all its deciding views ({escape(', '.join(deciding))}); it "
                     f"is wrong under all of them as delivered on <b>{h.get('beaten')}</b> "
                     f"(<b>{fmt(h.get('beaten_rate'), '.0%')}</b>).</p>"
                     f"<table><tr><th>{escape(name)}</th>{head}</tr>{body}</table>")
    parts.append(f"<p class='note'>A verifier is fooled under a view only on {noun} it "
                 f"answered right clean under that view; the others are counted apart. "
                 f"Deciding views must be beaten before an item is done; reported views are "
                 f"scored on the delivered files but never keep an item in the batch "
                 f"(<code>advx harden --help</code> lists both).</p>")
    return "".join(parts)


def _summary_table(s: dict, noun: str) -> str:
    cfg, models = s.get("config", {}), s.get("models") or {}
    status = (f"failed ({s['error']}); finish it with --resume" if s.get("error")
              else "interrupted; finish it with --resume" if s.get("interrupted")
              else "complete" if s.get("complete") else "incomplete")
    left = "; ".join(f"{k}: {v}" for k, v in (models.get("left_out") or {}).items())
    rows = [
        ("inputs", s.get("total"), ""), ("done", s.get("done"), ""),
        ("pending", s.get("pending"), ""), ("fooled", s.get("fooled"), ""),
        ("unfooled", s.get("unfooled"), ""), ("not hardened (errors)", s.get("errors"), ""),
        ("already wrong clean (apart)", s.get("already_fooled"), ""),
        ("fooled rate (deciding views)", s.get("fooled_rate"), ".1%"),
        ("strict rate (every view)", s.get("fooled_every_view_rate"), ".1%"),
        ("SSIM mean / min", f"{fmt(s.get('mean_ssim'), '.4f')} / "
                            f"{fmt(s.get('min_ssim'), '.4f')}", "raw"),
        ("mean PSNR (dB)", s.get("mean_psnr"), ".2f"),
        ("mean L-inf (/255)", s.get("mean_linf"), ".2f"),
        ("mean steps", s.get("mean_steps"), ".1f"),
        (f"seconds per {noun[:-1]} (this run)", s.get("seconds_per_image"), ".2f"),
        ("stop reasons", ", ".join(f"{k} {v}" for k, v in (s.get("stop_reasons") or {}).items()),
         ""),
        ("attack", f"{cfg.get('attack')}, eps {cfg.get('eps')}/255, {cfg.get('steps')} steps, "
                   f"seed {cfg.get('seed')}", ""),
        ("transforms", cfg.get("transforms"), ""),
        ("output format", cfg.get("output_format"), ""),
        ("surrogates", models.get("surrogates") or s.get("surrogates"), ""),
        ("verifiers", models.get("verifiers") or s.get("verifiers"), ""),
        ("left out", left or None, ""),
        ("model notes", models.get("notes") or None, ""),
        *((("label set", s.get("label_set"), ""),) if s.get("label_set") else ()),
        ("status", status, ""),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v if spec == 'raw' else fmt(v, spec)}</td>"
                   f"</tr>" for k, v, spec in rows)
    return f"<h2>Run</h2><table>{body}</table>"


def _ssim_table(dist: dict | None) -> str:
    if not dist:
        return ""
    q = "".join(f"<td>{fmt(dist.get(k), '.4f')}</td>"
                for k in ("min", "p05", "p25", "median", "p75", "max"))
    hist = dist.get("histogram") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    top = max(counts or [1]) or 1
    bars = "".join(
        f"<tr><td>{edges[i]:.3f}&ndash;{edges[i + 1]:.3f}</td><td>"
        f"<span style='display:inline-block;background:#1565c0;height:10px;"
        f"width:{int(200 * c / top)}px'></span> {c}</td></tr>" for i, c in enumerate(counts))
    return ("<h2>SSIM of the delivered files</h2><table><tr><th>min</th><th>5%</th>"
            "<th>25%</th><th>median</th><th>75%</th><th>max</th></tr>"
            f"<tr>{q}</tr></table><table>{bars}</table>")


def fooled_rate_svg(records: Sequence[dict], max_steps: int, width: int = 520,
                    height: int = 260) -> str:
    """An inline SVG step plot: share of ``records`` with fooled_at <= x, for x in [0, steps]."""
    n = len(records)
    at = sorted(int(r["fooled_at"]) for r in records
                if r.get("status") == "fooled" and r.get("fooled_at") is not None)
    x_max = max([max_steps, *at, 1])
    left, right, top, bottom = 50, 15, 15, 40
    pw, ph = width - left - right, height - top - bottom

    def px(step: float) -> float:
        return left + pw * step / x_max

    def py(rate: float) -> float:
        return top + ph * (1 - rate)

    pts, count = [(px(0), py(0))], 0
    for step in sorted(set(at)):
        pts.append((px(step), pts[-1][1]))
        count += at.count(step)
        pts.append((px(step), py(count / n)))
    pts.append((px(x_max), pts[-1][1]))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    grid = []
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = py(frac)
        grid.append(f"<line x1='{left}' y1='{y:.1f}' x2='{left + pw}' y2='{y:.1f}' "
                    f"stroke='#ddd'/><text x='{left - 6}' y='{y + 4:.1f}' font-size='11' "
                    f"text-anchor='end'>{frac:.0%}</text>")
    for i in range(6):
        step = round(x_max * i / 5)
        grid.append(f"<text x='{px(step):.1f}' y='{top + ph + 16}' font-size='11' "
                    f"text-anchor='middle'>{step}</text>")
    empty = "" if n else (f"<text x='{left + pw / 2}' y='{top + ph / 2}' text-anchor='middle' "
                          f"fill='#888'>nothing hardened yet</text>")
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='cumulative fooled rate against attack steps'>"
        + "".join(grid)
        + f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"
        + (f"<polyline points='{line}' fill='none' stroke='#1565c0' stroke-width='2'/>"
           if n else "")
        + empty
        + f"<text x='{left + pw / 2}' y='{height - 6}' font-size='12' text-anchor='middle'>"
          f"attack steps</text>"
        + f"<text x='12' y='{top + ph / 2}' font-size='12' text-anchor='middle' "
          f"transform='rotate(-90 12 {top + ph / 2})'>fooled</text></svg>"
    )
