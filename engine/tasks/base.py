"""The task seam: what a kind of challenge declares, and the registry of them.

One scheduler (:mod:`advx.engine.schedule`), one API (:mod:`advx.engine.api`), one folder run
and report (:mod:`advx.engine.folder`), one eval (:mod:`advx.engine.evaluate`) and one service
(:mod:`advx.engine.serve`) drive every task. A task declares only what differs:

- how an item's truth is read (a CSV column, a form field: :attr:`Task.truth`) and checked;
- its models (:meth:`Task.load`, torch; a :class:`Models`): how each model's target is encoded,
  the loss its surrogates are attacked with, its perceptual mask, and (a
  :class:`Verification`) the answer each verifier gives under each view and when it is fooled;
- its view preset, its record fields (its result class) and its report row.

This module is torch-free, as is each task's declaration: ``advx --help`` lists the tasks
without loading torch; a task's models load in :meth:`Task.load`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import DatasetError, RunError
from ..rows import Row, read_csv_rows

if TYPE_CHECKING:
    import torch

    from ..config import HardenConfig
    from ..results import HardenResult
    from ..views.view import View

TASKS: dict[str, Task] = {}
LABELS_CSV = "labels.csv"  # a task's labels CSV in the input folder, when --labels names none


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under its name; a name already taken is refused."""
    if not task.name or not task.truth:
        raise ValueError(f"{type(task).__name__} needs a name and a truth field")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered "
                         f"({type(TASKS[task.name]).__name__})")
    TASKS[task.name] = task
    return task


def get_task(task: str | Task) -> Task:
    """A registered task by name (a Task is returned as given)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


@dataclass
class Verdict:
    """One verification pass over a batch of candidates."""

    # [N] bool: every verifier fooled under each of its deciding views, by the required margin
    done: torch.Tensor
    # [N] how close each candidate is (higher: closer): the best candidate of an unbeaten item
    # is the one scoring highest, and an item whose score stops rising leaves
    score: torch.Tensor
    detail: Any = None  # what the task reads back when it builds results


class Verification(Protocol):
    """A task's verification under one schedule's views (what the scheduler calls)."""

    # a score must rise by more than this to count as progress
    progress_tol: float

    def admit(self, delivered: torch.Tensor, clean: torch.Tensor, y: torch.Tensor,
              t: torch.Tensor) -> Verdict:
        """The clean items as delivered (already fooled ones leave at once)."""

    def before(self, verdict: Verdict, row: int) -> Any:
        """What an item's result needs of its admission."""

    def lazy(self, delivered: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> Verdict:
        """Between attack steps: only the deciding views, each only where it may still
        change the verdict."""

    def final(self, delivered: torch.Tensor, originals: torch.Tensor, y: torch.Tensor,
              t: torch.Tensor) -> Verdict:
        """Every view, on exactly what is delivered (and, where the task needs them, the
        originals)."""

    def result(self, slot: Any, reason: str, row: int, verdict: Verdict,
               figures: Mapping[str, float]) -> HardenResult:
        """The result of ``slot``'s item, row ``row`` of ``verdict`` (a :meth:`final` pass)."""


class Models(Protocol):
    """A task's models for hardening (built once; a schedule is cheap on top)."""

    surrogates: list  # attacked with gradients (nn.Modules, each with a ``name``)
    verifiers: list  # must be fooled (each with a ``name``)
    notes: list[str]  # what loading them decided (e.g. a solver that only verifies)
    left_out: dict[str, str]  # default models that could not be loaded: why

    def ensemble(self): ...  # an advx.engine.attacks.Ensemble whose loss is the task's

    def problem(self, truth: Any) -> str | None:
        """Why ``truth`` cannot be an item's truth for these models (None: it can)."""

    def encode(self, truths: Sequence[Any], targets: Sequence[Any] | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per item: what the attack and verification take (``y``), and a decoy (``t``, -1:
        none). Raises ValueError for truths or targets these models cannot take."""

    def mask(self, images: torch.Tensor, floor: float) -> torch.Tensor:
        """[N, 1, H, W]: the share of the budget each pixel may use."""

    def verification(self, views: Sequence[View], config: HardenConfig) -> Verification: ...

    def check_parity(self, images: Sequence[torch.Tensor]) -> list:
        """Surrogates whose gradients disagree with their own graph on these items (left out
        of the attack, kept as verifiers)."""


@dataclass
class Trainee:
    """A copy of a solver to fine-tune as its operator would (:mod:`advx.engine.adapt`)."""

    name: str  # the solver it is a copy of
    module: Any  # nn.Module: images [N, 3, H, W] in [0, 1] -> what ``loss`` takes
    loss: Any  # (module's output, truths) -> the mean training loss (cross-entropy, CTC)
    # (folder, example images, a display name) -> the model name it loads by (onnx:SPEC.json)
    save: Any
    flip: bool = False  # a horizontal flip leaves the truth as it is (ordinary augmentation)


class Task:
    """A kind of challenge (see the module docstring). A subclass sets the class attributes
    and fills the hooks; one instance is registered (:func:`register_task`)."""

    name: ClassVar[str] = ""
    truth: ClassVar[str] = ""  # an item's truth: its CSV column, form field and record key
    noun: ClassVar[str] = "image"  # one item, in messages and reports
    preset: ClassVar[str] = "none"  # the view preset of a run that names none
    # a large image may be attacked on a downscaled working copy (False: hardened at its own
    # size, and refused above the size limit, where the answer depends on every pixel)
    rescale: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ()  # the run options it takes beyond the common ones
    request_fields: ClassVar[tuple[str, ...]] = ()  # form fields of a service request
    needs: ClassVar[tuple[str, ...]] = ()  # the options a model set cannot be built without
    columns: ClassVar[str] = "path,truth"  # the labels CSV header, for --help
    about: ClassVar[str] = ""  # one line for --help

    # --- truths ---------------------------------------------------------------------------

    def read_rows(self, input_dir: Path, labels_csv: Path | None) -> list[Row]:
        """The items of a folder run or eval set. Raises
        :class:`~advx.engine.errors.DatasetError` for a folder or CSV that cannot be read; a
        bad row becomes a Row with a ``problem``."""
        labels_csv = labels_csv or input_dir / LABELS_CSV
        if not Path(labels_csv).is_file():
            raise DatasetError(f"labels file not found: {labels_csv}; a {self.name} run needs "
                               f"a CSV with a '{self.columns}' header (--labels)")
        return read_csv_rows(labels_csv, self.truth, self.parse_truth)

    def parse_truth(self, raw: str) -> Any:
        """A truth as a CSV cell (stripped already) or a form field gives it."""
        return raw.strip()

    def truth_text(self, truth: Any) -> str:
        """A truth as a CSV cell or a form field holds it (:meth:`parse_truth` reads it back)."""
        return str(truth)

    def plan_run(self, truths: Sequence[Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The options of a run over these truths, resolved (e.g. the label set they need);
        raises RunError for options that do not fit them."""
        return dict(options)

    def run_info(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What a run's summary keeps of its options beyond their values (compared on
        --resume)."""
        return {}

    def targets(self, truths: Sequence[Any], options: Mapping[str, Any]) -> list | None:
        """A decoy per item, or None for an untargeted run."""
        return None

    def request_options(self, truth: Any, fields: Mapping[str, Any], defaults: Mapping[str, Any],
                        allowed: Sequence | None = None) -> dict[str, Any]:
        """The model options of one service request (its form fields beside the truth; the
        service's ``defaults`` and the ``allowed`` values of what it may ask for). Raises
        ValueError for unusable ones, :class:`~advx.engine.errors.NotAllowed` for ones the
        service does not allow."""
        return {}

    # --- models (torch) -------------------------------------------------------------------

    def default_models(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(surrogates, verifiers) of a run that names none (torch-free, for --help)."""
        return (), ()

    def load(self, surrogates: Sequence | None, verifiers: Sequence | None, *,
             config: HardenConfig, device: torch.device, **options: Any) -> Models:
        """The models of a hardening run (None: the task's defaults)."""
        raise NotImplementedError

    def load_scorers(self, names: Sequence[str] | None, *, device: str,
                     **options: Any) -> tuple[list, list[str]]:
        """The models ``advx eval`` reads with (None: the task's defaults), and "name: why"
        for each default left out."""
        raise NotImplementedError

    def answers(self, scorers: Sequence, images: torch.Tensor, views: Sequence[View],
                truths: Sequence[Any]) -> dict[str, dict[str, list]]:
        """scorer -> view -> each image's answer (JSON-ready), for ``advx eval``."""
        raise NotImplementedError

    def right(self, answer: Any, truth: Any, scorer: Any) -> bool:
        """Whether ``answer`` (of ``scorer``) is the one the truth calls for."""
        raise NotImplementedError

    def eval_problem(self, scorers: Sequence, truth: Any) -> str | None:
        """Why ``advx eval`` cannot score an item of this truth with these scorers (None: it
        can)."""
        return None

    def trainee(self, name: str, *, device: torch.device, **options: Any) -> Trainee:
        """A fresh copy of solver ``name`` to retrain (options: the run's, as for
        :meth:`load_scorers`). Raises RunError where the task cannot retrain that solver."""
        raise RunError(f"the {self.name} task cannot retrain its solvers yet")

    def plan(self, config: HardenConfig, white_box: bool):
        """How a run attacks (an :class:`~advx.engine.config.Plan`)."""
        return config.plan(white_box)

    def write_demo(self, input_dir: Path, echo, **options: Any) -> Path | None:
        """``advx demo``: write sample inputs to ``input_dir``; returns their labels CSV (None:
        the task's folder layout). Raises RunError when the samples are not installed."""
        raise RunError(f"the {self.name} task has no demo")

    # --- records, summary, report (torch-free) --------------------------------------------

    def summary(self, records: Sequence[dict]) -> dict[str, Any]:
        """The task's own figures over a run's hardened records (beside the common ones)."""
        return {}

    def view_figures(self, rows: Sequence[dict], verifier: str, view: str) -> dict[str, Any]:
        """The task's own figures of one verifier and view over a run's hardened records
        (beside right clean / fooled)."""
        return {}

    def headline_rows(self, view: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Rows the report and the printed summary add under each verifier's per-view figures:
        (label, the figure of ``view``'s entry as text)."""
        return []

    def summary_lines(self, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The task's own lines of the printed summary: (label, text)."""
        return []

    def report_sections(self, summary: Mapping[str, Any]) -> list[str]:
        """The task's own sections of report.html, after the run's figures (HTML)."""
        return []

    def report_gallery(self, out_dir: Path, input_root: Path, records: Sequence[dict]
                       ) -> list[str]:
        """The hardened items in report.html (HTML)."""
        return [f"<p>{html.escape(r['path'])}: {html.escape(str(r.get(self.truth)))} "
                f"({html.escape(r['status'])})</p>" for r in records]

    def eval_figures(self, rows: Sequence[dict], scorer: Any) -> dict[str, Any]:
        """The task's own figures of one scorer and view in ``advx eval`` (``rows``: per item
        its ``truth``, ``answer`` and, with the originals, ``clean`` answer)."""
        return {}


__all__ = ["TASKS", "Models", "Task", "Trainee", "Verdict", "Verification", "get_task",
           "register_task"]
