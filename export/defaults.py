"""The export stage's defaults that the command line shows without loading torch."""

from __future__ import annotations

TEMPLATE_SETS: tuple[str, ...] = ("simple", "openai", "photo")  # zero-shot prompt templates
DEFAULT_TEMPLATES = "simple"
