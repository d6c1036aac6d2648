"""Attack throughput (image-steps/s): advx's PGD on the ViT-B-32 + ViT-B-16 + RN50 surrogate
ensemble against torchattacks' PGD driving the same models through a plain mean-logits wrapper,
at equal steps, eps (8/255) and alpha (2/255); on CUDA also each surrogate alone."""

from __future__ import annotations

from advx import bench

GPU_CASES = bench.attack_cases("cuda")
# no CUDA: the three-tower ensemble at batch 1 for one step, and effnet-lite0 alone
CPU_CASES = [
    bench.Case("attack", bench.OPEN_CLIP_TOWERS, 1, impl, "cpu", steps=1)
    for impl in bench.ATTACK_IMPLS
] + bench.attack_cases("cpu")


def test_attack(case: bench.Case, run_case) -> None:
    row = run_case(case)
    assert row is None or row.image_steps_per_s > 0
