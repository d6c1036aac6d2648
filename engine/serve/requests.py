"""What a service request asks for, resolved before any model is touched (torch-free, for the
Ray Serve ingress): its task, model set, budget and deciding views, its :class:`Group`; and
the Hardener of each group (:class:`HardenerCache`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import HardenConfig
from ..tasks.base import get_task
from ..views.presets import resolve_decide

log = logging.getLogger(__name__)

COMMON_FIELDS = ("image", "task", "eps", "steps", "decide")


class Unreadable(ValueError):
    """A request's truth that the task's models cannot take (the message says why)."""


@dataclass(frozen=True)
class TaskSetup:
    """What a service serves for one task."""

    surrogates: Sequence | None = None  # None: the task's defaults
    verifiers: Sequence | None = None
    transforms: str | None = None  # its view preset (None: the task's)
    # the task's own options (labels: label_set, the default one; label_map; templates)
    options: Mapping[str, Any] = field(default_factory=dict)
    # the values of request options a client may ask for (labels: label sets; None: any)
    allowed: Sequence | None = None
    eager: bool = False  # load its models at start (else on its first request)


def freeze(options: Mapping[str, Any]) -> tuple:
    """A hashable key of a model set's options."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


@dataclass(frozen=True)
class Group:
    """What requests hardened together share."""

    task: str
    options: tuple  # the model set: the task's options, frozen (labels: its label set)
    eps: float
    steps: int
    decide: tuple[str, ...] | None  # the deciding views (None: the preset's)


class Requests:
    """Resolves requests for the tasks a service serves (see the module docstring)."""

    def __init__(self, setups: Mapping[str, TaskSetup], config: HardenConfig) -> None:
        self.setups = dict(setups)
        # each task's config: the service's budget under the task's views
        self.configs = {t: dataclasses.replace(config, transforms=s.transforms).for_task(t)
                        for t, s in self.setups.items()}

    def task_of(self, fields: Mapping[str, Any]) -> str:
        """The task of a request: its ``task`` field, else the one whose truth field it
        sends (ValueError: none, several, or a field of another task)."""
        if fields.get("task"):
            task = str(fields["task"]).strip()
            self._served(task)
        else:
            sent = [t for t in self.setups if get_task(t).truth in fields]
            if len(sent) != 1:
                truths = [get_task(t).truth for t in (sent or self.setups)]
                raise ValueError(f"give one of {', '.join(truths)} with the image"
                                 + (", not several" if sent else ""))
            task = sent[0]
        t = get_task(task)
        if t.truth not in fields:
            raise ValueError(f"missing field: {t.truth} (a {task} request)")
        mine = {*COMMON_FIELDS, t.truth, *t.request_fields}
        others = {f for o in self.setups if o != task
                  for f in (get_task(o).truth, *get_task(o).request_fields)}
        stray = sorted((set(fields) & others) - mine)
        if stray:
            raise ValueError(f"{', '.join(stray)}: not a field of a {task} request")
        return task

    def _served(self, task: str) -> None:
        if task not in self.setups:
            raise ValueError(f"task {task!r} is not served here (served: "
                             f"{', '.join(self.setups)})")

    def group(self, task: str, truth: Any, *, eps: float | None = None,
              steps: int | None = None, decide: str | Sequence[str] | None = None,
              **fields: Any) -> Group:
        """The group a request joins (ValueError: unusable truth, options or views;
        NotAllowed: options the service does not allow)."""
        self._served(task)
        setup, cfg = self.setups[task], self.configs[task]
        decide = self.deciding(decide, task)
        options = get_task(task).request_options(truth, fields, setup.options, setup.allowed)
        return Group(task, freeze({**setup.options, **options}),
                     cfg.eps if eps is None else eps, cfg.steps if steps is None else steps,
                     decide)

    def deciding(self, decide: str | Sequence[str] | None, task: str = "labels"
                 ) -> tuple[str, ...] | None:
        """A request's deciding views (of the task's preset; ``all``: every view) in the
        preset's order, None for the default ones (their requests share batches);
        ValueError naming the preset's views."""
        self._served(task)
        cfg = self.configs[task]
        d = None if decide is None else resolve_decide(cfg.transforms, decide)
        return None if d is None or set(d) == set(cfg.deciding) else d


class HardenerCache:
    """The Hardeners of a service: per task, models built once per model set (at most
    ``max_sets`` kept, least recently used out, never the default; their exports removed with
    them) and a schedule per budget and deciding views."""

    def __init__(self, requests: Requests, *, max_sets: int) -> None:
        from ...export.onnx.cache import default_cache_dir, remove_stale_exports

        self.setups, self.configs, self.max_sets = requests.setups, requests.configs, max_sets
        self.builds = 0  # model sets built
        self._models: OrderedDict[tuple, Any] = OrderedDict()  # (task, set) -> Hardener, LRU
        self._schedules: dict[tuple, Any] = {}  # (task, set, eps, steps, decide) -> Hardener
        self._owned: dict[tuple, set[Path]] = {}  # exports this cache built, per model set
        self._lock = threading.RLock()
        self._cache_dir = default_cache_dir()
        with contextlib.suppress(OSError):
            if n := remove_stale_exports(self._cache_dir):
                log.info("removed %d export temporaries left by killed exports", n)

    def default_key(self, task: str) -> tuple:
        return (task, freeze(self.setups[task].options))

    def get(self, task: str, options: Mapping[str, Any] | tuple | None = None,
            eps: float | None = None, steps: int | None = None,
            decide: tuple[str, ...] | None = None):
        """The Hardener of ``task`` over ``options`` (default: its setup's; a mapping or
        :func:`freeze`'s pairs), a budget (default: the service's) and deciding views (None:
        the preset's)."""
        from ..api import Hardener

        setup, base = self.setups[task], self.configs[task]
        opts = {**setup.options, **dict(options or ())}
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
            h = Hardener(task, surrogates=setup.surrogates, verifiers=setup.verifiers,
                         config=config, **opts)
            self.builds += 1
            self._owned[models_key] = self._export_dirs(h) - before
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

__all__ = ["COMMON_FIELDS", "Group", "HardenerCache", "Requests", "TaskSetup", "Unreadable",
           "freeze"]
