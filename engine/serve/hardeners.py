"""The Hardeners of a service: per task, its models built once per model set (the task's
options: for labels, a label set) and a fresh schedule (cheap) per budget and deciding views.

At most ``max_sets`` model sets are kept per task, least recently used first out, the task's
default set never; the ONNX exports the service built for a set are removed with it unless a
kept one shares them, and export temporaries left by killed exports are removed at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .requests import Requests, freeze

log = logging.getLogger(__name__)


class HardenerCache:
    """See the module docstring. ``get`` returns the Hardener of a task's model set, budget
    and deciding views, built when not kept."""

    def __init__(self, requests: Requests, *, max_sets: int) -> None:
        self.setups, self.configs = requests.setups, requests.configs
        self.max_sets = max_sets
        self.builds = 0  # model sets built
        self.build_seconds = 0.0
        self._models: OrderedDict[tuple, Any] = OrderedDict()  # (task, set) -> Hardener, LRU
        self._schedules: dict[tuple, Any] = {}  # (task, set, eps, steps, decide) -> Hardener
        self._owned: dict[tuple, set[Path]] = {}  # exports this cache built, per model set
        self._lock = threading.RLock()
        from ...export.onnx.cache import default_cache_dir, remove_stale_exports

        self._cache_dir = default_cache_dir()
        with contextlib.suppress(OSError):
            if n := remove_stale_exports(self._cache_dir):
                log.info("removed %d export temporaries left by killed exports", n)

    def default_key(self, task: str) -> tuple:
        return (task, freeze(self.setups[task].options))

    def get(self, task: str, options: Mapping[str, Any] | None = None,
            eps: float | None = None, steps: int | None = None,
            decide: tuple[str, ...] | None = None):
        """The Hardener of ``task`` over ``options`` (default: its setup's), a budget (default:
        the service's) and deciding views (None: the preset's)."""
        from ..api import Hardener

        setup, base = self.setups[task], self.configs[task]
        opts = {**setup.options, **(options or {})}
        models_key = (task, freeze(opts))
        config = dataclasses.replace(
            base, eps=base.eps if eps is None else eps, steps=base.steps if steps is None
            else steps, decide=base.decide if decide is None else decide)
        key = (*models_key, config.eps, config.steps, decide)
        with self._lock:
            if models_key in self._models:
                self._models.move_to_end(models_key)
                if key not in self._schedules:
                    self._schedules[key] = self._models[models_key].with_config(config)
                return self._schedules[key]
            before = self._exports()
            t0 = time.perf_counter()
            h = Hardener(task, surrogates=setup.surrogates, verifiers=setup.verifiers,
                         config=config, **opts)
            self.build_seconds += time.perf_counter() - t0
            self.builds += 1
            self._owned[models_key] = {p for p in self._export_dirs(h) if p not in before}
            self._models[models_key] = self._schedules[key] = h
            self._evict(task)
            return h

    def _evict(self, task: str) -> None:
        mine = [k for k in self._models if k[0] == task]
        default = self.default_key(task)
        while len(mine) > self.max_sets:
            victim = next(k for k in mine if k != default)
            mine.remove(victim)
            del self._models[victim]
            for k in [k for k in self._schedules if k[:2] == victim]:
                del self._schedules[k]
            in_use = {p for h in self._models.values() for p in self._export_dirs(h)}
            for path in self._owned.pop(victim, set()) - in_use:
                shutil.rmtree(path, ignore_errors=True)

    def loaded(self, task: str):
        """The default model set's Hardener of ``task`` if built (None: not yet)."""
        return self._models.get(self.default_key(task))  # no lock: a build may hold it

    @staticmethod
    def _export_dirs(h) -> set[Path]:
        return {Path(v.path) for v in getattr(h, "verifiers", ())
                if isinstance(getattr(v, "path", None), str | Path)}

    def _exports(self) -> set[Path]:
        try:
            return {p for p in self._cache_dir.iterdir() if not p.name.startswith(".")}
        except OSError:
            return set()

    def sets(self, task: str) -> list[tuple]:
        """The model sets of ``task`` kept (their options), least recently used first."""
        with self._lock:
            return [k[1] for k in self._models if k[0] == task]

    def __len__(self) -> int:
        return len(self._models)

    def export_bytes(self) -> int:
        """Bytes on disk of the exports this cache built and keeps."""
        with self._lock:
            paths = {p for s in self._owned.values() for p in s}
        return sum(f.stat().st_size for p in paths if p.is_dir() for f in p.rglob("*")
                   if f.is_file())


__all__ = ["HardenerCache"]
