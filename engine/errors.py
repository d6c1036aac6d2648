"""Errors shared by the library's runs (torch-free, so the CLI can import them cheaply)."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


class DatasetError(ValueError):
    """The input folder or labels CSV is unusable; the message says where and why."""


class NotAllowed(ValueError):
    """A request asks for options the service does not allow (its allow-list)."""
