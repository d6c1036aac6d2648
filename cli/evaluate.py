"""``advx eval``: how often models solve a set of tiles, one at a time and as 3x3 grid
challenges ("select all images with X"), printed from
:func:`advx.engine.evaluate.evaluate_folder`; with ``--task text``, what OCR solvers read on a
set of text captchas and how often hardened ones fool them, printed from
:func:`advx.engine.tasks.text.evaluate.evaluate_text_folder`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from ..engine.views.presets import TRANSFORM_PRESETS
from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from .common import exit_codes, fail_cleanly, list_option

IMAGE_ONLY = ("models", "label_set", "label_map", "transforms", "grids", "seed", "templates")
TEXT_ONLY = ("solvers", "clean_dir")


def _refuse_other_task(ctx: click.Context, task: str) -> None:
    """A usage error for an option the other task takes; --models for image tiles."""
    other = TEXT_ONLY if task == "image" else IMAGE_ONLY
    given = [p for p in ctx.command.params if p.name in other
             and ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
    if given:
        names = ", ".join(p.opts[0] for p in given)
        raise click.UsageError(f"{names}: not for --task {task}", ctx)
    if task == "image" and ctx.params["models"] is None:
        raise click.UsageError("--models is required (or --task text for text captchas)", ctx)


@click.command("eval", epilog=exit_codes("the figures were printed (unreadable images are "
                                         "skipped with a warning)"))
@click.argument("input_dir", metavar="INPUT",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", type=click.Choice(("image", "text")), default="image",
              show_default=True, help="Image tiles, or text captchas read by OCR solvers.")
@click.option("--models", callback=list_option,
              help="Image tiles: comma list of zoo names (torch), `onnx:SPEC.json` solvers "
                   "and/or `advx export` folders (ONNX). Required.")
@click.option("--solvers", callback=list_option,
              help="Text captchas: comma list of OCR solvers (built-in names, `onnx:SPEC.json` "
                   "with a ctc output) [default: every built-in OCR solver that loads].")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="CSV 'path,label' for an input folder without label sub-folders; text "
                   "captchas: a CSV whose header names path and text (other columns ignored).")
@click.option("--clean", "clean_dir", type=click.Path(exists=True, file_okay=False,
                                                      path_type=Path),
              help="Text captchas: the originals of INPUT (same relative paths) for the fooled "
                   "figures [default: for an advx output folder, the input its summary.json "
                   "names].")
@click.option("--label-set", callback=list_option,
              help="Comma list of the labels models choose among [default: the run's label set, "
                   "else the sorted labels seen].")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='JSON {"label": ["ImageNet class name or index", ...]} for ImageNet '
                   "classifiers (consulted before the built-in map) [default: for an advx "
                   "output folder, the map it was hardened with].")
@click.option("--transforms", type=click.Choice(TRANSFORM_PRESETS), default="none",
              show_default=True, help="Score under each view of this preset's view matrix "
              "(see `advx harden --help`).")
@click.option("--grids", type=click.IntRange(min=0), default=200, show_default=True,
              help="3x3 grid challenges to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the grids.")
@click.option("--device", default="auto", show_default=True)
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=DEFAULT_TEMPLATES,
              show_default=True, help="Prompt templates of zero-shot (CLIP) models.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def eval_cmd(ctx: click.Context, input_dir: Path, task: str, models: tuple[str, ...] | None,
             solvers: tuple[str, ...] | None, labels_csv: Path | None, clean_dir: Path | None,
             label_set: tuple[str, ...] | None, label_map: Path | None, transforms: str,
             grids: int, seed: int, device: str, templates: str, as_json: bool) -> None:
    """Measure how often models solve the tiles in INPUT (or OCR solvers read its captchas).

    INPUT is a labelled folder (as for `advx harden`) or an advx output folder, whose
    results.jsonl gives each hardened image and its label. Per model and transform it reports
    the tile accuracy (the model selects the tile for its label, by its own decision rule:
    top-1 over the label set, or P >= threshold for a multi-label solver) and the solve rate
    of seeded 3x3 challenges "select all images with X" (1-4 tiles of X among 9; solved only
    if exactly the X tiles are selected).

    \b
    Example:
      advx eval tiles/    --models effnet-lite2,timm:convnext_tiny.fb_in1k
      advx eval hardened/ --models effnet-lite2,lite2-fp16/ --transforms jpeg --json
      advx eval hardened/ --models onnx:solver.json --transforms delivery

    With --task text, INPUT is a folder of text captchas listed by --labels (path,text), or
    the output folder of an advx text run. Per OCR solver and per view of the text preset
    (deciding views marked *) it reports the read rate (the reading equals the text, under
    the solver's case rule) and the mean character error rate (edit distance / text length);
    with the originals (--clean, or the run's input folder) also their read rate and the
    fooled rate: hardened captchas misread among those whose original was read right under
    that view. Rows that cannot be evaluated (bad paths, duplicates, unreadable images, texts
    a solver cannot read) are skipped with a warning giving the reason.

    \b
    Example:
      advx eval captchas/ --task text --labels captchas/labels.csv
      advx eval hardened/ --task text --labels hardened/labels.csv --clean captchas/ \\
          --solvers ddddocr,captcha-whisperer --json
    """
    _refuse_other_task(ctx, task)
    if task == "text":
        _text_eval(input_dir, solvers, labels_csv, clean_dir, device, as_json)
        return
    with fail_cleanly():
        from ..engine.evaluate import evaluate_folder  # torch: loaded by the command only

        result = evaluate_folder(input_dir, models, labels_csv=labels_csv, label_set=label_set,
                                 label_map=label_map, transforms=transforms, grids=grids,
                                 seed=seed, device=device, templates=templates)
    for msg in result["unreadable"]:
        click.echo(f"warning: skipped {msg}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['images']} images ({result['source']}), labels: "
               f"{', '.join(result['label_set'])}; {result['grids']} grids, seed {seed}")
    width = max([5, *(len(r["model"]) for r in result["results"])])
    click.echo(f"{'model':<{width}}  {'view':<14}  accuracy  grid solve rate")
    for r in result["results"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        grid = "-" if r["grid_solve_rate"] is None else f"{r['grid_solve_rate']:.1%}"
        click.echo(f"{r['model']:<{width}}  {r['view']:<14}  {acc:>8}  {grid:>15}")


def _text_eval(input_dir: Path, solvers: tuple[str, ...] | None, labels_csv: Path | None,
               clean_dir: Path | None, device: str, as_json: bool) -> None:
    with fail_cleanly():
        from ..engine.tasks.text.evaluate import evaluate_text_folder  # torch: loaded here only

        result = evaluate_text_folder(input_dir, solvers, labels_csv=labels_csv,
                                      clean_dir=clean_dir, device=device)
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
    click.echo(f"{result['captchas']} captchas ({result['source']}{clean}), "
               f"{len(result['skipped'])} skipped; views of the {result['transforms']} preset "
               f"(* deciding)")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    width = max([6, *(len(r["solver"]) for r in result["results"])])
    extra = "  read clean   fooled" if result["clean"] else ""
    click.echo(f"{'solver':<{width}}  {'view':<11}  read rate    CER{extra}")
    for r in result["results"]:
        view = r["view"] + ("*" if r["deciding"] else "")
        line = f"{r['solver']:<{width}}  {view:<11}  {pct(r['read_rate']):>9}  {r['cer']:5.3f}"
        if result["clean"]:
            line += f"  {pct(r['read_clean_rate']):>10}  {pct(r['fooled_rate']):>7}"
        click.echo(line)
