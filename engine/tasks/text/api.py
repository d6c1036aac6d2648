"""``advx.harden_text``: harden text CAPTCHAs against the OCR solvers that read them.

The built-in OCR solvers (``ddddocr``, ``ddddocr-beta``, ``captcha-whisperer``,
``ppocr-v4-rec``; see :mod:`advx.export.zoo.ocr`) or ``onnx:SPEC.json`` specs with a ``ctc``
output are attacked through their torch twins (the CTC loss of the truth) and verified by their
own graphs in onnxruntime, reading exactly as their packages do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ....export.solver.charset import CharsetError, truth_problem
from ....export.zoo.registry import ModelUnavailableError
from ...api import ImageLike, amp_dtype, batch_seed, resolve_device, to_tensor
from ...attacks import ATTACKS
from ...config import HardenConfig, Plan
from ...results import TextResult
from ...views.view import eot_of
from .scheduler import TextEnsemble, TextScheduler

log = logging.getLogger(__name__)

DEFAULT_TEXT_SOLVERS = ("ddddocr", "ddddocr-beta", "captcha-whisperer", "ppocr-v4-rec")
TEXT_PRESET = "text"


def text_config(**overrides) -> HardenConfig:
    """The defaults of a text run (the ``text`` view preset), with ``overrides``."""
    return replace(HardenConfig(transforms=TEXT_PRESET), **overrides)


def load_text_solver(name):
    """A built-in OCR solver by name, an ``onnx:SPEC.json`` spec with a ``ctc`` output, or a
    TextSolver as given."""
    from ....export.solver.model import load_solver
    from ....export.solver.text import TextSolver
    from ....export.zoo import parse_name
    from ....export.zoo.ocr import TEXT_ENTRIES, text_solver

    if isinstance(name, TextSolver):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a text solver is a name or a TextSolver, got {type(name).__name__}")
    if name in TEXT_ENTRIES:
        return text_solver(name)
    if name.startswith("onnx:"):
        solver = load_solver(parse_name(name).arch)
        if not isinstance(solver, TextSolver):
            raise ValueError(f"{name} reads labels, not text: its spec has no \"ctc\" output")
        return solver
    raise ValueError(f"{name!r} is not a text solver; the built-in ones are "
                     f"{', '.join(TEXT_ENTRIES)} (or give onnx:SPEC.json with a ctc output)")


def load_text_solvers(names: Sequence | None = None) -> tuple[list, dict[str, str]]:
    """The solvers ``names``, all of which must load; by default (None) every built-in OCR
    solver whose files are installed, and for each other one why it is left out (logged as a
    warning saying how to get it)."""
    if names:
        return [load_text_solver(n) for n in names], {}
    out, left_out = [], {}
    for n in DEFAULT_TEXT_SOLVERS:
        try:
            out.append(load_text_solver(n))
        except ModelUnavailableError as e:
            log.warning("warning: %s left out: %s", n, e)
            left_out[n] = str(e)
    return out, left_out


class TextHardener:
    """Solvers loaded and converted once, then ``run`` on as many batches as needed. See
    :func:`harden_text` for the arguments."""

    def __init__(self, *, surrogates: Sequence | None = None, verifiers: Sequence | None = None,
                 config: HardenConfig | None = None) -> None:
        self.config = config = config or text_config()
        if config.targeted:
            raise ValueError("text runs are untargeted: a solver is fooled when its reading "
                             "differs from the truth")
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        surrogates, gone = load_text_solvers(surrogates)
        verifiers, gone_v = load_text_solvers(verifiers)
        self.left_out = {**gone, **gone_v}  # default solvers whose files are absent: why
        if not verifiers:
            raise ValueError(f"no text solver to verify with: none of "
                             f"{', '.join(DEFAULT_TEXT_SOLVERS)} could be loaded")
        self.notes: list[str] = []
        models = []
        for s in surrogates:
            try:
                models.append(s.text_model().to(self.device))
            except Exception as e:  # no torch twin (unconverted op, parity): it verifies only
                log.warning("warning: %s has no gradient path (%s); it verifies only", s.name, e)
                self.notes.append(f"{s.name}: verifier only ({str(e)[:200]})")
                if s.name not in {v.name for v in verifiers}:
                    verifiers.append(s)
        if not models:
            raise ValueError("no surrogate left to attack: none of the solvers converts to "
                             "torch")
        self.surrogates = models
        self.solvers = {s.name: s for s in [*surrogates, *verifiers]}
        self.verifiers = [v.verifier(device=self.device.type) for v in verifiers]
        names = {m.name for m in models}
        self.white_box = all(v.name in names for v in self.verifiers)
        plan = Plan.of(config, self.white_box)
        attack = ATTACKS[plan.attack](
            TextEnsemble(models), eps_01=config.eps_01, alpha_01=config.alpha_01,
            steps=config.steps, eot=eot_of(config.transforms, 1),
            amp_dtype=amp_dtype(config, self.device), generator=self.generator)
        self.scheduler = TextScheduler(attack, self.verifiers, config, self.device,
                                       relax_mask=plan.relax_mask)

    @property
    def solver_names(self) -> dict[str, list[str]]:
        return {"surrogates": [m.name for m in self.surrogates],
                "verifiers": [v.name for v in self.verifiers]}

    def check_text(self, text: object) -> str | None:
        """Why ``text`` cannot be a captcha's truth for these solvers (None: it can)."""
        return truth_problem(text, [s.charset for s in self.solvers.values()])

    def run(self, images: Sequence[ImageLike], texts: Sequence[str],
            on_result: Callable[[TextResult], None] | None = None,
            should_stop: Callable[[int], bool] | None = None) -> list[TextResult | None]:
        texts = list(texts)
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        for t in texts:
            why = self.check_text(t)
            if why:
                raise CharsetError(why)
        tensors = [to_tensor(im) for im in images]
        small = [tuple(t.shape[-2:]) for t in tensors if min(t.shape[-2:]) < 8]
        if small:
            raise ValueError(f"images of {small[0][1]}x{small[0][0]} px are too small to "
                             f"read; a captcha needs at least 8 px on each side")
        self.generator.manual_seed(batch_seed(self.config.seed, tensors, texts, None))
        return self.scheduler.run(tensors, texts, on_result, should_stop)


def harden_text(images: Sequence[ImageLike], texts: Sequence[str], *,
                surrogates: Sequence | None = None, verifiers: Sequence | None = None,
                config: HardenConfig | None = None,
                on_result: Callable[[TextResult], None] | None = None) -> list[TextResult]:
    """Perturb text CAPTCHAs so that OCR solvers misread them.

    Args:
        images: uint8 HxWx3 arrays, PIL images or [3, H, W] float tensors in [0, 1].
        texts: the text each captcha shows (its truth), in every solver's charset.
        surrogates: OCR solvers attacked with gradients (names, ``onnx:SPEC.json`` or
            TextSolvers); default every built-in solver whose files are installed.
        verifiers: OCR solvers a captcha must fool (run exactly as their packages do); default
            the same as the surrogates' default.
        config: budget and schedule (default :func:`text_config`: the ``text`` view preset).
        on_result: called with each result as soon as its captcha is finished.

    Returns:
        One :class:`TextResult` per captcha, in input order: each verifier's reading under
        each view, the character error rates, fooled under the deciding views.
    """
    hardener = TextHardener(surrogates=surrogates, verifiers=verifiers, config=config)
    return hardener.run(images, texts, on_result)


__all__ = ["DEFAULT_TEXT_SOLVERS", "TEXT_PRESET", "TextHardener", "harden_text",
           "load_text_solver", "load_text_solvers", "text_config"]
