"""``advx serve --ray ADDRESS``: the HTTP API of :mod:`.http` from Ray Serve replicas.

``advx-hardener`` (``replicas`` of them, each a :class:`~.service.HardenService` without its
worker thread) batches requests with ``@serve.batch``, bounded by ``max_ongoing_requests`` and
``max_queued_requests`` (``--max-queue``: ``BackPressureError``, answered 429); ``advx-ingress``
runs the FastAPI app over its handle. A request given up on cancels its handle call, and the
replica stops its image at the next attack step.
"""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from .requests import Group, Requests
from .service import DeadlineExceeded, HardenService, QueueFull

APP_NAME = "advx"


@dataclass
class Job:
    """One request as the hardener replicas take it (its deadline in wall-clock seconds: the
    ingress and the replica may run on different machines)."""

    image: np.ndarray
    truth: Any
    group: Group
    deadline: float
    stop: threading.Event | None = field(default=None, repr=False, compare=False)

    def abandoned(self) -> bool:
        return (self.stop is not None and self.stop.is_set()) or time.time() > self.deadline

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stop": None}


class HardenerReplica:
    """The models of one replica and its batches (the ``advx-hardener`` deployment)."""

    def __init__(self, service_args: dict, batch_size: int) -> None:
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
        self.service = HardenService(**service_args, start=False)
        self.batch.set_max_batch_size(batch_size)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def batch(self, jobs: list[Job]) -> list:
        return await asyncio.to_thread(self._run, jobs)

    async def harden(self, job: Job):
        job.stop = threading.Event()
        try:
            return await self.batch(job)
        except asyncio.CancelledError:  # the caller is gone: the image leaves its batch
            job.stop.set()
            raise

    def _run(self, jobs: list[Job]) -> list:
        done = {id(j): res for j, res in self.service.run_jobs(jobs, check=True)}
        return [done[id(j)] for j in jobs]


class RayBackend:
    """The ingress's face of the hardener deployment (what :func:`create_app` talks to)."""

    def __init__(self, handle, requests: Requests, models: dict, max_queue: int) -> None:
        self.handle, self.requests = handle, requests
        self._models, self.max_queue = models, max_queue
        self.in_flight, self.batches_s = 0, None

    def full(self) -> bool:
        return False  # Ray Serve's max_queued_requests decides: BackPressureError -> 429

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.batches_s or 1.0))

    def status(self) -> dict:
        return {"queued": self.in_flight, "busy": self.in_flight > 0,
                "max_queue": self.max_queue, "backend": "ray-serve"}

    def models(self) -> dict:
        return self._models

    def problem(self, group: Group, truth: Any) -> str | None:
        return None  # the replica checks the truth against its models

    async def harden(self, image, truth: Any, group: Group, timeout_s: float):
        from ray.serve.exceptions import BackPressureError

        job = Job(image, truth, group, time.time() + timeout_s)
        self.in_flight += 1
        t0 = time.monotonic()
        try:
            response = self.handle.harden.remote(job)
            try:
                result = await response
            except asyncio.CancelledError:
                response.cancel()  # the replica stops the image at its next step
                raise
        except BackPressureError as e:
            raise QueueFull(self.in_flight, self.max_queue, self.retry_after_s()) from e
        finally:
            self.in_flight -= 1
        if isinstance(result, Exception):
            raise result
        if result is None:
            raise DeadlineExceeded("deadline passed before the image was hardened")
        took = time.monotonic() - t0
        self.batches_s = took if self.batches_s is None else 0.7 * self.batches_s + 0.3 * took
        return result


class IngressReplica:
    """The ``advx-ingress`` deployment: the FastAPI app over the hardener deployment."""

    def __init__(self, hardeners, tasks: dict, config, models: dict, limits,
                 token: str | None, max_queue: int) -> None:
        self.backend = RayBackend(hardeners, Requests(tasks, config), models, max_queue)
        self.limits, self.token = limits, token

    def __serve_build_asgi_app__(self):
        from .http import create_app

        return create_app(self.backend, limits=self.limits, token=self.token)


def build_app(service_args: dict, limits, *, token: str | None, replicas: int,
              cpus_per_replica: float, gpus_per_replica: float):
    """The Ray Serve application (ingress bound to the hardener deployment)."""
    batch = service_args.get("max_batch", 16)
    max_queue = service_args.get("max_queue", 32)
    hardener = serve.deployment(
        HardenerReplica, name="advx-hardener", num_replicas=replicas,
        max_ongoing_requests=batch, max_queued_requests=max_queue,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    ingress = serve.deployment(
        serve.ingress()(IngressReplica), name="advx-ingress", num_replicas=1,
        # the ingress only waits; the hardeners' queue is the bound
        max_ongoing_requests=4 * (max_queue + batch * replicas) + 16,
        ray_actor_options={"num_cpus": 0})
    config, tasks = service_args["config"], service_args["tasks"]
    requests = Requests(tasks, config)
    models = {t: {"transforms": requests.configs[t].transforms,
                  "surrogates": None if s.surrogates is None else list(s.surrogates),
                  "verifiers": None if s.verifiers is None else list(s.verifiers),
                  "replicas": replicas} for t, s in tasks.items()}
    return ingress.bind(hardener.bind(service_args, batch), tasks, config, models, limits,
                        token, max_queue)


def serve_on_ray(address: str, service_args: dict, limits, *,
                 token: str | None, host: str, port: int, replicas: int = 1,
                 echo: Callable[[str], None] = print, stop: threading.Event | None = None
                 ) -> None:
    """Deploy on the cluster at ``address`` ('local': a Ray instance on loopback started here)
    and serve on ``host:port`` until SIGINT / SIGTERM (or ``stop``); then the application is
    deleted (and a local instance shut down)."""
    from ..folder.distributed import RayOptions, connect, disconnect, plan

    ray = connect(RayOptions(address))
    try:
        workers, cpus, gpus = plan(ray.cluster_resources(), RayOptions(address, workers=replicas))
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(service_args, limits, token=token, replicas=workers,
                            cpus_per_replica=cpus, gpus_per_replica=gpus),
                  name=APP_NAME, route_prefix="/", blocking=False)
        echo(f"advx serve: {workers} Ray Serve replica(s) ready; listening on "
             f"http://{host}:{port}" + (" (bearer token required)" if token else ""))
        stop = stop or threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set())
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        disconnect()
