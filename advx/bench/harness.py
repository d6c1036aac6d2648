"""The harness every suite shares: models built once per run, prepared workloads and their timing.

Each measurement is prepared once (models built, ONNX exported, inputs on the device), then
timed with ``time.perf_counter`` around runs that start and end with the device idle (CUDA is
synchronised at both ends).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch

from ..export.zoo import CAPTCHA_LABEL_MAP, ImageClassifier, create_classifier
from .cases import BenchRow, BenchUnavailable
from .flops import device_peak, flop_fraction, gflops_per_image, hardware_name

TEMPLATES = "photo"  # one prompt per label: the head costs the same with any template set


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_labels(n: int) -> tuple[str, ...]:
    """The first ``n`` CAPTCHA labels (every backend can score them)."""
    labels = tuple(CAPTCHA_LABEL_MAP)
    if not 2 <= n <= len(labels):
        raise ValueError(f"n_labels must be in [2, {len(labels)}], got {n}")
    return labels[:n]


class ModelCache:
    """Classifiers, ONNX exports and sessions built once and shared by the rows of a run.

    A random-init model differs at every build, so the torch and ONNX rows of one model must
    share one classifier: the export is made from it.
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="advx-bench-")
        self._classifiers: dict[tuple, ImageClassifier] = {}
        self._verifiers: dict[tuple, object] = {}
        self._gflops: dict[str, float | None] = {}

    def classifier(self, name: str, n_labels: int, device: torch.device) -> ImageClassifier:
        key = (name, n_labels, str(device))
        if key not in self._classifiers:
            self._classifiers[key] = create_classifier(
                name, bench_labels(n_labels), templates=TEMPLATES, device=str(device))
        return self._classifiers[key]

    def verifier(self, name: str, n_labels: int, precision: str, device: torch.device):
        """An :class:`OnnxVerifier` of the cached classifier, exported at ``precision``."""
        from ..export import ExportSpec, OnnxVerifier, export_classifier

        key = (name, n_labels, precision, str(device))
        if key not in self._verifiers:
            out = self.workdir / f"{len(self._verifiers)}-{precision}"
            clf = self.classifier(name, n_labels, device)
            export_classifier(clf, out, ExportSpec(precision=precision))
            try:  # on CUDA the verifier refuses a session that fell back to the CPU
                self._verifiers[key] = OnnxVerifier(out, device=device.type)
            except RuntimeError as e:
                raise BenchUnavailable(f"{name}: {e}") from e
        return self._verifiers[key]

    def gflops(self, name: str, clf: ImageClassifier | None = None) -> float | None:
        """Forward GFLOPs per image: the table's, else counted (on a CPU build if no ``clf``)."""
        if name not in self._gflops:
            if clf is None and gflops_per_image(name) is None:
                clf = self.classifier(name, 20, torch.device("cpu"))
            self._gflops[name] = gflops_per_image(name, clf)
        return self._gflops[name]

    @property
    def workdir(self) -> Path:
        """A temporary folder removed by :meth:`close`."""
        return Path(self._tmp.name)

    def close(self) -> None:
        self._classifiers.clear()
        self._verifiers.clear()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Workload:
    """A prepared measurement: ``run()`` does one unit of work and returns with the device idle;
    ``row(median_seconds, runs)`` turns the timing into a :class:`BenchRow`."""

    run: Callable[[], object]
    row: Callable[[float, int], BenchRow]
    device: torch.device


def measure(work: Workload, *, warmup: int = 2, iters: int = 5) -> BenchRow:
    """Run ``warmup`` untimed then ``iters`` timed runs; the row has the median."""
    for _ in range(warmup):
        work.run()
    times = []
    for _ in range(iters):
        sync(work.device)
        t0 = time.perf_counter()
        work.run()
        sync(work.device)
        times.append(time.perf_counter() - t0)
    return work.row(statistics.median(times), iters)


def measured(prepare: Callable[[ModelCache], Workload], cache: ModelCache | None,
             warmup: int, iters: int) -> BenchRow:
    """Prepare and measure with ``cache``, or with a cache of its own that is closed after."""
    if cache is not None:
        return measure(prepare(cache), warmup=warmup, iters=iters)
    with ModelCache() as own:
        return measure(prepare(own), warmup=warmup, iters=iters)


def rate_row(name: str, backend: str, model: str, batch: int, precision: str,
             device: torch.device, items: int, unit: str, gflops: float | None,
             notes: str) -> Callable[[float, int], BenchRow]:
    """The ``row`` of a workload that does ``items`` images (or image-steps, by ``unit``)."""
    hw, peak = hardware_name(device), device_peak(device)

    def row(seconds: float, runs: int) -> BenchRow:
        rate = items / seconds
        return BenchRow(
            name=name, backend=backend, model=model, batch=batch, precision=precision,
            device=device.type, hardware=hw, seconds=seconds, runs=runs,
            images_per_s=rate if unit == "images" else None,
            image_steps_per_s=rate if unit == "image-steps" else None,
            gflops_per_item=gflops, flop_fraction=flop_fraction(gflops, rate, peak), notes=notes,
        )

    return row


def random_images(n: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g).to(device)
