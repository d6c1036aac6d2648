"""``advx harden``: the command, for every task; the work is in advx.engine.folder (the library's
folder run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..engine.config import ATTACKS, OUTPUT_FORMATS, HardenConfig
from ..engine.defaults import DEFAULT_MAX_SIDE
from ..engine.tasks import TASKS
from ..engine.views.presets import TRANSFORM_PRESETS, VIEW_GLOSSARY, get_preset, view_matrices
from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from .common import (
    EXIT_CODES_EPILOG,
    EXIT_INTERRUPTED,
    fail_cleanly,
    list_option,
    task_option,
    tasks_help,
)

DEFAULTS = HardenConfig()  # the engine's defaults (the config module is torch-free)
# options of the command that are a task's own: the task option each sets
TASK_OPTIONS = {"label_set": "label_set", "label_map": "label_map", "decoy": "decoy",
                "templates": "templates", "truth_from": "truth_from"}


def _defaults(which: int) -> str:
    return "; ".join(f"{t.name}: {','.join(t.default_models()[which]) or '-'}"
                     for t in TASKS.values())


@click.command("harden", epilog="\b\nView matrices and roles (--transforms, --decide):\n"
               + view_matrices() + "\n\n" + VIEW_GLOSSARY + "\n\n" + EXIT_CODES_EPILOG)
@click.argument("input_dir", metavar="INPUT",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@task_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: hardened images, results.jsonl, summary.json, report.html.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="The labels CSV: its header names 'path' and the task's truth column(s) "
                   "(labels: label, instead of label sub-folders; text: text; cells: label and "
                   "grid with cells or a box, or points, or boxes; 'x0 y0 x1 y1' groups "
                   "separated by ';') [default: labels: the sub-folders; other tasks: "
                   "INPUT/labels.csv].")
@click.option("--surrogates", callback=list_option,
              help=f"Comma list of models attacked with gradients; onnx:SPEC.json attacks a "
                   f"foreign solver with its own gradients [default: {_defaults(0)}].")
@click.option("--verifiers", callback=list_option,
              help=f"Comma list of models that must be fooled, run as a solver runs them "
                   f"(ONNX) [default: {_defaults(1)}]. Defaults whose files are missing are "
                   f"left out with a warning.")
@click.option("--eps", type=click.FloatRange(0, 64, min_open=True), default=DEFAULTS.eps,
              show_default=True,
              help="L-inf budget in /255 units: lower it (4) against your own solver "
                   "(white-box), where less suffices; the default suits transfer.")
@click.option("--steps", type=click.IntRange(min=0), default=DEFAULTS.steps, show_default=True,
              help="Attack step limit per image (images leave earlier once beaten, or once "
                   "steps stop helping); raise it for white-box runs that come close.")
@click.option("--attack", type=click.Choice(ATTACKS), default=DEFAULTS.attack, show_default=True,
              help="auto: pgd when every verifier is also a surrogate (white-box, e.g. a "
                   "solver spec as both), else mifgsm with a Nesterov look-ahead (and, for "
                   "labels, input diversity and skip gradients through residual blocks), for "
                   "transfer. Choose one yourself only to compare them.")
@click.option("--transforms", type=click.Choice(TRANSFORM_PRESETS), default=None,
              help="The solver views: what a solver may do to an image before its network "
                   "answers (attacked in expectation, every view verified exactly on the "
                   "delivered file). The view matrices are listed below [default: the task's: "
                   + ", ".join(f"{t.name} {t.preset}" for t in TASKS.values()) + "].")
@click.option("--decide", callback=list_option, metavar="VIEWS|all",
              help="Comma list of the views an image must beat before it is done (the others "
                   "of --transforms are reported: scored, never blocking), or 'all' for every "
                   "view of the matrix [default: the preset's deciding views, listed below]. A "
                   "labels verifier that is also a surrogate is held to every view.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
              default=DEFAULTS.output_format, show_default=True,
              help="Output image format (verification scores exactly it): jpeg where the site "
                   "serves JPEG, so the verified file is the served one.")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULTS.jpeg_quality,
              show_default=True, help="JPEG quality of --format jpeg.")
@click.option("--device", default=DEFAULTS.device, show_default=True,
              help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
              show_default=True,
              help="Images attacked together: raise it on a GPU with memory to spare "
                   "(halved automatically on out-of-memory).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Seeded runs repeat exactly on the CPU; change it to draw other "
                   "perturbations of the same images.")
@click.option("--required-margin", type=float, default=DEFAULTS.required_margin,
              show_default=True,
              help="Margin by which every verifier must be wrong (labels: a logit margin; "
                   "text: the CTC margin on the truth's best alignment; cells: every "
                   "candidate of the label this many logits below the score floor); raise it "
                   "when the solvers you face may differ a little from your verifiers.")
@click.option("--ssim-floor", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DEFAULTS.ssim_floor, show_default=True,
              help="The delivered file's SSIM never falls below this (the perturbation is "
                   "scaled back where a step would cross it): raise it where people must "
                   "see no change at all, at the cost of fooled rates.")
@click.option("--eps-rungs", type=click.IntRange(1, 6), default=DEFAULTS.eps_rungs,
              show_default=True,
              help="Minimal perturbation: start at eps / 2^(rungs-1) and widen only images "
                   "still unfooled (1 = the whole eps at once, for when every image needs "
                   "the full budget anyway).")
@click.option("--texture-mask", type=click.FloatRange(0, 1, min_open=True),
              default=DEFAULTS.texture_mask, show_default=True,
              help="Share of eps that flat regions may use (textured ones, and a text's "
                   "strokes, use all of it); 1 = uniform. Lower it where noise shows on flat "
                   "ground.")
@click.option("--max-side", type=click.IntRange(min=32), default=DEFAULT_MAX_SIDE,
              show_default=True,
              help="Longer sides above this are attacked on a downscaled copy and the "
                   "perturbation upsampled to full size (labels); a task whose images are "
                   "hardened at their own size (text) refuses them.")
@click.option("--label-set", callback=list_option,
              help="labels: comma list of the labels a solver chooses among [default: the "
                   "sorted labels of INPUT].")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='labels: JSON {"label": ["ImageNet class name or index", ...]}: how '
                   "ImageNet classifiers answer labels the built-in map lacks (consulted "
                   "first).")
@click.option("--decoy", default=None, metavar="LABEL",
              help="labels: also push every tile not labelled LABEL to be picked / selected as "
                   "LABEL (false positives for 'select all LABEL'); LABEL's own tiles are "
                   "pushed away from it as usual.")
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=None,
              help=f"labels: prompt templates of zero-shot (CLIP) models [default: "
                   f"{DEFAULT_TEMPLATES}].")
@click.option("--truth-from", default=None, metavar="VERIFIER",
              help="cells: the verifier whose clean answer is the truth of a grid challenge "
                   "that gives neither cells nor a box (the record says so) [default: the "
                   "first verifier].")
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help="Spread the images over Ray workers (pip install 'advx[ray]'): local = a "
                   "Ray instance on this machine, auto = the cluster this machine joined "
                   "(ray start), or a cluster address. The driver writes every file.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="Ray workers, each holding the models once [default: one per GPU, else "
                   "one per 4 CPU cores].")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted run in OUT: keep what is done, do the rest.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
@click.pass_context
def harden_cmd(ctx: click.Context, input_dir: Path, task: str, out_dir: Path,
               labels_csv: Path | None, surrogates: tuple[str, ...] | None,
               verifiers: tuple[str, ...] | None, eps: float, steps: int, attack: str,
               transforms: str | None, decide: tuple[str, ...] | None, output_format: str,
               quality: int, device: str, batch_size: int, seed: int, required_margin: float,
               ssim_floor: float, eps_rungs: int, texture_mask: float, max_side: int,
               label_set: tuple[str, ...] | None, label_map: Path | None, decoy: str | None,
               templates: str | None, truth_from: str | None, ray_address: str | None,
               ray_workers: int | None,
               resume: bool, quiet: bool, as_json: bool) -> None:
    """Harden the images in INPUT so that AI solvers answer them wrong.

    Each image is attacked on the --surrogates until every --verifier is fooled by the task's
    rule under each deciding view of --transforms (--decide), or until more steps stop
    helping or --steps run out. The reported views are scored on the delivered file and shown
    in every figure. Images are written to OUT at the same relative path as PNG (the
    extension becomes .png; --format jpeg writes JPEG). Unusable inputs get an error record;
    the run goes on. Resumable: records are written as images finish; Ctrl-C and --resume
    lose nothing.

    \b
    Tasks (--task):
    """
    from ..engine.folder import HardenJob, RayOptions, run_harden
    from ..engine.tasks import get_task

    t = get_task(task)
    if ray_workers is not None and ray_address is None:
        raise click.UsageError("--ray-workers needs --ray")
    options = {key: ctx.params[name] for name, key in TASK_OPTIONS.items()
               if ctx.params[name] is not None}
    refused = [f"--{n.replace('_', '-')}" for n, key in TASK_OPTIONS.items()
               if key in options and key not in t.options]
    if refused:
        raise click.UsageError(f"{', '.join(refused)}: not an option of --task {task} (see "
                               f"--help)")
    try:
        if decide == ("all",):
            decide = get_preset(transforms or t.preset).views
        config = HardenConfig(eps=eps, steps=steps, attack=attack, transforms=transforms,
                              decide=decide, output_format=output_format,
                              jpeg_quality=quality, batch_size=batch_size, device=device,
                              seed=seed, required_margin=required_margin,
                              ssim_floor=ssim_floor, eps_rungs=eps_rungs,
                              texture_mask=None if texture_mask >= 1 else texture_mask
                              ).for_task(t)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    job = HardenJob(input_dir=input_dir, out_dir=out_dir, task=task, labels_csv=labels_csv,
                    surrogates=surrogates, verifiers=verifiers, config=config, options=options,
                    resume=resume, max_side=max_side,
                    ray=RayOptions(ray_address, workers=ray_workers) if ray_address else None)

    def warn(msg: str) -> None:  # shown even with --quiet
        click.echo(f"warning: {msg}", err=True)

    try:
        with fail_cleanly():
            outcome = run_harden(job, show_progress=not quiet, warn=warn)
    except KeyboardInterrupt:  # before any image was done, or while writing the summary
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    summary = outcome.summary
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    if not quiet:
        click.echo(summary_table(summary, out_dir), err=as_json)
    if outcome.interrupted:
        click.echo(f"Interrupted: {summary['done']} of {summary['total']} inputs done, kept in "
                   f"{out_dir}. Resume with:\n  {outcome.resume_hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)


harden_cmd.help += tasks_help() + """

    The summary opens, per verifier, with the items it answered right clean under all its
    deciding views and the share of those it gets wrong under all of them as delivered, then
    per view the items right clean and fooled among them (a verifier is fooled under a view
    only where it was right clean), with the task's own figures (labels: 3x3 grid solve
    rates; text: mean character error rate).

    \b
    Example:
      advx harden tiles/ --out hardened/ --eps 8 --steps 40
      advx harden tiles/ --out hardened/ --eps 4 \\
          --surrogates onnx:solver.json --verifiers onnx:solver.json
      advx harden tiles/ --out hardened/ --label-map my_labels.json
      advx harden tiles/ --out hardened/ --resume      # after Ctrl-C or a crash
      advx harden tiles/ --out hardened/ --ray auto    # on a Ray cluster
      advx harden captchas/ --out hardened/ --task text   # captchas/labels.csv: path,text
      advx harden grids/ --out hardened/ --task cells     # grids/labels.csv, e.g.
          # path,label,grid,cells  /  g1.png,bus,4,6 7 10 11   (or a box, points, boxes)
"""


def headline_lines(s: dict) -> list[str]:
    """Per verifier: the items it answered right clean under its deciding views and the share
    of those beaten under all of them; per view, right clean -> fooled (and the task's
    figures); reported views marked."""
    from ..engine.tasks import get_task

    task = get_task(s.get("task") or "labels")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    lines = []
    for v, h in (s.get("headline") or {}).items():
        deciding, views = h.get("deciding") or [], h.get("views") or {}
        lines.append(f"  {v}: right clean under all deciding views ({', '.join(deciding)}) on "
                     f"{h.get('solved_clean')}; wrong under all of them as delivered on "
                     f"{h.get('beaten')} ({pct(h.get('beaten_rate'))})")
        lines.append("    fooled / right clean: " + ", ".join(
            f"{w}{'' if w in deciding else ' (reported)'} {e.get('fooled')}/"
            f"{e.get('right_clean')}" for w, e in views.items()))
        extra: dict[str, list[str]] = {}
        for w, e in views.items():
            for label, value in task.headline_rows(e):
                extra.setdefault(label, []).append(f"{w} {value}")
        lines += [f"    {label}: {', '.join(cells)}" for label, cells in extra.items()]
    return lines


def summary_table(s: dict, out_dir: Path) -> str:
    from ..engine.tasks import get_task

    def num(v: float | None, spec: str, unit: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{unit}"

    task = get_task(s.get("task") or "labels")
    models = s.get("models") or {}
    rows = [
        ("inputs", f"{s['total']}" + (f" ({s['pending']} pending)" if s["pending"] else "")),
        ("fooled", s["fooled"]), ("unfooled", s["unfooled"]),
        ("errors", f"{s['errors']}  (not hardened: see results.jsonl)" if s["errors"] else 0),
        ("already wrong", f"{s.get('already_fooled', 0)}  (counted apart from the rates)"),
        ("fooled rate", num(s["fooled_rate"], ".1%") + "  (every verifier wrong under its "
                                                         "deciding views, by the margin)"),
        ("strict rate", num(s.get("fooled_every_view_rate"), ".1%")
         + "  (wrong under every view, the reported ones too)"),
        ("SSIM mean / min", f"{num(s['mean_ssim'], '.4f')} / {num(s.get('min_ssim'), '.4f')}"),
        ("mean PSNR", num(s["mean_psnr"], ".2f", " dB")),
        ("mean L-inf", num(s["mean_linf"], ".2f", "/255")),
        ("mean steps", num(s.get("mean_steps"), ".1f")),
        ("s / image", num(s.get("seconds_per_image"), ".2f")
         + f"  ({s['seconds']:.1f} s this run)"),
        ("stop reasons", ", ".join(f"{k} {n}" for k, n in (s.get("stop_reasons") or {}).items())
         or "-"),
        ("surrogates", ", ".join(models.get("surrogates") or []) or "-"),
        ("verifiers", ", ".join(models.get("verifiers") or []) or "-"),
        *(("left out", f"{k}: {why}") for k, why in (models.get("left_out") or {}).items()),
        *task.summary_lines(s),
        ("images", str(out_dir)),
        ("results", str(out_dir / "results.jsonl")),
        ("summary", str(out_dir / "summary.json")),
        ("report", str(out_dir / "report.html")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([*headline_lines(s), *(f"  {k:<{width}}  {v}" for k, v in rows)])
