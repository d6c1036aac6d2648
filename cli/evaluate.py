"""``advx eval``: how the models answer a set of images under each view, and how often a
hardened set fools them, for every task; printed from
:func:`advx.engine.evaluate.evaluate_folder`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..engine.views.presets import TRANSFORM_PRESETS
from ..export.defaults import TEMPLATE_SETS
from .common import exit_codes, fail_cleanly, list_option, tasks_help

TASK_OPTIONS = ("label_set", "label_map", "templates")  # the labels task's own


@click.command("eval", epilog=exit_codes("the figures were printed (unusable images are "
                                         "skipped with a warning)"))
@click.argument("input_dir", metavar="INPUT",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", default=None, metavar="TASK",
              help="The kind of challenge (listed below) [default: an advx output folder's "
                   "own, else labels].")
@click.option("--models", callback=list_option,
              help="Comma list of the models to read with: the task's model names "
                   "(labels: zoo names in torch, onnx:SPEC.json solvers, advx export folders; "
                   "text: OCR solvers) [default: the task's default verifiers].")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="The labels CSV of a folder of inputs (its header names 'path' and the "
                   "task's truth column) [default: labels: the sub-folders; other tasks: "
                   "INPUT/labels.csv].")
@click.option("--clean", "clean_dir", type=click.Path(exists=True, file_okay=False,
                                                      path_type=Path),
              help="The originals of INPUT (same relative paths), for the fooled figures "
                   "[default: for an advx output folder, the input its summary.json names].")
@click.option("--transforms", type=click.Choice(TRANSFORM_PRESETS), default=None,
              help="Answer under each view of this preset's view matrix (see `advx harden "
                   "--help`) [default: the task's preset].")
@click.option("--label-set", callback=list_option,
              help="labels: comma list of the labels models choose among [default: the run's "
                   "label set, else the sorted labels seen].")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='labels: JSON {"label": ["ImageNet class name or index", ...]} for ImageNet '
                   "classifiers [default: for an advx output folder, the map it was hardened "
                   "with].")
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=None,
              help="labels: prompt templates of zero-shot (CLIP) models [default: the run's, "
                   "else simple].")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def eval_cmd(ctx: click.Context, input_dir: Path, task: str | None,
             models: tuple[str, ...] | None, labels_csv: Path | None, clean_dir: Path | None,
             transforms: str | None, label_set: tuple[str, ...] | None, label_map: Path | None,
             templates: str | None, device: str, as_json: bool) -> None:
    """Measure how the models answer the images in INPUT, and how often hardened ones fool them.

    INPUT is a folder of inputs (as for `advx harden`) or an advx output folder, whose
    results.jsonl gives each hardened image, the input it came from and its truth. Per model
    and per view of the preset (deciding views marked *) it reports how often the model
    answers right (labels: selects the tile's label, by its own decision rule; text: reads
    the text, under the solver's case rule); with the originals (--clean, or the run's input
    folder) also how often it did clean and the fooled rate: hardened images answered wrong
    among those whose original it answered right under that view (the others are counted
    apart). The task adds its own figures (labels: 3x3 grid solve rates; text: the mean
    character error rate). Images that cannot be evaluated are skipped with their reason.

    \b
    Tasks (--task):
    """
    from ..engine.tasks import TASKS

    if task is not None and task not in TASKS:
        raise click.BadParameter(f"{task!r} is not a task; choose one of {', '.join(TASKS)}",
                                 param_hint="--task")
    options = {k: ctx.params[k] for k in TASK_OPTIONS if ctx.params[k] is not None}
    with fail_cleanly():
        from ..engine.evaluate import evaluate_folder  # torch: loaded by the command only

        result = evaluate_folder(input_dir, models, task=task, labels_csv=labels_csv,
                                 clean_dir=clean_dir, transforms=transforms, device=device,
                                 **options)
    for msg in result["left_out"]:
        click.echo(f"warning: left out {msg}", err=True)
    for msg in result["skipped"]:
        click.echo(f"warning: skipped {msg}", err=True)
    for msg in result["notes"]:
        click.echo(f"note: {msg}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    clean = f"; originals: {result['clean']}" if result["clean"] else ""
    click.echo(f"{result['items']} images ({result['task']}, {result['source']}{clean}), "
               f"{len(result['skipped'])} skipped; views of the {result['transforms']} preset "
               f"(* deciding)")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    rows = result["results"]
    width = max([5, *(len(r["model"]) for r in rows)])
    extra = [k for k in rows[0] if k not in ("model", "view", "deciding", "n", "right",
                                             "right_rate", "right_clean", "right_clean_rate",
                                             "fooled", "fooled_rate")] if rows else []
    head = f"{'model':<{width}}  {'view':<14}  {'right':>7}"
    if result["clean"]:
        head += f"  {'clean':>7}  {'fooled':>7}"
    click.echo(head + "".join(f"  {k:>15}" for k in extra))
    for r in rows:
        view = r["view"] + ("*" if r["deciding"] else "")
        line = f"{r['model']:<{width}}  {view:<14}  {pct(r['right_rate']):>7}"
        if result["clean"]:
            line += f"  {pct(r['right_clean_rate']):>7}  {pct(r['fooled_rate']):>7}"
        for k in extra:
            v = r.get(k)
            line += f"  {'-' if v is None else format(v, '.3f'):>15}"
        click.echo(line)


eval_cmd.help += tasks_help() + """

    \b
    Example:
      advx eval tiles/    --models effnet-lite2,timm:convnext_tiny.fb_in1k
      advx eval hardened/ --models effnet-lite2,lite2-fp16/ --transforms jpeg --json
      advx eval hardened/ --models onnx:solver.json --transforms delivery
      advx eval captchas/ --task text --labels captchas/labels.csv
      advx eval hardened-captchas/ --models ddddocr,captcha-whisperer --json
"""
