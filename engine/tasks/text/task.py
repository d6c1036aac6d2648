"""The ``text`` task: text CAPTCHAs, each with the text it shows, against OCR solvers, fooled
when their reading differs from the truth. Torch-free; the models are in :mod:`.models`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import RunError
from ..base import Task, register_task
from .result import DEFAULT_SOLVERS, DEMO_CAPTCHAS, TextResult


class TextTask(Task):
    name = "text"
    truth = "text"
    noun = "captcha"
    preset = "text"
    # the readings are those of the delivered file: a captcha is hardened at its own size
    rescale = False
    columns = "path,text"
    about = "text captchas, each with the text it shows (a path,text CSV), against OCR solvers"

    def parse_truth(self, raw: str) -> str:
        """Verbatim: a form field with spaces around the text is refused, not mended."""
        return raw

    def default_models(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Every built-in OCR solver whose files are installed, as both."""
        return DEFAULT_SOLVERS, DEFAULT_SOLVERS

    def load(self, surrogates, verifiers, *, config, device, **options):
        from .models import TextModels

        return TextModels(surrogates, verifiers, device=device)

    def load_scorers(self, names, *, device, **options):
        from .models import load_text_solvers

        solvers, gone = load_text_solvers(names)
        return ([s.verifier(device="cuda" if str(device).startswith("cuda") else "cpu")
                 for s in solvers], [f"{n}: {why}" for n, why in gone.items()])

    def trainee(self, name, *, device, **options):
        from .adapt import text_trainee

        return text_trainee(name, device=device)

    def eval_problem(self, scorers: Sequence, truth: Any) -> str | None:
        """Why ``truth`` cannot be read by these scorers (``advx eval``)."""
        from ....export.solver.charset import truth_problem

        return truth_problem(truth, [s.charset for s in scorers])

    def answers(self, scorers, images, views, truths):
        from .evaluate import read_views

        return read_views(scorers, images, views)

    def right(self, answer: Any, truth: Any, scorer: Any) -> bool:
        return scorer.charset.same(answer, truth)

    def plan(self, config, white_box: bool):
        """Text surrogates are CTC heads over a captcha's columns: one EOT draw per step, no
        input diversity (its random resize and pad moves the glyphs the alignment reads) and
        no skip gradients (converted graphs have no residual blocks to scale)."""
        from dataclasses import replace

        return replace(config.plan(white_box), diversity_prob=0.0, eot_samples=1,
                       skip_gamma=None)

    def view_figures(self, rows: Sequence[dict], verifier: str, view: str) -> dict[str, Any]:
        from ...folder.records import finite_mean

        return {"mean_cer": finite_mean((r.get("cer_after") or {}).get(verifier, {}).get(view)
                                        for r in rows)}

    def eval_figures(self, rows: Sequence[dict], scorer: Any) -> dict[str, Any]:
        """The mean character error rate (edit distance / truth length, under the solver's
        case rule) as given and, with the originals, clean."""
        from .losses import edit_distance

        key = scorer.charset.key
        out = {}
        for field, name in (("answer", "cer"), ("clean", "cer_clean")):
            got = [edit_distance(key(r[field]), key(r["truth"])) / len(r["truth"])
                   for r in rows if field in r]
            if got:
                out[name] = sum(got) / len(got)
        return out

    def headline_rows(self, view: Mapping[str, Any]) -> list[tuple[str, str]]:
        cer = view.get("mean_cer")
        return [("mean CER", "-" if cer is None else f"{cer:.2f}")]

    def write_demo(self, input_dir: Path, echo) -> Path:
        """Captchas drawn with the captcha package's font (``pip install 'advx[samples]'``)."""
        try:
            from .draw import write_captcha_folder

            labels = write_captcha_folder(input_dir, DEMO_CAPTCHAS, seed=0)
        except ImportError as e:  # the captcha package draws the glyphs
            raise RunError(str(e)) from e
        echo(f"wrote {DEMO_CAPTCHAS} captchas and {labels.name} to {input_dir}")
        return labels

    def report_gallery(self, out_dir: Path, input_root: Path, records: Sequence[dict]
                       ) -> list[str]:
        from .report import GALLERY_HEAD, captcha_html

        return [GALLERY_HEAD, *(captcha_html(out_dir, input_root, r) for r in records)]


TEXT = register_task(TextTask())

__all__ = ["DEFAULT_SOLVERS", "TEXT", "TextResult", "TextTask"]
