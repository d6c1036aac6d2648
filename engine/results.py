"""What a hardening run returns for each image."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STATUSES = ("fooled", "unfooled")
STOP_REASONS = ("already_fooled", "verifiers_fooled", "max_steps", "no_progress")


def _record(result) -> dict:
    """A result's fields without its pixels, the perceptual figures rounded (PSNR of an
    unchanged image: None)."""
    d = {k: v for k, v in result.__dict__.items() if k != "image"}
    d["psnr"] = None if math.isinf(result.psnr) else round(result.psnr, 3)
    for k in ("linf", "l2", "ssim", "seconds"):
        d[k] = round(float(d[k]), 5)
    return d


@dataclass
class HardenResult:
    index: int  # position in the input list
    image: np.ndarray  # the delivered image, uint8 HxWx3 (before JPEG encoding if jpeg output)
    label: str  # true label
    target: str | None  # decoy label of a targeted run
    status: str  # "fooled" (every verifier wrong under its deciding views) | "unfooled"
    stop_reason: str  # one of STOP_REASONS
    steps: int  # attack steps spent
    fooled_at: int | None  # steps when first verified fooled (0 = already misclassified)
    predictions_before: dict[str, str]  # model -> top label on the clean image
    predictions_after: dict[str, str]  # model -> top label on the delivered image
    selected_before: dict[str, list[str]]  # model -> labels it selects (its own decision rule)
    selected_after: dict[str, list[str]]
    probabilities_before: dict[str, dict[str, float]]  # multi-label model -> P(label)
    probabilities_after: dict[str, dict[str, float]]
    fooled_every_view: bool  # every verifier wrong under every view, reported ones included
    deciding: dict[str, list[str]]  # verifier -> the views that decide for it
    margins: dict[str, float]  # verifier -> min over its deciding views of its fooling margin
    margins_by_view: dict[str, dict[str, float]]  # verifier -> view -> fooling margin
    selected_by_view_before: dict[str, dict[str, list[str]]]  # verifier -> view -> selected
    selected_by_view_after: dict[str, dict[str, list[str]]]
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
        """A JSON-ready dict (no pixels)."""
        d = _record(self)
        d["margins"] = {k: round(float(v), 4) for k, v in self.margins.items()}
        d["margins_by_view"] = {k: {w: round(float(m), 4) for w, m in v.items()}
                                for k, v in self.margins_by_view.items()}
        return d


@dataclass
class TextResult:
    """What a text hardening run returns for each captcha."""

    index: int  # position in the input list
    image: np.ndarray  # the delivered captcha, uint8 HxWx3
    text: str  # the truth
    status: str  # "fooled" (every verifier misreads it under its deciding views) | "unfooled"
    stop_reason: str  # one of STOP_REASONS
    steps: int
    fooled_at: int | None  # steps when first verified fooled (0: misread as given)
    fooled_every_view: bool  # every verifier misreads it under every view
    deciding: dict[str, list[str]]  # verifier -> the views that decide for it
    read_before: dict[str, str]  # verifier -> its reading of the clean captcha (own view)
    read_after: dict[str, dict[str, str]]  # verifier -> view -> its reading as delivered
    cer_after: dict[str, dict[str, float]]  # verifier -> view -> character error rate
    linf: float  # in /255 units
    l2: float
    psnr: float
    ssim: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def fooled(self) -> bool:
        return self.status == "fooled"

    def to_record(self) -> dict:
        """A JSON-ready dict (no pixels)."""
        d = _record(self)
        d["cer_after"] = {k: {w: round(float(c), 4) for w, c in v.items()}
                          for k, v in self.cer_after.items()}
        return d
