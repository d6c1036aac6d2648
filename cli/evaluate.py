"""``advx eval``: how often models solve a set of tiles, one at a time and as 3x3 grid
challenges ("select all images with X")."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..engine.challenge import grid_solve_rate_sets, sample_grids
from ..engine.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS, TRANSFORM_PRESETS
from ..engine.folder.records import RESULTS, SUMMARY, read_records
from .common import EXIT_CODES_EPILOG, RunError, fail_cleanly, list_option

Scorer = Callable[..., object]  # images [N, 3, H, W] in [0, 1] -> logits over the label set


@dataclass(frozen=True)
class EvalSet:
    paths: list[Path]
    labels: list[str]
    label_set: tuple[str, ...]
    source: str  # "folder" | "advx run"


def _selected(scorer: Scorer, logits) -> list[set[int]]:
    """The label indices a model selects per image, by its own decision rule."""
    if getattr(scorer, "decision", "closed") == "multilabel":
        known = np.asarray(getattr(scorer, "known", [True] * logits.shape[1]))
        return [set(np.flatnonzero((row >= 0) & known).tolist()) for row in logits.numpy()]
    return [{int(i)} for i in logits.argmax(1).tolist()]


def evaluate(images: Iterable[np.ndarray | None], labels: Sequence[str],
             scorers: Mapping[str, Scorer], label_set: Sequence[str], *,
             transforms: str = "none", grids: int = 200, seed: int = 0,
             batch_size: int = 16) -> dict:
    """Score ``images`` (uint8 HxWx3; None for an unreadable one, left out) with every scorer
    under every verification transform of the preset. Accuracy is the share of tiles a model
    selects for their own label, by its decision rule (its top label; P >= threshold for a
    multi-label solver); grids are solved when exactly the target's tiles are selected."""
    import torch

    from ..engine.scoring import SeenTiles
    from ..engine.views import get_preset, look

    label_set = tuple(label_set)
    y = np.array([label_set.index(lab) for lab in labels])
    views = get_preset(transforms).views
    preds: dict[tuple[str, str], list[set[int] | None]] = {
        (m, v.name): [None] * len(y) for m in scorers for v in views}
    valid = np.zeros(len(y), dtype=bool)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        by_shape: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for i, px in batch:
            by_shape.setdefault(px.shape, []).append((i, px))
        for group in by_shape.values():
            idx = [i for i, _ in group]
            x = torch.from_numpy(np.stack([px for _, px in group])).permute(0, 3, 1, 2)
            x = x.float() / 255
            seen, rows = SeenTiles(x, views), torch.arange(len(x))
            for view in views:
                xs = seen(view, rows)  # each filter once per batch, whatever the scorers
                for name, scorer in scorers.items():
                    with torch.no_grad():
                        logits = torch.as_tensor(look(scorer, xs, view)).float().cpu()
                    for i, sel in zip(idx, _selected(scorer, logits), strict=True):
                        preds[(name, view.name)][i] = sel
        batch.clear()

    for i, px in enumerate(images):
        if px is None:
            continue
        valid[i] = True
        batch.append((i, px))
        if len(batch) >= batch_size:
            flush()
    flush()
    keep = np.flatnonzero(valid)
    challenge = sample_grids(y[keep].tolist(), grids, seed)
    rows = []
    for (name, t), p in preds.items():
        pk = [p[i] for i in keep]
        rows.append({"model": name, "view": t,
                     "decision": getattr(scorers[name], "decision", "closed"),
                     "accuracy": (float(np.mean([y[i] in s for i, s in zip(keep, pk,
                                                                             strict=True)]))
                                  if len(keep) else None),
                     "grid_solve_rate": grid_solve_rate_sets(pk, y[keep], challenge)})
    return {"label_set": list(label_set), "images": len(keep),
            "skipped": int(len(y) - len(keep)), "grids": len(challenge), "seed": seed,
            "transforms": transforms, "results": rows}


def load_eval_set(input_dir: Path, labels_csv: Path | None,
                  label_set: Sequence[str] | None, label_map=None) -> EvalSet:
    """A labelled folder (as for harden) or an advx output folder (its results.jsonl)."""
    from ..engine.dataset import discover

    results = input_dir / RESULTS
    if results.exists():
        if labels_csv is not None:
            raise RunError(f"{input_dir} is an advx output folder (it has {RESULTS}); "
                           f"--labels is for labelled input folders")
        records, _ = read_records(results)
        ok = sorted((r for r in records if r["status"] != "error" and r.get("output")),
                    key=lambda r: r["path"])
        if not ok:
            raise RunError(f"{results} lists no hardened images")
        paths = [input_dir / r["output"] for r in ok]
        labels = [r["label"] for r in ok]
        source = "advx run"
        if not label_set:
            try:
                label_set = json.loads((input_dir / SUMMARY).read_text("utf-8"))["label_set"]
            except (OSError, ValueError, KeyError):
                label_set = None
    else:
        items = discover(input_dir, labels_csv)
        paths = [input_dir / it.path for it in items]
        labels = [it.label for it in items]
        source = "folder"
    if not label_set:
        from ..engine.api import default_label_set

        label_set = default_label_set(labels, label_map)
    label_set = tuple(label_set)
    unknown = sorted(set(labels) - set(label_set))
    if unknown:
        raise RunError(f"labels {unknown} of {input_dir} are not in the label set {label_set}")
    return EvalSet(paths, labels, label_set, source)


def load_scorer(spec: str, label_set: Sequence[str], *, device: str = "auto",
                templates: str = DEFAULT_TEMPLATES, label_map=None) -> tuple[str, Scorer]:
    """A zoo model name (torch), a foreign solver ``onnx:SPEC.json`` (its graph, in
    onnxruntime) or an ``advx export`` folder (ONNX), as (name, scorer) with logits over
    ``label_set`` in its order."""
    import torch

    from ..engine.api import resolve_device
    from ..engine.zoo import create_verifier, is_solver_name

    label_set = tuple(label_set)
    dev = resolve_device(device)
    if ":" in spec and is_solver_name(spec):
        v = create_verifier(spec, label_set, device="cuda" if dev.type == "cuda" else "cpu")
        return v.name, v
    path = Path(spec).expanduser()
    if (path / "manifest.json").is_file():
        from ..export import OnnxVerifier

        v = OnnxVerifier(path, device="auto" if dev.type == "cuda" else "cpu")
        missing = [lab for lab in label_set if lab not in v.labels]
        if missing:
            raise RunError(f"the export {spec} scores {list(v.labels)}, not {missing}; "
                           f"re-export it with --labels {','.join(label_set)}")
        perm = torch.tensor([v.labels.index(lab) for lab in label_set])
        return (f"{v.name} ({v.manifest.precision} onnx)",
                lambda x, geometry=None: v(x, geometry)[:, perm])
    from ..engine.zoo import create_classifier

    clf = create_classifier(spec, label_set, templates=templates, device=str(dev),
                            label_map=label_map)
    def run(x, geometry=None):
        return clf(x.to(dev), geometry).cpu()

    run.decision = getattr(clf, "decision", "closed")
    run.known = getattr(clf, "known", None)
    return clf.name, run


def _images(paths: Sequence[Path], skipped: list[str]) -> Iterable[np.ndarray | None]:
    from ..engine.images import ImageLoadError, load_image

    for p in paths:
        try:
            yield load_image(p).pixels
        except ImageLoadError as e:
            skipped.append(f"{p}: {e.reason}")
            yield None


@click.command("eval", epilog=EXIT_CODES_EPILOG)
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
                   "classifiers (consulted before the built-in map).")
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
        from ..engine.api import check_known
        from ..engine.zoo import load_label_map

        lmap = load_label_map(label_map)
        data = load_eval_set(input_dir, labels_csv, label_set, lmap)
        scorers = dict(load_scorer(m, data.label_set, device=device, templates=templates,
                                   label_map=lmap) for m in models)
        check_known(list(scorers.values()), sorted(set(data.labels)))
        skipped: list[str] = []
        result = evaluate(_images(data.paths, skipped), data.labels, scorers, data.label_set,
                          transforms=transforms, grids=grids, seed=seed)
    result = {"input": str(input_dir), "source": data.source, **result,
              "unreadable": skipped}
    for msg in skipped:
        click.echo(f"warning: skipped {msg}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['images']} images ({data.source}), labels: "
               f"{', '.join(data.label_set)}; {result['grids']} grids, seed {seed}")
    width = max([5, *(len(r["model"]) for r in result["results"])])
    click.echo(f"{'model':<{width}}  {'view':<14}  accuracy  grid solve rate")
    for r in result["results"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        grid = "-" if r["grid_solve_rate"] is None else f"{r['grid_solve_rate']:.1%}"
        click.echo(f"{r['model']:<{width}}  {r['view']:<14}  {acc:>8}  {grid:>15}")
