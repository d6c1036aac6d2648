"""The manifest written beside every exported ONNX classifier, and its integrity check."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..files import sha256_file, write_text_atomic
from .spec import ManifestError

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Parity:
    """How the ONNX export scored against the float32 torch model on the parity batch."""

    max_abs_diff: float  # max |onnx - torch| over all logits
    top1_agreement: float  # fraction of samples with the same top-1
    n: int  # samples in the parity batch
    decisive: int  # samples whose torch top-1 - top-2 gap was decisive
    decisive_flips: int  # decisive samples whose top-1 changed (0 for a valid export)


@dataclass(frozen=True)
class Manifest:
    source_model: str
    labels: tuple[str, ...]
    templates: str | None  # zero-shot prompt template set, None for closed-set classifiers
    precision: str
    opset: int
    input_name: str  # the graph's image input, [batch_axis, 3, input_size, input_size]
    output_name: str  # the graph's logits output, [batch_axis, len(labels)]
    input_size: int  # images enter at [N, 3, input_size, input_size], float32 in [0, 1]
    mean: tuple[float, ...]  # normalisation, applied inside the graph
    std: tuple[float, ...]
    interpolation: str  # resize applied before the graph (by the verifier)
    crop_pct: float
    sha256: str  # of model.onnx
    parity: Parity
    batch_axis: str = "batch"  # the dynamic batch dimension
    normalization: str = "in-graph"
    format_version: int = FORMAT_VERSION

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        try:
            d = dict(d)
            d["parity"] = Parity(**d["parity"])
            for key in ("labels", "mean", "std"):
                d[key] = tuple(d[key])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ManifestError(f"malformed manifest: {e}") from e


def load_manifest(path: str | Path) -> Manifest:
    """Read an export's manifest (from its directory or file) and check the ONNX file's sha256."""
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    if not mpath.is_file():
        raise ManifestError(f"no {MANIFEST} at {path}: is this an `advx export` directory?")
    try:
        manifest = Manifest.from_dict(json.loads(mpath.read_text()))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mpath}: not valid JSON ({e})") from e
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(f"{mpath}: format version {manifest.format_version} is not supported")
    model = mpath.parent / MODEL_FILE
    if not model.is_file():
        raise ManifestError(f"{model} is missing")
    digest = sha256_file(model)
    if digest != manifest.sha256:
        raise ManifestError(
            f"{model}: sha256 {digest[:16]}… does not match the manifest ({manifest.sha256[:16]}…);"
            f" the file was changed after export. Re-export it with `advx export`."
        )
    return manifest
