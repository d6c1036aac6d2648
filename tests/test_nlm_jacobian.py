"""The frozen-weight Jacobian of non-local means (engine/nlm_jacobian.py): exact invariants."""

from __future__ import annotations

import torch

from advx.engine.views.denoise import NonLocalMeans, RealDenoise
from advx.engine.views.nlm_jacobian import LinearizedNLM, lightness8, nlm_vjp


def test_flat_image_spreads_a_gradient_over_the_search_grid_exactly():
    # every patch alike: every weight is 1, the filter is a plain mean over the (thinned)
    # search grid, and its transpose spreads a pixel's gradient evenly over that grid
    x = torch.full((1, 3, 31, 31), 0.4, dtype=torch.float64)
    g = torch.zeros_like(x)
    g[..., 15, 15] = 1.0
    for search, stride in ((5, 1), (9, 2), (21, 2)):
        r, span = search // 2, range(-(search // 2 // stride) * stride, search // 2 + 1, stride)
        want = torch.zeros_like(x)
        for dy in span:
            for dx in span:
                want[..., 15 + dy, 15 + dx] = 1 / len(span) ** 2
        got = nlm_vjp(x, g, search=search, stride=stride).double()
        assert r < 15
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_gradient_does_not_cross_an_edge_the_filter_does_not_average_across():
    x = torch.zeros(1, 3, 24, 48)
    x[..., 24:] = 1.0  # black | white: lightness 0 against 255, every weight across is 0
    g = torch.zeros_like(x)
    g[..., 12, 20] = 1.0  # on the black side, 4 px from the edge
    out = nlm_vjp(x, g)
    assert float(out[..., 24:].abs().max()) == 0.0
    assert torch.isclose(out.sum(), torch.tensor(3.0), atol=1e-5)  # black side: all of it
    assert float(out[..., 12, 20].min()) > 0


def test_opposite_offsets_share_one_weight_map_like_the_full_sum():
    # the result equals the full double sum over every offset, away from the borders
    torch.manual_seed(0)
    x = (torch.rand(1, 3, 40, 40) * 0.15 + torch.linspace(0.1, 0.8, 40)).double()
    g = torch.randn_like(x)
    r, h, k = 3, 10.0, 3
    lum = lightness8(x)
    pad = torch.nn.functional.pad(lum, (r + k, r + k, r + k, r + k), mode="reflect")

    def w(p, o):  # exp(-mean over the k x k patch of squared lightness differences / h^2)
        (i, j), (dy, dx) = p, o
        a = pad[0, 0, r + k + i - 1:r + k + i + 2, r + k + j - 1:r + k + j + 2]
        b = pad[0, 0, r + k + i + dy - 1:r + k + i + dy + 2, r + k + j + dx - 1:r + k + j + dx + 2]
        v = torch.exp(-((a - b) ** 2).mean() / h**2)
        return v if v >= 1e-3 else v * 0

    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    got = nlm_vjp(x, g, h=h, template=k, search=2 * r + 1, stride=1)
    for q in ((20, 20), (12, 27), (27, 13)):  # far from the borders
        want = torch.zeros(3, dtype=torch.float64)
        for dy, dx in offs:
            p = (q[0] - dy, q[1] - dx)
            z = sum(w(p, o) for o in offs)
            want += w(p, (dy, dx)) * g[0, :, p[0], p[1]] / z
        torch.testing.assert_close(got[0, :, q[0], q[1]].double(), want, rtol=1e-4, atol=1e-6)


def test_real_denoise_runs_opencv_forward_and_the_frozen_jacobian_backward():
    torch.manual_seed(1)
    x = (torch.rand(5, 3, 32, 32) * 0.1 + 0.45).requires_grad_(True)
    t = RealDenoise(NonLocalMeans(), LinearizedNLM())
    y = t(x)
    assert torch.equal(y.detach(), NonLocalMeans()(x.detach()))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    parts = [nlm_vjp(x.detach()[i:i + 4], g[i:i + 4]) for i in (0, 4)]
    torch.testing.assert_close(gx, torch.cat(parts), rtol=0, atol=0)
    # a flat, low-noise tile: the filter averages, so the gradient is smoothed (smaller)
    assert float(gx.abs().mean()) < 0.5 * float(g.abs().mean())
