"""The label sets of the hardening service: which ones a request may use, the one spelling of
each, and the models built for them.

:class:`LabelSets` normalises a request's label set (order does not matter) and holds the
allow-list; :class:`HardenerCache` keeps the models of at most ``max_label_sets`` of them, least
recently used first out, and removes the exports it built for one when that one goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..config import HardenConfig

log = logging.getLogger(__name__)


class LabelSetNotAllowed(ValueError):
    """A request's label set is not in the service's allow-list."""


class LabelSets:
    """Which label sets a request may use, and the one spelling of each: order does not matter
    (the default set's own order when it is the same set, else sorted), so that every ordering
    of one set shares its models and its exports."""

    def __init__(self, default: Sequence[str], allowed: Iterable[Sequence[str]] | None = None
                 ) -> None:
        self.default = tuple(default)
        self.allowed = None if allowed is None else (
            {frozenset(a) for a in [self.default, *allowed] if a})

    def resolve(self, label: str, label_set: Sequence[str] | None = None) -> tuple[str, ...]:
        """The normalised label set of a request (ValueError: unusable or not allowed)."""
        if not label_set and not self.default:
            raise ValueError("this server has no default label set (it was started without "
                             "--label-set): send label_set with the request")
        if not label_set:
            ls = self.default
        else:
            given = [str(x) for x in label_set]
            if len(set(given)) != len(given):
                raise ValueError(f"duplicate labels in the label set ({', '.join(given[:20])})")
            ls = self.default if set(given) == set(self.default) else tuple(sorted(given))
            if self.allowed is not None and frozenset(ls) not in self.allowed:
                raise LabelSetNotAllowed(f"label set ({', '.join(ls[:20])}) is not allowed on "
                                         f"this server")
        if label not in ls:
            raise ValueError(f"label {label!r} is not in the label set ({', '.join(ls[:20])})")
        return ls


class HardenerCache:
    """The Hardeners of the label sets in use: models built once per label set (at most
    ``max_label_sets`` kept, least recently used out, the default set never), a fresh schedule
    (cheap) per budget and deciding views. The ONNX exports built for a label set are removed
    with it unless a kept one shares them; export temporaries left by killed exports are
    removed at start."""

    def __init__(self, default: tuple[str, ...], *, surrogates: tuple[str, ...],
                 verifiers: tuple[str, ...], config: HardenConfig, templates: str, label_map,
                 max_label_sets: int) -> None:
        self.default = default
        self.surrogates, self.verifiers = surrogates, verifiers
        self.config, self.templates, self.label_map = config, templates, label_map
        self.max_label_sets = max_label_sets
        self.builds = 0  # label sets whose models were built
        self.build_seconds = 0.0  # time spent building them
        self._models: OrderedDict[tuple[str, ...], object] = OrderedDict()  # LRU of label sets
        self._schedules: dict[tuple, object] = {}  # (label set, eps, steps, decide) -> Hardener
        self._owned: dict[tuple[str, ...], set[Path]] = {}  # exports this cache built
        self._lock = threading.RLock()
        from ...export.onnx.cache import default_cache_dir, remove_stale_exports

        self._cache_dir = default_cache_dir()
        with contextlib.suppress(OSError):
            if n := remove_stale_exports(self._cache_dir):
                log.info("removed %d export temporaries left by killed exports", n)

    def get(self, label_set: tuple[str, ...], eps: float, steps: int,
            decide: tuple[str, ...] | None = None):
        """The Hardener for a (normalised) label set, budget and deciding views (None: the
        service's), built when not kept."""
        from ..api import Hardener

        key = (label_set, eps, steps, decide)
        config = dataclasses.replace(self.config, eps=eps, steps=steps,
                                     decide=self.config.decide if decide is None else decide)
        with self._lock:
            if label_set in self._models:
                self._models.move_to_end(label_set)
                if key in self._schedules:
                    return self._schedules[key]
                h = self._schedules[key] = self._models[label_set].with_config(config)
                return h
            before = self._exports()
            t0 = time.perf_counter()
            h = Hardener(label_set, surrogates=self.surrogates, verifiers=self.verifiers,
                         config=config, templates=self.templates, label_map=self.label_map)
            self.build_seconds += time.perf_counter() - t0
            self.builds += 1
            self._owned[label_set] = {p for p in self._export_dirs(h) if p not in before}
            self._models[label_set] = self._schedules[key] = h
            self._evict()
            return h

    def _evict(self) -> None:
        while len(self._models) > self.max_label_sets:
            victim = next(ls for ls in self._models if ls != self.default)
            del self._models[victim]
            for k in [k for k in self._schedules if k[0] == victim]:
                del self._schedules[k]
            in_use = {p for h in self._models.values() for p in self._export_dirs(h)}
            for path in self._owned.pop(victim, set()) - in_use:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _export_dirs(h) -> set[Path]:
        return {Path(v.path) for v in getattr(h, "verifiers", ())
                if isinstance(getattr(v, "path", None), str | Path)}

    def _exports(self) -> set[Path]:
        try:
            return {p for p in self._cache_dir.iterdir() if not p.name.startswith(".")}
        except OSError:
            return set()

    def __len__(self) -> int:
        return len(self._models)

    def label_sets(self) -> list[tuple[str, ...]]:
        """The label sets kept, least recently used first."""
        with self._lock:
            return list(self._models)

    def export_bytes(self) -> int:
        """Bytes on disk of the exports this cache built and keeps."""
        with self._lock:
            paths = {p for s in self._owned.values() for p in s}
        return sum(f.stat().st_size for p in paths if p.is_dir() for f in p.rglob("*")
                   if f.is_file())
