"""Where the engine runs: the device a config names, the autocast type of its surrogate passes,
and telling a device's out-of-memory error from the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import HardenConfig


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def amp_dtype(config: HardenConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if config.amp == "fp16" else torch.bfloat16


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory (the batch should shrink)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


__all__ = ["amp_dtype", "is_oom", "resolve_device"]
