"""The labels.csv of a text run: one row per captcha, its path and the text it shows.

The header must name a ``path`` and a ``text`` column (any order, any case; other columns are
ignored); paths are relative to the input folder, fields are stripped. A file that cannot be
read as such a CSV raises :class:`~advx.engine.tasks.labels.dataset.DatasetError`; a bad *row* (an empty or
escaping path, a path listed again with another text) becomes a row with a ``problem``, so that
the run records it as an error and goes on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..labels.dataset import DatasetError, read_labels_csv

COLUMNS = ("path", "text")


@dataclass(frozen=True)
class TextRow:
    """A captcha listed in labels.csv (``path`` POSIX, relative to the input folder)."""

    path: str
    text: str
    line: int  # its (first) line in the CSV
    problem: str | None = None  # why it cannot be hardened, found in the CSV alone
    notes: tuple[str, ...] = ()


def read_text_labels(labels_csv: Path) -> list[TextRow]:
    """The rows of ``labels_csv`` in file order, one per distinct path (a path listed again
    with the same text is one row with a note; with another text, a row with a problem)."""
    return read_labels_csv(labels_csv, lambda name, fh: _parse(name, csv.reader(fh)))


def _parse(name: str, reader) -> list[TextRow]:
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{name}: empty file, expected a header row 'path,text'")
    cols = [h.strip().lower() for h in header]
    for col in COLUMNS:
        if col not in cols:
            raise DatasetError(f"{name}: the header has no {col!r} column (it reads "
                               f"{','.join(header)!r}); a text run needs a 'path,text' header "
                               f"(other columns are ignored)")
    ip, it = cols.index("path"), cols.index("text")
    rows: list[TextRow] = []
    seen: dict[str, list[tuple[int, str]]] = {}  # path -> (line, text) of each listing
    for row in reader:
        if not any(f.strip() for f in row):
            continue  # a blank line
        line = reader.line_num
        raw = row[ip].strip() if ip < len(row) else ""
        text = row[it].strip() if it < len(row) else ""
        problem = _path_problem(raw)
        key = raw if problem else PurePosixPath(raw).as_posix()
        if problem is None and key in seen:
            seen[key].append((line, text))
            continue
        seen.setdefault(key, []).append((line, text))
        rows.append(TextRow(key, text, line, f"{name} line {line}: {problem}" if problem
                            else None))
    return [_merge(name, r, seen[r.path]) if r.problem is None else r for r in rows]


def _path_problem(raw: str) -> str | None:
    if not raw:
        return "empty path"
    if PurePosixPath(raw).is_absolute() or Path(raw).is_absolute():
        return f"path {raw!r} must be relative to the input folder"
    if ".." in PurePosixPath(raw).parts:
        return f"path {raw!r} points outside the input folder"
    return None


def _merge(name: str, row: TextRow, listings: list[tuple[int, str]]) -> TextRow:
    """A path listed more than once: harmless with one text, an error with several."""
    if len(listings) == 1:
        return row
    lines = ", ".join(str(n) for n, _ in listings)
    texts = list(dict.fromkeys(t for _, t in listings))
    if len(texts) == 1:
        return TextRow(row.path, row.text, row.line,
                       notes=(f"listed {len(listings)} times in {name} (lines {lines})",))
    return TextRow(row.path, row.text, row.line,
                   problem=f"{name} lines {lines}: {row.path!r} is listed with different texts "
                           f"({', '.join(map(repr, texts))}); keep one row per captcha")


__all__ = ["COLUMNS", "TextRow", "read_text_labels"]
