"""A long-lived hardening service, for every task: models built once, concurrent requests
batched together.

Requests wait in a bounded queue (beyond ``max_queue``: :class:`QueueFull`); one worker thread
takes up to ``max_batch`` of them, after a short gathering window, through the scheduler
together, a :class:`~.requests.Group` (task, model set, budget, deciding views) at a time.
Each request gets a :class:`concurrent.futures.Future`: cancelling it, or its deadline passing,
takes the image out of its batch before the next attack step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE, SERVE_MAX_LABEL_SETS, SERVE_MAX_QUEUE
from ..results import HardenResult
from .requests import Group, HardenerCache, Requests, TaskSetup, Unreadable
from .uploads import Prepared, deliver, prepare, release_memory, size_problem

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The service holds ``limit`` waiting requests already; try again in ``retry_after_s``."""

    def __init__(self, waiting: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"queue full ({waiting} requests waiting, the limit is {limit}); "
                         f"retry in {retry_after_s} s")
        self.waiting, self.limit, self.retry_after_s = waiting, limit, retry_after_s


class DeadlineExceeded(TimeoutError):
    """A request's deadline passed before its image was hardened (its work was stopped)."""


@dataclass(eq=False)
class _Request:
    prepared: Prepared
    truth: Any
    group: Group
    future: Future
    deadline: float | None  # time.monotonic() after which the request is given up

    @property
    def image(self) -> np.ndarray:
        return self.prepared.working

    def abandoned(self) -> bool:
        """Cancelled by its caller or past its deadline (once true, stays true)."""
        return self.future.cancelled() or (
            self.deadline is not None and time.monotonic() > self.deadline)


def _settle(fut: Future, result: HardenResult | None = None,
            error: BaseException | None = None) -> None:
    """Resolve ``fut`` unless its caller cancelled it meanwhile."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


class HardenService:
    """Harden single images as they come, many at a time; the HTTP app's backend in this
    process. ``tasks``: what each task served loads (default: every registered task with its
    defaults, loaded on its first request unless ``eager``). ``start=False``: no worker thread
    (Ray Serve replicas call :meth:`run_jobs` themselves)."""

    def __init__(self, tasks: Mapping[str, TaskSetup] | None = None, *,
                 config: HardenConfig | None = None, max_batch: int = 16,
                 window_s: float = 0.05, max_label_sets: int = SERVE_MAX_LABEL_SETS,
                 max_queue: int = SERVE_MAX_QUEUE, max_side: int = DEFAULT_MAX_SIDE,
                 start: bool = True) -> None:
        from ..tasks import TASKS

        if max_queue < 1 or max_label_sets < 1 or max_batch < 1:
            raise ValueError("max_queue, max_label_sets and max_batch must be >= 1")
        self.config = config or HardenConfig()
        self.setups = dict(tasks) if tasks is not None else {t: TaskSetup() for t in TASKS}
        self.max_batch, self.window_s = max_batch, window_s
        self.max_label_sets, self.max_queue, self.max_side = max_label_sets, max_queue, max_side
        self.requests = Requests(self.setups, self.config)
        self.hardeners = HardenerCache(self.requests, max_sets=max_label_sets)
        self._waiting: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.completed = 0  # results produced (the HTTP layer counts replies delivered)
        self.abandoned = 0  # requests given up (cancelled or past their deadline)
        self.batches = 0  # scheduler runs (requests hardened together share one)
        self.running = 0  # requests in the scheduler run now
        self.busy = False
        self._batch_s: float | None = None  # moving average of a batch's duration
        for task, setup in self.setups.items():
            if setup.eager:
                self._load_early(task, setup)
        self._worker: threading.Thread | None = None
        if start:
            self.start()

    def _load_early(self, task: str, setup: TaskSetup) -> None:
        """Build an eager task's models now. Models named explicitly must load; a task's
        defaults that cannot (their packages are not installed) leave it to load on its first
        request (which then answers why), with a warning, so that the other tasks are served."""
        try:
            self.hardener(task)
        except Exception as e:
            if setup.surrogates is not None or setup.verifiers is not None:
                raise
            log.warning("warning: the %s task's default models do not load (%s); its "
                        "requests will be refused until they do", task, e)

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="advx-service",
                                            daemon=True)
            self._worker.start()

    def hardener(self, task: str = "labels", options: Mapping[str, Any] | tuple | None = None,
                 eps: float | None = None, steps: int | None = None,
                 decide: tuple[str, ...] | None = None):
        """The Hardener of a task's model set (default: its setup's), budget and deciding
        views (:class:`~.requests.HardenerCache`)."""
        return self.hardeners.get(task, options, eps, steps, decide)

    def problem(self, group: Group, truth: Any) -> str | None:
        """Why ``truth`` cannot be hardened in ``group`` (None: it can); builds the group's
        hardener when not kept (the first call of a task loads its models)."""
        return self._hardener(group).problem(truth)

    def _hardener(self, g: Group):
        return self.hardeners.get(g.task, g.options, g.eps, g.steps, g.decide)

    @property
    def label_set_builds(self) -> int:
        """Model sets whose models were built."""
        return self.hardeners.builds

    def submit(self, image: np.ndarray | Prepared, truth: Any, *, task: str = "labels",
               eps: float | None = None, steps: int | None = None,
               timeout_s: float | None = None, decide: str | Sequence[str] | None = None,
               **options: Any) -> Future:
        """Queue one uint8 HxWx3 image and its truth; the future resolves to its result at the
        input's size. ``options``: the task's request options. Raises ValueError, NotAllowed
        and QueueFull; cancelling, or ``timeout_s`` passing (DeadlineExceeded), stops it."""
        group = self.requests.group(task, truth, eps=eps, steps=steps, decide=decide, **options)
        why = self.problem(group, truth)
        if why is not None:
            raise ValueError(why)
        if not isinstance(image, Prepared):
            image = prepare(np.asarray(image), max_pixels=2**62, max_side=self.max_side)
        if why := size_problem(task, image, self.max_side):
            raise ValueError(why)
        return self.enqueue(image, truth, group, timeout_s)

    def enqueue(self, image: Prepared, truth: Any, group: Group,
                timeout_s: float | None) -> Future:
        """Queue a request already resolved (its group) and checked (:meth:`problem`)."""
        fut: Future = Future()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        req = _Request(image, truth, group, fut, deadline)
        with self._cv:
            if self._closed:
                raise RuntimeError("the service is closed")
            self._purge()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting), self.max_queue, self.retry_after_s())
            self._waiting.append(req)
            self._cv.notify()
        return fut

    async def harden(self, image: np.ndarray, truth: Any, group: Group, timeout_s: float):
        """The HTTP app's call: ``image`` is the working copy (delivered at full size by the
        app); cancelling the awaiting task cancels the request."""
        return await asyncio.wrap_future(self.enqueue(Prepared(image), truth, group, timeout_s))

    def full(self) -> bool:
        """Whether a request submitted now would be refused (QueueFull)."""
        return self.pending() >= self.max_queue

    def retry_after_s(self) -> int:
        """Seconds until a queue slot is likely free (about one batch)."""
        return max(1, math.ceil(self._batch_s or 1.0))

    def pending(self) -> int:
        """Requests waiting for the worker (not yet in a scheduler run)."""
        with self._cv:
            self._purge()
            return len(self._waiting)

    def status(self) -> dict:
        return {"queued": self.pending(), "running": self.running, "busy": self.busy,
                "batches": self.batches, "completed": self.completed,
                "abandoned": self.abandoned, "max_queue": self.max_queue,
                "label_sets_cached": len(self.hardeners.sets("labels"))
                if "labels" in self.setups else 0,
                "label_set_builds": self.label_set_builds}

    def models(self) -> dict:
        """Per task served: its view preset and the models loaded (None until its first
        request loads them)."""
        out = {}
        for task, setup in self.setups.items():
            h = self.hardeners.loaded(task)
            out[task] = {"transforms": self.requests.configs[task].transforms,
                         "options": {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in setup.options.items()
                                     if isinstance(v, str | tuple | list | int | float)},
                         "loaded": None if h is None else h.describe()}
        return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _purge(self) -> None:
        """Drop waiting requests given up on (caller holds ``_cv``)."""
        for r in [r for r in self._waiting if r.abandoned()]:
            self._waiting.remove(r)
            self._give_up(r)

    def _give_up(self, r: _Request) -> None:
        self.abandoned += 1
        _settle(r.future, error=DeadlineExceeded("deadline passed before the image was hardened"))

    def _take(self) -> list[_Request] | None:
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            end = time.monotonic() + self.window_s
            while len(self._waiting) < self.max_batch and (left := end - time.monotonic()) > 0:
                self._cv.wait(left)
            self._purge()
            n = min(self.max_batch, len(self._waiting))
            return [self._waiting.popleft() for _ in range(n)]

    def run_group(self, group: Group, images: Sequence[np.ndarray], truths: Sequence[Any],
                  should_stop: Callable[[int], bool] | None = None
                  ) -> list[HardenResult | None]:
        """Harden images of one group together (None: stopped)."""
        h = self._hardener(group)
        self.batches += 1
        return h.run(list(images), list(truths), should_stop=should_stop)

    def run_jobs(self, jobs: Sequence, check: bool = False) -> Iterator[tuple[Any, Any]]:
        """Harden requests (each with ``group``, ``truth``, ``image`` and ``abandoned()``) a
        group at a time, yielding each request with its result, None (abandoned) or the
        exception that failed its group; with ``check``, a truth the models cannot take fails
        only its own request (:class:`Unreadable`)."""
        groups: dict[Group, list] = {}
        for j in jobs:
            groups.setdefault(j.group, []).append(j)
        for group, mine in groups.items():
            out: dict[int, Any] = dict.fromkeys(map(id, mine))
            live = [j for j in mine if not j.abandoned()]
            try:
                if check:
                    for j in live:
                        if (why := self.problem(group, j.truth)) is not None:
                            out[id(j)] = Unreadable(why)
                    live = [j for j in live if out[id(j)] is None]
                if live:
                    results = self.run_group(group, [j.image for j in live],
                                             [j.truth for j in live],
                                             should_stop=lambda k, live=live: live[k].abandoned())
                    out.update(zip(map(id, live), results, strict=True))
            except Exception as e:  # every request of the group learns why
                log.exception("hardening failed")
                out.update(dict.fromkeys(map(id, live), e))
            yield from ((j, out[id(j)]) for j in mine)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            t0 = time.monotonic()
            self.busy, self.running = True, len(batch)
            for r, res in self.run_jobs(batch):
                if isinstance(res, Exception):
                    _settle(r.future, error=res)
                elif res is None or r.abandoned():
                    self._give_up(r)
                else:
                    try:
                        res = deliver(r.prepared, res, self.requests.configs[r.group.task])
                    except Exception as e:
                        _settle(r.future, error=e)
                        continue
                    self.completed += 1
                    _settle(r.future, res)
            took = time.monotonic() - t0
            self._batch_s = took if self._batch_s is None else 0.7 * self._batch_s + 0.3 * took
            self.busy, self.running = False, 0
            release_memory()


__all__ = ["DeadlineExceeded", "Group", "HardenService", "QueueFull", "TaskSetup"]
