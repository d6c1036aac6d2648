"""A long-lived hardening service: models built once, concurrent requests batched together.

Requests are queued; one worker thread takes every request that is waiting (up to
``max_batch``, after a short gathering window) and runs them through the scheduler together,
so images of different requests share attack steps and verification passes. Requests with other
budgets or label sets run as their own group, on the same models. Each request gets a
:class:`concurrent.futures.Future` of its :class:`HardenResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .api import Hardener
from .config import HardenConfig
from .defaults import DEFAULT_TEMPLATES
from .results import HardenResult

log = logging.getLogger(__name__)


@dataclass
class _Request:
    image: np.ndarray
    label: str
    label_set: tuple[str, ...]
    eps: float
    steps: int
    future: Future
    t0: float


class HardenService:
    """Harden single images as they come, many at a time (see the module docstring)."""

    def __init__(self, label_set: Sequence[str], *, surrogates: Sequence[str],
                 verifiers: Sequence[str], config: HardenConfig | None = None,
                 templates: str = DEFAULT_TEMPLATES, label_map=None, max_batch: int = 16,
                 window_s: float = 0.05, max_label_sets: int = 4) -> None:
        self.config = config or HardenConfig()
        self.surrogates, self.verifiers = tuple(surrogates), tuple(verifiers)
        self.templates, self.label_map = templates, label_map
        self.default_label_set = tuple(label_set)
        self.max_batch, self.window_s = max_batch, window_s
        self.max_label_sets = max_label_sets
        self._hardeners: OrderedDict[tuple, Hardener] = OrderedDict()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self.served = 0  # requests answered
        self.batches = 0  # scheduler runs (requests hardened together share one)
        self.busy = False
        self.hardener(self.default_label_set, self.config.eps, self.config.steps)  # build now
        self._worker = threading.Thread(target=self._loop, name="advx-service", daemon=True)
        self._worker.start()

    # --- models --------------------------------------------------------------------------------

    def hardener(self, label_set: tuple[str, ...], eps: float, steps: int) -> Hardener:
        """The Hardener for a label set and budget: models built once per label set, a fresh
        schedule (cheap) per budget."""
        key = (label_set, eps, steps)
        with self._lock:
            if key in self._hardeners:
                self._hardeners.move_to_end(key)
                return self._hardeners[key]
            base = next((h for k, h in self._hardeners.items() if k[0] == label_set), None)
        config = dataclasses.replace(self.config, eps=eps, steps=steps)
        h = (base.with_config(config) if base is not None else
             Hardener(label_set, surrogates=self.surrogates, verifiers=self.verifiers,
                      config=config, templates=self.templates, label_map=self.label_map))
        with self._lock:
            self._hardeners[key] = h
            while len({k[0] for k in self._hardeners}) > self.max_label_sets:
                self._hardeners.popitem(last=False)
        return h

    # --- requests ------------------------------------------------------------------------------

    def submit(self, image: np.ndarray, label: str, *, label_set: Sequence[str] | None = None,
               eps: float | None = None, steps: int | None = None) -> Future:
        """Queue one uint8 HxWx3 image; the future resolves to its HardenResult."""
        ls = tuple(label_set) if label_set else self.default_label_set
        if label not in ls:
            raise ValueError(f"label {label!r} is not in the label set ({', '.join(ls[:20])})")
        cfg = dataclasses.replace(self.config, eps=eps if eps is not None else self.config.eps,
                                  steps=steps if steps is not None else self.config.steps)
        fut: Future = Future()
        self._queue.put(_Request(image, label, ls, cfg.eps, cfg.steps, fut, time.perf_counter()))
        return fut

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                if r.future.set_running_or_notify_cancel():
                    groups.setdefault((r.label_set, r.eps, r.steps), []).append(r)
            self.busy = True
            for (ls, eps, steps), reqs in groups.items():
                self.batches += 1
                try:
                    h = self.hardener(ls, eps, steps)
                    results = h.run([r.image for r in reqs], [r.label for r in reqs])
                except Exception as e:  # every request of the group learns why
                    log.exception("hardening failed")
                    for r in reqs:
                        r.future.set_exception(e)
                    continue
                for r, res in zip(reqs, results, strict=True):
                    self.served += 1
                    r.future.set_result(res)
            self.busy = False


def result_header(result: HardenResult) -> dict:
    """The JSON record of a result (no pixels), as the service returns it."""
    return result.to_record()
