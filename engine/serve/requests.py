"""What a service request asks for, resolved before any model is touched: its task (its
``task`` field, or the truth field it sends), its model set (the task's request options: for
labels, a label set), its budget and its deciding views. Requests of one :class:`Group` are
hardened together. Torch-free: the Ray Serve ingress resolves requests without models."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import HardenConfig
from ..tasks.base import get_task
from ..views.presets import resolve_decide

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


__all__ = ["COMMON_FIELDS", "Group", "Requests", "TaskSetup", "Unreadable", "freeze"]
