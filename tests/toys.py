"""Toy classifiers and verifier stubs for the engine's tests (torch only: no hub, no export)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from advx.engine.config import HardenConfig
from advx.engine.tasks.text.draw import ALPHABET as CAPTCHA_ALPHABET  # noqa: F401 (the OCR tests)
from advx.engine.views import transforms

LABELS = ("cat", "dog", "bus")


class TinyNet(nn.Module):
    """A small random-init conv classifier over LABELS (images in [0, 1], any size)."""

    def __init__(self, seed: int = 0, name: str = "tiny", scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.name, self.labels, self.scale = name, LABELS, scale
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, len(LABELS)),
        )
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x - 0.5) * 50


class Fixed:
    """A verifier stub that always answers ``answer`` and records what it was shown."""

    def __init__(self, answer: int, name: str = "stub") -> None:
        self.name, self.labels, self.answer, self.seen = name, LABELS, answer, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        logits = torch.zeros(len(images), len(LABELS))
        logits[:, self.answer] = 5.0
        return logits


class RightUntilAttacked:
    """A verifier that reads every clean image right (its true label, decisively) and answers
    like the surrogate on anything else: only attacked pixels can fool it. It records what it
    was shown, so what it checks can be compared with what is delivered."""

    def __init__(self, clean: list[np.ndarray], labels: list[str], surrogate: nn.Module,
                 name: str = "right-until-attacked", jpeg: int | None = None) -> None:
        self.name, self.labels, self.surrogate = name, LABELS, surrogate
        self.clean = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2).float() / 255
        if jpeg is not None:  # the clean images as a JPEG delivery shows them
            self.clean = transforms.jpeg_roundtrip(self.clean, jpeg)
        self.y = [LABELS.index(lab) for lab in labels]
        self.seen: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        with torch.no_grad():
            logits = self.surrogate(images).clone()
        for i, x in enumerate(images):
            d = (self.clean - x).abs().flatten(1).amax(1)
            if float(d.min()) == 0:  # a clean image: right, by a wide margin
                logits[i] = 0
                logits[i, self.y[int(d.argmin())]] = 50
        return logits


class ViewRecorder(TinyNet):
    """A verifier that records each call with its geometry."""

    def __init__(self) -> None:
        super().__init__(3, "views")
        self.calls: list[tuple[torch.Tensor, object]] = []

    def forward(self, x, geometry=None):
        self.calls.append((x.clone(), geometry))
        if geometry is not None:
            x = geometry.apply(x, (20, 20))
        return super().forward(x)


def rand_images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255)


def uint8_images(n: int, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def cfg(**kw) -> HardenConfig:
    """A short run without solver views (overridden by ``kw``)."""
    base = dict(steps=10, verify_every=2, transforms="none", batch_size=2)
    return HardenConfig(**{**base, **kw})


class SeededSecrets:
    """Stands in for ``secrets`` in the captcha package, so its drawings repeat."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._r.randrange(n)

    def randbits(self, k: int) -> int:
        return self._r.getrandbits(k)

    def choice(self, seq):
        return self._r.choice(seq)
