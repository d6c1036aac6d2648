"""report.html of a text run: a self-contained page (relative links, no scripts) next to the
hardened captchas.

It opens with the headline (per verifier and view: the share of captchas misread as delivered,
deciding views marked, reported ones so named), then the run's figures, the unusable rows with
their reasons, and per captcha its truth, each verifier's reading before and after under each
view (those still reading the truth highlighted) and the crops the perceptual budget is judged
on: original, hardened and the amplified difference, enlarged without smoothing, written as
PNGs to ``report_files/`` as the image report does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ....export.files import write_text_atomic
from ...folder.records import REPORT, REPORT_FILES
from ...folder.report import (
    _CSS,
    DIFF_GAIN,
    GALLERY_LIMIT,
    _fmt,
    _href,
    errors_table,
    fooled_rate_section,
)
from ...images import ImageLoadError, load_image, save_image_atomic
from .records import OWN_VIEW

ZOOM = 3  # crops enlarged this many times (nearest neighbour: the noise shows as it is)
MAX_CROP = 1200  # ... unless that makes the longer side exceed this many pixels
KINDS = ("original", "hardened", "difference")

_TEXT_CSS = """
.right{background:#fdd;font-weight:bold} .wrong{background:#dfd}
.reads td,.reads th{font:12px ui-monospace,monospace}
.crops img{image-rendering:pixelated;display:block;margin:2px 0}
"""


def write_text_report(out_dir: Path, records: Sequence[dict], summary: dict,
                      input_root: Path) -> Path:
    """Write ``out_dir/report.html`` (and its crops) for ``records``; returns its path."""
    out_dir, input_root = Path(out_dir), Path(input_root)
    records = sorted(records, key=lambda r: r["path"])
    hardened = [r for r in records if r["status"] != "error"]
    errors = [r for r in records if r["status"] == "error"]
    shown = hardened[:GALLERY_LIMIT]
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<title>advx text report</title>", f"<style>{_CSS}{_TEXT_CSS}</style></head><body>",
        "<h1>advx harden report: text captchas</h1>",
        headline_html(summary.get("headline") or {}),
        _summary_table(summary),
        *fooled_rate_section(hardened, summary, "captchas", "misread"),
        *errors_table("Unusable rows", "text", errors),
    ]
    parts.append(f"<h2>Captchas ({len(hardened)})</h2>")
    if len(hardened) > len(shown):
        parts.append(f"<p class='note'>Showing the first {len(shown)} of {len(hardened)} "
                     f"hardened captchas (by path); results.jsonl lists all.</p>")
    parts.append(f"<p class='note'>Readings in <span class='right'>red</span> still read the "
                 f"truth (under the solver's case rule); green ones misread it. Crops: "
                 f"original, hardened and 0.5 + {DIFF_GAIN} &times; (hardened &minus; "
                 f"original), grey where unchanged, each enlarged {ZOOM}&times; without "
                 f"smoothing.</p>")
    parts += [_captcha(out_dir, input_root, r) for r in shown]
    parts.append("</body></html>\n")
    path = out_dir / REPORT
    write_text_atomic(path, "\n".join(parts))
    return path


def headline_html(headline: dict) -> str:
    """Per verifier: captchas misread under all its deciding views, and per view the share
    read right clean (own view), misread as delivered and the mean character error rate."""
    if not headline:
        return ""
    parts = ["<h2>What the OCR solvers still read</h2>"]
    for name, h in headline.items():
        deciding, views = h.get("deciding") or [], h.get("views") or {}
        head = "".join(f"<th>{escape(w)}{' (deciding)' if w in deciding else ' (reported)'}"
                       f"</th>" for w in views)
        rows = "".join(
            f"<tr><th>{label}</th>"
            + "".join(f"<td>{_fmt(e.get(key), spec)}</td>" for e in views.values()) + "</tr>"
            for label, key, spec in (("read right clean", "read_clean_rate", ".0%"),
                                     ("fooled as delivered", "fooled_rate", ".0%"),
                                     ("mean CER", "mean_cer", ".2f")))
        parts.append(f"<p><b>{escape(name)}</b> misreads <b>{_fmt(h.get('beaten_rate'), '.0%')}"
                     f"</b> of the captchas under all its deciding views "
                     f"({escape(', '.join(deciding))}).</p>"
                     f"<table><tr><th>{escape(name)}</th>{head}</tr>{rows}</table>")
    parts.append("<p class='note'>Deciding views must all misread a captcha before it is done; "
                 "reported views are read on the delivered files but never keep a captcha in "
                 "the batch. The clean captcha is read under the own view only. CER = edit "
                 "distance / truth length.</p>")
    return "".join(parts)


def _summary_table(s: dict) -> str:
    cfg, solvers = s.get("config", {}), s.get("solvers") or {}
    status = (f"failed ({s['error']}); finish it with --resume" if s.get("error")
              else "interrupted; finish it with --resume" if s.get("interrupted")
              else "complete" if s.get("complete") else "incomplete")
    left = "; ".join(f"{k}: {v}" for k, v in (solvers.get("left_out") or {}).items())
    rows = [
        ("captchas", s.get("total"), ""), ("done", s.get("done"), ""),
        ("pending", s.get("pending"), ""), ("fooled", s.get("fooled"), ""),
        ("unfooled", s.get("unfooled"), ""), ("errors (unusable rows)", s.get("errors"), ""),
        ("fooled rate (deciding views)", s.get("fooled_rate"), ".1%"),
        ("strict rate (every view)", s.get("fooled_every_view_rate"), ".1%"),
        ("SSIM mean / min", f"{_fmt(s.get('mean_ssim'), '.4f')} / "
                            f"{_fmt(s.get('min_ssim'), '.4f')}", "raw"),
        ("mean PSNR (dB)", s.get("mean_psnr"), ".2f"),
        ("mean L-inf (/255)", s.get("mean_linf"), ".2f"),
        ("mean steps", s.get("mean_steps"), ".1f"),
        ("seconds per captcha (this run)", s.get("seconds_per_captcha"), ".2f"),
        ("stop reasons", ", ".join(f"{k} {v}" for k, v in (s.get("stop_reasons") or {}).items()),
         ""),
        ("attack", f"{cfg.get('attack')}, eps {cfg.get('eps')}/255, {cfg.get('steps')} steps, "
                   f"seed {cfg.get('seed')}", ""),
        ("output format", s.get("output_format"), ""),
        ("surrogates", solvers.get("surrogates"), ""),
        ("verifiers", solvers.get("verifiers"), ""),
        ("left out", left or None, ""),
        ("solver notes", solvers.get("notes") or None, ""),
        ("status", status, ""),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v if spec == 'raw' else _fmt(v, spec)}</td>"
                   f"</tr>" for k, v, spec in rows)
    return f"<h2>Run</h2><table>{body}</table>"


def _captcha(out_dir: Path, input_root: Path, r: dict) -> str:
    """One captcha: what it shows, its status, the readings and the crops."""
    truth = str(r.get("text"))
    head = (f"<h3>{escape(r['path'])}</h3><p>truth <code>{escape(truth)}</code> &middot; "
            f"<span class='{escape(r['status'])}'>{escape(r['status'])}</span>"
            + (f" at step {r['fooled_at']}" if r.get("fooled_at") is not None else "")
            + f" &middot; {escape(str(r.get('stop_reason')))} after {r.get('steps')} steps"
            f" &middot; SSIM {_fmt(r.get('ssim'), '.3f')} &middot; PSNR "
            f"{_fmt(r.get('psnr'), '.1f')} dB &middot; L-inf {_fmt(r.get('linf'), '.1f')}/255"
            "</p>")
    notes = "".join(f"<p class='note'>{escape(str(n))}</p>" for n in r.get("notes") or ())
    return head + notes + _reads_table(r) + _crops_html(out_dir, input_root, r)


def _reads_table(r: dict) -> str:
    """verifier x (clean, each view): the reading, marked right or wrong."""
    after, right = r.get("read_after") or {}, r.get("right_after") or {}
    views = list(dict.fromkeys(w for v in after.values() for w in v))
    deciding = r.get("deciding") or {}

    def cell(text: object, ok: bool | None) -> str:
        cls = "" if ok is None else " class='right'" if ok else " class='wrong'"
        return f"<td{cls}>{escape(str(text)) if text is not None else '&ndash;'}</td>"

    head = "".join(f"<th>{escape(w)}</th>" for w in views)
    rows = []
    for v, reads in after.items():
        mine = deciding.get(v) or views
        roles = "".join(f"<td class='note'>{'deciding' if w in mine else 'reported'}</td>"
                        for w in views)
        before = (r.get("read_before") or {}).get(v)
        rows.append(f"<tr><th rowspan='2'>{escape(v)}</th>"
                    + cell(before, (r.get("right_before") or {}).get(v))
                    + "".join(cell(reads.get(w), (right.get(v) or {}).get(w)) for w in views)
                    + f"</tr><tr><td class='note'>clean, {OWN_VIEW} view</td>{roles}</tr>")
    return (f"<table class='reads'><tr><th>verifier</th><th>before</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def _crops_html(out_dir: Path, input_root: Path, r: dict) -> str:
    crops = _crops(out_dir, input_root, r)
    if not crops:
        return "<p class='note'>(crops not available: an input or output is unreadable)</p>"
    links = {"original": _href(input_root / r["path"], out_dir),
             "hardened": quote(str(r.get("output") or "")), "difference": None}
    cells = []
    for kind in KINDS:
        if kind not in crops:
            cells.append(f"<td class='note'>{kind}: not available</td>")
            continue
        img = f"<img src='{quote(crops[kind])}' alt='{kind}' loading='lazy'>"
        link = links[kind]
        cells.append(f"<td>{kind}<br>" + (f"<a href='{link}'>{img}</a>" if link else img)
                     + "</td>")
    return f"<table class='crops'><tr>{''.join(cells)}</tr></table>"


def zoom_of(height: int, width: int) -> int:
    """The enlargement of a captcha's crops: ZOOM, less for a large one (at least 1)."""
    return max(1, min(ZOOM, MAX_CROP // max(height, width, 1)))


def _crops(out_dir: Path, input_root: Path, r: dict) -> dict[str, str]:
    """kind -> crop path relative to out_dir (written unless already up to date)."""
    key = hashlib.sha1(r["path"].encode("utf-8")).hexdigest()[:16]
    names = {k: f"{REPORT_FILES}/{key}_text_{k}.png" for k in KINDS}
    src_out, src_in = out_dir / str(r.get("output") or ""), input_root / r["path"]
    try:
        newest = max(src_out.stat().st_mtime_ns, src_in.stat().st_mtime_ns)
        if all((out_dir / n).is_file() and (out_dir / n).stat().st_mtime_ns >= newest
               for n in names.values()):
            return names
        hardened, original = load_image(src_out).pixels, load_image(src_in).pixels
    except (OSError, ImageLoadError):
        return {}
    out = {"original": original, "hardened": hardened}
    if original.shape == hardened.shape:
        diff = 0.5 + DIFF_GAIN * (hardened.astype(np.float32) - original) / 255
        out["difference"] = np.clip(np.rint(diff * 255), 0, 255).astype(np.uint8)
    k = zoom_of(*original.shape[:2])
    for kind, px in out.items():
        save_image_atomic(out_dir / names[kind], np.repeat(np.repeat(px, k, 0), k, 1),
                          fmt="png")
    return {kind: names[kind] for kind in out}


__all__ = ["headline_html", "write_text_report", "zoom_of"]
