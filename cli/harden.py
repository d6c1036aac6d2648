"""``advx harden``: the command; the work is in advx.engine.folder (the library's folder run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..engine.config import ATTACKS, OUTPUT_FORMATS, HardenConfig
from ..engine.defaults import DEFAULT_MAX_SIDE, DEFAULT_SURROGATES, DEFAULT_VERIFIERS
from ..engine.views.presets import TRANSFORM_PRESETS, VIEW_GLOSSARY, get_preset, view_matrices
from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from .common import EXIT_CODES_EPILOG, EXIT_INTERRUPTED, fail_cleanly, list_option
from .harden_text import TASKS, harden_text

DEFAULTS = HardenConfig()  # the engine's defaults (the config module is torch-free)


@click.command("harden", epilog="\b\nView matrices and roles (--transforms, --decide):\n"
               + view_matrices() + "\n\n"
               + VIEW_GLOSSARY + "\n\n" + EXIT_CODES_EPILOG)
@click.argument("input_dir", metavar="INPUT",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", type=click.Choice(TASKS), default="image", show_default=True,
              help="image: labelled tiles against classifiers; text: text CAPTCHAs listed in "
                   "a path,text CSV against OCR solvers (described above).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: hardened images, results.jsonl, summary.json, report.html.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="CSV with a 'path,label' header (paths relative to INPUT) instead of "
                   "label sub-folders; for --task text a 'path,text' header [default: "
                   "INPUT/labels.csv].")
@click.option("--label-set", callback=list_option,
              help="Comma list of the labels a solver chooses among [default: the sorted labels "
                   "of INPUT].")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='JSON {"label": ["ImageNet class name or index", ...]}: how ImageNet '
                   "classifiers answer labels the built-in map lacks (consulted first).")
@click.option("--decoy", default=None, metavar="LABEL",
              help="Also push every tile not labelled LABEL to be picked / selected as LABEL "
                   "(false positives for 'select all LABEL'); LABEL's own tiles are pushed "
                   "away from it as usual.")
@click.option("--surrogates", default=",".join(DEFAULT_SURROGATES), show_default=True,
              callback=list_option, help="Comma list of models attacked with gradients; "
              "onnx:SPEC.json attacks a foreign solver with its own gradients [--task text: "
              "every built-in OCR solver installed].")
@click.option("--verifiers", default=",".join(DEFAULT_VERIFIERS), show_default=True,
              callback=list_option,
              help="Comma list of models that must be fooled, run as ONNX (a foreign solver "
                   "runs its own graph) [--task text: every built-in OCR solver installed].")
@click.option("--eps", type=click.FloatRange(0, 64, min_open=True), default=DEFAULTS.eps,
              show_default=True,
              help="L-inf budget in /255 units: lower it (4) against your own solver "
                   "(white-box), where less suffices; the default suits transfer.")
@click.option("--steps", type=click.IntRange(min=0), default=DEFAULTS.steps, show_default=True,
              help="Attack step limit per image (images leave earlier once beaten, or once "
                   "steps stop helping); raise it for white-box runs that come close.")
@click.option("--attack", type=click.Choice(ATTACKS), default=DEFAULTS.attack, show_default=True,
              help="auto: pgd when every verifier is also a surrogate (white-box, e.g. a "
                   "solver spec as both), else mifgsm with a Nesterov look-ahead, input "
                   "diversity and skip gradients through residual blocks (for transfer). "
                   "Choose one yourself only to compare them.")
@click.option("--transforms", type=click.Choice(TRANSFORM_PRESETS), default=DEFAULTS.transforms,
              show_default=True, help="The solver views: what a solver may do to a tile before "
              "its network answers (attacked in expectation, every view verified exactly on "
              "the delivered file; solver and robust also attack each surrogate through "
              "other solvers' resize and crop). The view matrices are listed below.")
@click.option("--decide", callback=list_option, metavar="VIEWS|all",
              help="Comma list of the views an image must beat before it is done (the others "
                   "of --transforms are reported: scored, never blocking), or 'all' for every "
                   "view of the matrix [default: the preset's deciding views, listed below]. A "
                   "verifier that is also a surrogate is held to every view.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
              default=DEFAULTS.output_format,
              show_default=True, help="Output image format (verification scores exactly it): "
                   "jpeg where the site serves JPEG, so the verified file is the served one.")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULTS.jpeg_quality,
              show_default=True,
              help="JPEG quality of --format jpeg.")
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
              help="Logit margin by which every verifier must be wrong; raise it when the "
                   "solvers you face may differ a little from your verifiers (e.g. other "
                   "versions of a solver).")
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
              default=DEFAULTS.texture_mask,
              show_default=True, help="Share of eps that flat regions may use (textured "
                                      "ones use all of it); 1 = uniform. Lower it for "
                                      "flat, graphic tiles where noise shows.")
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=DEFAULT_TEMPLATES,
              show_default=True, help="Prompt templates of zero-shot (CLIP) models.")
@click.option("--max-side", type=click.IntRange(min=32), default=DEFAULT_MAX_SIDE,
              show_default=True,
              help="Longer sides above this are attacked on a downscaled copy; the "
                   "perturbation is upsampled to full size.")
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help="Spread the images over Ray workers (pip install 'advx[ray]'): local = a "
                   "Ray instance on this machine, auto = the cluster this machine joined "
                   "(ray start), or a cluster address. The driver writes every file.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="Ray workers, each holding the models once [default: one per GPU, else "
                   "one per 4 CPU cores].")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in the same --out.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar and no summary table (warnings still go to stderr).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def harden_cmd(ctx: click.Context, input_dir: Path, task: str, out_dir: Path,
               labels_csv: Path | None,
               label_set: tuple[str, ...] | None, label_map: Path | None, decoy: str | None,
               surrogates: tuple[str, ...],
               verifiers: tuple[str, ...], eps: float, steps: int, attack: str, transforms: str,
               decide: tuple[str, ...] | None, output_format: str, quality: int, device: str,
               batch_size: int, seed: int, required_margin: float, ssim_floor: float | None,
               eps_rungs: int, texture_mask: float,
               templates: str, max_side: int, ray_address: str | None,
               ray_workers: int | None, resume: bool, quiet: bool, as_json: bool) -> None:
    """Harden the labelled images in INPUT so that AI solvers misclassify them.

    INPUT holds one sub-folder per label (INPUT/bus/001.jpg, INPUT/traffic_light/7.png) or
    any layout with --labels CSV; a folder with one label is a binary challenge ("select all
    X") against built-in negatives. Each image is attacked on the --surrogates until every
    --verifier is fooled by its own decision rule (a wrong top label; for a multi-label
    solver, P(X) below its threshold) under each deciding view of --transforms (--decide),
    or until more steps stop helping or --steps run out. The reported views are scored on the
    delivered file and shown in every figure. Images are written to OUT at the same relative
    path as PNG (the extension becomes .png; --format jpeg writes JPEG). Unreadable inputs get
    an error record; the run goes on. Resumable: records are written as images finish;
    Ctrl-C and --resume lose nothing.

    --task text hardens text CAPTCHAs against OCR solvers instead. --labels (default
    INPUT/labels.csv) is a CSV whose header names a 'path' and a 'text' column (any order;
    other columns are ignored), one row per captcha: its path relative to INPUT and the text
    it shows. The built-in OCR solvers are ddddocr, ddddocr-beta (pip install ddddocr),
    captcha-whisperer (pip install captcha-whisperer) and ppocr-v4-rec (the rapidocr wheel
    that $ADVX_PPOCR_REC names); by default every one installed is both attacked and
    verified, and one whose files are absent is left out with a warning. A captcha is done
    when every verifier misreads it under each deciding view of the text preset (--decide).
    Rows that cannot be used (a missing image, an empty text, characters a solver cannot
    read) get an error record; the run goes on. The options that only concern tiles
    (--label-set, --label-map, --decoy, --templates, --max-side, --ray, --ray-workers,
    --required-margin, --transforms other than text) are refused.

    The summary opens, per verifier, with the share of tiles it gets wrong under all its
    deciding views and its 3x3 grid solve rate before and after under each view (text: the
    share of captchas it misreads under all its deciding views, then per view the share
    misread as delivered and the mean character error rate).

    \b
    Example:
      advx harden tiles/ --out hardened/ --eps 8 --steps 40
      advx harden tiles/ --out hardened/ --eps 4 \\
          --surrogates onnx:solver.json --verifiers onnx:solver.json
      advx harden tiles/ --out hardened/ --label-map my_labels.json
      advx harden tiles/ --out hardened/ --resume      # after Ctrl-C or a crash
      advx harden tiles/ --out hardened/ --ray auto    # on a Ray cluster
      advx harden captchas/ --out hardened/ --task text   # captchas/labels.csv: path,text
    """
    from ..engine.folder import HardenJob, RayOptions, run_harden

    if task == "text":
        return harden_text(ctx)
    if ray_workers is not None and ray_address is None:
        raise click.UsageError("--ray-workers needs --ray")

    try:
        if decide == ("all",):
            decide = get_preset(transforms).views
        config = HardenConfig(eps=eps, steps=steps, attack=attack, transforms=transforms,
                              decide=decide,
                              output_format=output_format, jpeg_quality=quality,
                              batch_size=batch_size, device=device, seed=seed,
                              required_margin=required_margin,
                              ssim_floor=ssim_floor, eps_rungs=eps_rungs,
                              texture_mask=None if texture_mask >= 1 else texture_mask)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    job = HardenJob(input_dir=input_dir, out_dir=out_dir, labels_csv=labels_csv,
                    label_set=label_set, surrogates=surrogates, verifiers=verifiers,
                    config=config, templates=templates, resume=resume, max_side=max_side,
                    label_map=label_map, decoy=decoy,
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


def headline_lines(s: dict) -> list[str]:
    """Per verifier: the share of tiles beaten under all its deciding views, and its 3x3 grid
    solve rate before -> after under each view (reported views marked)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    lines = []
    for v, h in (s.get("headline") or {}).items():
        deciding = h.get("deciding") or []
        lines.append(f"  {v}: wrong under all deciding views ({', '.join(deciding)}) on "
                     f"{pct(h.get('beaten_rate'))} of the tiles")
        grids = ", ".join(f"{w}{'' if w in deciding else ' (reported)'} "
                          f"{pct(g.get('before'))} -> {pct(g.get('after'))}"
                          for w, g in (h.get("grid_solve_rate") or {}).items())
        if grids:
            lines.append(f"    3x3 grids solved: {grids}")
    return lines


def summary_table(s: dict, out_dir: Path) -> str:
    def num(v: float | None, spec: str, unit: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{unit}"

    rows = [
        ("inputs", f"{s['total']}" + (f" ({s['pending']} pending)" if s["pending"] else "")),
        ("fooled", s["fooled"]), ("unfooled", s["unfooled"]), ("errors", s["errors"]),
        ("fooled rate", num(s["fooled_rate"], ".1%") + "  (every verifier wrong under its "
                                                         "deciding views, by the margin)"),
        ("strict rate", num(s.get("fooled_every_view_rate"), ".1%")
         + "  (wrong under every view, the reported ones too)"),
        ("mean PSNR", num(s["mean_psnr"], ".2f", " dB")),
        ("mean SSIM", num(s["mean_ssim"], ".4f")),
        ("mean L-inf", num(s["mean_linf"], ".2f", "/255")),
        *((f"{m}", f"selects its tile {num(v.get('select_rate_before'), '.0%')} -> "
                   f"{num(v.get('select_rate_after'), '.0%')}, grid solve rate "
                   f"{num(v.get('grid_solve_rate_before'), '.0%')} -> "
                   f"{num(v.get('grid_solve_rate_after'), '.0%')}")
          for m, v in (s.get("per_model") or {}).items()),
        *((f"{v} wrong under", ", ".join(f"{w} {num(e.get('fooled_rate'), '.0%')}"
                                          for w, e in views.items()))
          for v, views in (s.get("per_view") or {}).items()),
        ("SSIM min / median", "-" if not s.get("ssim_distribution") else
         f"{s['ssim_distribution']['min']:.4f} / {s['ssim_distribution']['median']:.4f}"),
        ("images/s", num(s["images_per_s"], ".3f") + f"  ({s['seconds']:.1f} s)"),
        ("images", str(out_dir)),
        ("results", str(out_dir / "results.jsonl")),
        ("summary", str(out_dir / "summary.json")),
        ("report", str(out_dir / "report.html")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([*headline_lines(s), *(f"  {k:<{width}}  {v}" for k, v in rows)])
