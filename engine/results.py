"""What a hardening run returns for each item: the fields every task shares; each task's result
class adds its truth and its answers (:mod:`advx.engine.tasks`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


@dataclass(kw_only=True)
class HardenResult:
    task: ClassVar[str] = ""
    index: int  # position in the input list
    image: np.ndarray  # the delivered image, uint8 HxWx3 (before JPEG encoding if jpeg output)
    status: str  # "fooled" (every verifier wrong under its deciding views) | "unfooled"
    stop_reason: str  # "already_fooled" | "verifiers_fooled" | "max_steps" | "no_progress"
    steps: int  # attack steps spent
    fooled_at: int | None  # steps when first verified fooled (0 = already wrong as given)
    fooled_every_view: bool  # every verifier wrong under every view, reported ones included
    deciding: dict[str, list[str]]  # verifier -> the views that decide for it
    # verifier -> view -> whether its answer is the one the truth calls for, on the clean item
    # and as delivered: a verifier is fooled under a view only where it was right clean
    right_before: dict[str, dict[str, bool]]
    right_after: dict[str, dict[str, bool]]
    linf: float  # in /255 units
    l2: float  # in [0, 1] pixel units
    psnr: float  # dB
    ssim: float
    seconds: float  # wall time from entering the batch to leaving it
    notes: list[str] = field(default_factory=list)

    @property
    def fooled(self) -> bool:
        return self.status == "fooled"

    def to_record(self) -> dict:
        """A JSON-ready dict (no pixels), the perceptual figures rounded (PSNR of an unchanged
        image: None)."""
        d = {"task": self.task, **{k: v for k, v in self.__dict__.items() if k != "image"}}
        d["psnr"] = None if math.isinf(self.psnr) else round(self.psnr, 3)
        for k in ("linf", "l2", "ssim", "seconds"):
            d[k] = round(float(d[k]), 5)
        return d
