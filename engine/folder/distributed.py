"""Folder runs spread over Ray: one actor per GPU (or per group of CPU cores), each holding one
Hardener. The driver reads the inputs, hands batches to the actors and writes every image and
record itself (one writer: results.jsonl and ``--resume`` keep their guarantees; no shared
filesystem needed). A dead actor is restarted by Ray and its batch run again.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RunError

ACTOR_PREFIX = "advx-hardener"
NAMESPACE = "advx"
_CPUS_PER_WORKER = 4  # CPU-only clusters: one actor per this many cores (at least one actor)


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``local`` (a Ray instance of this process), ``auto`` (the cluster this
    machine belongs to) or a cluster address (``ray://HOST:10001``, ``HOST:6379``)."""

    address: str = "local"
    workers: int | None = None  # None: one per GPU, else one per 4 CPU cores
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared evenly
    max_retries: int = 2  # restarts of a dead actor, and re-runs of the batch it held

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("ray address must be 'local', 'auto' or a cluster address")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"ray workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RunError("--ray needs Ray: pip install 'advx[ray]'") from e
    return ray


# what connect() started: a local Ray instance (shut down by disconnect) and its watchdog
_started: list[Any] = []

# The watchdog of a local instance: a process of its own that snapshots the Ray processes
# below the driver every second and, once the driver is gone (its stdin reaches EOF: a normal
# end or a kill -9), stops those still running (SIGTERM, then SIGKILL). Ray's own fate sharing
# kills the driver's children at once, but its agents then wait a minute on the dead GCS.
_WATCHDOG = r"""
import os, select, signal, sys, time
def stat(pid):  # (parent, start time)
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rpartition(b")")[2].split()
    return int(rest[1]), rest[19]
def start(pid):
    try:
        return stat(pid)[1]
    except (OSError, ValueError, IndexError):
        return None
def ray_below(root):
    procs, kids, found, todo = {}, {}, {}, [root]
    for d in os.listdir("/proc"):
        try:
            procs[int(d)] = stat(d)
        except (OSError, ValueError, IndexError):
            pass
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    while todo:
        for c in kids.get(todo.pop(), ()):
            todo.append(c)
            try:
                with open(f"/proc/{c}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if c != os.getpid() and (b"/ray/" in cmd or cmd.startswith(b"ray::")):
                found[c] = procs[c][1]
    return found
known = {}
while not select.select([sys.stdin], [], [], 1.0)[0]:  # readable: EOF, the driver is gone
    known.update(ray_below(int(sys.argv[1])))
def alive():
    return [pid for pid, t in known.items() if start(pid) == t]
def wait(seconds):
    end = time.monotonic() + seconds
    while alive() and time.monotonic() < end:
        time.sleep(0.1)
wait(1.0)
for sig, seconds in ((signal.SIGTERM, 1.5), (signal.SIGKILL, 0.0)):
    for pid in alive():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    wait(seconds)
"""


def _start_local(ray, **kw) -> None:
    """A Ray instance of this process listening on loopback only (Ray maps 127.0.0.1 to the
    machine's address unless told it is a one-machine instance), and a watchdog that stops
    its processes within seconds of the driver's end."""
    import subprocess
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by Ray's processes
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time, should ray be imported
    watchdog = None
    if sys.platform.startswith("linux"):
        watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())],
                                    stdin=subprocess.PIPE, start_new_session=True)
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **kw)
    except BaseException:
        if watchdog is not None:
            watchdog.stdin.close()
        raise
    _started.append(watchdog)


def connect(options: RayOptions):
    """Join (or, ``local``, start) the cluster once per process; a session already connected
    is reused."""
    ray = _ray()
    if not ray.is_initialized():
        kw = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                  configure_logging=False)
        if options.address == "local":
            _start_local(ray, **kw)
        else:
            ray.init(address=options.address, **kw)
    return ray


def disconnect() -> None:
    """Shut down the local instance :func:`connect` started, if any (a joined cluster stays);
    its watchdog stops what is left of it within seconds."""
    if not _started:
        return
    watchdog = _started.pop()
    try:
        _ray().shutdown()
    finally:
        if watchdog is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.close()


def plan(resources: dict[str, float], options: RayOptions) -> tuple[int, float, float]:
    """(workers, CPUs per worker, GPUs per worker) for a cluster's total resources."""
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if gpus:
        workers = options.workers or gpus
        gpu_each = gpus / workers if workers > gpus else 1.0
    else:
        workers = options.workers or max(1, int(cpus // _CPUS_PER_WORKER))
        gpu_each = 0.0
    cpu_each = options.cpus_per_worker or max(1.0, float(int(cpus // workers)))
    return workers, cpu_each, gpu_each


class _HardenerActor:
    """One worker: builds the Hardener once, then hardens the batches it is handed."""

    def __init__(self, build: Callable[[], Any], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        # a model error (a bad name, an unknown label) is kept and raised by ready(): an actor
        # whose creation fails would be restarted and retried in vain
        self.hardener, self.error = None, None
        try:
            self.hardener = build()
        except Exception as e:
            self.error = e

    def ready(self) -> int:
        """The worker's process id, once its Hardener is built."""
        if self.error is not None:
            raise self.error
        return os.getpid()

    def harden(self, images, truths, targets) -> list:
        return self.hardener.run(images, truths, targets)

    def check(self, truths, targets) -> tuple[list[str | None], dict]:
        return self.hardener.check(truths, targets), self.hardener.describe()


@dataclass
class Batch:
    """Inputs prepared by the driver; ``context`` comes back with each result."""

    images: list
    truths: list
    targets: list | None
    context: Sequence[Any]


class RayPool:
    """Hardener actors on a Ray cluster, fed batches and drained as they finish."""

    def __init__(self, options: RayOptions, build: Callable[[], Any]) -> None:
        self.ray = ray = connect(options)
        workers, cpu_each, gpu_each = plan(ray.cluster_resources(), options)
        run_id = uuid.uuid4().hex[:8]
        actor = ray.remote(_HardenerActor)
        self.actors = [actor.options(
            name=f"{ACTOR_PREFIX}-{run_id}-{i}", num_cpus=cpu_each, num_gpus=gpu_each,
            max_restarts=options.max_retries, max_task_retries=options.max_retries,
        ).remote(build, int(cpu_each)) for i in range(workers)]
        try:  # model errors (a bad name, an unknown label) surface here, before OUT is touched
            ray.get([a.ready.remote() for a in self.actors])
        except Exception as e:
            self.close()
            raise _cause(e) from None

    def run(self, batches: Iterable[Batch], deliver: Callable[[Batch, Any], None]) -> None:
        """``deliver(batch, result)`` on the driver as each batch completes (at most two
        batches per actor in flight: inputs are read lazily)."""
        ray = self.ray
        in_flight: dict[Any, Batch] = {}
        load = {i: 0 for i in range(len(self.actors))}
        owner: dict[Any, int] = {}
        source = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < 2 * len(self.actors):
                batch = next(source, None)
                if batch is None:
                    exhausted = True
                    break
                i = min(load, key=load.get)
                ref = self.actors[i].harden.remote(batch.images, batch.truths, batch.targets)
                in_flight[ref], owner[ref] = batch, i
                load[i] += 1
            if not in_flight:
                return
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                batch = in_flight.pop(ref)
                load[owner.pop(ref)] -= 1
                for result in self._get(ref):
                    deliver(batch, result)

    def check(self, truths: Sequence, targets: Sequence | None
              ) -> tuple[list[str | None], dict]:
        """:meth:`Hardener.check` on one worker, and the models the workers loaded."""
        return self._get(self.actors[0].check.remote(list(truths), targets))

    def _get(self, ref):
        """A worker's answer, or its exception as in one process (dead for good: RunError)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            raise RunError(f"a Ray worker died and its restarts are spent ({e}); finished "
                           f"images are kept: run again with --resume") from e
        except Exception as e:
            raise _cause(e) from None

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(a, no_restart=True)
        self.actors = []
        disconnect()  # a local instance ends with the run


def run_in_memory(ray: str | RayOptions, build: Callable[[], Any], images: Sequence,
                  truths: Sequence, targets: Sequence | None, chunk: int,
                  on_result: Callable[[Any], None] | None = None) -> list:
    """``advx.harden(..., ray=...)``: results in input order."""
    if len(truths) != len(images):
        raise ValueError(f"{len(images)} images but {len(truths)} truths")
    if targets is not None and len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    results: list = [None] * len(images)
    batches = (Batch(list(images[i : i + chunk]), list(truths[i : i + chunk]),
                     None if targets is None else list(targets[i : i + chunk]),
                     range(i, min(i + chunk, len(images))))
               for i in range(0, len(images), chunk))

    def deliver(batch: Batch, result) -> None:
        result.index = batch.context[result.index]
        results[result.index] = result
        if on_result is not None:
            on_result(result)

    pool = RayPool(RayOptions(ray) if isinstance(ray, str) else ray, build)
    try:
        pool.run(batches, deliver)
    finally:
        pool.close()
    return results


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception rather than Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
