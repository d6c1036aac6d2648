"""report.html: a self-contained page (relative links, no scripts) next to a harden run's outputs.

It holds a summary table, an inline SVG plot of the cumulative fooled rate against attack steps,
the unreadable inputs with their reasons, and a gallery (original, hardened, amplified
difference) of small PNG thumbnails written to ``report_files/``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from ...export.files import write_text_atomic
from ..images import ImageLoadError, load_image, save_image_atomic
from .records import REPORT, REPORT_FILES, still_right

GALLERY_LIMIT = 500
THUMB = 256
DIFF_GAIN = 10
REGION = 48  # side of the smoothest region shown enlarged
ZOOM = 4

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.gallery td{font-size:12px} .gallery img{max-width:256px;max-height:256px;image-rendering:auto}
.fooled{color:#0a0;font-weight:bold} .unfooled{color:#c60;font-weight:bold}
.error{color:#c00;font-weight:bold} .note{color:#666}
"""


def write_report(out_dir: Path, records: Sequence[dict], summary: dict,
                 input_root: Path) -> Path:
    """Write ``out_dir/report.html`` (and its thumbnails) for ``records``; returns its path."""
    out_dir, input_root = Path(out_dir), Path(input_root)
    records = sorted(records, key=lambda r: r["path"])
    hardened = [r for r in records if r["status"] != "error"]
    errors = [r for r in records if r["status"] == "error"]
    shown = hardened[:GALLERY_LIMIT]
    rows = [_gallery_row(out_dir, input_root, r) for r in shown]
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<title>advx report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>advx harden report</h1>",
        _headline(summary.get("headline") or {}),
        _summary_table(summary),
        *fooled_rate_section(hardened, summary, "images", "misclassified"),
        *errors_table("Unreadable inputs", "label", errors),
    ]
    parts.append(f"<h2>Images ({len(hardened)})</h2>")
    if len(hardened) > len(shown):
        parts.append(f"<p class='note'>The gallery shows the first {len(shown)} of "
                     f"{len(hardened)} hardened images (by path); results.jsonl lists all.</p>")
    parts.append(f"<p class='note'>difference = 0.5 + {DIFF_GAIN} &times; (hardened &minus; "
                 f"original), grey where unchanged; thumbnails at most {THUMB} px. The last two "
                 f"columns enlarge ({ZOOM}&times;, no smoothing) each image's smoothest "
                 f"{REGION}&times;{REGION} region, where a perturbation shows first: judge "
                 f"quality there.</p>")
    header = ("<table class='gallery'><tr><th>image</th><th>original</th><th>hardened</th>"
              "<th>difference</th><th>smoothest region, original</th>"
              "<th>same region, hardened</th></tr>")
    parts += [header, *rows, "</table>", "</body></html>\n"]
    path = out_dir / REPORT
    write_text_atomic(path, "\n".join(parts))
    return path


def fooled_rate_section(hardened: Sequence[dict], summary: dict, noun: str,
                        before: str) -> list[str]:
    """The fooled-rate-against-steps chart of a report, with its note."""
    return ["<h2>Fooled rate against attack steps</h2>",
            fooled_rate_svg(hardened, int(summary.get("config", {}).get("steps") or 0)),
            f"<p class='note'>Share of hardened {noun} verified fooled after at most that many "
            f"attack steps (0 = {before} before any attack).</p>"]


def errors_table(heading: str, key: str, errors: Sequence[dict]) -> list[str]:
    """The table of the rows that could not be hardened (none: nothing)."""
    if not errors:
        return []
    return [f"<h2>{heading} ({len(errors)})</h2>",
            f"<table><tr><th>path</th><th>{key}</th><th>reason</th></tr>",
            *(f"<tr><td>{escape(r['path'])}</td><td>{escape(str(r.get(key)))}</td>"
              f"<td>{escape(str(r.get('error')))}</td></tr>" for r in errors),
            "</table>"]


def _fmt(value: object, spec: str = "") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and spec:
        return escape(format(value, spec))
    if isinstance(value, list | tuple):
        return escape(", ".join(map(str, value)))
    return escape(str(value))


def _summary_table(s: dict) -> str:
    cfg = s.get("config", {})
    status = (f"failed ({s['error']}); finish it with --resume" if s.get("error")
              else "interrupted; finish it with --resume" if s.get("interrupted")
              else "complete" if s.get("complete") else "incomplete")
    rows = [
        ("inputs", s.get("total"), ""), ("done", s.get("done"), ""),
        ("pending", s.get("pending"), ""), ("fooled", s.get("fooled"), ""),
        ("unfooled", s.get("unfooled"), ""), ("errors (unreadable)", s.get("errors"), ""),
        ("fooled rate (deciding views)", s.get("fooled_rate"), ".1%"),
        ("strict rate (every view)", s.get("fooled_every_view_rate"), ".1%"),
        ("mean PSNR (dB)", s.get("mean_psnr"), ".2f"),
        ("mean SSIM", s.get("mean_ssim"), ".4f"),
        ("mean L-inf (/255)", s.get("mean_linf"), ".2f"),
        ("images/s (this run)", s.get("images_per_s"), ".3f"),
        ("attack", f"{cfg.get('attack')}, eps {cfg.get('eps')}/255, {cfg.get('steps')} steps",
         ""),
        ("transforms", cfg.get("transforms"), ""),
        ("output format", cfg.get("output_format"), ""),
        ("surrogates", s.get("surrogates"), ""), ("verifiers", s.get("verifiers"), ""),
        ("label set", s.get("label_set"), ""), ("status", status, ""),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{_fmt(v, spec)}</td></tr>"
                   for k, v, spec in rows)
    return (f"<table>{body}</table>" + _per_model_table(s.get("per_model") or {})
            + _per_view_table(s.get("per_view") or {})
            + _ssim_table(s.get("ssim_distribution")))


def _headline(headline: dict) -> str:
    """Per verifier: tiles beaten under all its deciding views, and 3x3 grids solved before and
    after under each view (reported views marked)."""
    if not headline:
        return ""
    parts = ["<h2>What the solvers still solve</h2>"]
    for name, h in headline.items():
        deciding = h.get("deciding") or []
        grids = h.get("grid_solve_rate") or {}
        head = "".join(f"<th>{escape(w)}{'' if w in deciding else ' (reported)'}</th>"
                       for w in grids)
        cells = "".join(f"<td>{_fmt(g.get('before'), '.0%')} &rarr; "
                        f"{_fmt(g.get('after'), '.0%')}</td>" for g in grids.values())
        parts.append(f"<p><b>{escape(name)}</b> is wrong under all its deciding views "
                     f"({escape(', '.join(deciding))}) on <b>{_fmt(h.get('beaten_rate'), '.0%')}"
                     f"</b> of the tiles.</p><table><tr><th>3x3 grids solved</th>{head}</tr>"
                     f"<tr><th>before &rarr; after</th>{cells}</tr></table>")
    parts.append("<p class='note'>Deciding views must be beaten before an image is done; "
                 "reported views are scored on the delivered files but never keep an image "
                 "in the batch (<code>advx harden --help</code> lists both).</p>")
    return "".join(parts)


def _per_view_table(per_view: dict) -> str:
    """Per verifier and view: share of tiles it gets wrong, and grids solved before -> after."""
    if not per_view:
        return ""
    parts = ["<h2>Per verifier and view</h2>"]
    for name, views in per_view.items():
        head = "".join(f"<th>{escape(w)}</th>" for w in views)
        wrong = "".join(f"<td>{_fmt(e.get('fooled_rate'), '.0%')}</td>" for e in views.values())
        grids = "".join(
            f"<td>{_fmt(e.get('grid_solve_rate_before'), '.0%')} &rarr; "
            f"{_fmt(e.get('grid_solve_rate_after'), '.0%')}</td>" for e in views.values())
        parts.append(f"<table><tr><th>{escape(name)}</th>{head}</tr>"
                     f"<tr><th>answers wrong</th>{wrong}</tr>"
                     f"<tr><th>3x3 grids solved</th>{grids}</tr></table>")
    parts.append("<p class='note'>own = the verifier's own preprocessing; the other views are "
                 "listed in <code>advx harden --help</code>. &ldquo;answers wrong&rdquo;: its "
                 "decision on the delivered file under that view is wrong; an image counts as "
                 "fooled when its deciding views are, by the margin.</p>")
    return "".join(parts)


def _ssim_table(dist: dict | None) -> str:
    if not dist:
        return ""
    q = "".join(f"<td>{_fmt(dist.get(k), '.4f')}</td>"
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


def _per_model_table(per_model: dict) -> str:
    """Each model by its own decision rule: tiles selected for their label and 3x3 grids
    solved, before and after; mean P(label) for multi-label solvers."""
    if not per_model:
        return ""
    head = ("<h2>Per model (its own decision rule)</h2><table><tr><th>model</th>"
            "<th>selects the tile's label</th><th>3x3 grids solved</th>"
            "<th>mean P(label)</th></tr>")
    rows = []
    def pair(v: dict, key: str, spec: str = ".0%") -> str:
        return f"{_fmt(v.get(key + '_before'), spec)} &rarr; {_fmt(v.get(key + '_after'), spec)}"

    for name, v in per_model.items():
        p = pair(v, "mean_p_label", ".3f") if "mean_p_label_before" in v else "&ndash;"
        rows.append(f"<tr><td>{escape(name)}</td><td>{pair(v, 'select_rate')}</td>"
                    f"<td>{pair(v, 'grid_solve_rate')}</td><td>{p}</td></tr>")
    note = ("<p class='note'>A closed-set model selects its top label; a multi-label solver "
            "selects every label with P &ge; its threshold. Grids: 200 seeded 3x3 challenges "
            "&ldquo;select all X&rdquo; drawn from these tiles; solved when exactly the X "
            "tiles are selected.</p>")
    return head + "".join(rows) + "</table>" + note


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
                          f"fill='#888'>no hardened images yet</text>")
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


def _href(target: Path, out_dir: Path) -> str | None:
    """A relative URL from the report to ``target`` (None where there is none, e.g. another
    drive)."""
    try:
        rel = os.path.relpath(target, out_dir)
    except ValueError:
        return None
    return quote(Path(rel).as_posix())


def _gallery_row(out_dir: Path, input_root: Path, r: dict) -> str:
    thumbs = _thumbnails(out_dir, input_root, r)
    cells = []
    for kind, link in (("original", _href(input_root / r["path"], out_dir)),
                       ("hardened", quote(str(r.get("output") or ""))), ("difference", None),
                       ("zoom_original", None), ("zoom_hardened", None)):
        rel = thumbs.get(kind)
        if rel is None:
            cells.append("<td class='note'>(not available)</td>")
            continue
        img = f"<img src='{quote(rel)}' alt='{escape(kind)}' loading='lazy'>"
        cells.append(f"<td><a href='{link}'>{img}</a></td>" if link else f"<td>{img}</td>")
    after = r.get("predictions_after") or {}
    verifiers = ", ".join(f"{k}: {v}" for k, v in after.items() if k in (r.get("margins") or {})
                          and k not in (r.get("probabilities_after") or {}))
    label = str(r.get("label"))
    solvers = []
    for name, probs in (r.get("probabilities_after") or {}).items():
        before = (r.get("probabilities_before") or {}).get(name, {})
        if label in probs:
            solvers.append(f"{escape(name)}: P({escape(label)}) {_fmt(before.get(label), '.3f')}"
                           f" &rarr; {_fmt(probs[label], '.3f')}")
    info = [
        f"<b>{escape(r['path'])}</b>",
        f"label {escape(str(r.get('label')))} &middot; "
        f"<span class='{escape(r['status'])}'>{escape(r['status'])}</span>"
        + (f" at step {r['fooled_at']}" if r.get("fooled_at") is not None else ""),
        f"verifiers say: {escape(verifiers)}" if verifiers else "",
        *solvers,
        *(f"{escape(v)} still reads {escape(label)} under: {escape(', '.join(w))}"
          for v, w in still_right(r).items() if w),
        (f"PSNR {_fmt(r.get('psnr'), '.1f')} dB &middot; SSIM {_fmt(r.get('ssim'), '.3f')} "
         f"&middot; L-inf {_fmt(r.get('linf'), '.1f')}/255"),
        *(f"<span class='note'>{escape(str(n))}</span>" for n in r.get("notes") or ()),
    ]
    return f"<tr><td>{'<br>'.join(x for x in info if x)}</td>{''.join(cells)}</tr>"


def _thumbnails(out_dir: Path, input_root: Path, r: dict) -> dict[str, str]:
    """kind -> thumbnail path relative to out_dir (written unless already up to date)."""
    key = hashlib.sha1(r["path"].encode("utf-8")).hexdigest()[:16]
    names = {k: f"{REPORT_FILES}/{key}_{k}.png" for k in ("original", "hardened", "difference",
                                                           "zoom_original", "zoom_hardened")}
    src_out = out_dir / str(r.get("output") or "")
    src_in = input_root / r["path"]
    try:
        newest = max(src_out.stat().st_mtime_ns, src_in.stat().st_mtime_ns)
        if all((out_dir / n).is_file() and (out_dir / n).stat().st_mtime_ns >= newest
               for n in names.values()):
            return names
        hardened = load_image(src_out).pixels
        original = load_image(src_in).pixels
    except (OSError, ImageLoadError):
        return {}
    out = {"original": _thumb(original), "hardened": _thumb(hardened)}
    if original.shape == hardened.shape:
        # the difference keeps its texture (nearest neighbour), taken from every k-th pixel
        k = max(1, max(original.shape[:2]) // THUMB)
        a, b = original[::k, ::k].astype(np.float32), hardened[::k, ::k].astype(np.float32)
        diff = 0.5 + DIFF_GAIN * (b - a) / 255
        out["difference"] = _thumb(np.clip(np.rint(diff * 255), 0, 255).astype(np.uint8),
                                   nearest=True)
        y, x, side = smoothest_region(original, REGION)
        for kind, px in (("zoom_original", original), ("zoom_hardened", hardened)):
            crop = px[y : y + side, x : x + side]
            out[kind] = np.repeat(np.repeat(crop, ZOOM, 0), ZOOM, 1)
    for kind, pixels in out.items():
        save_image_atomic(out_dir / names[kind], pixels, fmt="png")
    return {k: names[k] for k in out}


def smoothest_region(pixels: np.ndarray, side: int) -> tuple[int, int, int]:
    """(y, x, side) of the square whose luminance varies least: where noise shows most.
    Large images are searched on every k-th row and column (k keeps it near 1 MP); the
    square keeps its full-resolution side."""
    h, w = pixels.shape[:2]
    side = min(side, h, w)
    k = max(1, int((h * w / 1_000_000) ** 0.5))
    if k > 1 and side // k >= 4:
        y, x, _ = smoothest_region(pixels[::k, ::k], side // k)
        return min(y * k, h - side), min(x * k, w - side), side
    lum = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    def box(a: np.ndarray) -> np.ndarray:  # sums over every side x side window (integral image)
        c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]

    n = side * side
    var = box(lum * lum) / n - (box(lum) / n) ** 2
    y, x = np.unravel_index(int(np.argmin(var)), var.shape)
    return int(y), int(x), side


def _thumb(pixels: np.ndarray, nearest: bool = False) -> np.ndarray:
    """At most THUMB px on the longer side; the difference keeps its texture (nearest)."""
    im = Image.fromarray(pixels)
    im.thumbnail((THUMB, THUMB), Image.Resampling.NEAREST if nearest
                 else Image.Resampling.LANCZOS)
    return np.asarray(im)
