"""A long-lived hardening service: models built once, concurrent requests batched together.

Requests wait in a bounded queue (``max_queue``: beyond it :meth:`HardenService.submit` raises
:class:`QueueFull`); one worker thread takes every request that is waiting (up to
``max_batch``, after a short gathering window) and runs them through the scheduler together,
so images of different requests share attack steps and verification passes. Requests with other
budgets, label sets or deciding views (``decide``) run as their own group, on the same models.
Each request gets a :class:`concurrent.futures.Future` of its :class:`HardenResult`.

Work is bounded per request: an image whose longer side is over ``max_side`` is attacked on a
downscaled working copy and its perturbation carried to full size, as folder runs do
(:mod:`.serve_images`). A request whose future is cancelled (its caller is gone)
or whose deadline passes leaves its batch before the next attack step. Label sets are
normalised (order does not matter); the models of at most ``max_label_sets`` of them are kept,
least recently used first out, and the exports the service built for one are removed with it
(:mod:`.label_sets`).

Text CAPTCHAs (:meth:`HardenService.submit_text`) take the same queue, deadlines and
cancellation; their OCR solvers are loaded on the first text request (:mod:`.text_hardeners`),
or at start by a service with no default label set (text captchas only, or a label set sent
with each image), and a captcha is hardened at its own size (one whose longer side is over
``max_side`` is refused), so that its readings are those of the delivered file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import numpy as np

from ...export.defaults import DEFAULT_TEMPLATES
from ..config import HardenConfig
from ..defaults import DEFAULT_MAX_SIDE, SERVE_MAX_LABEL_SETS, SERVE_MAX_QUEUE
from ..results import HardenResult, TextResult
from ..views.presets import resolve_decide
from .label_sets import HardenerCache, LabelSets
from .text_hardeners import TextHardeners
from .uploads import Prepared, deliver, prepare, release_memory

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
    label: str  # the tile's label, or a text captcha's truth
    label_set: tuple[str, ...] | None  # None: a text captcha
    eps: float
    steps: int
    decide: tuple[str, ...] | None  # the deciding views (None: the default ones)
    future: Future
    deadline: float | None  # time.monotonic() after which the request is given up

    def abandoned(self) -> bool:
        """Cancelled by its caller or past its deadline (once true, stays true)."""
        return self.future.cancelled() or (
            self.deadline is not None and time.monotonic() > self.deadline)


def _settle(fut: Future, result: HardenResult | TextResult | None = None,
            error: BaseException | None = None) -> bool:
    """Resolve ``fut`` unless its caller cancelled it meanwhile; True when resolved."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
        return True
    return False


class HardenService:
    """Harden single images as they come, many at a time (see the module docstring).

    ``start=False`` builds the models but starts no worker (:meth:`start` does; Ray Serve
    replicas call :meth:`run_group` themselves)."""

    def __init__(self, label_set: Sequence[str], *, surrogates: Sequence[str],
                 verifiers: Sequence[str], config: HardenConfig | None = None,
                 templates: str = DEFAULT_TEMPLATES, label_map=None, max_batch: int = 16,
                 window_s: float = 0.05, max_label_sets: int = SERVE_MAX_LABEL_SETS,
                 max_queue: int = SERVE_MAX_QUEUE, max_side: int = DEFAULT_MAX_SIDE,
                 allowed_label_sets: Iterable[Sequence[str]] | None = None,
                 text_surrogates: Sequence[str] | None = None,
                 text_verifiers: Sequence[str] | None = None, start: bool = True) -> None:
        if max_queue < 1 or max_label_sets < 1 or max_batch < 1:
            raise ValueError("max_queue, max_label_sets and max_batch must be >= 1")
        self.config = config or HardenConfig()
        self.surrogates, self.verifiers = tuple(surrogates), tuple(verifiers)
        self.templates, self.label_map = templates, label_map
        self.label_sets = LabelSets(label_set, allowed_label_sets)
        self.default_label_set = self.label_sets.default
        self.max_batch, self.window_s = max_batch, window_s
        self.max_label_sets, self.max_queue, self.max_side = max_label_sets, max_queue, max_side
        self._hardeners = HardenerCache(
            self.default_label_set, surrogates=self.surrogates, verifiers=self.verifiers,
            config=self.config, templates=templates, label_map=label_map,
            max_label_sets=max_label_sets)
        # OCR solvers (None: every built-in one that loads), built on the first text request
        self.text = TextHardeners(self.config, surrogates=text_surrogates,
                                  verifiers=text_verifiers)
        self._waiting: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.completed = 0  # results produced (the HTTP layer counts replies delivered)
        self.abandoned = 0  # requests given up (cancelled or past their deadline)
        self.batches = 0  # scheduler runs (requests hardened together share one)
        self.running = 0  # requests in the scheduler run now
        self.busy = False
        self._batch_s: float | None = None  # moving average of a batch's duration
        if self.default_label_set:  # build now
            self.hardener(self.default_label_set, self.config.eps, self.config.steps)
        else:  # text captchas only (or label sets sent with each request): the OCR solvers now
            self.text_hardener()
        self._worker: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="advx-service",
                                            daemon=True)
            self._worker.start()

    # --- models --------------------------------------------------------------------------------

    def hardener(self, label_set: tuple[str, ...], eps: float, steps: int,
                 decide: Sequence[str] | None = None):
        """The Hardener for a label set, budget and deciding views: models built once per label
        set (at most ``max_label_sets`` kept, least recently used out), a fresh schedule
        (cheap) per budget and deciding views."""
        return self._hardeners.get(label_set, eps, steps, self.deciding(decide))

    @property
    def label_set_builds(self) -> int:
        """Label sets whose models were built."""
        return self._hardeners.builds

    @property
    def build_seconds(self) -> float:
        """Time spent building them."""
        return self._hardeners.build_seconds

    def cached_label_sets(self) -> list[tuple[str, ...]]:
        return self._hardeners.label_sets()

    def export_bytes(self) -> int:
        """Bytes on disk of the exports this service built and keeps."""
        return self._hardeners.export_bytes()

    def text_hardener(self, eps: float | None = None, steps: int | None = None,
                      decide: Sequence[str] | None = None):
        """The TextHardener of a budget and deciding views of the text preset (default the
        service's); the first call loads the OCR solvers (seconds), and raises ValueError /
        ModelUnavailableError when none loads."""
        return self.text.get(eps, steps, self.deciding(decide, text=True))

    def check_text(self, text: object, eps: float | None = None, steps: int | None = None,
                   decide: Sequence[str] | None = None) -> str | None:
        """Why ``text`` cannot be a text captcha's truth here (None: it can); builds the
        hardener of the budget when not kept, so that :meth:`submit_text` does not wait."""
        return self.text_hardener(eps, steps, decide).check_text(text)

    def deciding(self, decide: str | Sequence[str] | None, text: bool = False
                 ) -> tuple[str, ...] | None:
        """A request's deciding views (of the text preset for a text captcha; ``all``: every
        view) in the preset's order, None for the default ones (their requests share batches);
        ValueError naming the preset's views."""
        cfg = self.text.config if text else self.config
        d = None if decide is None else resolve_decide(cfg.transforms, decide)
        return None if d is None or set(d) == set(cfg.deciding) else d

    # --- requests ------------------------------------------------------------------------------

    def submit(self, image: np.ndarray | Prepared, label: str, *,
               label_set: Sequence[str] | None = None, eps: float | None = None,
               steps: int | None = None, timeout_s: float | None = None,
               decide: str | Sequence[str] | None = None) -> Future:
        """Queue one uint8 HxWx3 image (or a :class:`Prepared` one); the future resolves to its
        HardenResult at the input's size. ``decide``: its deciding views (default the
        service's). Raises ValueError (label, label set, views) and QueueFull.
        Cancelling the future, or ``timeout_s`` passing (DeadlineExceeded), stops its work at
        the next attack step."""
        ls, decide = self.label_sets.resolve(label, label_set), self.deciding(decide)
        if not isinstance(image, Prepared):
            image = prepare(np.asarray(image), max_pixels=2**62, max_side=self.max_side)
        return self._enqueue(image, label, ls, eps, steps, decide, timeout_s)

    def submit_text(self, image: np.ndarray | Prepared, text: str, *, eps: float | None = None,
                    steps: int | None = None, timeout_s: float | None = None,
                    decide: str | Sequence[str] | None = None) -> Future:
        """Queue one text captcha (uint8 HxWx3, or a :class:`Prepared` one at full size) and the
        text it shows (``decide``: views of the text preset); the future resolves to its
        TextResult. Raises CharsetError (a ValueError naming the solver and the characters),
        ValueError (a captcha over ``max_side``, views) and QueueFull; cancelling and
        deadlines as for :meth:`submit`."""
        from ...export.solver.charset import CharsetError

        decide = self.deciding(decide, text=True)  # views of the text preset
        why = self.check_text(text, eps, steps, decide)
        if why is not None:
            raise CharsetError(why)
        if not isinstance(image, Prepared):
            image = prepare(np.asarray(image), max_pixels=2**62, max_side=self.max_side)
        if image.full_size is not None:
            w, h = image.full_size
            raise ValueError(f"a text captcha of {w}x{h} px is over the longest side of "
                             f"{self.max_side} px: text captchas are hardened at their own size")
        return self._enqueue(image, text, None, eps, steps, decide, timeout_s)

    def _enqueue(self, image: Prepared, label: str, label_set: tuple[str, ...] | None,
                 eps: float | None, steps: int | None, decide: tuple[str, ...] | None,
                 timeout_s: float | None) -> Future:
        fut: Future = Future()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        req = _Request(image, label, label_set, self.config.eps if eps is None else eps,
                       self.config.steps if steps is None else steps, decide, fut, deadline)
        with self._cv:
            if self._closed:
                raise RuntimeError("the service is closed")
            self._purge()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting), self.max_queue, self.retry_after_s())
            self._waiting.append(req)
            self._cv.notify()
        return fut

    def full(self) -> bool:
        """Whether a request submitted now would be refused (QueueFull)."""
        with self._cv:
            self._purge()
            return len(self._waiting) >= self.max_queue

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
                "label_sets_cached": len(self._hardeners),
                "label_set_builds": self.label_set_builds}

    def models(self) -> dict:
        return {"surrogates": list(self.surrogates), "verifiers": list(self.verifiers),
                "label_set": list(self.default_label_set),
                "transforms": self.config.transforms,
                # None until the first text request loads the OCR solvers
                "text": self.text.solver_names()}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _purge(self) -> None:
        """Drop waiting requests given up on (caller holds ``_cv``)."""
        if any(r.abandoned() for r in self._waiting):
            keep = deque()
            for r in self._waiting:
                if r.abandoned():
                    self._give_up(r)
                else:
                    keep.append(r)
            self._waiting = keep

    def _give_up(self, r: _Request) -> None:
        self.abandoned += 1
        if not r.future.cancelled():
            _settle(r.future, error=DeadlineExceeded("deadline passed before the image was "
                                                     "hardened"))

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

    def run_group(self, label_set: tuple[str, ...], eps: float, steps: int,
                  images: Sequence[np.ndarray], labels: Sequence[str],
                  should_stop: Callable[[int], bool] | None = None,
                  decide: tuple[str, ...] | None = None) -> list[HardenResult | None]:
        """Harden images of one label set, budget and deciding views together (None:
        stopped)."""
        h = self.hardener(label_set, eps, steps, decide)
        self.batches += 1
        return h.run(list(images), list(labels), should_stop=should_stop)

    def run_text_group(self, eps: float, steps: int, images: Sequence[np.ndarray],
                       texts: Sequence[str], should_stop: Callable[[int], bool] | None = None,
                       decide: tuple[str, ...] | None = None) -> list[TextResult | None]:
        """Harden text captchas of one budget and deciding views together (None: stopped)."""
        h = self.text_hardener(eps, steps, decide)
        self.batches += 1
        return h.run(list(images), list(texts), should_stop=should_stop)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            t0 = time.monotonic()
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault((r.label_set, r.eps, r.steps, r.decide), []).append(r)
            self.busy, self.running = True, len(batch)
            for key, reqs in groups.items():
                try:
                    self._run(key, reqs)
                except Exception as e:  # every request of the group learns why
                    log.exception("hardening failed")
                    for r in reqs:
                        _settle(r.future, error=e)
            took = time.monotonic() - t0
            self._batch_s = took if self._batch_s is None else 0.7 * self._batch_s + 0.3 * took
            self.busy, self.running = False, 0
            release_memory()

    def _run(self, key: tuple, reqs: list[_Request]) -> None:
        live = []
        for r in reqs:
            if r.abandoned():
                self._give_up(r)
            else:
                live.append(r)
        if not live:
            return
        label_set, eps, steps, decide = key
        images, labels = [r.prepared.working for r in live], [r.label for r in live]
        if label_set is None:  # text captchas
            results = self.run_text_group(eps, steps, images, labels, decide=decide,
                                          should_stop=lambda i: live[i].abandoned())
        else:
            results = self.run_group(label_set, eps, steps, images, labels, decide=decide,
                                     should_stop=lambda i: live[i].abandoned())
        for r, res in zip(live, results, strict=True):
            if res is None or r.abandoned():
                self._give_up(r)
                continue
            try:
                res = deliver(r.prepared, res, self.config)
            except Exception as e:
                _settle(r.future, error=e)
                continue
            self.completed += 1
            _settle(r.future, res)


def result_header(result: HardenResult | TextResult) -> dict:
    """The JSON record of a result (no pixels), as the service returns it."""
    return result.to_record()
