"""The ``text`` task: text captchas against OCR solvers (:mod:`.task`; its models in
:mod:`.models`, CTC losses in :mod:`.losses`, the stroke mask in :mod:`.mask`, the captcha
drawer in :mod:`.draw`, reading a set of captchas in :mod:`.evaluate`, its report in
:mod:`.report`)."""

from __future__ import annotations

from .task import DEFAULT_SOLVERS, TEXT, TextResult, TextTask

__all__ = ["DEFAULT_SOLVERS", "TEXT", "TextResult", "TextTask"]
