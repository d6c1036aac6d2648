"""The cells task's part of report.html and its figures: per challenge what it asks, each
verifier's answer clean and as delivered under each view, and the image before and after with
each verifier's detections of the label drawn over it (own view), the grid and the truth's
cells outlined. Torch-free: it reads records only."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from ...folder.html import fmt, item_images, links
from . import challenge as chal

COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 220, 120), (220, 80, 255))
TRUTH = (255, 255, 255)
KINDS = ("original", "hardened")

GALLERY_HEAD = (
    "<p class='note'>Answers in <span class='right'>red</span> are still the truth's; green "
    "ones are not. Images: the clean challenge and the hardened one, each verifier's "
    "detections of the label under its own view drawn in its colour, the truth's cells (or "
    "points, boxes) in white.</p>")


def found_share(rows: Sequence[dict], verifier: str, view: str) -> dict:
    """Click challenges (boxes to find): the boxes found as delivered among those found clean
    under ``view`` (the character-level figure), over the challenges that ask for boxes."""
    before = after = 0
    for r in rows:
        if "boxes" not in (r.get("challenge") or {}):
            continue
        a = ((r.get("answer_before") or {}).get(verifier) or {}).get(view)
        b = ((r.get("answer_after") or {}).get(verifier) or {}).get(view)
        if a is None or b is None:
            continue
        before += sum(bool(x) for x in a)
        after += sum(bool(x) and bool(y) for x, y in zip(a, b, strict=False))
    if not before:
        return {}
    return {"found_before": before, "found_after": after,
            "found_rate": round(after / before, 4)}


def _answer(a: object) -> str:
    if a is None:
        return "&ndash;"
    if isinstance(a, list) and a and isinstance(a[0], bool):
        return f"{sum(a)}/{len(a)} found"
    return escape(", ".join(str(x) for x in a)) if isinstance(a, list) else escape(str(a))


def _answers_table(r: dict) -> str:
    after = r.get("answer_after") or {}
    views = list(dict.fromkeys(w for v in after.values() for w in v))
    decides = {w for v in after for w in ((r.get("deciding") or {}).get(v) or views)}
    head = "".join(f"<th>{escape(w)}{'' if w in decides else ' *'}</th>" for w in views)
    rows = []
    for v in after:
        for when, key in (("clean", "before"), ("hardened", "after")):
            got = (r.get(f"answer_{key}") or {}).get(v) or {}
            right = (r.get(f"right_{key}") or {}).get(v) or {}
            rows.append(f"<tr><th>{escape(v)}</th><td class='note'>{when}</td>" + "".join(
                f"<td class='{'right' if right.get(w) else 'wrong'}'>{_answer(got.get(w))}</td>"
                for w in views) + "</tr>")
    return (f"<table class='reads'><tr><th>verifier</th><th></th>{head}</tr>{''.join(rows)}"
            f"</table><p class='note'>* reported view (never keeps a challenge in the batch)"
            f"</p>")


def _draw(px: np.ndarray, r: dict, key: str) -> np.ndarray:
    im = Image.fromarray(px).convert("RGB")
    d = ImageDraw.Draw(im)
    h, w = px.shape[:2]
    ch = r.get("challenge") or {}
    if "grid" in ch:
        cells = chal.cell_boxes(ch["grid"], h, w)
        for i, (x0, y0, x1, y1) in enumerate(cells):
            wide = 3 if i + 1 in (r.get("truth_answer") or []) else 1
            d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=TRUTH, width=wide)
    for x, y in ch.get("points") or []:
        d.ellipse([x - 5, y - 5, x + 5, y + 5], outline=TRUTH, width=2)
    for b in ch.get("boxes") or []:
        d.rectangle(b, outline=TRUTH, width=1)
    for k, (_, views) in enumerate((r.get(f"found_{key}") or {}).items()):
        own = next(iter(views.values()), None) or {}
        for b in own.get("boxes") or []:
            d.rectangle(b, outline=COLOURS[k % len(COLOURS)], width=2)
    return np.asarray(im)


def challenge_html(out_dir: Path, input_root: Path, r: dict) -> str:
    """One challenge: what it asks, its status, the answers and the drawn images."""
    ch = r.get("challenge") or {}
    asks = ", ".join(f"{k} {v}" for k, v in ch.items() if k != "label")
    head = (f"<h3>{escape(r['path'])}</h3><p>label <code>{escape(str(ch.get('label')))}"
            f"</code> &middot; {escape(asks)} &middot; truth {_answer(r.get('truth_answer'))}"
            f" ({escape(str(r.get('truth_from')))}) &middot; "
            f"<span class='{escape(r['status'])}'>{escape(r['status'])}</span> after "
            f"{r.get('steps')} steps &middot; SSIM {fmt(r.get('ssim'), '.3f')} &middot; L-inf "
            f"{fmt(r.get('linf'), '.1f')}/255</p>")
    if r.get("status") == "error":
        return head
    legend = " ".join(f"<span style='color:rgb{COLOURS[k % len(COLOURS)]}'>&#9632; "
                      f"{escape(v)}</span>" for k, v in enumerate(r.get("found_after") or {}))
    images = item_images(out_dir, input_root, r, KINDS, lambda o, h: {
        "original": _draw(o, r, "before"), "hardened": _draw(h, r, "after")}, tag="cells_")
    to = links(out_dir, input_root, r)
    cells = "".join(
        f"<td>{k}<br><a href='{to.get(k) or ''}'><img src='{quote(images[k])}' alt='{k}' "
        f"loading='lazy'></a></td>" for k in KINDS if k in images)
    return (head + _answers_table(r) + f"<p class='note'>{legend}</p>"
            + f"<table class='crops'><tr>{cells}</tr></table>")


__all__ = ["GALLERY_HEAD", "challenge_html", "found_share"]
