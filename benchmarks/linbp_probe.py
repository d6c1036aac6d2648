"""Why linear backpropagation (LinBP, Guo et al. 2020) is not an option here: on the folded,
pretrained EfficientNet-Lite surrogates, passing the gradient through the ReLU6 activations as
the identity (from a stage of ``blocks`` on) lets channels that never activate dominate the
input gradient. Prints, per first linearised stage, the number of activations, the gradient's
mean magnitude against the true one and their cosine (not part of the test command).

    .venv/bin/python benchmarks/linbp_probe.py
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):  # act(x) forward
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # the identity backward
        return grad, None


@contextlib.contextmanager
def linear_backprop(visual: nn.Module, first_stage: int):
    early = {id(m) for stage in list(visual.blocks)[:first_stage] for m in stage.modules()}
    acts, inside = [], False
    for name, m in visual.named_modules():
        inside = inside or name.startswith("blocks")
        if isinstance(m, nn.ReLU6) and inside and id(m) not in early:
            acts.append(m)
    for m in acts:
        m.inplace = False
    handles = [m.register_forward_hook(lambda _m, i, out: _Linear.apply(i[0], out))
               for m in acts]
    try:
        yield len(acts)
    finally:
        for h in handles:
            h.remove()
        for m in acts:
            m.inplace = True


def main() -> None:
    import skimage.data as sd

    from advx.engine.zoo import create_classifier

    torch.manual_seed(0)
    model = create_classifier("effnet-lite0", ("cat", "espresso"), device="cpu")
    cat = torch.from_numpy(np.ascontiguousarray(sd.chelsea()[:224, 100:324])).permute(2, 0, 1)
    x = (cat.float() / 255).unsqueeze(0).requires_grad_(True)
    (true,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    print(f"true gradient: mean |g| {true.abs().mean():.3g}")
    for stage in range(len(model.core.visual.blocks) + 1):
        with linear_backprop(model.core.visual, stage) as n:
            (g,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
        cos = torch.nn.functional.cosine_similarity(g.flatten(), true.flatten(), dim=0)
        print(f"linear from stage {stage}: {n:2d} activations, mean |g| {g.abs().mean():.3g}, "
              f"cosine with the true gradient {cos:+.2f}")


if __name__ == "__main__":
    main()
