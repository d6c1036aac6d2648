"""End to end: load PNG tiles from disk and harden them with the surrogate ensemble and two
held-out ONNX verifiers, every image taking all the steps (50 on CUDA); seconds in total and the
shares of attack steps, verification, data loading and the rest (the GPU idle)."""

from __future__ import annotations

from advx import bench

# on CUDA: 1,000 tiles, ViT-B-32 + ViT-B-16 + RN50, 50 steps, hardener batch 16 and 128
GPU_CASES = bench.e2e_cases("cuda")
# no CUDA: 8 tiles, effnet-lite0 + effnet-lite1, 5 steps
CPU_CASES = bench.e2e_cases("cpu")


def test_e2e(case: bench.Case, run_case) -> None:
    row = run_case(case)
    if row is not None:
        assert row.seconds > 0
        assert abs(sum(row.fractions.values()) - 1) < 1e-6
