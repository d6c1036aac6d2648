"""``advx harden --task text``: the text half of the command (the work is in
advx.engine.folder.text_run) and its printed summary."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .common import EXIT_INTERRUPTED, fail_cleanly

TASKS = ("image", "text")
TEXT_PRESET = "text"  # the one view preset of text runs (advx.engine.tasks.text.api.TEXT_PRESET)
# options of `advx harden` that only concern image tiles
IMAGE_ONLY = ("label_set", "label_map", "decoy", "templates", "max_side", "ray_address",
              "ray_workers", "required_margin")


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or from the environment)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                  ParameterSource.DEFAULT_MAP, None)


def _flag(ctx: click.Context, name: str) -> str:
    return next(p.opts[0] for p in ctx.command.params if p.name == name)


def harden_text(ctx: click.Context) -> None:
    """Run ``advx harden --task text`` with the options of ``ctx`` (already parsed)."""
    p = ctx.params
    refused = [_flag(ctx, n) for n in IMAGE_ONLY if _given(ctx, n)]
    if _given(ctx, "transforms") and p["transforms"] != TEXT_PRESET:
        refused.append(f"--transforms {p['transforms']}")
    if refused:
        raise click.UsageError(f"{', '.join(refused)} do(es) not apply to --task text (text "
                               f"runs use the {TEXT_PRESET!r} views; pick deciding ones with "
                               f"--decide)")
    from ..engine.folder import harden_text_folder
    from ..engine.tasks.text.api import text_config
    from ..engine.views.presets import get_preset

    decide = p["decide"]
    try:
        if decide == ("all",):
            decide = get_preset(TEXT_PRESET).views
        config = text_config(eps=p["eps"], steps=p["steps"], attack=p["attack"], decide=decide,
                             output_format=p["output_format"], jpeg_quality=p["quality"],
                             batch_size=p["batch_size"], device=p["device"], seed=p["seed"],
                             ssim_floor=p["ssim_floor"], eps_rungs=p["eps_rungs"],
                             texture_mask=None if p["texture_mask"] >= 1 else p["texture_mask"])
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    out_dir: Path = p["out_dir"]

    def warn(msg: str) -> None:  # shown even with --quiet
        click.echo(f"warning: {msg}", err=True)

    try:
        with fail_cleanly():
            summary = harden_text_folder(
                p["input_dir"], out_dir, labels_csv=p["labels_csv"], config=config,
                surrogates=p["surrogates"] if _given(ctx, "surrogates") else None,
                verifiers=p["verifiers"] if _given(ctx, "verifiers") else None,
                resume=p["resume"], show_progress=not p["quiet"], warn=warn)
    except KeyboardInterrupt:  # before any captcha was done, or while writing the summary
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if p["as_json"]:
        click.echo(json.dumps(summary, indent=2))
    if not p["quiet"]:
        click.echo(text_summary_table(summary, out_dir), err=p["as_json"])
    if summary["interrupted"]:
        hint = (f"advx harden {shlex.quote(str(p['input_dir']))} --out "
                f"{shlex.quote(str(out_dir))} --task text --resume  (with the options used "
                f"before)")
        click.echo(f"Interrupted: {summary['done']} of {summary['total']} captchas done, kept "
                   f"in {out_dir}. Resume with:\n  {hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def text_headline_lines(s: dict) -> list[str]:
    """Per verifier: the share of captchas it misreads under all its deciding views, then per
    view the share misread as delivered (reported views marked) and the mean CER."""
    lines = []
    for v, h in (s.get("headline") or {}).items():
        deciding, views = h.get("deciding") or [], h.get("views") or {}
        lines.append(f"  {v}: misreads {_pct(h.get('beaten_rate'))} of the captchas under all "
                     f"deciding views ({', '.join(deciding)})")
        own = views.get("own", {}).get("read_clean_rate")
        if own is not None:
            lines.append(f"    read right clean (own view): {_pct(own)}")
        lines.append("    fooled as delivered: " + ", ".join(
            f"{w}{'' if w in deciding else ' (reported)'} {_pct(e.get('fooled_rate'))}"
            for w, e in views.items()))
        lines.append("    mean CER: " + ", ".join(
            f"{w} {'-' if e.get('mean_cer') is None else format(e['mean_cer'], '.2f')}"
            for w, e in views.items()))
    return lines


def text_summary_table(s: dict, out_dir: Path) -> str:
    def num(v: float | None, spec: str, unit: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{unit}"

    solvers = s.get("solvers") or {}
    rows = [
        ("captchas", f"{s['total']}" + (f" ({s['pending']} pending)" if s["pending"] else "")),
        ("fooled", s["fooled"]), ("unfooled", s["unfooled"]),
        ("errors", f"{s['errors']}  (unusable rows: see results.jsonl)" if s["errors"]
         else 0),
        ("fooled rate", num(s["fooled_rate"], ".1%") + "  (every verifier misreads under its "
                                                         "deciding views)"),
        ("strict rate", num(s.get("fooled_every_view_rate"), ".1%")
         + "  (misread under every view, the reported ones too)"),
        ("SSIM mean / min", f"{num(s['mean_ssim'], '.4f')} / {num(s.get('min_ssim'), '.4f')}"),
        ("mean L-inf", num(s["mean_linf"], ".2f", "/255")),
        ("mean steps", num(s["mean_steps"], ".1f")),
        ("s / captcha", num(s.get("seconds_per_captcha"), ".2f")
         + f"  ({s['seconds']:.1f} s this run)"),
        ("stop reasons", ", ".join(f"{k} {n}" for k, n in (s.get("stop_reasons") or {}).items())
         or "-"),
        ("surrogates", ", ".join(solvers.get("surrogates") or []) or "-"),
        ("verifiers", ", ".join(solvers.get("verifiers") or []) or "-"),
        *(("left out", f"{k}: {why}") for k, why in (solvers.get("left_out") or {}).items()),
        ("hardened", f"{out_dir} ({s.get('output_format')})"),
        ("results", str(out_dir / "results.jsonl")),
        ("summary", str(out_dir / "summary.json")),
        ("report", str(out_dir / "report.html")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([*text_headline_lines(s), *(f"  {k:<{width}}  {v}" for k, v in rows)])
