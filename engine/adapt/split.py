"""Which items of a hardened run a retrained solver may train on, and which it is read on.

Whole sources stay out of training: items in a sub-folder of the run's input (the tiles of one
photo, as ``advx demo`` and the benchmarks lay them out) go together, and so do items whose
originals hold the same bytes. Held-out groups are drawn by a seeded hash, so a rerun and
another machine draw the same split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...export.files import sha256_file
from ..errors import RunError
from ..evaluate import EvalRow


@dataclass(frozen=True)
class Split:
    train: tuple[EvalRow, ...]  # in training order (the first N train the N-item copy)
    held: tuple[EvalRow, ...]
    digests: dict[str, str]  # each item's original (relative path) -> its sha256

    def record(self) -> dict:
        return {"train": [r.clean for r in self.train], "held_out": [r.clean for r in self.held],
                "sha256": self.digests}


def source_of(path: str) -> str:
    """The group of an item: its top folder under the run's input, else the file itself."""
    parts = PurePosixPath(path).parts
    return parts[0] + "/" if len(parts) > 1 else path


def split_rows(rows: Sequence[EvalRow], clean_root: Path, share: float, seed: int) -> Split:
    """Hold out about ``share`` of ``rows`` (at least one group, never all of them)."""
    if not 0 < share < 1:
        raise RunError(f"the held-out share must lie between 0 and 1, not {share}")
    digests = {r.clean: sha256_file(clean_root / r.clean) for r in rows}
    parent: dict[str, str] = {}

    def root(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    first: dict[str, str] = {}  # a digest -> the first group holding it
    for r in rows:
        g = source_of(r.clean)
        parent.setdefault(g, g)
        other = first.setdefault(digests[r.clean], g)
        parent[root(g)] = root(other)
    groups: dict[str, list[EvalRow]] = {}
    for r in rows:
        groups.setdefault(root(source_of(r.clean)), []).append(r)
    if len(groups) < 2:
        raise RunError(f"the run's {len(rows)} items come from one source "
                       f"({next(iter(groups), '-')}): nothing is left to hold out")

    def draw(g: str) -> str:
        return hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()

    held: list[EvalRow] = []
    order = sorted(groups, key=draw)
    for g in order[:-1]:
        if held and len(held) >= share * len(rows):
            break
        held += groups[g]
    ids = {r.clean for r in held}
    train = [r for r in rows if r.clean not in ids]
    random.Random(seed).shuffle(train)
    out = Split(tuple(train), tuple(held), digests)
    check_disjoint(out)
    return out


def check_disjoint(split: Split) -> None:
    """No held-out item, and no held-out original's bytes, among the training items."""
    train = {r.clean for r in split.train}
    both = train & {r.clean for r in split.held}
    same = ({split.digests[c] for c in train}
            & {split.digests[r.clean] for r in split.held})
    if both or same:
        raise RunError(f"held-out items leak into training: {sorted(both)[:3]} "
                       f"({len(same)} shared originals)")


__all__ = ["Split", "check_disjoint", "source_of", "split_rows"]
