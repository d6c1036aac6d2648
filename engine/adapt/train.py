"""Fine-tuning a solver copy as its operator would: its own preprocessing (inside the module),
ordinary augmentation (shifts, contrast and brightness, flips where the truth allows), the
task's loss and Adam. Each epoch ends in a checkpoint, so a killed run goes on from there."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tasks.base import Trainee

SHIFT = 0.03  # of each side
JITTER = 0.1  # contrast and brightness


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1], shifted, jittered (and flipped), each image its own draw."""
    n, _, h, w = x.shape
    dy, dx = max(1, round(SHIFT * h)), max(1, round(SHIFT * w))
    padded = F.pad(x, (dx, dx, dy, dy), mode="replicate")
    oy = torch.randint(0, 2 * dy + 1, (n,), generator=gen).tolist()
    ox = torch.randint(0, 2 * dx + 1, (n,), generator=gen).tolist()
    x = torch.stack([padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * JITTER
    bright = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * JITTER
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + bright).clamp(0, 1)
    if flip:
        turn = torch.rand(n, generator=gen) < 0.5
        x[turn] = x[turn].flip(-1)
    return x


def batches(shapes: Sequence[tuple], size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of at most ``size`` items, each of one image size."""
    groups: dict[tuple, list[int]] = {}
    for i in torch.randperm(len(shapes), generator=gen).tolist():
        groups.setdefault(shapes[i], []).append(i)
    out = [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]
    return [out[j] for j in torch.randperm(len(out), generator=gen).tolist()]


def fit(trainee: Trainee, images: Sequence[torch.Tensor], truths: Sequence, *, epochs: int,
        batch_size: int, lr: float, seed: int, device: torch.device, checkpoint: Path,
        on_epoch: Callable[[int], None], progress: Callable[[int], None] = lambda n: None
        ) -> None:
    """Train ``trainee`` on ``images`` (uint8 [3, H, W]) for ``epochs``, calling ``on_epoch``
    after each (its model then as trained so far) before the epoch's checkpoint is written;
    an existing ``checkpoint`` resumes after its epoch. ``progress``: items trained, per batch."""
    module = trainee.module
    params = list({id(p): p for p in module.parameters() if p.requires_grad}.values())
    opt = torch.optim.Adam(params, lr=lr)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    shapes = [tuple(im.shape) for im in images]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)  # a resumed epoch repeats
        for batch in batches(shapes, batch_size, gen):
            x = torch.stack([images[i] for i in batch]).float() / 255
            x = augment(x, gen, trainee.flip).to(device)
            loss = trainee.loss(module(x), [truths[i] for i in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress(len(batch))
        on_epoch(epoch + 1)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"epoch": epoch + 1, "model": module.state_dict(),
                    "optimizer": opt.state_dict()}, tmp)
        os.replace(tmp, checkpoint)


__all__ = ["augment", "batches", "fit"]
