"""The hardware limit: what a row's FLOPs are and what share of the GPU's peak they reach."""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path

import torch

from ..export.zoo import ImageClassifier, parse_name

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
    return platform.processor() or platform.machine()


def device_peak(device: torch.device) -> float | None:
    """The bf16 peak of ``device`` in TFLOP/s: None on the CPU and on GPUs not in the table."""
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
