"""engine/sgm: skip gradients through residual branches (forward values unchanged)."""

from __future__ import annotations

import torch
from toys import LABELS, TinyNet, rand_images

from advx.engine.attacks import sgm
from advx.export.zoo import create_classifier


def test_skip_gradient_scales_only_the_residual_gradients():
    vit = create_classifier("timm:test_vit/none", LABELS)
    x = rand_images(2, 32).requires_grad_(True)

    def run(gamma):
        with sgm.skip_gradient(vit, gamma) as n:
            out = vit(x)
            (g,) = torch.autograd.grad(out[:, 0].sum(), x)
        return n, out.detach(), g

    n, plain_out, plain = run(1.0)
    assert n == len(sgm.residual_branches(vit)) == 2 * len(vit.core.visual.blocks)
    _, out, g = run(0.5)
    assert torch.equal(out, plain_out), "forward values unchanged"
    assert not torch.allclose(g, plain, atol=1e-6)
    _, _, again = run(1.0)
    assert torch.equal(again, plain)
    assert not any(b._forward_hooks for b in sgm.residual_branches(vit)), "hooks removed"
    assert sgm.residual_branches(TinyNet()) == [], "no residual blocks: left as it is"
