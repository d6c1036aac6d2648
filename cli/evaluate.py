"""``advx eval``: how often models solve a set of tiles, one at a time and as 3x3 grid
challenges ("select all images with X"), printed from
:func:`advx.engine.evaluate.evaluate_folder`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..engine.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from ..engine.presets import TRANSFORM_PRESETS
from .common import exit_codes, fail_cleanly, list_option


@click.command("eval", epilog=exit_codes("the figures were printed (unreadable images are "
                                         "skipped with a warning)"))
@click.argument("input_dir", metavar="INPUT",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--models", required=True, callback=list_option,
              help="Comma list of zoo names (torch) and/or `advx export` folders (ONNX).")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="CSV 'path,label' for an input folder without label sub-folders.")
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
def eval_cmd(input_dir: Path, models: tuple[str, ...], labels_csv: Path | None,
             label_set: tuple[str, ...] | None, label_map: Path | None, transforms: str,
             grids: int, seed: int, device: str, templates: str, as_json: bool) -> None:
    """Measure how often models solve the tiles in INPUT.

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
    """
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
