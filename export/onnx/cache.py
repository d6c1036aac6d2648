"""The cache of validated exports of registry models (one per model, labels, precision and
interface), built once on demand; what ``build_verifiers`` verifies with."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ... import __version__
from ..files import cache_root
from ..zoo import DEFAULT_TEMPLATES, LabelMap, create_classifier, parse_name
from .export import export_classifier
from .manifest import MANIFEST, load_manifest
from .spec import ExportSpec


def default_cache_dir() -> Path:
    """Where validated exports are kept (under :func:`~advx.export.files.cache_root`)."""
    return cache_root() / "exports"


def cache_key(name: str, labels: Sequence[str], templates: str, spec: ExportSpec,
              label_map: LabelMap | None = None) -> str:
    ref = parse_name(name)
    local = ref.local_path
    fingerprint = None
    if local is not None and local.exists():
        st = local.stat()
        fingerprint = [str(local.resolve()), st.st_size, st.st_mtime_ns]
    lmap = sorted((k, list(v)) for k, v in (label_map or {}).items())
    # the interface joins the key only where it is not the default, so default keys stay stable
    io = list(spec.io_names) if spec.io_names != ExportSpec().io_names else []
    blob = json.dumps([ref.name, list(labels), spec.precision, templates, spec.opset, fingerprint,
                       __version__, torch.__version__] + ([lmap] if lmap else [])
                      + ([io] if io else []))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export_cached(name: str, labels: Sequence[str], *, precision: str | None = None,
                  templates: str = DEFAULT_TEMPLATES, cache_dir: str | Path | None = None,
                  label_map: LabelMap | None = None, spec: ExportSpec | None = None) -> Path:
    """The directory of a validated export of (model, labels, precision), built once;
    ``precision``, where given, must agree with ``spec`` (default: ``ExportSpec()``)."""
    if spec is None:
        spec = ExportSpec(precision=precision or "fp32")
    elif precision is not None and precision != spec.precision:
        raise ValueError(f"precision={precision!r} contradicts spec.precision={spec.precision!r}")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]
    final = root / f"{slug}-{spec.precision}-{cache_key(name, labels, templates, spec, label_map)}"
    if (final / MANIFEST).exists():
        try:
            load_manifest(final)
            return final
        except Exception:
            shutil.rmtree(final, ignore_errors=True)  # corrupt or tampered: rebuild
    root.mkdir(parents=True, exist_ok=True)
    clf = create_classifier(name, labels, templates=templates, label_map=label_map)
    # the pid in the name lets remove_stale_exports tell a killed export from a running one
    work = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=root))
    try:
        export_classifier(clf, work, spec)
        with contextlib.suppress(OSError):  # another process won the race: use its export
            os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def remove_stale_exports(cache_dir: str | Path | None = None, *,
                         older_than_s: float = 24 * 3600.0) -> int:
    """Delete the ``.export-*`` folders an export killed mid-way leaves in the cache: those of a
    process of this machine that is no longer running (its pid is in the name), and any older
    than ``older_than_s`` (another machine's). Returns how many were removed."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    removed = 0
    for d in root.glob(".export-*") if root.is_dir() else ():
        m = re.match(r"\.export-(\d+)-", d.name)
        try:
            stale = time.time() - d.stat().st_mtime > older_than_s
        except OSError:
            continue
        if m and not stale:
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                stale = True
            except OSError:  # it exists (another user's): not ours to judge
                pass
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed += not d.exists()
    return removed
