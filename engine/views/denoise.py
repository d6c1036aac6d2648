"""Solver-side denoisers, as OpenCV-based solvers run them on the 8-bit image, and the
differentiable stand-ins that carry the attack's gradient through them (BPDA)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .nlm_jacobian import LinearizedNLM
from .transforms import BPDA, Identity


def to_uint8_bgr(x: torch.Tensor) -> list[np.ndarray]:
    """Images [N, 3, H, W] in [0, 1] -> 8-bit BGR frames, as OpenCV holds them."""
    arr = x.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a[..., ::-1]) for a in arr]


def from_bgr(frames: list[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    """8-bit BGR frames -> images [N, 3, H, W] in [0, 1] on ``like``'s device and dtype."""
    arr = np.stack([f[..., ::-1] for f in frames])
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(
        like.device, like.dtype) / 255


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of their threads


def per_frame(fn: Callable[[np.ndarray], np.ndarray], frames: list[np.ndarray]
              ) -> list[np.ndarray]:
    """``fn`` on each frame, in order, on as many threads as torch may use. OpenCV's filters
    release the GIL but barely parallelise one small tile inside one call."""
    workers = max(1, torch.get_num_threads())
    if workers == 1 or len(frames) < 2:
        return [fn(f) for f in frames]
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="advx-frames")
    return list(pool.map(fn, frames))


@dataclass(frozen=True)
class NonLocalMeans:
    """OpenCV's fastNlMeansDenoisingColored(img, None, h, h_color, template, search), on the
    8-bit BGR image as hcaptcha-challenger calls it (h 10, 7x7 patches, 21x21 search)."""

    h: float = 10.0
    h_color: float = 10.0
    template: int = 7
    search: int = 21

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        import cv2

        out = per_frame(lambda f: cv2.fastNlMeansDenoisingColored(
            f, None, self.h, self.h_color, self.template, self.search), to_uint8_bgr(x))
        return from_bgr(out, x)

    def __str__(self) -> str:
        return f"nlmeans{self.h:g}"


@dataclass(frozen=True)
class Median:
    """OpenCV's medianBlur on the 8-bit image."""

    k: int = 3

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        import cv2

        return from_bgr([cv2.medianBlur(f, self.k) for f in to_uint8_bgr(x)], x)

    def __str__(self) -> str:
        return f"median{self.k}"


@dataclass(frozen=True)
class SoftMedian:
    """kornia's median blur (differentiable: the gradient reaches the median pixel)."""

    k: int = 3

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        from kornia.filters import median_blur

        return median_blur(x, (self.k, self.k))

    def __str__(self) -> str:
        return f"softmedian{self.k}"


@dataclass(frozen=True)
class RealDenoise:
    """EOT over the real solver-side filter: OpenCV's output forward, a differentiable
    stand-in's gradient backward (BPDA): for non-local means its own Jacobian with the weights
    frozen at the current image (:mod:`advx.engine.views.nlm_jacobian`)."""

    real: NonLocalMeans | Median = field(default_factory=NonLocalMeans)
    soft: SoftMedian | Identity | LinearizedNLM = field(default_factory=LinearizedNLM)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if not x.requires_grad:
            return self.real(x)
        return BPDA.apply(x, self.real, lambda t: self.soft(t, g))

    def __str__(self) -> str:
        return f"real-{self.real}"

