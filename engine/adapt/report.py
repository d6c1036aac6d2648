"""The check's first sentence and its report.html: solve rate against training set size, per
view, clean beside it, the counter-moves as points."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...export.files import write_text_atomic
from ..folder.html import pct
from ..tasks.base import get_task


def final_rows(state: Mapping, view: str, kind: str = "held-out") -> dict[int, dict]:
    """Per training set size, the last epoch's row of ``view`` (the retrained copy, or the
    solver as it is at size 0)."""
    out: dict[int, dict] = {}
    for r in state["rows"]:
        if (r["set"] == kind and r["view"] == view and r["copy"] in ("original", "retrained")
                and r["epoch"] >= out.get(r["trained_on"], {}).get("epoch", -1)):
            out[r["trained_on"]] = r
    return dict(sorted(out.items()))


def headline(state: Mapping, view: str) -> dict:
    """When a retrained copy reads hardened held-out items at half its clean rate or better
    (as delivered), as one sentence and its figures."""
    name, noun = state["solver"], get_task(state["task"]).noun
    rows = final_rows(state, view)
    half = [n for n, r in rows.items() if r.get("right_clean_rate")
            and r["right_rate"] >= 0.5 * r["right_clean_rate"]]
    top = max(rows)
    t = rows[top]
    if not half:
        text = (f"Within {top} hardened examples the retrained {name} does not read held-out "
                f"hardened {noun}s at half its clean rate: at {top} it reads "
                f"{pct(t['right_rate'])} of them against {pct(t['right_clean_rate'])} clean "
                f"({view}).")
    elif half[0] == 0:
        text = (f"{name} reads held-out hardened {noun}s at half its clean rate or better "
                f"before any retraining ({pct(rows[0]['right_rate'])} against "
                f"{pct(rows[0]['right_clean_rate'])} clean, {view}).")
    else:
        r = rows[half[0]]
        text = (f"After {half[0]} hardened examples the retrained {name} reads held-out "
                f"hardened {noun}s at half its clean rate or better: {pct(r['right_rate'])} "
                f"against {pct(r['right_clean_rate'])} clean ({view}; "
                f"{pct(rows[min(rows)]['right_rate'])} before retraining).")
    out = {"sentence": text, "view": view, "half_clean_at": half[0] if half else None}
    moves = []
    for kind, copy, what in (("fresh", "retrained", "freshly hardened"),
                             ("second-round", "retrained", "hardened against it (second round)"),
                             ("second-round", "independent",
                              "the second round, by a copy retrained apart")):
        got = [r for r in state["rows"] if r["set"] == kind and r["copy"] == copy
               and r["view"] == view and r["trained_on"] == top]
        if got:
            r = got[-1]
            out[f"{kind}/{copy}"] = {"right_rate": r["right_rate"],
                                     "right_clean_rate": r["right_clean_rate"]}
            moves.append(f"{what}: {pct(r['right_rate'])} (clean {pct(r['right_clean_rate'])})")
    if moves:
        out["sentence"] += f" Retrained on {top}, it reads " + "; ".join(moves) + "."
    return out


def _plot(state: Mapping, views: Sequence[str], deciding: set[str]) -> str:
    """An SVG: right rate against training set size (evenly spaced), hardened per view and
    clean (the first view), counter-moves as points at the largest size."""
    first = final_rows(state, views[0])
    sizes = list(first)
    w, h, left, bottom = 560, 300, 50, 40
    span = max(1, len(sizes) - 1)

    def xy(i: int, rate: float) -> tuple[float, float]:
        return left + i * (w - left - 20) / span, 15 + (1 - rate) * (h - bottom - 15)

    def line(points, colour: str, width: float, dash: str = "") -> str:
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        return (f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{width}" '
                f'{dash}/>')

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">']
    for k in range(0, 11, 2):
        y = xy(0, k / 10)[1]
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                     f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" font-size="11">'
                     f'{k * 10}%</text>')
    for i, n in enumerate(sizes):
        x = xy(i, 0)[0]
        parts.append(f'<text x="{x}" y="{h - bottom + 16}" text-anchor="middle" '
                     f'font-size="11">{n}</text>')
    parts.append(f'<text x="{(w + left) / 2}" y="{h - 6}" text-anchor="middle" font-size="11">'
                 f'hardened training examples</text>')
    for v in views[1:]:
        rows = final_rows(state, v)
        parts.append(line([xy(i, rows[n]["right_rate"] or 0) for i, n in enumerate(sizes)
                           if n in rows], "#f4a261" if v in deciding else "#ccc", 1))
    parts.append(line([xy(i, first[n]["right_clean_rate"] or 0) for i, n in
                       enumerate(sizes)], "#2a9d8f", 2, 'stroke-dasharray="5,3"'))
    parts.append(line([xy(i, first[n]["right_rate"] or 0) for i, n in enumerate(sizes)],
                      "#e63946", 2.5))
    marks = {"fresh": "#264653", "second-round": "#6a4c93"}
    for r in state["rows"]:
        if r["set"] in marks and r["view"] == views[0] and r["trained_on"] == sizes[-1] \
                and r["copy"] != "original":
            x, y = xy(len(sizes) - 1, r["right_rate"] or 0)
            shape = "rect" if r["copy"] == "independent" else "circle"
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{marks[r["set"]]}"/>'
                         if shape == "circle" else
                         f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                         f'fill="{marks[r["set"]]}"/>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(out: Path, state: Mapping) -> None:
    rows = state["rows"]
    views = list(dict.fromkeys(r["view"] for r in rows))
    deciding = {r["view"] for r in rows if r.get("deciding")}
    e = html.escape
    table = ["<table><tr><th>set</th><th>copy</th><th>trained on</th><th>epoch</th>"
             "<th>view</th><th>right (hardened)</th><th>right (clean)</th><th>items</th></tr>"]
    for r in rows:
        table.append(f"<tr><td>{e(r['set'])}</td><td>{e(r['copy'])}</td>"
                     f"<td>{r['trained_on']}</td><td>{r['epoch']}</td>"
                     f"<td>{e(r['view'])}{'*' if r.get('deciding') else ''}</td>"
                     f"<td>{pct(r['right_rate'])}</td><td>{pct(r.get('right_clean_rate'))}</td>"
                     f"<td>{r['n']}</td></tr>")
    table.append("</table>")
    body = [
        "<!doctype html><meta charset='utf-8'><title>advx adapt</title>",
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}"
        "td,th{padding:2px 8px;text-align:right}</style>",
        f"<h1>How long hardening holds: {e(state['solver'])}</h1>",
        f"<p><b>{e(state.get('headline', {}).get('sentence', ''))}</b></p>",
        _plot(state, views, deciding) if views else "",
        f"<p>Red: hardened held-out items read right as delivered ({e(views[0]) if views else ''});"
        " dashed green: their originals; orange: the other deciding views; grey: reported "
        "views; at the largest size, circles: the retrained copy on freshly hardened (dark) "
        "and second-round (purple) items; square: a copy retrained apart on the second "
        "round.</p>",
        f"<p>Run: {e(state['run'])}; config: {e(str(state['config']))}</p>",
        *table,
    ]
    write_text_atomic(out / "report.html", "\n".join(body) + "\n")


__all__ = ["final_rows", "headline", "write_report"]
