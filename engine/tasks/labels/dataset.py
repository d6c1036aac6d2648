"""The tiles of a labels run: labelled images from sub-folders or a path,label CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ...errors import DatasetError
from ...images import IMAGE_EXTENSIONS
from ...rows import Row, read_labels_csv


def discover(root: Path, labels_csv: Path | None = None) -> list[Row]:
    """The images under ``root`` with their labels, sorted by path: from ``path,label`` CSV
    rows, or each image under ``root/<label>/...`` labelled by its top-level sub-folder
    (``traffic_light``: ``"traffic light"``; hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"input folder not found: {root}")
    items = _from_folders(root) if labels_csv is None else _from_csv(root, Path(labels_csv))
    return sorted(items, key=lambda row: row.path)


def _from_folders(root: Path) -> list[Row]:
    items: list[Row] = []
    loose: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            top, _, rest = rel.partition("/")
            if not rest:
                loose.append(rel)
                continue
            label = top.replace("_", " ").strip()
            if not label:
                raise DatasetError(f"folder '{top}' under {root} does not give a usable label")
            items.append(Row(rel, label))
    if loose:
        loose.sort()
        raise DatasetError(
            f"{len(loose)} image(s) directly in {root} (e.g. '{loose[0]}'): put images in "
            f"sub-folders named after their label ({root}/<label>/...) or pass --labels CSV"
        )
    if not items:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"no images found under {root} (looked for {exts})")
    return items


def _from_csv(root: Path, labels_csv: Path) -> list[Row]:
    return read_labels_csv(labels_csv, lambda name, fh: _parse_csv(root, name, fh))


def _parse_csv(root: Path, name: str, fh: Iterable[str]) -> list[Row]:
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{name}: empty file, expected a header row 'path,label'")
    if [h.strip().lower() for h in header] != ["path", "label"]:
        raise DatasetError(
            f"{name} line {reader.line_num}: expected header 'path,label', got {','.join(header)!r}"
        )
    items: list[Row] = []
    first_seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank line
        where = f"{name} line {line}"
        if len(row) != 2:
            raise DatasetError(f"{where}: expected 2 fields (path,label), got {len(row)}")
        raw_path, label = row[0].strip(), row[1].strip()
        if not raw_path:
            raise DatasetError(f"{where}: empty path")
        if not label:
            raise DatasetError(f"{where}: empty label for '{raw_path}'")
        rel = PurePosixPath(raw_path)
        if rel.is_absolute() or Path(raw_path).is_absolute():
            raise DatasetError(f"{where}: path '{raw_path}' must be relative to {root}")
        if ".." in rel.parts:
            raise DatasetError(f"{where}: path '{raw_path}' points outside {root}")
        key = rel.as_posix()
        if key in first_seen:
            raise DatasetError(
                f"{where}: duplicate path '{key}' (first listed on line {first_seen[key]})"
            )
        if not (root / key).is_file():
            raise DatasetError(f"{where}: file '{key}' not found under {root}")
        first_seen[key] = line
        items.append(Row(key, label, line))
    if not items:
        raise DatasetError(f"{name}: no entries after the header")
    return items
