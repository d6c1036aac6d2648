"""The HTTP API of ``advx serve`` (FastAPI), over a hardening backend: the
:class:`~advx.engine.serve.service.HardenService` of this process, or Ray Serve replicas
(:mod:`.ray_serve`). One route for every task:

    POST /harden   multipart: image (file), the task's truth field (label: an image tile's
                   label; text: a text captcha's text), [task], [eps], [steps], [decide] and
                   the task's own fields (labels: [label_set])
                   -> 200 image/png (the hardened image, at the input's size); the result
                      record as JSON in the X-Advx-Result header
    GET  /healthz  -> {"status": "ok", "queued": n, "busy": b, "served": n, ...}
    GET  /models   -> the tasks served, their models and the registry's names

What a request may cost is bounded: the body is read as it streams, in memory, and refused
(413) once it crosses the cap (:mod:`.form`); images are refused before decoding when their
header gives more than ``max_pixels`` pixels, and larger than ``max_side`` ones are attacked
on a downscaled working copy, or refused (413) for a task hardened at its own size
(:mod:`.uploads`); a full queue answers 429 with ``Retry-After``; each request has a deadline
(504), and a request whose client disconnects or whose deadline passes stops its work at the
next attack step. With a token, every path (/docs, /openapi.json and /healthz included) needs
``Authorization: Bearer TOKEN`` (401 otherwise). Every error body is ``{"error": "..."}``.

``decide`` names the deciding views of the request (a comma list of views of its task's
preset, or ``all``; absent: the preset's): the image is done once every verifier is fooled
under each of them, the other views are only reported. Other names answer 422 listing the
preset's views; requests with other deciding views are never batched together. A truth the
models cannot take answers 422 naming why; a model set the server does not allow, 403.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..defaults import DEFAULT_MAX_SIDE, SERVE_MAX_PIXELS, SERVE_MAX_UPLOAD_MB, SERVE_TIMEOUT_S
from ..errors import NotAllowed
from ..tasks.base import get_task
from .form import FIELD_BYTES, FormError, drain, read_form
from .requests import Group, Unreadable
from .service import DeadlineExceeded, QueueFull
from .uploads import deliver, prepare, release_memory, size_problem

_POLL_S = 0.2  # how often a waiting request checks for its client and deadline


@dataclass
class Limits:
    """What one request may cost (see the module docstring)."""

    max_upload: int = SERVE_MAX_UPLOAD_MB << 20  # bytes of the image part
    max_pixels: int = SERVE_MAX_PIXELS  # decoded pixels, from the header
    max_side: int = DEFAULT_MAX_SIDE  # longer side of the working copy
    timeout_s: float = SERVE_TIMEOUT_S  # the request's deadline, from its arrival
    max_uploads: int = 8  # request bodies read (and images decoded) at once

    @property
    def max_body(self) -> int:
        return self.max_upload + FIELD_BYTES


@dataclass
class Counters:
    served: int = 0  # replies handed to a client still connected
    refused: int = 0  # 429: the queue was full
    gone: int = 0  # clients that disconnected before their reply
    timed_out: int = 0  # 504: deadline passed


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer TOKEN`` (compared in
    constant time), else 401 with a JSON error."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or ()).get(b"authorization", b"")
            scheme, _, cred = got.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(),
                                                                        self.token)):
                what = "a wrong token" if got else "no Authorization header"
                response = JSONResponse(
                    {"error": f"unauthorized: {what}; send Authorization: Bearer TOKEN"},
                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="advx"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _State:
    """What the routes share: the backend, the limits, the counters and the gates."""

    def __init__(self, backend, limits: Limits) -> None:
        self.backend, self.limits, self.counters = backend, limits, Counters()
        self.gates: dict[str, asyncio.Semaphore] = {}

    def gate(self, name: str, n: int) -> asyncio.Semaphore:
        if name not in self.gates:  # made in the server's event loop
            self.gates[name] = asyncio.Semaphore(n)
        return self.gates[name]

    def error(self, status: int, message: str, headers: dict | None = None,
              close: bool = False) -> JSONResponse:
        headers = dict(headers or {})
        if close:  # the rest of the body is not read: the connection cannot be reused
            headers["Connection"] = "close"
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def queue_full(self, retry_after_s: int, close: bool = False) -> JSONResponse:
        self.counters.refused += 1
        return self.error(429, f"queue full; retry in {retry_after_s} s",
                          {"Retry-After": str(retry_after_s)}, close=close)


router = APIRouter()


def _state(request: Request) -> _State:
    return request.app.state.advx


@router.get("/healthz")
async def healthz(request: Request):
    s = _state(request)
    c = s.counters
    return {"status": "ok", **s.backend.status(), "served": c.served, "refused": c.refused,
            "gone": c.gone, "timed_out": c.timed_out}


@router.get("/models")
async def models(request: Request):
    from ...export.zoo import list_entries

    return {"tasks": _state(request).backend.models(),
            "registry": [e.name for e in list_entries()]}


@router.post("/harden")
async def harden(request: Request):
    s = _state(request)
    end = time.monotonic() + s.limits.timeout_s
    form = await _read(request, s)
    if isinstance(form, Response):
        return form
    resolved = await _resolve(form, s)
    if isinstance(resolved, Response):
        return resolved
    task, truth, group, data = resolved
    del form
    try:
        async with s.gate("uploads", s.limits.max_uploads):
            prepared = await asyncio.to_thread(prepare, data, max_pixels=s.limits.max_pixels,
                                               max_side=s.limits.max_side)
    except Exception as e:  # ImageLoadError: its reason says what is wrong
        reason = getattr(e, "reason", None)
        if reason is None:
            raise
        if reason.startswith("image too small"):
            return s.error(400, reason)
        return s.error(413 if "decompression bomb" in reason else 400,
                       f"not a usable image: {reason}")
    del data
    if why := size_problem(task, prepared, s.limits.max_side):
        return s.error(413, why)
    return await _answer(request, s, prepared, truth, group, end)


async def _read(request: Request, s: _State):
    """The request's form (its parts), or the error to answer."""
    limits = s.limits
    if s.backend.full():  # refused without parsing its body
        declared = request.headers.get("content-length", "")
        drained = declared.isdigit() and int(declared) <= limits.max_body and await drain(
            request, limits.max_body)
        return s.queue_full(s.backend.retry_after_s(), close=not drained)
    try:
        async with asyncio.timeout(limits.timeout_s), s.gate("uploads", limits.max_uploads):
            return await read_form(request, max_body=limits.max_body,
                                   max_upload=limits.max_upload)
    except FormError as e:
        drained = e.drain and await drain(request, 2 * limits.max_body)
        return s.error(e.status, e.message, close=e.close or (e.drain and not drained))
    except TimeoutError:
        return s.error(408, f"request body not received within {limits.timeout_s:g} s",
                       close=True)
    except ClientDisconnect:
        s.counters.gone += 1
        return Response(status_code=499)


async def _resolve(form: dict, s: _State):
    """(task, truth, group, image bytes) of a request, or the error to answer."""
    raw = {k: v.decode("utf-8", "replace") for k, v in form.items() if k != "image"}
    fields = {k: v.strip() for k, v in raw.items()}
    backend = s.backend
    try:
        task = backend.requests.task_of(fields)
    except ValueError as e:
        return s.error(422, str(e))
    if "image" not in form:
        return s.error(422, "missing or invalid fields: image")
    t = get_task(task)
    try:
        truth = t.parse_truth(raw[t.truth])
    except ValueError as e:  # a truth that cannot be one (a challenge that does not parse)
        return s.error(422, f"{t.truth}: {e}")
    try:
        eps = float(fields["eps"]) if fields.get("eps") else None
        steps = int(fields["steps"]) if fields.get("steps") else None
    except ValueError:
        return s.error(422, "missing or invalid fields: eps and steps must be numbers")
    if eps is not None and not 0 < eps <= 64:
        return s.error(422, f"eps must be in (0, 64] (/255 units), got {eps}")
    if steps is not None and not 0 <= steps <= 1000:
        return s.error(422, f"steps must be in [0, 1000], got {steps}")
    try:
        decide = backend.requests.deciding(fields.get("decide") or None, task)
    except ValueError as e:
        return s.error(422, f"decide: {e}")
    own = {k: fields[k] for k in t.request_fields if fields.get(k)}
    try:
        group = backend.requests.group(task, truth, eps=eps, steps=steps, decide=decide, **own)
    except NotAllowed as e:
        return s.error(403, str(e))
    except ValueError as e:
        return s.error(400, str(e))
    try:
        why = await asyncio.to_thread(backend.problem, group, truth)
    except (ValueError, RuntimeError) as e:  # no model of the task loads
        return s.error(503, f"{task} requests cannot be hardened here: {e}")
    if why is not None:
        return s.error(422, f"{t.truth}: {why}")
    data = bytes(form["image"])
    if not data:
        return s.error(400, "empty file (0 bytes)")
    return task, truth, group, data


async def _answer(request: Request, s: _State, prepared, truth: Any, group: Group,
                  end: float):
    """Harden, wait (answering 499 / 504 when the client or the deadline goes first), and
    reply with the PNG and its record."""
    from ..images import encode_image

    left = max(0.0, end - time.monotonic())
    task = asyncio.ensure_future(s.backend.harden(prepared.working, truth, group, left))
    counters = s.counters
    try:
        while not (await asyncio.wait({task}, timeout=_POLL_S))[0]:
            if await request.is_disconnected():
                counters.gone += 1
                return Response(status_code=499)
            if time.monotonic() > end:
                counters.timed_out += 1
                return s.error(504, f"not hardened within {s.limits.timeout_s:g} s")
        try:
            result = task.result()
        except QueueFull as e:
            return s.queue_full(e.retry_after_s)
        except DeadlineExceeded:
            counters.timed_out += 1
            return s.error(504, f"not hardened within {s.limits.timeout_s:g} s")
        except Unreadable as e:
            return s.error(422, f"{get_task(group.task).truth}: {e}")
        except ValueError as e:  # a model error for this request's model set (or truth)
            return s.error(400, f"{type(e).__name__}: {e}")
        async with s.gate("deliver", 1):  # full-size images, one at a time
            result = await asyncio.to_thread(deliver, prepared, result,
                                             s.backend.requests.configs[group.task],
                                             s.limits.max_pixels)
            png = await asyncio.to_thread(encode_image, result.image, "png")
            record = json.dumps(result.to_record(), allow_nan=False, default=str)
            if prepared.full_size is not None:  # full-size arrays: their pages go back
                del prepared, result
                await asyncio.to_thread(release_memory)
    finally:
        if not task.done():
            task.cancel()  # the work stops at its next attack step
    if await request.is_disconnected():
        counters.gone += 1
        return Response(status_code=499)

    def delivered() -> None:
        counters.served += 1

    return Response(png, media_type="image/png", headers={"X-Advx-Result": record},
                    background=BackgroundTask(delivered))


def create_app(backend, *, limits: Limits | None = None, token: str | None = None) -> FastAPI:
    """The FastAPI application around a :class:`~advx.engine.serve.service.HardenService`
    (or another backend with its ``requests``, ``full``, ``retry_after_s``, ``status``,
    ``models``, ``problem`` and async ``harden``: :mod:`.ray_serve`'s)."""
    from ... import __version__

    state = _State(backend, limits or Limits())
    app = FastAPI(title="advx", version=__version__,
                  description="Harden image-CAPTCHA tiles, text CAPTCHAs and the other "
                              "challenges of advx's tasks against AI solvers.")
    app.state.advx = state
    if token:
        app.add_middleware(BearerAuth, token=token)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return state.error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                           for e in exc.errors())
        return state.error(422, f"missing or invalid fields: {fields}")

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception):
        return state.error(500, f"internal error ({type(exc).__name__})")

    app.include_router(router)
    return app


def serve_forever(app: Any, host: str, port: int) -> None:
    """uvicorn on ``host:port`` until SIGINT / SIGTERM."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
