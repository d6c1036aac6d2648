"""Grid challenges ("select all images with X"): a 3x3 grid is solved when the model selects
X, by its own decision rule, on exactly the tiles that show X.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRID_TILES = 9
MAX_POSITIVES = 4


@dataclass(frozen=True)
class Grid:
    """One challenge: select every tile whose label is ``target`` (indices into the tiles)."""

    target: int
    tiles: tuple[int, ...]


def sample_grids(labels: Sequence[int], n: int, seed: int = 0) -> list[Grid]:
    """``n`` seeded grids: a target label with at least one tile, 1..4 positive tiles and the
    rest negatives (drawn without replacement when there are enough tiles, else with)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    present = sorted(set(labels.tolist()))
    grids = []
    for _ in range(n if present else 0):
        target = present[int(rng.integers(len(present)))]
        pos_pool = np.flatnonzero(labels == target)
        neg_pool = np.flatnonzero(labels != target)
        n_pos = GRID_TILES if len(neg_pool) == 0 else int(rng.integers(1, MAX_POSITIVES + 1))
        tiles = np.concatenate([_draw(rng, pos_pool, n_pos),
                                _draw(rng, neg_pool, GRID_TILES - n_pos)])
        grids.append(Grid(int(target), tuple(int(t) for t in rng.permutation(tiles))))
    return grids


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return pool[:0]
    return rng.choice(pool, size=k, replace=len(pool) < k)


def grid_solve_rate(predictions: Sequence[int], labels: Sequence[int],
                    grids: Sequence[Grid]) -> float | None:
    """Closed-set answers: share of grids where every tile is answered right (selected iff
    the predicted label is the target)."""
    return grid_solve_rate_sets([{int(p)} for p in predictions], labels, grids)


def grid_solve_rate_sets(selected: Sequence[set[int]], labels: Sequence[int],
                         grids: Sequence[Grid]) -> float | None:
    """Share of grids solved, each tile answered by the set of label indices it selects."""
    if not grids:
        return None
    true = np.asarray(labels)
    solved = sum(all((g.target in selected[t]) == (true[t] == g.target) for t in g.tiles)
                 for g in grids)
    return solved / len(grids)
