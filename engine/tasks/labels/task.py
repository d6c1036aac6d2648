"""The ``labels`` task: image tiles of a grid challenge, each with its label, against
classifiers over a label set. A verifier is fooled on a tile when, by its own decision rule, it
no longer answers the tile's label (with a decoy: when it answers the decoy). Torch-free; the
models are in :mod:`.models`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import NotAllowed, RunError
from ...rows import Row
from ..base import Task, register_task
from .result import LabelResult


class LabelsTask(Task):
    name = "labels"
    truth = "label"
    noun = "tile"
    preset = "solver"
    options = ("label_set", "label_map", "templates", "decoy", "surrogate_weights")
    request_fields = ("label_set",)
    needs = ("label_set",)
    columns = "path,label"
    about = ("image tiles, each with its label (INPUT/<label>/... or a path,label CSV), "
             "against classifiers over a label set")

    def read_rows(self, input_dir: Path, labels_csv: Path | None) -> list[Row]:
        from .dataset import discover

        return discover(input_dir, labels_csv)

    def plan_run(self, truths: Sequence[Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The label set (--label-set, else the sorted labels seen: one label alone is a binary
        challenge against the built-in negatives), the label map loaded, the decoy checked."""
        from ....export.zoo import load_label_map
        from .models import default_label_set  # torch: loaded by runs only

        out = dict(options)
        out["label_map"] = load_label_map(options.get("label_map"))
        given = options.get("label_set")
        if given:
            unknown = sorted(set(truths) - set(given))
            if unknown:
                raise RunError(f"labels {unknown} of the input are not in --label-set "
                               f"{','.join(given)}")
            out["label_set"] = tuple(given)
        else:
            out["label_set"] = default_label_set(list(truths), out["label_map"])
        decoy, label_set = options.get("decoy"), out["label_set"]
        if decoy is not None and decoy not in label_set:
            raise RunError(f"--decoy {decoy!r} is not in the label set "
                           f"({', '.join(label_set[:12])}{', ...' if len(label_set) > 12 else ''})")
        return out

    def run_info(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The label map's entries, so that ``advx eval`` of the outputs needs no path."""
        lmap = options.get("label_map")
        if lmap is None:
            return {}
        return {"label_map_entries": json.loads(Path(lmap).read_text(encoding="utf-8"))}

    def targets(self, truths: Sequence[Any], options: Mapping[str, Any]) -> list | None:
        decoy = options.get("decoy")
        if decoy is None:
            return None
        return [None if y == decoy else decoy for y in truths]

    def request_options(self, truth: Any, fields: Mapping[str, Any], defaults: Mapping[str, Any],
                        allowed: Sequence | None = None) -> dict[str, Any]:
        """The request's label set (``label_set``: a comma list or a sequence; default the
        service's), in one spelling: order does not matter (the default set's own order when
        it is the same set, else sorted), so that every ordering of a set shares its models."""
        default = tuple(defaults.get("label_set") or ())
        given = fields.get("label_set")
        if isinstance(given, str):
            given = [p.strip() for p in given.split(",") if p.strip()]
        if not given and not default:
            raise ValueError("this server has no default label set (it was started without "
                             "--label-set): send label_set with the request")
        if not given:
            label_set = default
        else:
            given = [str(x) for x in given]
            if len(set(given)) != len(given):
                raise ValueError(f"duplicate labels in the label set ({', '.join(given[:20])})")
            label_set = default if set(given) == set(default) else tuple(sorted(given))
            sets = None if allowed is None else {frozenset(a) for a in [default, *allowed] if a}
            if sets is not None and frozenset(label_set) not in sets:
                raise NotAllowed(f"label set ({', '.join(label_set[:20])}) is not allowed on "
                                 f"this server")
        if truth not in label_set:
            raise ValueError(f"label {truth!r} is not in the label set "
                             f"({', '.join(label_set[:20])})")
        return {"label_set": label_set}

    def default_models(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        from ...defaults import DEFAULT_SURROGATES, DEFAULT_VERIFIERS

        return DEFAULT_SURROGATES, DEFAULT_VERIFIERS

    def load(self, surrogates, verifiers, *, config, device, **options):
        from .models import LabelModels

        options.pop("decoy", None)
        label_set = options.pop("label_set", None)
        if label_set is None:
            raise ValueError("the labels task needs a label_set")
        return LabelModels(label_set, surrogates, verifiers, device=device, **options)

    def load_scorers(self, names, *, device, **options):
        from .evaluate import load_scorers

        return load_scorers(names, device=device, **options), []

    def trainee(self, name, *, device, **options):
        from .adapt import label_trainee

        return label_trainee(name, device=device, **options)

    def answers(self, scorers, images, views, truths):
        from .evaluate import answers

        return answers(scorers, images, views)

    def right(self, answer: Any, truth: Any, scorer: str) -> bool:
        return truth in answer

    def summary(self, records: Sequence[dict]) -> dict[str, Any]:
        from .report import per_model

        return {"per_model": per_model(records)}

    def view_figures(self, rows: Sequence[dict], verifier: str, view: str) -> dict[str, Any]:
        from .report import grid_rates

        return grid_rates(rows, verifier, view)

    def eval_figures(self, rows: Sequence[dict], scorer: Any) -> dict[str, Any]:
        from .report import eval_grid_rate

        return eval_grid_rate(rows)

    def headline_rows(self, view: Mapping[str, Any]) -> list[tuple[str, str]]:
        from ...folder.html import pct

        if "grid_solve_rate_before" not in view:
            return []
        return [("3x3 grids solved", f"{pct(view.get('grid_solve_rate_before'))} -> "
                                     f"{pct(view.get('grid_solve_rate_after'))}")]

    def write_demo(self, input_dir: Path, echo, per_photo: int = 2) -> None:
        """Tiles cut from the sample photos (``per_photo`` crops each)."""
        from .demo import write_demo_input

        n = write_demo_input(input_dir, per_photo, echo)
        echo(f"wrote {n} tiles to {input_dir}")

    def report_gallery(self, out_dir: Path, input_root: Path, records: Sequence[dict]
                       ) -> list[str]:
        from .report import GALLERY_HEAD, gallery_row

        return [GALLERY_HEAD, *(gallery_row(out_dir, input_root, r) for r in records),
                "</table>"]

    def summary_lines(self, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Per model: tiles it selects for their label, 3x3 grids solved, before -> after."""
        from ...folder.html import pct

        return [(m, f"selects its tile {pct(v.get('select_rate_before'))} -> "
                    f"{pct(v.get('select_rate_after'))}, grid solve rate "
                    f"{pct(v.get('grid_solve_rate_before'))} -> "
                    f"{pct(v.get('grid_solve_rate_after'))}")
                for m, v in (summary.get("per_model") or {}).items()]

    def report_sections(self, summary: Mapping[str, Any]) -> list[str]:
        from .report import per_model_table

        return [per_model_table(summary.get("per_model") or {})]


LABELS = register_task(LabelsTask())

__all__ = ["LABELS", "LabelResult", "LabelsTask"]
