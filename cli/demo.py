"""``advx demo``: cut labelled tiles from photos that ship inside Python packages, harden them
(or, with ``--task text``, draw text captchas and harden them against the OCR solvers; with
``--task cells``, click captchas against detectors)."""

from __future__ import annotations

from pathlib import Path

import click

from ..engine.config import HardenConfig
from ..engine.tasks.labels.demo import CROPS
from .common import EXIT_INTERRUPTED, exit_codes, fail_cleanly, task_option, tasks_help
from .harden import summary_table


@click.command("demo", epilog=exit_codes("the demo ran and wrote its report"))
@task_option
@click.option("--out", "out_dir", default="advx-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Demo folder: tiles go to OUT/input, hardened tiles to OUT/hardened "
                   "(other tasks: OUT/TASK-input, OUT/TASK-hardened).")
@click.option("--steps", type=click.IntRange(min=0), default=40, show_default=True,
              help="Attack step limit per tile or captcha.")
@click.option("--tiles-per-photo", type=click.IntRange(1, len(CROPS)), default=None,
              help="labels: crops cut from each sample photo [default: 2].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
def demo_cmd(task: str, out_dir: Path, steps: int, tiles_per_photo: int | None,
             quiet: bool) -> None:
    """Harden tiles cut from sample photos: a quick tour.

    The photos ship with scikit-image, scikit-learn and matplotlib (pip install
    'advx[samples]'). Writes 224x224 tiles to OUT/input/<label>/ (keeping those the default
    verifier gets right clean), runs `advx harden OUT/input --out OUT/hardened` with the
    default settings, and prints where report.html is. About 1-2 minutes on 2 CPU cores.
    Running it again finishes an interrupted demo (it resumes); delete OUT to start over.

    --task text draws 8 text captchas (with the captcha package's font: pip install
    'advx[samples]') to OUT/text-input with their labels.csv and runs `advx harden
    OUT/text-input --out OUT/text-hardened --task text`: every built-in OCR solver installed
    is attacked and verified. About a minute on 2 CPU cores.

    --task cells draws 6 click captchas (characters to click, on crops of the sample
    photos) to OUT/cells-input with their labels.csv (path,label,boxes) and runs `advx
    harden OUT/cells-input --out OUT/cells-hardened --task cells`: ddddocr's click detector
    (and NanoDet once converted) attacked and verified.

    \b
    Tasks (--task):
    """
    from ..engine.folder import HardenJob, run_harden

    def echo(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    from ..engine.tasks import get_task

    t = get_task(task)
    if task != "labels" and tiles_per_photo is not None:
        raise click.UsageError(f"--tiles-per-photo does not apply to --task {task}")
    prefix = "" if task == "labels" else f"{task}-"
    input_dir, hardened = out_dir / f"{prefix}input", out_dir / f"{prefix}hardened"
    try:
        with fail_cleanly():
            options = {"per_photo": tiles_per_photo} if tiles_per_photo else {}
            labels = t.write_demo(input_dir, echo, **options)
            job = HardenJob(input_dir, hardened, task=task, labels_csv=labels,
                            config=HardenConfig(steps=steps), resume=True)
            outcome = run_harden(job, show_progress=not quiet, warn=echo)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if not quiet:
        click.echo(summary_table(outcome.summary, hardened))
    if outcome.interrupted:
        again = "advx demo" + ("" if task == "labels" else f" --task {task}")
        click.echo(f"Interrupted; run `{again}` again with the same --out to finish.", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    click.echo(f"report: {(hardened / 'report.html').resolve()}")


demo_cmd.help += tasks_help() + """

    \b
    Example:
      advx demo --out /tmp/advx-demo
      advx eval /tmp/advx-demo/hardened --models effnet-lite2,effnet-lite0 --transforms solver
      advx demo --task text --out /tmp/advx-demo
      advx demo --task cells --out /tmp/advx-demo
"""
