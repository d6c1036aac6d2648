"""What the benchmark measures: the suites' cases and sizes, and the rows that come out (plain
data: nothing here builds a model or touches a device)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

OPEN_CLIP_TOWERS = ("open_clip:ViT-B-32/none", "open_clip:ViT-B-16/none", "open_clip:RN50/none")
# the same architectures from timm (ImageNet heads), for machines without open_clip
TIMM_TOWERS = ("timm:vit_base_patch32_224/none", "timm:vit_base_patch16_224/none",
               "timm:resnet50/none")
TORCH_BACKENDS = ("torch-fp32", "torch-autocast-fp16")  # verification backends without ONNX
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


# --- suites ------------------------------------------------------------------------------------


def verify_cases(device: str, models: Sequence[str] | None = None,
                 sizes: SuiteSizes | None = None, backends: Sequence[str] | None = None
                 ) -> list[Case]:
    """Every model x batch x backend on ``device`` (``backends``: those of the device's suite
    by default); on CUDA with the default models, also the EfficientNet-Lite fp32
    ONNX-vs-torch rows on the CPU."""
    sizes = sizes or default_sizes(device)
    if backends is None:
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


def rounds(case: Case, sizes: SuiteSizes) -> tuple[int, int]:
    """(untimed, timed) runs of a case: an attack call is long, an e2e run is one run."""
    if case.name == "e2e":
        return 0, 1
    if case.name == "attack":
        return min(1, sizes.warmup), min(3, sizes.iters)
    return sizes.warmup, sizes.iters
