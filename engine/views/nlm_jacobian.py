"""The Jacobian of non-local means with its weights frozen: a gradient stand-in (BPDA) for
OpenCV's filter that knows where the filter keeps a perturbation and where it averages it away.

Non-local means averages the pixels of a ``search`` window weighted by how alike their
``template`` patches are: ``y_p = sum_o w_o(p) x_{p+o} / Z_p``, ``w_o(p) = exp(-mean((L(p + t)
- L(p + o + t))^2) / h^2)``. With the weights frozen the filter is linear, and its
vector-Jacobian product spreads a pixel's gradient over the pixels whose patches look like its
own: the attack learns a perturbation alike patches share, which the average keeps.

The weights come from the lightness only, over ``search`` x ``search`` offsets every ``stride``
pixels, with replicated borders: an approximation for the gradient; the forward pass is always
OpenCV's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK = 4  # tiles at a time (the weight maps of one chunk: 60 x 4 x H x W floats)
_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])  # linear RGB -> CIE Y


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIELAB's companding of a white-normalised tristimulus value."""
    return torch.where(t > 0.008856, t.clamp_min(1e-6) ** (1 / 3), 7.787 * t + 16 / 116)


def lightness8(x: torch.Tensor) -> torch.Tensor:
    """CIELAB lightness of linear RGB in [0, 1], on OpenCV's 8-bit scale (0..255), [N,1,H,W]."""
    y = torch.einsum("j,njhw->nhw", _LUMA.to(x), x)[:, None]  # Y (white's Y is 1)
    return (116 * _lab_f(y) - 16) * 2.55


def _box(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over k x k windows, same size (replicated borders), separable."""
    p = k // 2
    t = F.avg_pool2d(F.pad(t, (p, p, 0, 0), mode="replicate"), (1, k), stride=1)
    return F.avg_pool2d(F.pad(t, (0, 0, p, p), mode="replicate"), (k, 1), stride=1)


def nlm_vjp(x: torch.Tensor, grad: torch.Tensor, h: float = 10.0, template: int = 7,
            search: int = 21, stride: int = 2) -> torch.Tensor:
    """``grad`` times the frozen-weight Jacobian of non-local means at ``x``: ``dx_q = sum_o
    w_o(q - o) grad_{q-o} / Z_{q-o}`` (symmetric weights: one map per pair of offsets)."""
    guide = lightness8(x.float())
    r = search // 2
    hh, ww = guide.shape[-2:]
    pad = F.pad(guide, (r, r, r, r), mode="reflect")
    span = range(-(r // stride) * stride, r + 1, stride)
    half = [(dy, dx) for dy in span for dx in span if (dy, dx) > (0, 0)]
    inner = (slice(None), slice(None), slice(r, r + hh), slice(r, r + ww))

    def at(dy: int, dx: int) -> tuple:
        return slice(None), slice(None), slice(r + dy, r + dy + hh), slice(r + dx, r + dx + ww)

    weights = []
    z = F.pad(torch.ones_like(guide[:, :1]), (r, r, r, r))  # the centre's weight is 1
    for dy, dx in half:
        d2 = ((guide - pad[at(dy, dx)]) ** 2).mean(1, keepdim=True)
        w = torch.exp(_box(d2, template).mul_(-1 / (h * h)))
        w.masked_fill_(w < 1e-3, 0.0)  # OpenCV drops weights under 0.001 too
        weights.append(w)
        z[inner] += w
        z[at(dy, dx)] += w  # w_{-o} at p + o
    gz = F.pad(grad.float() / z[inner], (r, r, r, r))
    out = gz.clone()  # the centre's term
    centre = gz[inner]
    for (dy, dx), w in zip(half, weights, strict=True):
        out[at(dy, dx)] += w * centre  # offset o: pixel p + o feeds y_p
        out[inner] += w * gz[at(dy, dx)]  # offset -o: pixel p feeds y_{p+o}
    return out[inner].to(grad.dtype)


class _FrozenNLM(torch.autograd.Function):
    """Values: the input (BPDA uses only this function's vector-Jacobian product)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stand_in: LinearizedNLM) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.stand_in = stand_in
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = ctx.stand_in
        parts = [nlm_vjp(x[i:i + CHUNK], grad[i:i + CHUNK], s.h, s.template, s.search, s.stride)
                 for i in range(0, len(x), CHUNK)]
        return torch.cat(parts), None


@dataclass(frozen=True)
class LinearizedNLM:
    """Non-local means' frozen-weight Jacobian, as the backward of :class:`RealDenoise`."""

    h: float = 10.0
    template: int = 7
    search: int = 21  # offsets searched, as OpenCV's filter (see the module docstring)
    stride: int = 2  # every other one

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return _FrozenNLM.apply(x, self)

    def __str__(self) -> str:
        return "frozen-nlm"
