"""How often models solve a set of tiles, one at a time and as 3x3 grid challenges ("select all
images with X"): what ``advx eval`` reports, as a library call (:func:`evaluate_folder`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..export.defaults import DEFAULT_TEMPLATES
from ..export.onnx.manifest import MANIFEST
from ..export.onnx.verifier import OnnxVerifier
from ..export.zoo import (
    LabelMap,
    create_classifier,
    create_verifier,
    is_solver_name,
    load_label_map,
)
from .api import check_known, default_label_set, resolve_device
from .attacks.ensemble import decision_of
from .errors import RunError
from .folder.records import RESULTS, SUMMARY, read_records
from .images import ImageLoadError, load_image
from .tasks.labels.dataset import discover
from .tasks.labels.grids import grid_solve_rate_sets, sample_grids
from .tasks.labels.scoring import SeenTiles
from .views.view import look, views_of

# images [N, 3, H, W] in [0, 1] (and a view's ``geometry=``) -> logits over the label set, in
# its order; ``decision`` and ``known`` attributes as for verifiers (see scoring.Scorer)
ScoreFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class EvalSet:
    paths: list[Path]
    labels: list[str]
    label_set: tuple[str, ...]
    source: str  # "folder" | "advx run"


def _selected(scorer: ScoreFn, logits: torch.Tensor) -> list[set[int]]:
    """The label indices a model selects per image, by its own decision rule."""
    if decision_of(scorer) == "multilabel":
        known = np.asarray(getattr(scorer, "known", [True] * logits.shape[1]))
        return [set(np.flatnonzero((row >= 0) & known).tolist()) for row in logits.numpy()]
    return [{int(i)} for i in logits.argmax(1).tolist()]


def evaluate(images: Iterable[np.ndarray | None], labels: Sequence[str],
             scorers: Mapping[str, ScoreFn], label_set: Sequence[str], *,
             transforms: str = "none", grids: int = 200, seed: int = 0,
             batch_size: int = 16) -> dict:
    """Score ``images`` (uint8 HxWx3; None for an unreadable one, left out) with every scorer
    under every verification view of the preset ``transforms``. Accuracy is the share of tiles
    a model selects for their own label, by its decision rule (its top label; P >= threshold
    for a multi-label solver); grids are solved when exactly the target's tiles are selected."""
    label_set = tuple(label_set)
    y = np.array([label_set.index(lab) for lab in labels])
    views = views_of(transforms)
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
        rows.append({"model": name, "view": t, "decision": decision_of(scorers[name]),
                     "accuracy": (float(np.mean([y[i] in s for i, s in zip(keep, pk,
                                                                             strict=True)]))
                                  if len(keep) else None),
                     "grid_solve_rate": grid_solve_rate_sets(pk, y[keep], challenge)})
    return {"label_set": list(label_set), "images": len(keep),
            "skipped": int(len(y) - len(keep)), "grids": len(challenge), "seed": seed,
            "transforms": transforms, "results": rows}


def run_label_map(input_dir: Path) -> dict | None:
    """The label map an advx output folder was hardened with (kept in its summary.json), or
    None for a folder without one."""
    try:
        return json.loads((input_dir / SUMMARY).read_text("utf-8")).get("label_map_entries")
    except (OSError, ValueError, AttributeError):
        return None


def load_eval_set(input_dir: Path, labels_csv: Path | None,
                  label_set: Sequence[str] | None, label_map: LabelMap | None = None) -> EvalSet:
    """A labelled folder (as for harden) or an advx output folder (its results.jsonl)."""
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
        label_set = default_label_set(labels, label_map)
    label_set = tuple(label_set)
    unknown = sorted(set(labels) - set(label_set))
    if unknown:
        raise RunError(f"labels {unknown} of {input_dir} are not in the label set {label_set}")
    return EvalSet(paths, labels, label_set, source)


def load_scorer(spec: str, label_set: Sequence[str], *, device: str = "auto",
                templates: str = DEFAULT_TEMPLATES, label_map: LabelMap | None = None
                ) -> tuple[str, ScoreFn]:
    """A zoo model name (torch), a foreign solver ``onnx:SPEC.json`` (its graph, in
    onnxruntime) or an ``advx export`` folder (ONNX), as (name, scorer) with logits over
    ``label_set`` in its order."""
    label_set = tuple(label_set)
    dev = resolve_device(device)
    if ":" in spec and is_solver_name(spec):
        v = create_verifier(spec, label_set, device="cuda" if dev.type == "cuda" else "cpu")
        return v.name, v
    path = Path(spec).expanduser()
    if (path / MANIFEST).is_file():
        v = OnnxVerifier(path, device="auto" if dev.type == "cuda" else "cpu")
        missing = [lab for lab in label_set if lab not in v.labels]
        if missing:
            raise RunError(f"the export {spec} scores {list(v.labels)}, not {missing}; "
                           f"re-export it with --labels {','.join(label_set)}")
        perm = torch.tensor([v.labels.index(lab) for lab in label_set])
        return (f"{v.name} ({v.manifest.precision} onnx)",
                lambda x, geometry=None: v(x, geometry)[:, perm])
    clf = create_classifier(spec, label_set, templates=templates, device=str(dev),
                            label_map=label_map)

    def run(x, geometry=None):
        return clf(x.to(dev), geometry).cpu()

    run.decision = getattr(clf, "decision", "closed")
    run.known = getattr(clf, "known", None)
    return clf.name, run


def read_pixels(paths: Sequence[Path], skipped: list[str]) -> Iterable[np.ndarray | None]:
    """Each image's pixels (uint8 HxWx3), or None for one that cannot be read (its reason is
    appended to ``skipped``)."""
    for p in paths:
        try:
            yield load_image(p).pixels
        except ImageLoadError as e:
            skipped.append(f"{p}: {e.reason}")
            yield None


def evaluate_folder(input_dir: str | Path, models: Sequence[str], *,
                    labels_csv: str | Path | None = None,
                    label_set: Sequence[str] | None = None,
                    label_map: LabelMap | str | Path | Mapping | None = None,
                    transforms: str = "none", grids: int = 200, seed: int = 0,
                    device: str = "auto", templates: str = DEFAULT_TEMPLATES) -> dict:
    """``advx eval``: score the tiles of ``input_dir`` (a labelled folder, or an advx output
    folder whose results.jsonl gives each hardened image and its label) with every model of
    ``models`` (zoo names, ``onnx:SPEC.json`` solvers, ``advx export`` folders).

    Returns :func:`evaluate`'s figures, with the ``input`` folder, its ``source`` ("folder" or
    "advx run") and the ``unreadable`` images (path: reason).
    """
    input_dir = Path(input_dir)
    lmap = load_label_map(label_map if label_map is not None else run_label_map(input_dir))
    data = load_eval_set(input_dir, Path(labels_csv) if labels_csv else None, label_set, lmap)
    scorers = dict(load_scorer(m, data.label_set, device=device, templates=templates,
                               label_map=lmap) for m in models)
    check_known(list(scorers.values()), sorted(set(data.labels)))
    skipped: list[str] = []
    result = evaluate(read_pixels(data.paths, skipped), data.labels, scorers, data.label_set,
                      transforms=transforms, grids=grids, seed=seed)
    return {"input": str(input_dir), "source": data.source, **result, "unreadable": skipped}
