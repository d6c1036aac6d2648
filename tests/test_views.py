"""engine/views: the views verification scores exactly, and what EOT draws from."""

from __future__ import annotations

import pytest
import torch
from toys import LABELS, ViewRecorder, rand_images

from advx.engine.views import view as views
from advx.engine.views.presets import PRESETS
from advx.export.geometry import resize


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_transforms_keep_shape_and_range(preset):
    x = rand_images(2, 40)
    g = torch.Generator().manual_seed(0)
    for t in views.eot_of(preset).transforms:
        y = t(x, g)
        assert y.shape == x.shape and y.min() >= -1e-6 and y.max() <= 1 + 1e-6, str(t)
    for v in views.views_of(preset):  # views are deterministic
        a = v.images(x)
        assert torch.equal(a, v.images(x)), v.name
        assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6, v.name


def test_eot_draws_are_seeded():
    x = rand_images(2, 32).requires_grad_(True)
    eot = views.eot_of("solver")

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return [eot.sample(x, g).detach() for _ in range(6)]

    a = draws(0)
    assert all(torch.equal(p, q) for p, q in zip(a, draws(0), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, draws(1), strict=True))
    r = views.Resample(96, 384, 0.8)
    y = r(x.detach(), torch.Generator().manual_seed(2))
    assert y.shape == x.shape and torch.equal(y, r(x.detach(), torch.Generator().manual_seed(2)))
    assert str(r) == "resample96-384"


def test_a_view_is_scored_with_its_geometry():
    rec = ViewRecorder()
    x = rand_images(2, 32)
    views.look(rec, views.OWN.images(x), views.OWN)
    views.look(rec, views.WHOLE.images(x), views.WHOLE)
    assert rec.calls[0][1] is None and rec.calls[1][1] == views.WHOLE.geometry
    assert torch.equal(views.look(rec, x, views.JPEG75), rec(x))
    assert views.NLM.cost > views.OWN.cost == views.JPEG75.cost
    assert views.NLM.describe() == "nlmeans10, own preprocessing"
    assert views.JPEG75.source != views.JPEG50.source
    assert views.WHOLE.source == views.OWN.source, "the same tiles, another geometry"


def test_a_view_smaller_than_the_graph_goes_through_its_own_preprocessing(tiny_models):
    """A 96 px solver view into a fixed-size export: resized by the export's own preprocessing,
    never skipped."""
    from advx.engine.views.view import View
    from advx.export import OnnxVerifier, export_cached

    v = OnnxVerifier(export_cached(tiny_models["timm"], LABELS))
    x = rand_images(2, 160)
    view = View("lowres96", prescale=96)
    z = views.look(v, view.images(x), view)
    small = resize(x, (96, 96), "bilinear", True)
    assert small.shape[-1] == 96 and v.manifest.input_size != 96
    assert torch.allclose(z, v(small), atol=1e-6)
    assert not torch.allclose(z, v(x), atol=1e-4), "the low-resolution view changes the answer"
