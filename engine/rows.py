"""The items of a folder run or an eval set, and the labels CSV that lists them (a ``path`` and
the task's truth column). An unreadable CSV raises :class:`DatasetError`; a bad *row* becomes a
:class:`Row` with a ``problem``, so that a run records it as an error and goes on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import DatasetError


@dataclass(frozen=True)
class Row:
    """An item: a file and the truth it shows (``path`` POSIX, relative to the input folder)."""

    path: str
    truth: Any
    line: int = 0  # its (first) line in the labels CSV; 0: from the folder layout
    problem: str | None = None  # why it cannot be hardened, found before any model loads
    notes: tuple[str, ...] = ()


def read_labels_csv(labels_csv: Path, parse: Callable[[str, Any], Any]) -> Any:
    """``parse(file name, open text file)`` on a labels CSV (UTF-8, BOM allowed); unreadable,
    undecodable or malformed files become a DatasetError naming the file."""
    labels_csv = Path(labels_csv)
    name = labels_csv.name
    try:
        with open(labels_csv, encoding="utf-8-sig", newline="") as fh:
            return parse(name, fh)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not valid UTF-8 ({exc.reason})") from exc
    except csv.Error as exc:
        raise DatasetError(f"{name}: malformed CSV ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {labels_csv}: {exc.strerror or exc}") from exc


def read_csv_rows(labels_csv: Path, column: str, parse_truth: Callable[[Any], Any] = str, *,
                  whole_row: bool = False) -> list[Row]:
    """The rows of ``labels_csv`` in file order, one per distinct path, the truth read from
    ``column`` (its field stripped) by ``parse_truth`` (``whole_row``: from every field, a
    dict of column -> stripped field; a ValueError it raises is the row's problem). A path
    listed again with the same truth is one row with a note; with another truth, a row with a
    problem."""
    return read_labels_csv(labels_csv, lambda name, fh: _parse(name, csv.reader(fh), column,
                                                               parse_truth, whole_row))


def _parse(name: str, reader, column: str, parse_truth: Callable[[Any], Any],
           whole_row: bool = False) -> list[Row]:
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{name}: empty file, expected a header row 'path,{column}'")
    cols = [h.strip().lower() for h in header]
    for col in ("path", column):
        if col not in cols:
            raise DatasetError(f"{name}: the header has no {col!r} column (it reads "
                               f"{','.join(header)!r}); this run needs a 'path,{column}' header "
                               f"(other columns are ignored)")
    ip = cols.index("path")
    rows: list[Row] = []
    seen: dict[str, list[tuple[int, Any]]] = {}  # path -> (line, truth) of each listing
    for row in reader:
        if not any(f.strip() for f in row):
            continue  # a blank line
        line = reader.line_num
        raw = row[ip].strip() if ip < len(row) else ""
        fields = {c: (row[k].strip() if k < len(row) else "") for k, c in enumerate(cols)}
        problem = path_problem(raw)
        try:
            truth = parse_truth(fields if whole_row else fields[column])
        except ValueError as e:  # a truth that cannot be one: the row's problem
            truth, problem = None, problem or str(e)
        key = raw if problem else PurePosixPath(raw).as_posix()
        if problem is None and key in seen:
            seen[key].append((line, truth))
            continue
        seen.setdefault(key, []).append((line, truth))
        rows.append(Row(key, truth, line, f"{name} line {line}: {problem}" if problem else None))
    if not rows:
        raise DatasetError(f"{name}: no entries after the header")
    return [_merge(name, column, r, seen[r.path]) if r.problem is None else r for r in rows]


def path_problem(raw: str) -> str | None:
    """Why ``raw`` cannot name a file under the input folder (None: it can)."""
    if not raw:
        return "empty path"
    if PurePosixPath(raw).is_absolute() or Path(raw).is_absolute():
        return f"path {raw!r} must be relative to the input folder"
    if ".." in PurePosixPath(raw).parts:
        return f"path {raw!r} points outside the input folder"
    return None


def _merge(name: str, column: str, row: Row, listings: list[tuple[int, Any]]) -> Row:
    """A path listed more than once: harmless with one truth, an error with several."""
    if len(listings) == 1:
        return row
    lines = ", ".join(str(n) for n, _ in listings)
    truths: list = []  # distinct, in order (a truth may be unhashable: a challenge's dict)
    for _, t in listings:
        if t not in truths:
            truths.append(t)
    if len(truths) == 1:
        return Row(row.path, row.truth, row.line,
                   notes=(f"listed {len(listings)} times in {name} (lines {lines})",))
    return Row(row.path, row.truth, row.line,
               problem=f"{name} lines {lines}: {row.path!r} is listed with different "
                       f"{column}s ({', '.join(map(repr, truths))}); keep one row per item")


__all__ = ["Row", "path_problem", "read_csv_rows", "read_labels_csv"]
