"""Throughput of the engine: verification, attack steps and end-to-end hardening.

Each measurement is prepared once (models built, ONNX exported, inputs on the device), then
timed with ``time.perf_counter`` around runs that start and end with the device idle (CUDA is
synchronised at both ends). ``advx bench`` prints the rows; ``benchmarks/`` times the same
workloads under pytest-benchmark. Model names ending in ``/none`` are random-init: speed does not
depend on the weights, and such rows say nothing about how well anything is fooled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch
from torch import nn

from .api import resolve_device
from .zoo import CAPTCHA_LABEL_MAP, ImageClassifier, create_classifier, parse_name

if TYPE_CHECKING:
    from .config import HardenConfig

# Image-tower GFLOPs per 224 px image, from open_clip's model profile (2 FLOPs per multiply-add).
GFLOPS_PER_IMAGE: dict[str, float] = {"ViT-B-32": 8.8, "RN50": 12.2, "ViT-B-16": 35.1}
# An attack step is one forward and one backward pass: about three forwards.
STEP_FLOPS_PER_FORWARD = 3.0
# Dense bf16 tensor-core peak in TFLOP/s, by a pattern of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH200\b", 989.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\b(SXM|HBM3)\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bL4\b", 121.0),
    (r"\bRTX 4090\b", 165.0),
)

OPEN_CLIP_TOWERS = ("open_clip:ViT-B-32/none", "open_clip:ViT-B-16/none", "open_clip:RN50/none")
CPU_MODEL = "effnet-lite0"
GPU_BACKENDS = ("onnx-fp16", "torch-fp32", "torch-autocast-fp16")
CPU_BACKENDS = ("onnx-fp32", "torch-fp32")
VERIFY_BACKENDS = ("onnx-fp16", "onnx-fp32", "torch-fp32", "torch-autocast-fp16")
ATTACK_IMPLS = ("advx", "torchattacks")
SUITES = ("verify", "attack", "e2e")
# held-out verifiers of the end-to-end run: not members of any default ensemble. On CUDA the
# EfficientNet-Lite2 is timm's random-init one (same graph as effnet-lite2, no weights package)
GPU_E2E_VERIFIERS = ("open_clip:ViT-B-32-quickgelu/none", "timm:tf_efficientnet_lite2/none")
CPU_E2E_SURROGATES = ("effnet-lite0", "effnet-lite1")
CPU_E2E_VERIFIERS = ("effnet-lite2", "open_clip:ViT-B-32-quickgelu/none")
TEMPLATES = "photo"  # one prompt per label: the head costs the same with any template set


class BenchUnavailable(RuntimeError):
    """A measurement that cannot run here (a missing package or execution provider)."""


@dataclass(frozen=True)
class BenchRow:
    """One measured figure."""

    name: str  # "verify" | "attack" | "e2e"
    backend: str  # verify: VERIFY_BACKENDS; attack: ATTACK_IMPLS; e2e: "hardener"
    model: str  # model name, or the "+"-joined surrogate ensemble
    batch: int  # images per call (e2e: the hardener's batch size)
    precision: str  # e.g. "fp32", "fp16", "bf16 autocast"
    device: str  # "cpu" | "cuda"
    hardware: str  # CPU model or GPU name
    seconds: float  # median seconds per timed run (e2e: the whole run)
    runs: int  # timed runs behind the median
    images_per_s: float | None = None  # verification and e2e
    image_steps_per_s: float | None = None  # attack and e2e
    gflops_per_item: float | None = None  # per image (verify) or image-step (attack)
    flop_fraction: float | None = None  # achieved FLOP/s over the GPU's dense bf16 peak
    fractions: dict[str, float] = field(default_factory=dict)  # e2e: share of wall time
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Case:
    """One row to measure: the parameters of a prepare_* function."""

    name: str  # "verify" | "attack" | "e2e"
    models: tuple[str, ...]  # the verified model, or the surrogate ensemble
    batch: int
    backend: str  # a VERIFY_BACKENDS / ATTACK_IMPLS entry, or "hardener"
    device: str  # "cpu" | "cuda"
    steps: int = 0  # attack and e2e
    images: int = 0  # e2e
    verifiers: tuple[str, ...] = ()  # e2e

    def __str__(self) -> str:
        models = "+".join(short_name(m) for m in self.models)
        extra = f"-s{self.steps}" if self.steps else ""
        extra += f"-n{self.images}" if self.images else ""
        return f"{self.name}-{models}-{self.backend}-b{self.batch}{extra}-{self.device}"


@dataclass(frozen=True)
class SuiteSizes:
    """How big the runs of a suite are."""

    batch_sizes: tuple[int, ...]  # verification batches
    attack_batch: int  # images per attack call
    attack_steps: int  # steps per attack call
    e2e_images: int  # images hardened end to end
    e2e_steps: int  # step limit of the end-to-end run
    e2e_batches: tuple[int, ...]  # hardener batch sizes
    warmup: int  # untimed runs before the timed ones
    iters: int  # timed runs (the median is reported); e2e runs once after its warm-up


GPU_SIZES = SuiteSizes((1, 32, 256), 128, 10, 1000, 50, (16, 128), 3, 10)
CPU_SIZES = SuiteSizes((1, 8), 2, 2, 8, 5, (8,), 1, 5)
QUICK_SIZES = SuiteSizes((1,), 1, 1, 2, 1, (2,), 0, 1)


def default_sizes(device: str, quick: bool = False) -> SuiteSizes:
    return QUICK_SIZES if quick else GPU_SIZES if device == "cuda" else CPU_SIZES


def default_models(device: str) -> tuple[str, ...]:
    return OPEN_CLIP_TOWERS if device == "cuda" else (CPU_MODEL,)


def default_verifiers(device: str) -> tuple[str, ...]:
    return GPU_E2E_VERIFIERS if device == "cuda" else CPU_E2E_VERIFIERS


def short_name(model: str) -> str:
    """``open_clip:ViT-B-16/none`` -> ``ViT-B-16``; other names unchanged."""
    return model.removeprefix("open_clip:").removesuffix("/none")


# --- hardware and FLOPs ------------------------------------------------------------------------


def peak_bf16_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its torch name; None when the GPU is not in the table."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return tflops
    return None


def flop_fraction(gflops_per_item: float | None, items_per_s: float | None,
                  peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s as a fraction of the peak; None when any input is unknown."""
    if gflops_per_item is None or items_per_s is None or not peak_tflops:
        return None
    return gflops_per_item * 1e9 * items_per_s / (peak_tflops * 1e12)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    import platform

    return platform.processor() or platform.machine()


def _peak(device: torch.device) -> float | None:
    return peak_bf16_tflops(hardware_name(device)) if device.type == "cuda" else None


def count_gflops(clf: ImageClassifier) -> float:
    """Forward GFLOPs of one image at the input size, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(clf.parameters()).device
    x = torch.rand(1, 3, clf.input_size, clf.input_size, device=dev)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused inference path is not counted
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            clf.core(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 1e9


def gflops_per_image(name: str, clf: ImageClassifier | None = None) -> float | None:
    """The table's figure for open_clip towers; otherwise counted on ``clf`` (None without)."""
    ref = parse_name(name)
    if ref.backend == "open_clip":
        arch = ref.arch.removesuffix("-quickgelu")  # an activation: the same FLOPs
        if arch in GFLOPS_PER_IMAGE:
            return GFLOPS_PER_IMAGE[arch]
    return count_gflops(clf) if clf is not None else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- models built once per run -----------------------------------------------------------------


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


# --- one prepared workload ---------------------------------------------------------------------


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
        _sync(work.device)
        t0 = time.perf_counter()
        work.run()
        _sync(work.device)
        times.append(time.perf_counter() - t0)
    return work.row(statistics.median(times), iters)


def _measured(prepare: Callable[[ModelCache], Workload], cache: ModelCache | None,
              warmup: int, iters: int) -> BenchRow:
    """Prepare and measure with ``cache``, or with a cache of its own that is closed after."""
    if cache is not None:
        return measure(prepare(cache), warmup=warmup, iters=iters)
    with ModelCache() as own:
        return measure(prepare(own), warmup=warmup, iters=iters)


def _rate_row(name: str, backend: str, model: str, batch: int, precision: str,
              device: torch.device, items: int, unit: str, gflops: float | None,
              notes: str) -> Callable[[float, int], BenchRow]:
    hw, peak = hardware_name(device), _peak(device)

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


def _images(n: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g).to(device)


# --- verification ------------------------------------------------------------------------------


def prepare_verification(model_name: str, batch: int, backend: str, device: str = "auto", *,
                         cache: ModelCache, n_labels: int = 20, seed: int = 0) -> Workload:
    """Score ``batch`` images with one backend; logits end on the CPU for every backend (the
    verifier's contract). Images are on the device already and sized so that the resize is a
    crop at most, which both torch and ONNX paths do in torch."""
    if backend not in VERIFY_BACKENDS:
        raise ValueError(f"backend must be one of {VERIFY_BACKENDS}, got {backend!r}")
    dev = resolve_device(device)
    clf = cache.classifier(model_name, n_labels, dev)
    images = _images(batch, clf.resize.short, dev, seed)
    if backend.startswith("onnx"):
        precision = backend.removeprefix("onnx-")
        verifier = cache.verifier(model_name, n_labels, precision, dev)

        def run() -> torch.Tensor:
            return verifier(images)

        notes = "onnxruntime, IO binding" if dev.type == "cuda" else "onnxruntime"
    else:
        amp = backend == "torch-autocast-fp16"
        precision = "fp16 autocast" if amp else "fp32"

        def run() -> torch.Tensor:
            with torch.inference_mode(), (torch.autocast(dev.type, dtype=torch.float16) if amp
                                          else contextlib.nullcontext()):
                return clf(images).cpu()

        notes = "open_clip eager" if parse_name(model_name).backend == "open_clip" else "eager"
    gflops = cache.gflops(model_name, clf) if dev.type == "cuda" else None
    return Workload(run, _rate_row("verify", backend, model_name, batch, precision, dev, batch,
                                   "images", gflops, notes), dev)


def verification_throughput(model_name: str, batch: int, backend: str, device: str = "auto", *,
                            n_labels: int = 20, warmup: int = 2, iters: int = 5,
                            cache: ModelCache | None = None) -> BenchRow:
    """Images/s of one verification backend on one model at one batch size."""
    return _measured(lambda c: prepare_verification(model_name, batch, backend, device,
                                                    n_labels=n_labels, cache=c),
                     cache, warmup, iters)


# --- attack ------------------------------------------------------------------------------------


class MeanLogits(nn.Module):
    """The plain wrapper torchattacks drives: the mean of the members' logits, in fp32.

    Built in eval mode: torchattacks puts the model back into the mode it found it in, and a
    fresh module is in training mode (BatchNorm would then use batch statistics afterwards).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images).float() for m in self.members]).mean(0)


def make_attack(models: Sequence[nn.Module], impl: str, *, steps: int, device: torch.device,
                eps: float = 8 / 255, alpha: float = 2 / 255
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """L-inf PGD with random start over ``models``: advx's (ensemble with per-model gradient
    normalisation, bf16 autocast on CUDA) or torchattacks' (cross-entropy on the mean logits,
    fp32). Returns ``attack(images, labels) -> adversarial images``."""
    if impl == "advx":
        from .attacks import PGD
        from .ensemble import Ensemble

        amp = torch.bfloat16 if device.type == "cuda" else None
        return PGD(Ensemble(list(models)), eps=eps, alpha=alpha, steps=steps, random_start=True,
                   amp_dtype=amp)
    if impl == "torchattacks":
        try:
            import torchattacks
        except ImportError as e:
            raise BenchUnavailable("torchattacks is not installed: pip install torchattacks") from e
        return torchattacks.PGD(MeanLogits(models), eps=eps, alpha=alpha, steps=steps,
                                random_start=True)
    raise ValueError(f"impl must be one of {ATTACK_IMPLS}, got {impl!r}")


def prepare_attack(models: Sequence[str], batch: int, steps: int, impl: str,
                   device: str = "auto", *, cache: ModelCache, n_labels: int = 20,
                   seed: int = 0) -> Workload:
    """``steps`` PGD steps on ``batch`` images against the ensemble of ``models``."""
    dev = resolve_device(device)
    clfs = [cache.classifier(m, n_labels, dev) for m in models]
    attack = make_attack(clfs, impl, steps=steps, device=dev)
    images = _images(batch, max(c.resize.short for c in clfs), dev, seed)
    labels = torch.randint(n_labels, (batch,), generator=torch.Generator().manual_seed(seed))
    labels = labels.to(dev)

    def run() -> torch.Tensor:
        return attack(images, labels)

    gflops = None
    if dev.type == "cuda":
        per = [cache.gflops(m, c) for m, c in zip(models, clfs, strict=True)]
        gflops = STEP_FLOPS_PER_FORWARD * sum(per) if None not in per else None
    if impl == "advx":
        precision = "bf16 autocast" if dev.type == "cuda" else "fp32"
        notes = "margin loss, per-model gradient normalisation"
    else:
        precision, notes = "fp32", "cross-entropy on mean logits"
    return Workload(run, _rate_row("attack", impl, "+".join(models), batch, precision, dev,
                                   batch * steps, "image-steps", gflops,
                                   f"steps {steps}, eps 8/255, alpha 2/255; {notes}"), dev)


def attack_throughput(models: Sequence[str], batch: int, steps: int, impl: str,
                      device: str = "auto", *, n_labels: int = 20, warmup: int = 1,
                      iters: int = 3, cache: ModelCache | None = None) -> BenchRow:
    """Image-steps/s of advx's or torchattacks' PGD on the ensemble of ``models``."""
    return _measured(lambda c: prepare_attack(models, batch, steps, impl, device,
                                              n_labels=n_labels, cache=c),
                     cache, warmup, iters)


# --- end to end --------------------------------------------------------------------------------


class PhaseClock:
    """Wall seconds per phase, CUDA-synchronised at each boundary (so that queued GPU work is
    charged to the phase that launched it, not to the next one that waits for it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.items.clear()

    @contextlib.contextmanager
    def phase(self, name: str, items: int = 0) -> Iterator[None]:
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.items[name] = self.items.get(name, 0) + items

    def wrap(self, name: str, fn: Callable, items: Callable[..., int] | None = None) -> Callable:
        def timed(*args, **kwargs):
            with self.phase(name, items(*args, **kwargs) if items else 0):
                return fn(*args, **kwargs)

        return timed


def _write_images(root: Path, n: int, size: int, seed: int) -> list[Path]:
    """PNG tiles with smooth structure plus noise (compress like photos, not like pure noise)."""
    from .io import encode_image

    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        low = torch.rand(1, 3, 8, 8, generator=g)
        smooth = nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                           align_corners=False)
        x = (0.85 * smooth + 0.15 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)
        pixels = x[0].mul(255).round().byte().permute(1, 2, 0).numpy()
        paths.append(root / f"{i:05d}.png")
        paths[-1].write_bytes(encode_image(pixels, "png"))
    return paths


def prepare_end_to_end(n_images: int, surrogates: Sequence[str], verifiers: Sequence[str],
                       steps: int, device: str = "auto", *, cache: ModelCache,
                       batch_size: int = 16, image_size: int = 224, n_labels: int = 20,
                       config: HardenConfig | None = None, seed: int = 0) -> Workload:
    """Load ``n_images`` PNG tiles from disk and harden them with :class:`Hardener`.

    Every image runs all ``steps`` (the fooling margin is set out of reach: random-init models
    measure speed, not fooling), so the figure is the worst case of the step limit. The run is
    warmed up on up to one batch (an eighth of the images at most). ``config`` (a
    :class:`HardenConfig`) defaults to the engine's defaults.
    """
    from .api import Hardener
    from .config import HardenConfig
    from .io import load_image

    dev = resolve_device(device)
    labels = bench_labels(n_labels)
    cfg = dataclasses.replace(config or HardenConfig(), steps=steps, device=str(dev),
                              margin=math.inf, batch_size=batch_size, seed=seed)
    # models from the cache: built once per run, ONNX verifiers checked to be on CUDA there
    onnx_precision = "fp16" if dev.type == "cuda" else "fp32"  # as Hardener would export them
    scorers = [cache.verifier(v, n_labels, onnx_precision, dev) for v in verifiers]
    hardener = Hardener(labels, surrogates=[cache.classifier(m, n_labels, dev) for m in surrogates],
                        verifiers=scorers, config=cfg, templates=TEMPLATES)
    on = ", ".join(f"{short_name(v.name)} (onnx {onnx_precision}, {v.device})" for v in scorers)
    clock = PhaseClock(dev)
    # Scheduler.time does not synchronise CUDA, so it charges queued attack work to verify:
    # time the same two methods here, synchronised.
    sched = hardener.scheduler
    sched.attack_steps = clock.wrap("attack", sched.attack_steps)
    sched.verify = clock.wrap("verify", sched.verify, items=lambda q, *_, **__: len(q))
    root = cache.workdir / f"e2e-{n_images}-{image_size}-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    paths = sorted(root.glob("*.png")) or _write_images(root, n_images, image_size, seed)
    g = torch.Generator().manual_seed(seed)
    tile_labels = [labels[int(i)] for i in torch.randint(n_labels, (n_images,), generator=g)]
    last: dict[str, float] = {}

    def run() -> None:
        clock.reset()
        _sync(dev)
        t0 = time.perf_counter()
        with clock.phase("load", len(paths)):
            pixels = [load_image(p).pixels for p in paths]
        results = hardener.run(pixels, tile_labels)
        _sync(dev)
        last.clear()
        last.update(total=time.perf_counter() - t0, steps=sum(r.steps for r in results),
                    fooled=sum(r.fooled for r in results))

    n_warm = min(batch_size, max(1, n_images // 8))  # one batch on a GPU-sized run
    hardener.run([load_image(p).pixels for p in paths[:n_warm]], tile_labels[:n_warm])

    peak = _peak(dev)
    sur: list[float | None] = []
    ver: list[float | None] = []
    if peak is not None:
        sur = [cache.gflops(m, cache.classifier(m, n_labels, dev)) for m in surrogates]
        ver = [cache.gflops(v, cache.classifier(v, n_labels, dev)) for v in verifiers]
    hw = hardware_name(dev)
    amp = sched.attack.amp_dtype
    precision = f"{'bf16 autocast' if amp is not None else 'fp32'} + onnx {onnx_precision}"

    def row(seconds: float, runs: int) -> BenchRow:
        total = last["total"]
        phases = {k: clock.seconds.get(k, 0.0) for k in ("attack", "verify", "load")}
        fractions = {k: v / total for k, v in phases.items()}
        fractions["other"] = max(0.0, 1.0 - sum(fractions.values()))
        frac = None
        if peak is not None and None not in sur and None not in ver:
            flops = (last["steps"] * hardener.config.eot_samples * STEP_FLOPS_PER_FORWARD * sum(sur)
                     + clock.items.get("verify", 0) * len(sched.views) * sum(ver)) * 1e9
            frac = flops / total / (peak * 1e12)
        return BenchRow(
            name="e2e", backend="hardener", model="+".join(surrogates), batch=batch_size,
            precision=precision, device=dev.type, hardware=hw, seconds=seconds, runs=runs,
            images_per_s=n_images / seconds, image_steps_per_s=last["steps"] / seconds,
            flop_fraction=frac, fractions=fractions,
            notes=(f"{n_images} PNG tiles {image_size}px, {cfg.attack} {steps} steps max, all "
                   f"steps run; verifiers {on}; {int(last['fooled'])} fooled"),
        )

    return Workload(run, row, dev)


def end_to_end(n_images: int, surrogates: Sequence[str], verifiers: Sequence[str], steps: int,
               device: str = "auto", *, batch_size: int = 16, image_size: int = 224,
               n_labels: int = 20, config: HardenConfig | None = None,
               cache: ModelCache | None = None) -> BenchRow:
    """Seconds to load and harden ``n_images``, and the shares of attack, verification, data
    loading and the rest (scheduling, surrogate predictions, metrics: GPU idle)."""
    return _measured(lambda c: prepare_end_to_end(n_images, surrogates, verifiers, steps, device,
                                                  batch_size=batch_size, image_size=image_size,
                                                  n_labels=n_labels, config=config, cache=c),
                     cache, warmup=0, iters=1)


# --- suites ------------------------------------------------------------------------------------


def verify_cases(device: str, models: Sequence[str] | None = None,
                 sizes: SuiteSizes | None = None) -> list[Case]:
    """Every model x batch x backend on ``device``; on CUDA with the default models, also the
    EfficientNet-Lite fp32 ONNX-vs-torch rows on the CPU."""
    sizes = sizes or default_sizes(device)
    backends = GPU_BACKENDS if device == "cuda" else CPU_BACKENDS
    cases = [Case("verify", (m,), b, backend, device) for m in models or default_models(device)
             for b in sizes.batch_sizes for backend in backends]
    if device == "cuda" and models is None:
        cases += [Case("verify", (CPU_MODEL,), b, backend, "cpu")
                  for b in CPU_SIZES.batch_sizes for backend in CPU_BACKENDS]
    return cases


def attack_cases(device: str, models: Sequence[str] | None = None,
                 sizes: SuiteSizes | None = None) -> list[Case]:
    """The ensemble of ``models`` with both implementations; on CUDA also each member alone
    (the FLOP fraction of one surrogate)."""
    sizes = sizes or default_sizes(device)
    models = tuple(models or default_models(device))
    groups = [models] + ([(m,) for m in models] if device == "cuda" and len(models) > 1 else [])
    return [Case("attack", g, sizes.attack_batch, impl, device, steps=sizes.attack_steps)
            for g in groups for impl in ATTACK_IMPLS]


def e2e_cases(device: str, surrogates: Sequence[str] | None = None,
              verifiers: Sequence[str] | None = None, sizes: SuiteSizes | None = None
              ) -> list[Case]:
    sizes = sizes or default_sizes(device)
    if surrogates is None:
        surrogates = OPEN_CLIP_TOWERS if device == "cuda" else CPU_E2E_SURROGATES
    return [Case("e2e", tuple(surrogates), b, "hardener", device, steps=sizes.e2e_steps,
                 images=sizes.e2e_images, verifiers=tuple(verifiers or default_verifiers(device)))
            for b in sizes.e2e_batches]


def prepare_case(case: Case, cache: ModelCache) -> Workload:
    if case.name == "verify":
        return prepare_verification(case.models[0], case.batch, case.backend, case.device,
                                    cache=cache)
    if case.name == "attack":
        return prepare_attack(case.models, case.batch, case.steps, case.backend, case.device,
                              cache=cache)
    if case.name == "e2e":
        return prepare_end_to_end(case.images, case.models, case.verifiers, case.steps,
                                  case.device, batch_size=case.batch, cache=cache)
    raise ValueError(f"unknown suite {case.name!r}; choose one of {SUITES}")


def rounds(case: Case, sizes: SuiteSizes) -> tuple[int, int]:
    """(untimed, timed) runs of a case: an attack call is long, an e2e run is one run."""
    if case.name == "e2e":
        return 0, 1
    if case.name == "attack":
        return min(1, sizes.warmup), min(3, sizes.iters)
    return sizes.warmup, sizes.iters


def run_cases(cases: Sequence[Case], sizes: SuiteSizes, cache: ModelCache,
              on_row: Callable[[BenchRow], None] | None = None,
              on_skip: Callable[[Case, str], None] | None = None) -> list[BenchRow]:
    """Measure each case; cases that cannot run here are reported to ``on_skip``."""
    rows = []
    for case in cases:
        try:
            warmup, iters = rounds(case, sizes)
            row = measure(prepare_case(case, cache), warmup=warmup, iters=iters)
        except BenchUnavailable as e:
            if on_skip is not None:
                on_skip(case, str(e))
            continue
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# --- the table ---------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: Sequence[BenchRow]) -> str:
    """Aligned plain-text table of the rows (rates, seconds, share of the bf16 peak)."""
    head = ("suite", "model", "backend", "precision", "batch", "device", "img/s", "img-step/s",
            "s/run", "% bf16 peak", "notes")
    lines = [head]
    for r in rows:
        note = r.notes
        if r.fractions:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r.fractions.items())
            note = f"{shares}; {note}"
        lines.append((
            r.name, "+".join(short_name(m) for m in r.model.split("+")), r.backend, r.precision,
            str(r.batch), r.device, _fmt(r.images_per_s, ",.1f"),
            _fmt(r.image_steps_per_s, ",.1f"), _fmt(r.seconds, ".4g"),
            _fmt(None if r.flop_fraction is None else 100 * r.flop_fraction, ".1f"), note,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = []
    for line in lines:
        cells = [c.rjust(w) if i in (4, 6, 7, 8, 9) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    hardware = sorted({f"{r.device}: {r.hardware}" for r in rows})
    return "\n".join([*out, "", *hardware])
