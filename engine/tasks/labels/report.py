"""The labels task's figures and report parts (torch-free): 3x3 grid challenges drawn from a
run's tiles, solved before and after; each tile's row in report.html.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from ...folder.html import DIFF_GAIN, difference, fmt, item_images, links
from ...folder.records import finite_mean
from .grids import grid_solve_rate_sets, sample_grids

GRIDS, GRID_SEED = 200, 0  # the 3x3 challenges drawn from a run's tiles
THUMB = 256
REGION = 48  # side of the smoothest region shown enlarged
ZOOM = 4
KINDS = ("original", "hardened", "difference", "zoom_original", "zoom_hardened")


def solve_rate(selections: Sequence[Sequence[str]], truths: Sequence[str]) -> float | None:
    """The share of the seeded 3x3 grids of these tiles solved by ``selections`` (the labels
    each tile is selected for): solved when exactly the tiles of the asked label are."""
    index: dict[str, int] = {}
    y = [index.setdefault(t, len(index)) for t in truths]
    sets = [{index.setdefault(lab, len(index)) for lab in s} for s in selections]
    rate = grid_solve_rate_sets(sets, y, sample_grids(y, GRIDS, GRID_SEED))
    return None if rate is None else round(rate, 4)


def grid_rates(rows: Sequence[dict], verifier: str, view: str) -> dict:
    """A verifier's 3x3 grid solve rate under one view, before and after hardening."""
    out = {}
    for when in ("before", "after"):
        sel = [(r.get(f"selected_by_view_{when}") or {}).get(verifier, {}).get(view)
               for r in rows]
        if rows and all(s is not None for s in sel):
            out[f"grid_solve_rate_{when}"] = solve_rate(sel, [r["label"] for r in rows])
    return out


def eval_grid_rate(rows: Sequence[dict]) -> dict:
    """``advx eval``: one scorer's 3x3 grid solve rate under one view (and, with the
    originals, clean)."""
    out = {"grid_solve_rate": solve_rate([r["answer"] for r in rows],
                                         [r["truth"] for r in rows]) if rows else None}
    if rows and "clean" in rows[0]:
        out["grid_solve_rate_clean"] = solve_rate([r["clean"] for r in rows],
                                                  [r["truth"] for r in rows])
    return out


def per_model(records: Sequence[dict]) -> dict[str, dict]:
    """Per model, by its own decision rule: how often it selects a tile for the tile's label,
    and how many seeded 3x3 grids ("select all X") it solves, before and after hardening."""
    rows = [r for r in records if isinstance(r.get("selected_before"), dict)
            and isinstance(r.get("selected_after"), dict)]
    if not rows:
        return {}
    labels = [r["label"] for r in rows]
    out = {}
    for m in sorted({m for r in rows for m in r["selected_before"]}):
        if not all(m in r["selected_before"] and m in r["selected_after"] for r in rows):
            continue
        stats: dict = {}
        for when in ("before", "after"):
            sel = [r[f"selected_{when}"][m] for r in rows]
            stats[f"select_rate_{when}"] = round(
                sum(lab in s for lab, s in zip(labels, sel, strict=True)) / len(rows), 4)
            stats[f"grid_solve_rate_{when}"] = solve_rate(sel, labels)
        probs = [(r.get("probabilities_before") or {}).get(m, {}).get(r["label"]) for r in rows]
        after = [(r.get("probabilities_after") or {}).get(m, {}).get(r["label"]) for r in rows]
        if all(p is not None for p in probs + after):
            stats["mean_p_label_before"] = finite_mean(probs)
            stats["mean_p_label_after"] = finite_mean(after)
        out[m] = stats
    return out


def per_model_table(per_model: dict) -> str:
    """Each model by its own decision rule: tiles selected for their label and 3x3 grids
    solved, before and after; mean P(label) for multi-label solvers."""
    if not per_model:
        return ""

    def pair(v: dict, key: str, spec: str = ".0%") -> str:
        return f"{fmt(v.get(key + '_before'), spec)} &rarr; {fmt(v.get(key + '_after'), spec)}"

    rows = [f"<tr><td>{escape(name)}</td><td>{pair(v, 'select_rate')}</td>"
            f"<td>{pair(v, 'grid_solve_rate')}</td><td>"
            f"{pair(v, 'mean_p_label', '.3f') if 'mean_p_label_before' in v else '&ndash;'}"
            f"</td></tr>" for name, v in per_model.items()]
    return ("<h2>Per model (its own decision rule)</h2><table><tr><th>model</th>"
            "<th>selects the tile's label</th><th>3x3 grids solved</th><th>mean P(label)</th>"
            "</tr>" + "".join(rows) + "</table><p class='note'>A closed-set model selects its "
            "top label; a multi-label solver selects every label with P &ge; its threshold. "
            f"Grids: {GRIDS} seeded 3x3 challenges &ldquo;select all X&rdquo; drawn from these "
            "tiles; solved when exactly the X tiles are selected.</p>")


def gallery_row(out_dir: Path, input_root: Path, r: dict) -> str:
    """One tile: what it is and what each model answers, then its thumbnails."""
    thumbs = item_images(out_dir, input_root, r, KINDS, _thumbnails)
    to = links(out_dir, input_root, r)
    cells = []
    for kind in KINDS:
        rel = thumbs.get(kind)
        if rel is None:
            cells.append("<td class='note'>(not available)</td>")
            continue
        img = f"<img src='{quote(rel)}' alt='{escape(kind)}' loading='lazy'>"
        link = to.get(kind)
        cells.append(f"<td><a href='{link}'>{img}</a></td>" if link else f"<td>{img}</td>")
    after = r.get("predictions_after") or {}
    verifiers = ", ".join(f"{k}: {v}" for k, v in after.items() if k in (r.get("margins") or {})
                          and k not in (r.get("probabilities_after") or {}))
    label = str(r.get("label"))
    solvers = []
    for name, probs in (r.get("probabilities_after") or {}).items():
        before = (r.get("probabilities_before") or {}).get(name, {})
        if label in probs:
            solvers.append(f"{escape(name)}: P({escape(label)}) {fmt(before.get(label), '.3f')}"
                           f" &rarr; {fmt(probs[label], '.3f')}")
    still = {v: [w for w, ok in views.items() if ok]
             for v, views in (r.get("right_after") or {}).items()}
    info = [
        f"<b>{escape(r['path'])}</b>",
        f"label {escape(label)} &middot; "
        f"<span class='{escape(r['status'])}'>{escape(r['status'])}</span>"
        + (f" at step {r['fooled_at']}" if r.get("fooled_at") is not None else ""),
        f"verifiers say: {escape(verifiers)}" if verifiers else "",
        *solvers,
        *(f"{escape(v)} still answers {escape(label)} under: {escape(', '.join(w))}"
          for v, w in still.items() if w),
        (f"PSNR {fmt(r.get('psnr'), '.1f')} dB &middot; SSIM {fmt(r.get('ssim'), '.3f')} "
         f"&middot; L-inf {fmt(r.get('linf'), '.1f')}/255"),
        *(f"<span class='note'>{escape(str(n))}</span>" for n in r.get("notes") or ()),
    ]
    return f"<tr><td>{'<br>'.join(x for x in info if x)}</td>{''.join(cells)}</tr>"


GALLERY_HEAD = (
    f"<p class='note'>difference = 0.5 + {DIFF_GAIN} &times; (hardened &minus; original), grey "
    f"where unchanged; thumbnails at most {THUMB} px. The last two columns enlarge ({ZOOM}"
    f"&times;, no smoothing) each image's smoothest {REGION}&times;{REGION} region, where a "
    f"perturbation shows first: judge quality there.</p><table class='gallery'><tr>"
    f"<th>image</th><th>original</th><th>hardened</th><th>difference</th>"
    f"<th>smoothest region, original</th><th>same region, hardened</th></tr>")


def _thumbnails(original: np.ndarray, hardened: np.ndarray) -> dict[str, np.ndarray]:
    out = {"original": _thumb(original), "hardened": _thumb(hardened)}
    if original.shape == hardened.shape:
        # the difference keeps its texture (nearest neighbour), taken from every k-th pixel
        k = max(1, max(original.shape[:2]) // THUMB)
        out["difference"] = _thumb(difference(original[::k, ::k], hardened[::k, ::k]),
                                   nearest=True)
        y, x, side = smoothest_region(original, REGION)
        for kind, px in (("zoom_original", original), ("zoom_hardened", hardened)):
            crop = px[y : y + side, x : x + side]
            out[kind] = np.repeat(np.repeat(crop, ZOOM, 0), ZOOM, 1)
    return out


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


__all__ = ["GALLERY_HEAD", "eval_grid_rate", "gallery_row", "grid_rates", "per_model",
           "per_model_table", "smoothest_region", "solve_rate"]
