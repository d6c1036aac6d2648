"""``advx serve``: hardening over HTTP (FastAPI + uvicorn), for backends in any language.

    POST /harden   multipart: image (file), label, [label_set], [eps], [steps]
                   -> 200 image/png (the hardened image); the result record (status, steps,
                      margins per verifier and view, SSIM, ...) as JSON in the X-Advx-Result
                      header
    GET  /healthz  -> {"status": "ok", "queued": n, "served": n}
    GET  /models   -> the models loaded and the registry's names

Every bad request gets a 4xx JSON body {"error": "..."}; the server stays up. Uploads are
capped in bytes and in decoded pixels (decompression bombs), each request in time.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint's annotations, whose
# types are imported inside create_app (fastapi stays out of `advx --help`)
import asyncio
import json
from pathlib import Path

import click

from ..engine.defaults import (
    DEFAULT_SURROGATES,
    DEFAULT_TEMPLATES,
    DEFAULT_VERIFIERS,
    TEMPLATE_SETS,
)
from .common import fail_cleanly, list_option

MAX_UPLOAD_MB = 20
MAX_PIXELS = 40_000_000
TIMEOUT_S = 600.0


def create_app(service, *, max_upload: int = MAX_UPLOAD_MB << 20,
               max_pixels: int = MAX_PIXELS, timeout_s: float = TIMEOUT_S):
    """The FastAPI application around a :class:`advx.engine.service.HardenService`."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    from .. import __version__
    from ..engine.images import ImageLoadError, decode_image_bytes, encode_image

    app = FastAPI(title="advx", version=__version__,
                  description="Harden image-CAPTCHA tiles against AI solvers.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                           for e in exc.errors())
        return error(422, f"missing or invalid fields: {fields}")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "queued": service.pending(), "served": service.served,
                "batches": service.batches, "busy": service.busy}

    @app.get("/models")
    async def models():
        from ..engine.zoo import list_entries

        return {"surrogates": list(service.surrogates), "verifiers": list(service.verifiers),
                "label_set": list(service.default_label_set),
                "transforms": service.config.transforms,
                "registry": [e.name for e in list_entries()]}

    @app.post("/harden")
    async def harden(image: UploadFile = File(...), label: str = Form(...),  # noqa: B008
                     label_set: str | None = Form(None), eps: float | None = Form(None),
                     steps: int | None = Form(None)):
        data = await image.read(max_upload + 1)
        if len(data) > max_upload:
            return error(413, f"upload over {max_upload >> 20} MB")
        if not data:
            return error(400, "empty file (0 bytes)")
        if eps is not None and not 0 < eps <= 64:
            return error(422, f"eps must be in (0, 64] (/255 units), got {eps}")
        if steps is not None and not 0 <= steps <= 1000:
            return error(422, f"steps must be in [0, 1000], got {steps}")
        try:
            pixels = decode_image_bytes(data, max_pixels=max_pixels)
        except ImageLoadError as e:
            status = 413 if "decompression bomb" in e.reason else 400
            return error(status, f"not a usable image: {e.reason}")
        if min(pixels.shape[:2]) < 8:
            return error(400, f"image too small to harden: {pixels.shape[1]}x{pixels.shape[0]}")
        labels = [p.strip() for p in label_set.split(",") if p.strip()] if label_set else None
        try:
            future = service.submit(pixels, label.strip(), label_set=labels, eps=eps,
                                    steps=steps)
        except ValueError as e:
            return error(400, str(e))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()
            return error(504, f"not hardened within {timeout_s:g} s")
        except Exception as e:  # a model error for this request's label set
            return error(400, f"{type(e).__name__}: {e}")
        from ..engine.service import result_header

        record = json.dumps(result_header(result), allow_nan=False, default=str)
        return Response(encode_image(result.image, "png"), media_type="image/png",
                        headers={"X-Advx-Result": record})

    return app


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--label-set", required=True, callback=list_option,
              help="Comma list of the labels a solver chooses among (requests may send "
                   "another label_set).")
@click.option("--surrogates", default=",".join(DEFAULT_SURROGATES), show_default=True,
              callback=list_option)
@click.option("--verifiers", default=",".join(DEFAULT_VERIFIERS), show_default=True,
              callback=list_option)
@click.option("--eps", type=click.FloatRange(0, 64, min_open=True), default=8.0,
              show_default=True, help="Default L-inf budget in /255 units.")
@click.option("--steps", type=click.IntRange(min=0), default=40, show_default=True)
@click.option("--transforms", default="solver", show_default=True,
              help="Solver views preset (see `advx harden --help`).")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path))
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=DEFAULT_TEMPLATES,
              show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests hardened together.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=MAX_UPLOAD_MB,
              show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=64), default=MAX_PIXELS,
              show_default=True, help="Decoded pixels per image (decompression bombs).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=TIMEOUT_S,
              show_default=True, help="Seconds per request before a 504.")
def serve_cmd(host: str, port: int, label_set: tuple[str, ...], surrogates: tuple[str, ...],
              verifiers: tuple[str, ...], eps: float, steps: int, transforms: str,
              label_map: Path | None, templates: str, device: str, batch_size: int,
              max_upload_mb: int, max_pixels: int, timeout_s: float) -> None:
    """Serve hardening over HTTP: models load once, concurrent requests are hardened together.

    \b
    POST /harden   multipart: image, label, [label_set], [eps], [steps]
                   -> the hardened PNG; the result record as JSON in the
                      X-Advx-Result header
    GET  /healthz, GET /models

    \b
    Example:
      advx serve --label-set bus,car,bicycle --port 8000
      curl -F image=@tile.jpg -F label=bus http://127.0.0.1:8000/harden -o hardened.png -D -
    """
    with fail_cleanly():
        import uvicorn

        from ..engine.config import HardenConfig
        from ..engine.service import HardenService
        from ..engine.zoo import load_label_map

        config = HardenConfig(eps=eps, steps=steps, transforms=transforms, device=device,
                              batch_size=batch_size)
        service = HardenService(label_set, surrogates=surrogates, verifiers=verifiers,
                                config=config, templates=templates,
                                label_map=load_label_map(label_map), max_batch=batch_size)
        app = create_app(service, max_upload=max_upload_mb << 20, max_pixels=max_pixels,
                         timeout_s=timeout_s)
    click.echo(f"advx serve: models loaded; listening on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
