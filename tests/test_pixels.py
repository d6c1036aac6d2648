"""engine/pixels: the 8-bit grid and the texture mask of the perceptual budget."""

from __future__ import annotations

import numpy as np
import torch
from toys import rand_images

from advx.engine.pixels import as_float, quantise, texture_mask, to_uint8


def test_texture_mask_spends_the_floor_on_flat_regions():
    flat = torch.full((1, 3, 32, 32), 0.5)
    busy = rand_images(1, 32)
    m = texture_mask(torch.cat([flat, busy]), 0.35)
    assert m.shape == (2, 1, 32, 32)
    assert torch.allclose(m[0], torch.full_like(m[0], 0.35))
    assert m[1].mean() > 0.9


def test_the_8_bit_grid():
    x = torch.tensor([0.0, 0.5, 1.2, -0.1, 100.4 / 255]).view(1, 5, 1)
    q = quantise(x)
    assert torch.equal(q, torch.tensor([0, 128, 255, 0, 100]).view(1, 5, 1) / 255)
    u8 = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    f = as_float(u8)
    assert f.dtype == torch.float32 and torch.equal(f * 255, u8.float())
    assert torch.equal(as_float(f), f), "floats pass through"
    img = to_uint8(f)
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3)
    assert np.array_equal(img, u8.permute(1, 2, 0).numpy())
