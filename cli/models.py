"""``advx models`` (what can be named) and ``advx export`` (a model to validated ONNX)."""

from __future__ import annotations

from pathlib import Path

import click

from ..export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
from ..export.onnx.spec import PRECISIONS
from .common import exit_codes, fail_cleanly, list_option


@click.command("models")
@click.option("--all", "show_all", is_flag=True,
              help="Also list open_clip's pretrained weights (open_clip:ARCH/TAG).")
def models_cmd(show_all: bool) -> None:
    """List the registered models and the grammar of model names.

    Offline entries have their weights in installed packages; the others download from a hub
    on first use (or load from a local path, see the grammar).

    \b
    Example:
      advx models
      advx models --all | grep ViT-B-32
    """
    from ..export.zoo import GRAMMAR, list_entries

    entries = list_entries()
    width = max((len(e.name) for e in entries), default=4)
    click.echo(f"{'name':<{width}}  offline  description")
    for e in entries:
        click.echo(f"{e.name:<{width}}  {'yes' if e.offline else 'no':<7}  {e.description}")
    click.echo(f"\nModel names: {GRAMMAR}")
    if show_all:
        import open_clip

        pretrained = open_clip.list_pretrained()
        click.echo(f"\nopen_clip pretrained weights ({len(pretrained)}):")
        for arch, tag in pretrained:
            click.echo(f"open_clip:{arch}/{tag}")


@click.command("export", epilog=exit_codes("the export was written and passed its checks"))
@click.argument("model")
@click.option("--labels", "labels", required=True, callback=list_option,
              help="Comma list of the labels the exported classifier scores.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for model.onnx and manifest.json.")
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=DEFAULT_TEMPLATES,
              show_default=True, help="Prompt templates of zero-shot (CLIP) models.")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help='JSON {"label": ["ImageNet class name or index", ...]} for ImageNet '
                   "classifiers (consulted before the built-in map).")
def export_cmd(model: str, labels: tuple[str, ...], precision: str, out_dir: Path,
               templates: str, label_map: Path | None) -> None:
    """Export MODEL as a classifier over --labels to one validated ONNX graph.

    The graph takes images [N, 3, size, size] in [0, 1] (normalisation inside) and returns
    label logits. Every export is checked against torch (onnx.checker, then onnxruntime):
    the parity figures are printed and stored in manifest.json. The folder can be passed to
    `advx eval --models` or served by your own solver tests.

    \b
    Example:
      advx export effnet-lite2 --labels bus,car,bicycle --precision fp16 --out lite2-fp16/
    """
    with fail_cleanly():
        from ..export import ExportSpec, export_model
        from ..export.zoo import load_label_map

        manifest = export_model(model, labels, out_dir, ExportSpec(precision=precision),
                                templates=templates, label_map=load_label_map(label_map))
    p = manifest.parity
    click.echo(f"exported {manifest.source_model} ({manifest.precision}, opset {manifest.opset}, "
               f"{len(manifest.labels)} labels, input {manifest.input_size} px)")
    click.echo(f"parity vs torch on {p.n} images: max abs diff {p.max_abs_diff:.3g}, "
               f"top-1 agreement {p.top1_agreement:.1%}")
    click.echo(f"model:    {out_dir / 'model.onnx'}")
    click.echo(f"manifest: {out_dir / 'manifest.json'}")
