"""The HTTP API of ``advx serve`` (FastAPI), over a hardening backend: the
:class:`~advx.engine.serve.service.HardenService` of this process, or Ray Serve replicas
(:mod:`advx.engine.serve.ray_serve`).

    POST /harden   multipart: image (file), label, [label_set], [eps], [steps], [decide]
                   -> 200 image/png (the hardened image, at the input's size); the result
                      record as JSON in the X-Advx-Result header
                   multipart: image (file), text, [eps], [steps], [decide]: a text CAPTCHA showing
                   ``text``, hardened against OCR solvers -> the same, the record a
                   TextResult's (each solver's reading and CER under each view, fooled)
    GET  /healthz  -> {"status": "ok", "queued": n, "busy": b, "served": n, ...}
    GET  /models   -> the models loaded and the registry's names

What a request may cost is bounded: the body is read as it streams, in memory, and refused
(413) once it crosses the cap (nothing is spooled to disk: :mod:`.http_form`); images are
refused before decoding when their header gives more than ``max_pixels`` pixels, and larger
than ``max_side`` ones are attacked on a downscaled working copy (:mod:`.serve_images`); a full
queue answers 429 with ``Retry-After``; each request has a deadline (504), and a request whose
client disconnects or whose deadline passes stops its work at the next attack step. ``served``
on /healthz counts replies handed to a client still connected. With a token, every path (/docs,
/openapi.json and /healthz included) needs ``Authorization: Bearer TOKEN`` (401 otherwise).
Every error body is ``{"error": "..."}``.

``decide`` names the deciding views of the request (a comma list of views of the server's
preset, of the ``text`` preset for a text captcha, or ``all``; absent: the server's): the
image is done once every verifier is fooled under each of them, the other views are only
reported (a verifier that is also a surrogate is held to every view). Other names answer 422
listing the preset's views; requests with other deciding views are never batched together.

Text captchas share the queue, caps, deadlines and cancellation; the service loads their OCR
solvers on the first text request. A truth a solver cannot read answers 422 naming the solver
and the characters, as do a request with both ``label`` and ``text`` and one with neither; a
captcha whose longer side is over ``max_side`` answers 413 (it is hardened at its own size).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..defaults import DEFAULT_MAX_SIDE, SERVE_MAX_PIXELS, SERVE_MAX_UPLOAD_MB, SERVE_TIMEOUT_S
from ..views.presets import resolve_decide
from .form import FIELD_BYTES, FormError, drain, read_form
from .label_sets import LabelSetNotAllowed
from .service import DeadlineExceeded, QueueFull, result_header
from .uploads import deliver, prepare, release_memory

MAX_UPLOADS = 8  # request bodies read (and images decoded) at once
_POLL_S = 0.2  # how often a waiting request checks for its client and deadline


@dataclass
class Limits:
    """What one request may cost (see the module docstring)."""

    max_upload: int = SERVE_MAX_UPLOAD_MB << 20  # bytes of the image part
    max_pixels: int = SERVE_MAX_PIXELS  # decoded pixels, from the header
    max_side: int = DEFAULT_MAX_SIDE  # longer side of the working copy
    timeout_s: float = SERVE_TIMEOUT_S  # the request's deadline, from its arrival
    max_uploads: int = MAX_UPLOADS

    @property
    def max_body(self) -> int:
        return self.max_upload + FIELD_BYTES


@dataclass
class Counters:
    served: int = 0  # replies handed to a client still connected
    refused: int = 0  # 429: the queue was full
    gone: int = 0  # clients that disconnected before their reply
    timed_out: int = 0  # 504: deadline passed
    by_status: dict[int, int] = field(default_factory=dict)


class LocalBackend:
    """A :class:`HardenService` in this process, as the app talks to it."""

    def __init__(self, service) -> None:
        self.service = service
        self.config, self.label_sets = service.config, service.label_sets

    def full(self) -> bool:
        return self.service.full()

    def retry_after_s(self) -> int:
        return self.service.retry_after_s()

    def status(self) -> dict:
        return self.service.status()

    def models(self) -> dict:
        return self.service.models()

    async def harden(self, image, label: str, label_set: tuple[str, ...], eps: float | None,
                     steps: int | None, timeout_s: float, decide: tuple[str, ...] | None = None):
        fut = self.service.submit(image, label, label_set=label_set, eps=eps, steps=steps,
                                  timeout_s=timeout_s, decide=decide)
        return await asyncio.wrap_future(fut)  # cancelling it cancels the request

    def check_text(self, text: str, eps: float | None, steps: int | None,
                   decide: tuple[str, ...] | None = None) -> str | None:
        """Blocking (the first call loads the OCR solvers): run it in a thread."""
        return self.service.check_text(text, eps, steps, decide)

    async def harden_text(self, image, text: str, eps: float | None, steps: int | None,
                          timeout_s: float, decide: tuple[str, ...] | None = None):
        fut = self.service.submit_text(image, text, eps=eps, steps=steps, timeout_s=timeout_s,
                                       decide=decide)
        return await asyncio.wrap_future(fut)


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


def create_app(backend, *, limits: Limits | None = None, token: str | None = None,
               max_upload: int | None = None, max_pixels: int | None = None,
               timeout_s: float | None = None, max_side: int | None = None) -> FastAPI:
    """The FastAPI application around a :class:`~advx.engine.serve.service.HardenService` (or another
    backend with the same face: :class:`LocalBackend`'s methods)."""
    from ... import __version__
    from ..images import ImageLoadError, encode_image
    from .service import HardenService

    limits = limits or Limits()
    for name, value in (("max_upload", max_upload), ("max_pixels", max_pixels),
                        ("timeout_s", timeout_s), ("max_side", max_side)):
        if value is not None:
            setattr(limits, name, value)
    if isinstance(backend, HardenService):
        backend = LocalBackend(backend)
    counters = Counters()
    gates: dict[str, asyncio.Semaphore] = {}

    def gate(name: str, n: int) -> asyncio.Semaphore:
        if name not in gates:  # made in the server's event loop
            gates[name] = asyncio.Semaphore(n)
        return gates[name]

    app = FastAPI(title="advx", version=__version__,
                  description="Harden image-CAPTCHA tiles against AI solvers, and text "
                              "CAPTCHAs against OCR solvers.")
    app.state.counters, app.state.backend, app.state.limits = counters, backend, limits
    if token:
        app.add_middleware(BearerAuth, token=token)

    def error(status: int, message: str, headers: dict | None = None,
              close: bool = False) -> JSONResponse:
        counters.by_status[status] = counters.by_status.get(status, 0) + 1
        headers = dict(headers or {})
        if close:  # the rest of the body is not read: the connection cannot be reused
            headers["Connection"] = "close"
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                           for e in exc.errors())
        return error(422, f"missing or invalid fields: {fields}")

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception):
        return error(500, f"internal error ({type(exc).__name__})")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", **backend.status(), "served": counters.served,
                "refused": counters.refused, "gone": counters.gone,
                "timed_out": counters.timed_out}

    @app.get("/models")
    async def models():
        from ...export.zoo import list_entries

        return {**backend.models(), "registry": [e.name for e in list_entries()]}

    def queue_full(retry_after_s: int, close: bool = False) -> JSONResponse:
        counters.refused += 1
        return error(429, f"queue full; retry in {retry_after_s} s",
                     {"Retry-After": str(retry_after_s)}, close=close)

    @app.post("/harden")
    async def harden(request: Request):
        end = time.monotonic() + limits.timeout_s
        if backend.full():  # refused without parsing its body
            declared = request.headers.get("content-length", "")
            drained = declared.isdigit() and int(declared) <= limits.max_body and await drain(
                request, limits.max_body)
            return queue_full(backend.retry_after_s(), close=not drained)
        try:
            async with asyncio.timeout(limits.timeout_s), gate("uploads", limits.max_uploads):
                form = await read_form(request, max_body=limits.max_body,
                                       max_upload=limits.max_upload)
        except FormError as e:
            drained = e.drain and await drain(request, 2 * limits.max_body)
            return error(e.status, e.message, close=e.close or (e.drain and not drained))
        except TimeoutError:
            return error(408, f"request body not received within {limits.timeout_s:g} s",
                         close=True)
        except ClientDisconnect:
            counters.gone += 1
            return Response(status_code=499)
        if "label" in form and "text" in form:
            return error(422, "give label (an image tile) or text (a text captcha), not both")
        kind = "text" if "text" in form else "label"
        missing = [n for n in ("image", kind) if n not in form]
        if missing:
            return error(422, f"missing or invalid fields: {', '.join(missing)}"
                         + (" (or text, for a text captcha)" if "label" in missing else ""))
        raw = {k: p.data.decode("utf-8", "replace") for k, p in form.items() if k != "image"}
        text = {k: v.strip() for k, v in raw.items()}
        if kind == "text" and "label_set" in form:
            return error(422, "label_set is for image tiles, not text captchas")
        try:
            eps = float(text["eps"]) if text.get("eps") else None
            steps = int(text["steps"]) if text.get("steps") else None
        except ValueError:
            return error(422, "missing or invalid fields: eps and steps must be numbers")
        if eps is not None and not 0 < eps <= 64:
            return error(422, f"eps must be in (0, 64] (/255 units), got {eps}")
        if steps is not None and not 0 <= steps <= 1000:
            return error(422, f"steps must be in [0, 1000], got {steps}")
        try:  # views of the server's preset, or of the text preset for a text captcha
            decide = resolve_decide("text" if kind == "text" else backend.config.transforms,
                                    text["decide"]) if text.get("decide") else None
        except ValueError as e:
            return error(422, f"decide: {e}")
        data = bytes(form.pop("image").data)
        del form
        if not data:
            return error(400, "empty file (0 bytes)")
        if kind == "text":
            truth, label_set = raw["text"], None  # verbatim: spaces around it are refused
            if not hasattr(backend, "harden_text"):
                return error(501, "this server does not harden text captchas")
            try:
                why = await asyncio.to_thread(backend.check_text, truth, eps, steps, decide)
            except (ValueError, RuntimeError) as e:  # no OCR solver loads
                return error(503, f"text captchas cannot be hardened here: {e}")
            if why is not None:
                return error(422, f"text: {why}")
        else:
            label = text["label"]
            asked = [p.strip() for p in text["label_set"].split(",") if p.strip()] \
                if text.get("label_set") else None
            try:
                label_set = backend.label_sets.resolve(label, asked)
            except LabelSetNotAllowed as e:
                return error(403, str(e))
            except ValueError as e:
                return error(400, str(e))
        try:
            async with gate("uploads", limits.max_uploads):
                prepared = await asyncio.to_thread(prepare, data, max_pixels=limits.max_pixels,
                                                   max_side=limits.max_side)
        except ImageLoadError as e:
            if e.reason.startswith("image too small"):
                return error(400, e.reason)
            status = 413 if "decompression bomb" in e.reason else 400
            return error(status, f"not a usable image: {e.reason}")
        del data
        left = max(0.0, end - time.monotonic())
        if label_set is None:
            if prepared.full_size is not None:
                w, h = prepared.full_size
                return error(413, f"a text captcha of {w}x{h} px is over the longest side of "
                                  f"{limits.max_side} px (text captchas are hardened at their "
                                  f"own size)")
            job = backend.harden_text(prepared.working, truth, eps, steps, left, decide)
        else:
            job = backend.harden(prepared.working, label, label_set, eps, steps, left, decide)
        task = asyncio.ensure_future(job)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_POLL_S)
                if task.done():
                    break
                if await request.is_disconnected():
                    counters.gone += 1
                    return Response(status_code=499)
                if time.monotonic() > end:
                    counters.timed_out += 1
                    return error(504, f"not hardened within {limits.timeout_s:g} s")
            try:
                result = task.result()
            except QueueFull as e:
                return queue_full(e.retry_after_s)
            except DeadlineExceeded:
                counters.timed_out += 1
                return error(504, f"not hardened within {limits.timeout_s:g} s")
            except ValueError as e:  # a model error for this request's label set (or text)
                return error(400, f"{type(e).__name__}: {e}")
            async with gate("deliver", 1):  # full-size images, one at a time
                result = await asyncio.to_thread(deliver, prepared, result, backend.config,
                                                 limits.max_pixels)
                png = await asyncio.to_thread(encode_image, result.image, "png")
                record = json.dumps(result_header(result), allow_nan=False, default=str)
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

    return app


def serve_forever(app: Any, host: str, port: int) -> None:
    """uvicorn on ``host:port`` until SIGINT / SIGTERM."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
