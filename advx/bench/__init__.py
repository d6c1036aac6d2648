"""Throughput of the engine: verification, attack steps and end-to-end hardening.

Each measurement is prepared once (models built, ONNX exported, inputs on the device), then
timed with ``time.perf_counter`` around runs that start and end with the device idle (CUDA is
synchronised at both ends). ``advx bench`` prints the rows; ``benchmarks/`` times the same
workloads under pytest-benchmark. Model names ending in ``/none`` are random-init: speed does not
depend on the weights, and such rows say nothing about how well anything is fooled.

Modules: :mod:`.cases` (suites, sizes, rows), :mod:`.flops` (FLOPs and the GPU's
peak), :mod:`.harness` (model cache, workloads, timing), :mod:`.throughput` (verification and
attack), :mod:`.e2e` (end to end, phases from ``Scheduler.time``), :mod:`.run` (a suite's
cases measured in turn), :mod:`.report` (the table).
"""

from __future__ import annotations

from .cases import (
    ATTACK_IMPLS,
    CPU_BACKENDS,
    CPU_E2E_SURROGATES,
    CPU_E2E_VERIFIERS,
    CPU_MODEL,
    CPU_SIZES,
    GPU_BACKENDS,
    GPU_E2E_VERIFIERS,
    GPU_SIZES,
    OPEN_CLIP_TOWERS,
    QUICK_SIZES,
    SUITES,
    TIMM_TOWERS,
    TORCH_BACKENDS,
    VERIFY_BACKENDS,
    BenchRow,
    BenchUnavailable,
    Case,
    SuiteSizes,
    attack_cases,
    default_models,
    default_sizes,
    default_verifiers,
    e2e_cases,
    rounds,
    short_name,
    verify_cases,
)
from .e2e import end_to_end, prepare_end_to_end, verifier_forwards
from .flops import (
    GFLOPS_PER_IMAGE,
    PEAK_BF16_TFLOPS,
    STEP_FLOPS_PER_FORWARD,
    count_gflops,
    flop_fraction,
    gflops_per_image,
    hardware_name,
    peak_bf16_tflops,
)
from .harness import ModelCache, Workload, bench_labels, measure
from .report import format_table
from .run import prepare_case, run_cases
from .throughput import (
    MeanLogits,
    attack_throughput,
    make_attack,
    prepare_attack,
    prepare_verification,
    verification_throughput,
)

__all__ = [
    "ATTACK_IMPLS", "CPU_BACKENDS", "CPU_E2E_SURROGATES", "CPU_E2E_VERIFIERS", "CPU_MODEL",
    "CPU_SIZES", "GFLOPS_PER_IMAGE", "GPU_BACKENDS", "GPU_E2E_VERIFIERS", "GPU_SIZES",
    "OPEN_CLIP_TOWERS", "PEAK_BF16_TFLOPS", "QUICK_SIZES", "STEP_FLOPS_PER_FORWARD", "SUITES",
    "TIMM_TOWERS", "TORCH_BACKENDS", "VERIFY_BACKENDS", "BenchRow", "BenchUnavailable", "Case",
    "MeanLogits", "ModelCache", "SuiteSizes", "Workload", "attack_cases", "attack_throughput",
    "bench_labels", "count_gflops", "default_models", "default_sizes", "default_verifiers",
    "e2e_cases", "end_to_end", "flop_fraction", "format_table", "gflops_per_image",
    "hardware_name", "make_attack", "measure", "peak_bf16_tflops", "prepare_attack",
    "prepare_case", "prepare_end_to_end", "prepare_verification", "rounds", "run_cases",
    "short_name", "verification_throughput", "verifier_forwards", "verify_cases",
]
