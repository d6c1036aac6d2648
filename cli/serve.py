"""``advx serve``: hardening over HTTP, for backends in any language and every task. The
application is :func:`advx.engine.serve.http.create_app`; this command builds the models and
runs it (uvicorn in this process, or Ray Serve replicas with ``--ray``)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from ..engine.config import HardenConfig
from ..engine.defaults import (
    DEFAULT_MAX_SIDE,
    SERVE_HOST,
    SERVE_MAX_LABEL_SETS,
    SERVE_MAX_PIXELS,
    SERVE_MAX_QUEUE,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
    SERVE_REPLICAS,
    SERVE_TIMEOUT_S,
    SERVE_TOKEN_ENV,
)
from ..engine.tasks import TASKS
from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from .common import fail_cleanly, list_option, split_list, tasks_help

DEFAULTS = HardenConfig()
SERVE_EXTRAS = ("fastapi", "uvicorn", "python_multipart")
# options of the command that are a task's own: the task option each sets
TASK_OPTIONS = ("label_set", "label_map", "templates")


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


def _per_task(_ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    """``[TASK=]VALUE``, repeatable: a bare value is the labels task's."""
    out: dict[str, str] = {}
    for v in values:
        task, sep, value = v.partition("=")
        task, value = (task.strip(), value.strip()) if sep else ("labels", v.strip())
        if task not in TASKS:
            raise click.BadParameter(f"{v!r}: {task!r} is not a task ({', '.join(TASKS)})",
                                     param=param)
        if not value:
            raise click.BadParameter(f"{v!r}: nothing after {task}=", param=param)
        out[task] = value
    return out


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _defaults(which: int) -> str:
    return "; ".join(f"{t.name}: {','.join(t.default_models()[which]) or '-'}"
                     for t in TASKS.values())


@click.command("serve")
@click.option("--host", default=SERVE_HOST, show_default=True,
              help="Address to listen on; anything but loopback should have a --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=SERVE_PORT, show_default=True,
              help="Port to listen on.")
@click.option("--tasks", "served", callback=list_option,
              help=f"Comma list of the tasks served [default: all: {', '.join(TASKS)}].")
@click.option("--surrogates", multiple=True, callback=_per_task, metavar="[TASK=]LIST",
              help=f"A task's comma list of models attacked with gradients, e.g. "
                   f"text=ddddocr,captcha-whisperer (repeatable; a bare list is labels') "
                   f"[default: {_defaults(0)}].")
@click.option("--verifiers", multiple=True, callback=_per_task, metavar="[TASK=]LIST",
              help=f"A task's comma list of models that must be fooled (repeatable; a bare "
                   f"list is labels') [default: {_defaults(1)}].")
@click.option("--transforms", multiple=True, callback=_per_task, metavar="[TASK=]PRESET",
              help="A task's view preset (see `advx harden --help`; repeatable; a bare name "
                   "is labels') [default: the task's: "
                   + ", ".join(f"{t.name} {t.preset}" for t in TASKS.values()) + "].")
@click.option("--eps", type=click.FloatRange(0, 64, min_open=True), default=DEFAULTS.eps,
              show_default=True, help="Default L-inf budget in /255 units (a request may "
                                      "send its own).")
@click.option("--steps", type=click.IntRange(min=0), default=DEFAULTS.steps, show_default=True,
              help="Default attack step limit per image (a request may send its own).")
@click.option("--device", default=DEFAULTS.device, show_default=True,
              help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
              show_default=True, help="Requests hardened together.")
@click.option("--max-queue", type=click.IntRange(min=1), default=SERVE_MAX_QUEUE,
              show_default=True,
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
                                      "copy and the result comes back at the input's size "
                                      "(labels); a task hardened at its own size (text) "
                                      "answers 413.")
@click.option("--label-set", callback=list_option,
              help="labels: comma list of the labels a solver chooses among (requests may send "
                   "another label_set; order does not matter). Without it, labels requests "
                   "must send label_set.")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='labels: JSON {"label": ["ImageNet class name or index", ...]} for ImageNet '
                   "classifiers (consulted before the built-in map).")
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=DEFAULT_TEMPLATES,
              show_default=True, help="labels: prompt templates of zero-shot (CLIP) models.")
@click.option("--max-label-sets", type=click.IntRange(min=1), default=SERVE_MAX_LABEL_SETS,
              show_default=True, help="Model sets (labels: label sets) kept per task, with "
                                      "their ONNX exports (least recently used out, exports "
                                      "deleted).")
@click.option("--allow-label-set", "allowed", multiple=True, callback=_label_sets,
              help="labels: only these label sets (and --label-set) may be requested "
                   "(repeatable; default: any).")
@click.option("--token", envvar=SERVE_TOKEN_ENV, show_envvar=True, default=None,
              help="Require `Authorization: Bearer TOKEN` on every path (401 otherwise).")
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help="Serve from Ray Serve replicas (pip install 'advx[ray]'): local = a Ray "
                   "instance on loopback started here, auto = the cluster this machine joined, "
                   "or a cluster address.")
@click.option("--replicas", type=click.IntRange(min=1), default=SERVE_REPLICAS,
              show_default=True, help="With --ray: hardening replicas (each holds the models).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int, served: tuple[str, ...] | None,
              surrogates: dict, verifiers: dict, transforms: dict, eps: float, steps: int,
              device: str, batch_size: int, max_queue: int, timeout_s: float,
              max_upload_mb: int, max_pixels: int, max_side: int,
              label_set: tuple[str, ...] | None, label_map: Path | None, templates: str,
              max_label_sets: int, allowed, token: str | None, ray_address: str | None,
              replicas: int) -> None:
    """Serve hardening over HTTP: models load once, concurrent requests are hardened together.

    \b
    POST /harden   multipart: image, the task's truth field (label, text, ...), [task],
                   [eps], [steps], [decide] and the task's own fields (labels:
                   [label_set])
                   -> the hardened PNG; the result record as JSON in the
                      X-Advx-Result header
                   decide: comma list of the views that must be beaten (of the
                      task's preset), or all [default: the preset's deciding views];
                      the others are only reported
    GET  /healthz, GET /models (and /docs)

    A task's models load at start when they can (labels: with --label-set), else on its
    first request.

    \b
    Tasks (--tasks):
    """
    missing = missing_extras()
    if missing:
        raise click.ClickException(f"advx serve needs the serve extras ({', '.join(missing)} "
                                   f"missing): pip install 'advx[serve]'")
    if ray_address is not None and missing_extras(("ray.serve",)):
        raise click.ClickException("advx serve --ray needs Ray Serve: pip install 'advx[ray]'")
    served = served or tuple(TASKS)
    unknown = [t for t in (*served, *surrogates, *verifiers, *transforms) if t not in TASKS
               or t not in served]
    if unknown:
        raise click.UsageError(f"{', '.join(sorted(set(unknown)))}: not a task served "
                               f"(--tasks {','.join(served)}; tasks: {', '.join(TASKS)})")
    if not token and not _loopback(host):
        click.echo(f"warning: serving on {host} without --token (or ${SERVE_TOKEN_ENV}): "
                   f"anyone who can reach it may use it", err=True)
    with fail_cleanly():
        from ..engine.serve.http import Limits, create_app, serve_forever
        from ..engine.serve.requests import TaskSetup
        from ..export.zoo import load_label_map

        given = {"label_set": label_set, "label_map": load_label_map(label_map),
                 "templates": templates}
        setups = {}
        for name in served:
            t = TASKS[name]
            opts = {k: v for k, v in given.items() if k in t.options and v is not None}
            setups[name] = TaskSetup(
                surrogates=split_list(surrogates[name]) if name in surrogates else None,
                verifiers=split_list(verifiers[name]) if name in verifiers else None,
                transforms=transforms.get(name), options=opts,
                allowed=allowed if "label_set" in t.request_fields else None,
                eager=all(k in opts for k in t.needs))
        config = HardenConfig(eps=eps, steps=steps, device=device, batch_size=batch_size)
        limits = Limits(max_upload=max_upload_mb << 20, max_pixels=max_pixels,
                        max_side=max_side, timeout_s=timeout_s)
        service_args = dict(tasks=setups, config=config, max_batch=batch_size,
                            max_label_sets=max_label_sets, max_queue=max_queue,
                            max_side=max_side)
        if ray_address is not None:
            from ..engine.serve.ray_serve import serve_on_ray

            serve_on_ray(ray_address, service_args, limits, token=token, host=host, port=port,
                         replicas=replicas, echo=lambda m: click.echo(m, err=True))
            return
        from ..engine.serve.service import HardenService

        service = HardenService(**service_args)
        app = create_app(service, limits=limits, token=token)
    click.echo(f"advx serve: {', '.join(served)}; listening on http://{host}:{port}"
               + (" (bearer token required)" if token else ""), err=True)
    os.environ.pop(SERVE_TOKEN_ENV, None)  # not inherited by anything started from here
    serve_forever(app, host, port)


serve_cmd.help += tasks_help() + """

    \b
    Example:
      advx serve --label-set bus,car,bicycle --port 8000
      curl -F image=@tile.jpg -F label=bus http://127.0.0.1:8000/harden -o hardened.png -D -
      curl -F image=@captcha.png -F text=7KX2P http://127.0.0.1:8000/harden -o hardened.png
      advx serve --tasks text --surrogates text=captcha-whisperer
"""
