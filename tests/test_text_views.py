"""engine/views/ocr: what text solvers do to an image (PIL grey, Otsu, slight rotation), the
text preset, and the stroke mask of the text perceptual budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from advx.engine.tasks.text.mask import stroke_mask
from advx.engine.views.ocr import Grey, Otsu, Rotate, grey_levels, otsu_binarise
from advx.engine.views.presets import PRESETS, get_preset
from advx.engine.views.view import EOT_TRANSFORMS, VIEWS, eot_of, views_of

SIZES = [(32, 48), (7, 5), (1, 1), (23, 64)]


def u8_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float [N, 3, H, W] on the 8-bit grid."""
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 255


def glyphs(white_on_dark: bool = False) -> np.ndarray:
    """A dark bar and a letter on a white 40 x 96 ground (inverted: white on black)."""
    im = Image.new("RGB", (96, 40), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([10, 8, 15, 30], fill=(30, 20, 40))
    d.text((30, 10), "Ag", fill=(0, 0, 0))
    arr = np.asarray(im)
    return (255 - arr if white_on_dark else arr)[None]


def pil_grey(arr: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in arr])


def cv2_otsu(arr: np.ndarray) -> np.ndarray:
    return np.stack([cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
                     for g in pil_grey(arr)])


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_grey_is_pil_s_convert_l(h, w):
    arr = u8_images(3, h, w)
    x = as_tensor(arr)
    ref = torch.from_numpy(pil_grey(arr)).int()
    assert torch.equal(grey_levels(x)[:, 0], ref)
    y = Grey()(x)
    assert y.shape == x.shape and torch.equal(y[:, 0], y[:, 2])
    assert torch.equal((y[:, 1] * 255).round().int(), ref)
    assert torch.equal(VIEWS["grey"].images(x), y)


def test_grey_keeps_the_exact_forward_and_pil_s_weights_backward():
    x = as_tensor(u8_images(2, 9, 11)).requires_grad_(True)
    y = EOT_TRANSFORMS["grey"](x)
    assert torch.equal(y.detach(), Grey()(x.detach()))
    y[:, 0].sum().backward()
    w = torch.tensor([19595, 38470, 7471]) / 65536
    assert torch.allclose(x.grad, w.view(1, 3, 1, 1).expand_as(x))


@pytest.mark.parametrize("image", ["noise", "glyphs", "inverted", "flat"])
def test_the_otsu_view_is_opencv_s_otsu_of_pil_grey(image):
    arr = {"noise": u8_images(3, 17, 30), "glyphs": glyphs(), "inverted": glyphs(True),
           "flat": np.full((1, 6, 7, 3), 200, np.uint8)}[image]
    x = as_tensor(arr)
    y = VIEWS["otsu"].images(x)
    assert y.shape == x.shape and set(y.unique().tolist()) <= {0.0, 1.0}
    ref = torch.from_numpy(cv2_otsu(arr)).float() / 255
    for c in range(3):
        assert torch.equal(y[:, c], ref), c


def test_soft_otsu_is_exact_forward_with_a_gradient_near_the_threshold():
    arr = glyphs()
    x = as_tensor(arr).requires_grad_(True)
    levels = grey_levels(x)
    _, t = otsu_binarise(levels)
    y = EOT_TRANSFORMS["soft-otsu"](x)
    assert torch.equal(y.detach(), Otsu()(x.detach()))
    y.sum().backward()
    g = x.grad.abs().sum(1, keepdim=True)
    near = (levels.float() - (t + 0.5)).abs() <= 3
    far = (levels.float() - (t + 0.5)).abs() >= 100
    assert near.any() and far.any()
    assert (g[near] > 0).all(), "pixels a few grey levels from the threshold carry a gradient"
    assert g[far].max() < 1e-6 * g[near].min()


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_rotate_keeps_shape_and_passes_the_gradient(h, w):
    x = as_tensor(u8_images(2, h, w)).requires_grad_(True)
    assert Rotate(0, 0)(x) is x, "no angle: the identity"
    y = Rotate(-3, 3)(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    (y * torch.rand_like(y)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_rotate_is_opencv_s_warp_affine_with_a_replicated_border():
    h, w = 37, 52
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(xx / 5) + np.cos(yy / 7), xx / w, yy / h], -1)
    img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for angle in (3.0, -3.0, 10.0):
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        ref = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        y = Rotate(angle, angle)(x)[0].permute(1, 2, 0).numpy()
        assert np.abs(y - ref).max() < 1e-5, angle


def test_rotate_draws_are_seeded():
    x = as_tensor(u8_images(1, 20, 30))
    r = EOT_TRANSFORMS["rotate-3-3"]

    def draw(seed):
        return r(x, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_the_names():
    assert [str(t) for t in (Grey(), Otsu(), Rotate(3, 3), Rotate(-3, 3))] == [
        "grey", "otsu", "rotate3", "rotate-3-3"]
    assert VIEWS["grey"].delivery == Grey() and VIEWS["otsu"].delivery == Otsu()
    assert VIEWS["rotate3"].delivery == Rotate(3, 3)
    assert str(VIEWS["resize0.5"].delivery) == "resize0.5"
    assert VIEWS["otsu"].describe() == "otsu, own preprocessing"
    assert EOT_TRANSFORMS["grey"] == Grey() and EOT_TRANSFORMS["soft-otsu"] == Otsu()
    assert EOT_TRANSFORMS["rotate-3-3"] == Rotate(-3, 3)


def test_the_text_preset():
    p = get_preset("text")
    assert p.deciding == ("own", "grey", "jpeg75", "median3")
    assert p.reported == ("otsu", "jpeg50", "nlmeans", "resize0.5", "rotate3")
    assert not p.geometry and eot_of("text").geometry is None
    assert [v.name for v in views_of("text")] == list(p.views)
    assert [str(t) for t in eot_of("text").transforms] == [
        "identity", "grey", "otsu", "jpeg50-95", "resize0.5-1", "softmedian3", "rotate-3-3"]
    text_only = {"grey", "otsu", "resize0.5", "rotate3"}
    for name in ("none", "jpeg", "delivery", "solver", "robust"):
        assert not text_only & set(PRESETS[name].views), name
        assert not {"grey", "soft-otsu", "rotate-3-3"} & set(PRESETS[name].eot), name


@pytest.mark.parametrize("white_on_dark", [False, True])
def test_the_stroke_mask_spends_the_budget_on_and_around_the_strokes(white_on_dark):
    arr = glyphs(white_on_dark)
    x = as_tensor(arr)
    m = stroke_mask(x, 0.3)
    assert m.shape == (1, 1, 40, 96) and m.min() >= 0.3 - 1e-6 and m.max() <= 1 + 1e-6
    ink = torch.from_numpy(pil_grey(glyphs()) < 128)[:, None]  # the strokes, dark on white
    assert ink.sum() > 100 and torch.equal(m[ink], torch.ones_like(m[ink]))
    assert torch.equal(m[0, 0, 6:33, 8:18], torch.ones(27, 10)), "2 px around the bar"
    far = m[0, 0, :, 80:]  # flat ground, 10+ px from any stroke
    assert torch.allclose(far, torch.full_like(far, 0.3))
    assert torch.allclose(m, stroke_mask(as_tensor(glyphs(not white_on_dark)), 0.3), atol=1e-5)
    assert torch.equal(m, stroke_mask(x, 0.3)), "deterministic"


def test_the_stroke_mask_keeps_the_floor_on_a_flat_image_and_1_on_noise():
    flat = torch.full((1, 3, 24, 24), 0.8)
    assert torch.allclose(stroke_mask(flat, 0.25), torch.full((1, 1, 24, 24), 0.25))
    faint = flat.clone()
    faint[..., 4:8, 4:8] = 0.8 - 3 / 255  # below the contrast: no ink, and hardly texture
    assert stroke_mask(faint, 0.25)[0, 0, 20:, 20:].max() < 0.25 + 1e-6
    noise = as_tensor(u8_images(1, 24, 24))
    assert stroke_mask(noise, 0.25).mean() > 0.9


@pytest.mark.parametrize(("h", "w"), [(7, 5), (1, 1), (2, 3), (5, 64), (33, 17)])
def test_the_stroke_mask_takes_any_size(h, w):
    x = as_tensor(u8_images(2, h, w, seed=h * w))
    m = stroke_mask(x, 0.4)
    assert m.shape == (2, 1, h, w) and m.min() >= 0.4 - 1e-6 and m.max() <= 1 + 1e-6
    dot = torch.ones(1, 3, h, w)
    dot[..., h // 2, w // 2] = 0  # a 1 x 1 image is all one class: no ink, no texture
    assert stroke_mask(dot, 0.4)[0, 0, h // 2, w // 2] == (1 if h * w > 1 else 0.4)
