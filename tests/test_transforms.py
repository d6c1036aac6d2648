"""engine/transforms: the real JPEG codec with a differentiable backward, input diversity."""

from __future__ import annotations

import torch
from toys import rand_images

from advx.engine.views import transforms


def test_jpeg_is_real_forward_and_differentiable_backward():
    x = rand_images(1, 32).requires_grad_(True)
    y = transforms.Jpeg(50, 50)(x)
    assert torch.equal(y.detach(), transforms.jpeg_roundtrip(x.detach(), 50)), "the real codec"
    assert (y.detach() * 255).round().sub(y.detach() * 255).abs().max() < 1e-3
    (g,) = torch.autograd.grad((y * 3).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad((transforms.differentiable_jpeg(x2, 50) * 3).sum(), x2)
    assert torch.equal(g, want), "kornia's differentiable JPEG gives the gradient"
    assert not torch.allclose(g, torch.full_like(x, 3.0)), "not the identity (plain BPDA)"


def test_input_diversity_shapes():
    x = rand_images(2, 30)
    g = torch.Generator().manual_seed(0)
    assert transforms.InputDiversity(prob=1.0)(x, g).shape == x.shape
    assert torch.equal(transforms.InputDiversity(prob=0.0)(x, g), x)
    a = transforms.InputDiversity(prob=1.0)(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, transforms.InputDiversity(prob=1.0)(x, torch.Generator().manual_seed(3)))
