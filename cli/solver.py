"""``advx solver init`` (a spec template from a graph) and ``advx solver check`` (a spec loaded,
converted and scored, the way harden will use it)."""

from __future__ import annotations

from pathlib import Path

import click

from ..export.files import write_text_atomic
from .common import RunError, exit_codes, fail_cleanly, split_list

SPEC_HELP = """\b
A solver spec (schema v1) is a JSON file; `model` is relative to it:
  {
    "model": "solver.onnx",
    "input": {"name": "image", "size": [128, 128], "layout": "NCHW",
              "dtype": "float32", "range": [0, 1], "mean": [0, 0, 0],
              "std": [1, 1, 1], "channels": "RGB", "resize": "bilinear",
              "antialias": false, "crop": 1.0},
    "output": {"name": "probs", "kind": "multilabel", "label_axis": 1,
               "reduce": "max"},
    "labels": ["Bicycle", "Bus", "Motorcycle"],
    "label_map": {"motorcycle": "Motorcycle"},
    "threshold": 0.5
  }
output.kind: logits | softmax (closed set: argmax) | multilabel (P per
label in [0, 1]) | multilabel_logits (sigmoid applied by advx). A
multi-label solver selects a tile for X when P(X) >= threshold.
"""


@click.group("solver", epilog=SPEC_HELP)
def solver_cmd() -> None:
    """Bring a foreign CAPTCHA solver (an ONNX graph) into advx.

    Write a spec for the graph with `advx solver init`, check it with `advx solver check`,
    then name it `onnx:SPEC.json` wherever advx takes a model: --surrogates (attacked with
    its own gradients, the graph converted to torch), --verifiers (run as the solver runs it,
    in onnxruntime), `advx eval --models`.

    \b
    Example:
      advx solver init solver.onnx --out solver.json     # then fill in what it prints
      advx solver check solver.json tiles/bus/1.png
      advx harden tiles/ --out hardened/ --eps 4 \\
          --surrogates onnx:solver.json --verifiers onnx:solver.json
    """


@solver_cmd.command("init", epilog=exit_codes("the spec was written"))
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the spec (JSON).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
def init_cmd(model: Path, out: Path, force: bool) -> None:
    """Write a spec template for the ONNX graph MODEL.

    It reads the graph's inputs and outputs (names, shapes, dtypes), any card beside it (a JSON
    file with labels / classes / names, input or tile size, threshold; labels.txt) and the
    graph's metadata, runs it once to tell probabilities from logits, and fills in every field
    it can. It prints what you must still fill in or check (labels, preprocessing); those notes
    are also kept in the spec under "_notes".
    """
    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite it")
    with fail_cleanly():
        from ..export.solver.template import dumps_spec, init_template

        spec, todo = init_template(model, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, dumps_spec(spec) + "\n")
    click.echo(f"wrote {out}")
    i, o = spec["input"], spec["output"]
    size = "x".join("W" if v is None else str(v) for v in i["size"])
    click.echo(f"  input  {i['name']}: {i.get('layout', 'NCHW')} {i.get('dtype', 'float32')} "
               f"{size}")
    if o["kind"] == "ctc":  # a text solver: a CTC head over a charset
        click.echo(f"  output {o['name']}: ctc, layout {o.get('layout')}, blank {o.get('blank')}")
    elif "label_axis" not in o:  # a detector or segmenter (the cells task)
        tensors = [v for k, v in o.items() if k in ("name", "scores", "boxes", "logits")]
        click.echo(f"  output {o['kind']} head ({', '.join(map(str, tensors))}), "
                   f"{len(spec['labels'])} labels")
    else:
        click.echo(f"  output {o['name']}: {o['kind']}, labels on axis {o['label_axis']}, "
                   f"reduce {o['reduce']}, {len(spec['labels'])} labels")
    click.echo("Fill in or check:")
    for note in todo:
        click.echo(f"  - {note}")
    click.echo(f"Then: advx solver check {out}")


@solver_cmd.command("check", epilog=exit_codes("the spec and its graph passed every check"))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", "labels", default=None,
              help="Comma list of CAPTCHA labels to show P / decisions for [default: the "
                   "solver's own labels].")
def check_cmd(spec: Path, images: tuple[Path, ...], labels: str | None) -> None:
    """Load SPEC, convert its graph to torch and check it against onnxruntime; with IMAGES,
    print the solver's answer on each.

    Exit code 1 names the field of the spec to fix. A graph that cannot be converted is
    reported (it can still verify, but not be attacked with its own gradients).
    """
    with fail_cleanly():
        import torch

        from ..engine.images import ImageLoadError, load_image
        from ..export.solver import ConversionError, SolverParityError, load_solver

        solver = load_solver(spec, name=f"onnx:{spec}")
        s = solver.spec
        if s.output.kind == "ctc":
            check_text_solver(solver, images)
            return
        if s.output.detect is not None:
            check_detector(solver, images)
            return
        click.echo(f"{solver.name}: {s.model.name}, opset {solver.io.opset}")
        click.echo(f"  input  {solver.input_info.describe()}: {s.input.layout} {s.input.dtype}, "
                   f"range {list(s.input.range)}, {s.input.channels}, {s.input.resize}"
                   f"{' (antialias)' if s.input.antialias else ''}, crop {s.input.crop:g}, "
                   f"{s.input.fit}")
        click.echo(f"  output {solver.output_info.describe()}: {s.output.kind}, "
                   f"decision {s.decision}"
                   + (f" (P >= {s.threshold:g})" if s.decision == "multilabel"
                      and not s.thresholds else " (P >= its threshold per label)"
                      if s.decision == "multilabel" else ""))
        try:
            solver.torch_graph()
            p = solver.parity
            how = ("logits behind its final activation" if solver.torch_kind != s.output.kind
                   else "its output")
            click.echo(f"  torch  converted; gradients through {how}; parity with onnxruntime: "
                       f"max |diff| {p.max_abs_diff:.2g}, decisions agree "
                       f"{p.decision_agreement:.0%}")
        except (ConversionError, SolverParityError) as e:
            click.echo(f"  torch  NOT available as a surrogate: {e}")
        names = split_list(labels) or s.labels
        unknown = [n for n in names if not s.solver_labels_for(n)]
        if unknown:
            raise RunError(f"labels {unknown} map to none of the solver's labels; add them to "
                           f"\"label_map\" in {spec}")
        if not images:
            return
        verifier = solver.verifier(names)
        pixels = []
        for path in images:
            try:
                pixels.append((path, load_image(path).pixels))
            except ImageLoadError as e:
                click.echo(f"{path}: unreadable ({e.reason})", err=True)
        for path, px in pixels:
            x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
            z = verifier(x)[0]
            if s.decision == "multilabel":
                probs = verifier.probabilities(z[None])[0]
                top = sorted(zip(names, probs.tolist(), strict=True), key=lambda t: -t[1])[:5]
                sel = [n for n, v in zip(names, z.tolist(), strict=True) if v >= 0]
                click.echo(f"{path}: selects {sel or 'nothing'}; "
                           + ", ".join(f"P({n})={p:.3f}" for n, p in top))
            else:
                click.echo(f"{path}: {names[int(z.argmax())]}")


def check_detector(solver, images: tuple[Path, ...]) -> None:
    """``advx solver check`` for a detector or segmenter: its torch twin against onnxruntime,
    then what it keeps on each image."""
    import torch

    from ..engine.images import ImageLoadError, load_image
    from ..export.solver import ConversionError, SolverParityError

    s, h = solver.spec, solver.spec.output.detect
    click.echo(f"{solver.name}: {s.model.name}, {h.kind} head over {len(s.labels)} labels, "
               f"kept from a score of {s.threshold:g} (NMS IoU {h.keep.iou:g})")
    try:
        solver.torch_graph()
        p = solver.parity
        click.echo(f"  torch  converted; parity with onnxruntime: max |diff| of the scores "
                   f"{p.max_abs_diff:.2g}, the same {p.kept} detections kept on {p.n} images")
    except (ConversionError, SolverParityError) as e:
        click.echo(f"  torch  NOT available as a surrogate: {e}")
    verifier = solver.verifier()
    for path in images:
        try:
            px = load_image(path).pixels
        except ImageLoadError as e:
            click.echo(f"{path}: unreadable ({e.reason})", err=True)
            continue
        (d,) = verifier(torch.from_numpy(px.copy()).permute(2, 0, 1)[None].float() / 255)
        found = [f"{s.labels[int(c)]} {float(p):.2f} [{', '.join(f'{v:.0f}' for v in b.tolist())}]"
                 for b, p, c in zip(d.boxes, d.scores, d.classes, strict=True)]
        click.echo(f"{path}: {len(found)} detections" + (": " + "; ".join(found[:10])
                                                          if found else ""))


def check_text_solver(solver, images: tuple[Path, ...]) -> None:
    """``advx solver check`` for a CTC (text) solver: its torch twin against onnxruntime, then
    what it reads on each image."""
    from ..engine.images import ImageLoadError, load_image
    from ..export.solver import ConversionError, SolverParityError

    s = solver.spec
    click.echo(f"{solver.name}: {s.model.name}, CTC over {len(solver.charset.symbols)} symbols, "
               f"blank {s.output.ctc.blank}")
    try:
        p = solver.check_parity(solver.probe_images(2))
        click.echo(f"  torch  converted; parity with onnxruntime: max |diff| "
                   f"{p.max_abs_diff:.2g}, same strings {p.same_strings}/{p.n}"
                   + (f" ({p.undecided} near-ties)" if p.undecided else ""))
    except (ConversionError, SolverParityError) as e:
        click.echo(f"  torch  NOT available as a surrogate: {e}")
    if not images:
        return
    import numpy as np
    import torch

    reader = solver.verifier()
    for path in images:
        try:
            px = load_image(path).pixels
        except ImageLoadError as e:
            click.echo(f"  {path}: unreadable ({e})")
            continue
        x = torch.from_numpy(np.array(px)).permute(2, 0, 1)[None].float() / 255
        click.echo(f"  {path}: reads {reader.read(x)[0]!r}")
