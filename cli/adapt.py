"""``advx adapt``: how long a hardened set holds once a solver is retrained on it; printed from
:func:`advx.engine.adapt.adapt_run`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import exit_codes, fail_cleanly, split_list


def _sizes(_ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in split_list(value))
    except ValueError:
        raise click.BadParameter(f"{value!r}: a comma list of whole numbers", param=param) from None
    if not sizes or min(sizes) < 0:
        raise click.BadParameter(f"{value!r}: sizes of 0 or more", param=param)
    return sizes


@click.command("adapt", epilog=exit_codes(
    "the check finished (adapt.json, report.html)",
    "interrupted (Ctrl-C); what finished is kept: the same command goes on"))
@click.argument("run_dir", metavar="RUN",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for adapt.json, report.html, split.json, the retrained models and "
                   "the counter-moves' hardened sets (an interrupted check goes on there).")
@click.option("--solver", default=None, metavar="MODEL",
              help="The solver to retrain: a model name of the run's task [default: the run's "
                   "first verifier].")
@click.option("--sizes", default="0,50,200,1000", show_default=True, callback=_sizes,
              help="Comma list of training set sizes: hardened items each copy trains on "
                   "(0: the solver as it is; sizes above what the run holds are left out).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1),
              help="Passes over the training items; the held-out items are read after each.")
@click.option("--held-out", default=0.2, show_default=True, type=click.FloatRange(0, 1,
                                                                                 min_open=True,
                                                                                 max_open=True),
              help="Share of the run's items never trained on; whole sources are held out "
                   "(items of one sub-folder together: put a photo's tiles in one folder).")
@click.option("--counter-moves/--no-counter-moves", default=True, show_default=True,
              help="Also harden the held-out originals twice more: with another seed (fresh "
                   "perturbations) and with the retrained solver among the models (a second "
                   "round), and read both.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
def adapt_cmd(run_dir: Path, out_dir: Path, solver: str | None, sizes: tuple[int, ...],
              epochs: int, held_out: float, counter_moves: bool, seed: int, device: str) -> None:
    """Measure how long hardening holds once a solver is retrained on hardened items.

    RUN is an advx output folder (`advx harden --out RUN`): its hardened items, their truths
    and, through its summary.json, their originals. A copy of the solver is fine-tuned as its
    operator would (the solver's own preprocessing, shifts and contrast jitter, cross-entropy
    for labels or CTC for text, Adam) on N hardened items for each N of --sizes, and after
    each epoch it reads items it never trained on (other sources), hardened and clean, under
    every view of the run. The first line says after how many examples the retrained solver
    reads hardened items at half its clean rate or better. Each retrained copy is written as
    a solver spec (OUT/models/nN/solver.json): name it `onnx:OUT/models/nN/solver.json` as a
    surrogate, verifier or eval model.
    """
    with fail_cleanly():
        from ..engine.adapt import AdaptConfig, adapt_run  # torch: loaded by the command only

        config = AdaptConfig(sizes=sizes, epochs=epochs, held_out=held_out, seed=seed,
                             counter_moves=counter_moves)
        try:
            state = adapt_run(run_dir, out_dir, solver=solver, config=config, device=device,
                              echo=lambda m: click.echo(m, err=True), show_progress=True)
        except KeyboardInterrupt:
            click.echo(f"interrupted: what finished is kept in {out_dir}; the same command "
                       f"goes on", err=True)
            raise SystemExit(130) from None
    click.echo(state["headline"]["sentence"])
    click.echo(f"wrote {out_dir / 'adapt.json'} and {out_dir / 'report.html'}")


adapt_cmd.help += """

    \b
    Example:
      advx harden captchas/ --task text --labels captchas/labels.csv --out hardened/
      advx adapt hardened/ --out adapt/ --solver captcha-whisperer --sizes 0,50,200
"""
