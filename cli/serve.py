"""``advx serve``: hardening over HTTP, for backends in any language. The application is
:func:`advx.engine.serve.http.create_app`; this command builds the models and runs it (uvicorn in
this process, or Ray Serve replicas with ``--ray``)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from ..engine.defaults import (
    DEFAULT_MAX_SIDE,
    DEFAULT_SURROGATES,
    DEFAULT_VERIFIERS,
    SERVE_MAX_LABEL_SETS,
    SERVE_MAX_PIXELS,
    SERVE_MAX_QUEUE,
    SERVE_MAX_UPLOAD_MB,
    SERVE_TIMEOUT_S,
    SERVE_TOKEN_ENV,
)
from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from .common import fail_cleanly, list_option, split_list

SERVE_EXTRAS = ("fastapi", "uvicorn", "python_multipart")


def missing_extras(modules=SERVE_EXTRAS) -> list[str]:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.replace("_", "-"))
    return missing


def _label_sets(_ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, ...], ...] | None:
    out = []
    for v in values:
        items = split_list(v)
        if len(items) < 2 or len(set(items)) != len(items):
            raise click.BadParameter(f"{v!r}: two or more distinct labels, comma separated",
                                     param=param)
        out.append(items)
    return tuple(out) or None


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--label-set", callback=list_option,
              help="Comma list of the labels a solver chooses among (requests may send "
                   "another label_set; order does not matter). Without it, image requests "
                   "must send label_set (a text-only server needs none).")
@click.option("--surrogates", default=",".join(DEFAULT_SURROGATES), show_default=True,
              callback=list_option)
@click.option("--verifiers", default=",".join(DEFAULT_VERIFIERS), show_default=True,
              callback=list_option)
@click.option("--text-surrogates", callback=list_option,
              help="Text captchas: OCR solvers attacked (built-in names, `onnx:SPEC.json` with a "
                   "ctc output) [default: every built-in OCR solver that loads]. They load on "
                   "the first text request.")
@click.option("--text-verifiers", callback=list_option,
              help="Text captchas: OCR solvers a captcha must fool [default: as "
                   "--text-surrogates].")
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
@click.option("--max-queue", type=click.IntRange(min=1), default=SERVE_MAX_QUEUE, show_default=True,
              help="Requests waiting for the worker; beyond it 429 with Retry-After.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=SERVE_TIMEOUT_S,
              show_default=True, help="Seconds per request, from its arrival, before a 504; "
                                      "its work stops then.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=SERVE_MAX_UPLOAD_MB,
              show_default=True, help="Image upload cap, enforced while the body streams.")
@click.option("--max-pixels", type=click.IntRange(min=64), default=SERVE_MAX_PIXELS,
              show_default=True, help="Pixels per image, read from its header before "
                                      "decoding (decompression bombs).")
@click.option("--max-side", type=click.IntRange(min=32), default=DEFAULT_MAX_SIDE,
              show_default=True, help="Longer sides above this are attacked on a downscaled "
                                      "copy; the result comes back at the input's size.")
@click.option("--max-label-sets", type=click.IntRange(min=1), default=SERVE_MAX_LABEL_SETS,
              show_default=True, help="Label sets whose models and ONNX exports are kept "
                                      "(least recently used out, exports deleted).")
@click.option("--allow-label-set", "allowed", multiple=True, callback=_label_sets,
              help="Only these label sets (and --label-set) may be requested (repeatable; "
                   "default: any).")
@click.option("--token", envvar=SERVE_TOKEN_ENV, show_envvar=True, default=None,
              help="Require `Authorization: Bearer TOKEN` on every path (401 otherwise).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Serve from Ray Serve replicas: 'local' (a Ray instance on loopback), "
                   "'auto' or a cluster address.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: hardening replicas (each holds the models).")
def serve_cmd(host: str, port: int, label_set: tuple[str, ...], surrogates: tuple[str, ...],
              verifiers: tuple[str, ...], text_surrogates: tuple[str, ...] | None,
              text_verifiers: tuple[str, ...] | None, eps: float, steps: int, transforms: str,
              label_map: Path | None, templates: str, device: str, batch_size: int,
              max_queue: int, timeout_s: float, max_upload_mb: int, max_pixels: int,
              max_side: int, max_label_sets: int, allowed, token: str | None,
              ray_address: str | None, replicas: int) -> None:
    """Serve hardening over HTTP: models load once, concurrent requests are hardened together.

    \b
    POST /harden   multipart: image, label, [label_set], [eps], [steps], [decide]
                   -> the hardened PNG; the result record as JSON in the
                      X-Advx-Result header
                   multipart: image, text, [eps], [steps], [decide]: a text CAPTCHA
                      showing text, hardened against OCR solvers (the text preset's
                      views); the record gives each solver's reading and CER per view
                   decide: comma list of the views that must be beaten (of
                      --transforms, or of the text preset), or all [default: the
                      preset's deciding views]; the others are only reported
    GET  /healthz, GET /models (and /docs)

    \b
    Example:
      advx serve --label-set bus,car,bicycle --port 8000
      curl -F image=@tile.jpg -F label=bus http://127.0.0.1:8000/harden -o hardened.png -D -
      curl -F image=@captcha.png -F text=7KX2P http://127.0.0.1:8000/harden -o hardened.png
      advx serve              (text captchas only: the OCR solvers load at start)
    """
    missing = missing_extras()
    if missing:
        raise click.ClickException(f"advx serve needs the serve extras ({', '.join(missing)} "
                                   f"missing): pip install 'advx[serve]'")
    if ray_address is not None and missing_extras(("ray.serve",)):
        raise click.ClickException("advx serve --ray needs Ray Serve: pip install 'advx[ray]'")
    if not token and not _loopback(host):
        click.echo(f"warning: serving on {host} without --token (or ${SERVE_TOKEN_ENV}): "
                   f"anyone who can reach it may use it", err=True)
    label_set = label_set or ()
    with fail_cleanly():
        from ..engine.config import HardenConfig
        from ..engine.serve.http import Limits, create_app, serve_forever
        from ..export.zoo import load_label_map

        config = HardenConfig(eps=eps, steps=steps, transforms=transforms, device=device,
                              batch_size=batch_size)
        limits = Limits(max_upload=max_upload_mb << 20, max_pixels=max_pixels,
                        max_side=max_side, timeout_s=timeout_s)
        service_args = dict(surrogates=surrogates, verifiers=verifiers, config=config,
                            templates=templates, label_map=load_label_map(label_map),
                            max_batch=batch_size, max_label_sets=max_label_sets,
                            max_queue=max_queue, max_side=max_side,
                            allowed_label_sets=allowed, text_surrogates=text_surrogates,
                            text_verifiers=text_verifiers)
        if ray_address is not None:
            from ..engine.serve.ray_serve import serve_on_ray

            serve_on_ray(ray_address, label_set, service_args, limits, token=token, host=host,
                         port=port, replicas=replicas,
                         echo=lambda m: click.echo(m, err=True))
            return
        from ..engine.serve.service import HardenService

        service = HardenService(label_set, **service_args)
        app = create_app(service, limits=limits, token=token)
    click.echo(f"advx serve: models loaded; listening on http://{host}:{port}"
               + (" (bearer token required)" if token else ""), err=True)
    os.environ.pop(SERVE_TOKEN_ENV, None)  # not inherited by anything started from here
    serve_forever(app, host, port)
