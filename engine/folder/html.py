"""What report.html's parts share: the page style, number formatting, links, and the images
of an item (original, hardened, their amplified difference) written beside the report."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..images import ImageLoadError, load_image, save_image_atomic
from .records import REPORT_FILES

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
    """kind -> the PNG of an item's ``make(original, hardened)`` images, relative to
    ``out_dir`` (written to report_files/ unless newer than both files; {} when one of them
    cannot be read)."""
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
