"""One registry of models: the name grammar (:data:`GRAMMAR`), the register decorators and the
lookups. It imports no builder: :mod:`.backends` registers them, imported once by the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..solver import Solver, TextSolver
    from .model import Backbone

GRAMMAR = (
    "open_clip:ARCH[/WEIGHTS] | hf:REPO_OR_DIR | timm:ARCH[.TAG][/FILE] | onnx:SPEC.json | ALIAS "
    "(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k, hf:openai/clip-vit-base-patch32, "
    "timm:convnext_base.fb_in22k_ft_in1k, onnx:solver.json, effnet-lite0)"
)


class ModelNameError(ValueError):
    """A model name that does not parse or names nothing registered."""


class ModelUnavailableError(RuntimeError):
    """Weights could not be obtained (no internet, missing file, wrong checksum)."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name."""

    backend: str  # registered backend key, e.g. "open_clip"
    arch: str  # architecture (open_clip/timm) or repo id / directory (hf) or alias
    weights: str | None = None  # pretrained tag, local file, "none", or None for the default

    @property
    def name(self) -> str:
        if self.backend == "alias":
            return self.arch
        return f"{self.backend}:{self.arch}" + (f"/{self.weights}" if self.weights else "")

    @property
    def local_path(self) -> Path | None:
        """The local file or directory this ref loads from, if any."""
        cand = self.arch if self.backend in ("hf", "onnx") else self.weights
        if cand and (Path(cand).expanduser().exists() or _looks_like_path(cand)):
            return Path(cand).expanduser()
        return None


@dataclass(frozen=True)
class Entry:
    """A named zoo entry listed by ``advx models``."""

    name: str
    description: str
    offline: bool  # weights ship with the installed packages
    task: str = "image"  # "image" (labels) | "text" (OCR: reads strings) | "cells" (detects)


BuildFn = Callable[[ModelRef, str], "Backbone | Solver | TextSolver"]

_BACKENDS: dict[str, BuildFn] = {}
_ALIASES: dict[str, BuildFn] = {}
_ENTRIES: dict[str, Entry] = {}


def register_backend(key: str) -> Callable[[BuildFn], BuildFn]:
    """Register the builder of a backend (``open_clip``, ``hf``, ``timm``, ``onnx``)."""

    def deco(fn: BuildFn) -> BuildFn:
        if key in _BACKENDS:
            raise ValueError(f"backend {key!r} registered twice")
        _BACKENDS[key] = fn
        return fn

    return deco


def register_alias(name: str, description: str, *,
                   task: str = "image") -> Callable[[BuildFn], BuildFn]:
    """Register a named model with its own builder (e.g. the offline ``effnet-lite0``;
    ``task="text"`` for an OCR solver such as ``ddddocr``)."""

    def deco(fn: BuildFn) -> BuildFn:
        if name in _ALIASES or name in _ENTRIES:
            raise ValueError(f"model {name!r} registered twice")
        _ALIASES[name] = fn
        _ENTRIES[name] = Entry(name, description, offline=True, task=task)
        return fn

    return deco


def register_entry(name: str, description: str, *, task: str = "image") -> None:
    """List a backend name (with real weights from a hub) in ``advx models`` (``task``: the
    kind of challenge it solves, "cells" for a detector)."""
    if name in _ENTRIES:
        raise ValueError(f"model {name!r} registered twice")
    parse_name(name)
    _ENTRIES[name] = Entry(name, description, offline=False, task=task)


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )


def _require_backends() -> None:
    if not _BACKENDS:  # only if this file is loaded outside its package
        raise RuntimeError("no model backends are registered: import advx.export.zoo, which "
                           "registers them (advx.export.zoo.backends)")


def parse_name(name: str) -> ModelRef:
    """Parse a model name; raise ModelNameError that says how to fix a bad one."""
    _require_backends()
    name = name.strip()
    if not name:
        raise ModelNameError(f"empty model name; expected {GRAMMAR}")
    if name in _ALIASES:
        return ModelRef("alias", name)
    if ":" not in name:
        close = [a for a in _ALIASES if a.replace("-", "") in name.replace("-", "").lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelNameError(
            f"unknown model {name!r}: not a registered alias and no 'backend:' prefix.{hint} "
            f"Expected {GRAMMAR}; `advx models` lists the registered names."
        )
    backend, _, ref = name.partition(":")
    backend = backend.strip().lower().replace("-", "_")
    if backend == "openclip":
        backend = "open_clip"
    if backend not in _BACKENDS:
        raise ModelNameError(
            f"unknown backend {backend!r} in {name!r}; backends: {sorted(_BACKENDS)}. "
            f"Expected {GRAMMAR}"
        )
    if not ref:
        raise ModelNameError(f"{name!r} names no model after '{backend}:'; expected {GRAMMAR}")
    if backend in ("hf", "onnx"):  # a hub id / directory, or a spec file path
        return ModelRef(backend, ref)
    arch, sep, weights = ref.partition("/")
    if not arch or (sep and not weights):
        raise ModelNameError(f"{name!r}: expected {backend}:ARCH[/WEIGHTS]; {GRAMMAR}")
    return ModelRef(backend, arch, weights or None)


def build_backbone(ref: ModelRef, device: str = "cpu") -> Backbone | Solver:
    """Build what a parsed name refers to: a backbone (an image tower to put a head on) or a
    foreign solver (which brings its own preprocessing and answer)."""
    _require_backends()
    fn = _ALIASES[ref.arch] if ref.backend == "alias" else _BACKENDS[ref.backend]
    return fn(ref, device)


def list_entries(task: str | None = None) -> list[Entry]:
    """The named entries (of one ``task``: "image" or "text"), offline ones first."""
    _require_backends()
    return sorted((e for e in _ENTRIES.values() if task is None or e.task == task),
                  key=lambda e: (not e.offline, e.name))


def list_backends() -> list[str]:
    _require_backends()
    return sorted(_BACKENDS)
