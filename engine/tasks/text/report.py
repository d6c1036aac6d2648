"""The text task's part of report.html: per captcha its truth, each verifier's reading of the
clean captcha and as delivered under each view (those still reading the truth highlighted) and
the crops the perceptual budget is judged on (original, hardened and the amplified difference,
enlarged without smoothing). Torch-free: it reads records only."""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ...folder.html import DIFF_GAIN, difference, fmt, item_images, links

ZOOM = 3  # crops enlarged this many times (nearest neighbour: the noise shows as it is)
MAX_CROP = 1200  # ... unless that makes the longer side exceed this many pixels
KINDS = ("original", "hardened", "difference")

GALLERY_HEAD = (
    "<p class='note'>Readings in <span class='right'>red</span> still read the truth (under "
    "the solver's case rule); green ones misread it. Crops: original, hardened and 0.5 + "
    f"{DIFF_GAIN} &times; (hardened &minus; original), grey where unchanged, each enlarged "
    f"{ZOOM}&times; without smoothing.</p>")


def captcha_html(out_dir: Path, input_root: Path, r: dict) -> str:
    """One captcha: what it shows, its status, the readings and the crops."""
    truth = str(r.get("text"))
    head = (f"<h3>{escape(r['path'])}</h3><p>truth <code>{escape(truth)}</code> &middot; "
            f"<span class='{escape(r['status'])}'>{escape(r['status'])}</span>"
            + (f" at step {r['fooled_at']}" if r.get("fooled_at") is not None else "")
            + f" &middot; {escape(str(r.get('stop_reason')))} after {r.get('steps')} steps"
            f" &middot; SSIM {fmt(r.get('ssim'), '.3f')} &middot; PSNR "
            f"{fmt(r.get('psnr'), '.1f')} dB &middot; L-inf {fmt(r.get('linf'), '.1f')}/255"
            "</p>")
    notes = "".join(f"<p class='note'>{escape(str(n))}</p>" for n in r.get("notes") or ())
    return head + notes + _reads_table(r) + _crops_html(out_dir, input_root, r)


def _reads_table(r: dict) -> str:
    """verifier x view: the reading of the clean captcha and as delivered, marked right or
    wrong."""
    after = r.get("read_after") or {}
    views = list(dict.fromkeys(w for v in after.values() for w in v))
    deciding = r.get("deciding") or {}

    def cell(text: object, ok: bool | None) -> str:
        cls = "" if ok is None else " class='right'" if ok else " class='wrong'"
        return f"<td{cls}>{escape(str(text)) if text is not None else '&ndash;'}</td>"

    decides = {w for v in after for w in (deciding.get(v) or views)}
    head = "".join(f"<th>{escape(w)}{'' if w in decides else ' *'}</th>" for w in views)
    rows = []
    for v, reads in after.items():
        for when, got in (("clean", r.get("read_before") or {}), ("hardened", {v: reads})):
            right = (r.get(f"right_{'before' if when == 'clean' else 'after'}") or {}).get(v)
            mine = got.get(v) or {}
            rows.append(f"<tr><th>{escape(v)}</th><td class='note'>{when}</td>"
                        + "".join(cell(mine.get(w), (right or {}).get(w)) for w in views)
                        + "</tr>")
    return (f"<table class='reads'><tr><th>verifier</th><th></th>{head}</tr>"
            f"{''.join(rows)}</table><p class='note'>* reported view (never keeps a captcha "
            f"in the batch)</p>")


def _crops_html(out_dir: Path, input_root: Path, r: dict) -> str:
    crops = item_images(out_dir, input_root, r, KINDS, _crops, tag="text_")
    if not crops:
        return "<p class='note'>(crops not available: an input or output is unreadable)</p>"
    to = links(out_dir, input_root, r)
    cells = []
    for kind in KINDS:
        if kind not in crops:
            cells.append(f"<td class='note'>{kind}: not available</td>")
            continue
        img = f"<img src='{quote(crops[kind])}' alt='{kind}' loading='lazy'>"
        link = to.get(kind)
        cells.append(f"<td>{kind}<br>" + (f"<a href='{link}'>{img}</a>" if link else img)
                     + "</td>")
    return f"<table class='crops'><tr>{''.join(cells)}</tr></table>"


def zoom_of(height: int, width: int) -> int:
    """The enlargement of a captcha's crops: ZOOM, less for a large one (at least 1)."""
    return max(1, min(ZOOM, MAX_CROP // max(height, width, 1)))


def _crops(original: np.ndarray, hardened: np.ndarray) -> dict[str, np.ndarray]:
    out = {"original": original, "hardened": hardened}
    if original.shape == hardened.shape:
        out["difference"] = difference(original, hardened)
    k = zoom_of(*original.shape[:2])
    return {kind: np.repeat(np.repeat(px, k, 0), k, 1) for kind, px in out.items()}


__all__ = ["GALLERY_HEAD", "captcha_html", "zoom_of"]
