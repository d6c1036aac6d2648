"""Verification throughput (images/s): advx's ONNX verifier against open_clip eager fp32 and
torch autocast fp16 on the same model (ViT-B-32, ViT-B-16, RN50 towers, 20-label zero-shot head)
at batch 1, 32 and 256; and fp32 ONNX against torch on the CPU with EfficientNet-Lite0."""

from __future__ import annotations

from advx import bench

# on CUDA: every tower x batch x GPU backend, plus effnet-lite0 on the CPU
GPU_CASES = bench.verify_cases("cuda")
# no CUDA: effnet-lite0 at batch 1 and 8, and each tower at batch 1, fp32 ONNX against torch
CPU_CASES = bench.verify_cases("cpu") + [
    bench.Case("verify", (m,), 1, backend, "cpu")
    for m in bench.OPEN_CLIP_TOWERS for backend in bench.CPU_BACKENDS
]


def test_verify(case: bench.Case, run_case) -> None:
    row = run_case(case)
    assert row is None or row.images_per_s > 0
