"""engine/geometry: how solvers bring a tile to their input, and the seeded draw EOT uses."""

from __future__ import annotations

import pytest
import torch
from toys import rand_images

from advx.engine.views.transforms import GeometryDraw
from advx.export.geometry import Geometry, fit, resize


def test_geometry_draws_are_seeded_and_cover_the_solvers_preprocessing():
    draw = GeometryDraw(p=0.5)
    got = [draw(torch.Generator().manual_seed(s)) for s in range(200)]
    assert got == [draw(torch.Generator().manual_seed(s)) for s in range(200)], "seeded"
    geos = [d for d in got if d is not None]
    assert 60 < len(geos) < 140
    assert {d.crop == 1.0 for d in geos} == {True, False} and all(d.crop >= 0.8 for d in geos)
    assert {d.interpolation for d in geos} == {"bilinear", "bicubic", "area"}
    assert {d.fit for d in geos} == {"squash", "letterbox"}
    assert GeometryDraw(p=0)(None) is None


def test_geometry_applies_its_resize_and_crop():
    x = rand_images(2, 40)
    whole = Geometry(crop=1.0, interpolation="bilinear", antialias=True)
    assert torch.equal(whole.apply(x, (20, 20)), resize(x, (20, 20), "bilinear", True))
    crop = Geometry(crop=0.5, interpolation="area")
    assert torch.equal(crop.apply(x, (10, 10)), resize(x, (20, 20), "area")[..., 5:15, 5:15])
    wide = torch.rand(1, 3, 20, 40)
    boxed = fit(wide, (16, 16), fit_mode="letterbox", pad=0.0)
    assert boxed.shape[-2:] == (16, 16) and float(boxed[..., :4, :].abs().max()) == 0
    assert resize(x, (40, 40)) is x
    with pytest.raises(ValueError, match="bad geometry"):
        Geometry(interpolation="lanczos")
    with pytest.raises(ValueError, match="crop"):
        Geometry(crop=0)
