"""Export a classifier to one self-contained ONNX graph and check it against torch."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..defaults import DEFAULT_TEMPLATES
from ..files import sha256_file
from ..zoo import LabelMap, create_classifier, is_solver_name
from ..zoo.model import ImageClassifier
from .manifest import MANIFEST, MODEL_FILE, Manifest, Parity
from .runtime import check_interface, make_session
from .spec import ExportError, ExportSpec, ParityError


def parity_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A seeded batch of structured images (smooth gradients, blobs and noise) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                             align_corners=False)
    noise = torch.rand(n, 3, size, size, generator=g)
    return (0.8 * smooth + 0.2 * noise).clamp(0, 1)


def check_parity(clf: ImageClassifier, onnx_path: Path, spec: ExportSpec,
                 images: torch.Tensor | None = None) -> Parity:
    """Score one batch with torch (float32) and onnxruntime; raise ParityError past tolerance."""
    x = clf.resize(images) if images is not None else parity_images(spec.parity_batch,
                                                                      clf.input_size)
    with torch.no_grad():
        ref = clf.core.float()(x.to(next(clf.parameters()).device)).cpu().numpy()
    session = make_session(onnx_path, spec.precision)
    check_interface(session, *spec.io_names, onnx_path, error=ExportError)
    got = session.run([spec.output_name], {spec.input_name: x.cpu().numpy()})[0]
    diff = np.abs(got - ref)
    tol = spec.tolerance
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    over = diff > tol.atol + tol.rtol * np.abs(ref)
    top_ref, top_got = ref.argmax(1), got.argmax(1)
    srt = np.sort(ref, axis=1)
    gap = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    decisive = gap > tol.gap
    flips = int(((top_ref != top_got) & decisive).sum())
    parity = Parity(
        max_abs_diff=float(diff.max()), top1_agreement=float((top_ref == top_got).mean()),
        n=len(ref), decisive=int(decisive.sum()), decisive_flips=flips,
    )
    if over.any() or flips:
        detail = f"{flips} decisive top-1 flips" if flips else ""
        raise ParityError(clf.name, spec.precision, parity.max_abs_diff,
                          (int(worst[0]), int(worst[1])), tol.atol, tol.rtol, detail)
    return parity


def export_classifier(clf: ImageClassifier, out_dir: str | Path, spec: ExportSpec | None = None,
                      *, images: torch.Tensor | None = None) -> Manifest:
    """Write ``model.onnx`` and ``manifest.json`` to ``out_dir``; every export is validated."""
    import onnx

    spec = spec or ExportSpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    core = copy.deepcopy(clf.core).cpu().float().eval()
    if spec.precision == "fp16":
        core.visual.half()
    onnx_path = out_dir / MODEL_FILE
    tmp = out_dir / f".{MODEL_FILE}.tmp"
    dummy = parity_images(2, clf.input_size, seed=1)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention's inference fast path has no ONNX symbolic
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                core, (dummy,), str(tmp), dynamo=False, opset_version=spec.opset,
                input_names=[spec.input_name], output_names=[spec.output_name],
                dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exporting {clf.name} ({spec.precision}) failed: {e}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        parity = check_parity(clf, tmp, spec, images)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, onnx_path)
    pre = clf.preprocess_cfg
    manifest = Manifest(
        source_model=clf.name, labels=clf.labels, templates=clf.templates,
        precision=spec.precision, opset=spec.opset, input_name=spec.input_name,
        output_name=spec.output_name, batch_axis=spec.batch_axis, input_size=pre.size,
        mean=pre.mean, std=pre.std, interpolation=pre.interpolation, crop_pct=pre.crop_pct,
        sha256=sha256_file(onnx_path), parity=parity,
    )
    manifest.write(out_dir / MANIFEST)
    return manifest


def export_model(model: str, labels: Sequence[str], out_dir: str | Path,
                 spec: ExportSpec | None = None, *, templates: str = DEFAULT_TEMPLATES,
                 label_map: LabelMap | None = None) -> Manifest:
    """Export registry model ``model`` as a classifier over ``labels`` to ``out_dir``
    (``model.onnx`` and ``manifest.json``), validated like every export. A foreign solver
    (``onnx:SPEC.json``) is refused: it is an ONNX graph already."""
    if ":" in model and is_solver_name(model):
        raise ExportError(f"{model} is already an ONNX graph: name it directly in "
                          f"--verifiers / advx eval --models")
    return export_classifier(create_classifier(model, labels, templates=templates,
                                               label_map=label_map), out_dir, spec)
