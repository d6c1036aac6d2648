"""engine/scoring: one verification pass over the view matrix, and its verdict."""

from __future__ import annotations

import torch
from toys import LABELS, Fixed, TinyNet, ViewRecorder, rand_images

from advx.engine.attacks.ensemble import takes_geometry
from advx.engine.pixels import quantise
from advx.engine.tasks.labels.scoring import score_views
from advx.engine.views import denoise
from advx.engine.views import view as views
from advx.export.geometry import Geometry


def test_views_sharing_a_denoiser_filter_each_row_once(monkeypatch):
    """Two verifiers and two views of non-local means (one with a geometry of its own): the
    filter runs once per row, and every logit equals scoring that view alone (to float
    rounding: the network runs on another copy of the same pixels)."""
    rows: list[int] = []
    real = denoise.NonLocalMeans.__call__

    def counting(self, x, g=None):
        rows.append(len(x))
        return real(self, x, g)

    monkeypatch.setattr(denoise.NonLocalMeans, "__call__", counting)
    a, b = ViewRecorder(), ViewRecorder()
    b.name = "b"
    nlm_whole = views.View("nlm-whole", denoise=denoise.NonLocalMeans(),
                           geometry=Geometry(crop=1.0, interpolation="bilinear"))
    matrix = (views.OWN, views.NLM, nlm_whole, views.JPEG75)
    delivered = quantise(rand_images(4, 32))
    y, t = torch.tensor([0, 1, 2, 0]), torch.full((4,), -1)
    perms = [torch.arange(len(LABELS))] * 2
    verdict = score_views([a, b], perms, matrix, delivered, y, t, required=0.5)
    assert rows == [4]
    for v in (a, b):
        for view in matrix:
            torch.testing.assert_close(verdict.logits[v.name][view.name],
                                       views.look(v, view.images(delivered), view).float())
    # lazily, the second view of the filter reuses the rows the first one filtered
    rows.clear()
    score_views([a, b], perms, matrix, delivered, y, t, required=-1e9, lazy=True)
    assert rows == [4]


def test_lazily_a_view_is_scored_only_where_every_earlier_one_is_fooled():
    """Views run cheapest first; non-local means (costly) comes last, and only for the rows
    every cheaper view finds fooled."""
    rec = ViewRecorder()
    matrix = views.views_of("solver")
    delivered = quantise(rand_images(6, 32))
    y, t = torch.tensor([0, 1, 2, 0, 1, 2]), torch.full((6,), -1)
    perms = [torch.arange(len(LABELS))]
    need = 0.5
    full = score_views([rec], perms, matrix, delivered, y, t, need)
    assert set(full.by_view["views"]) == {v.name for v in matrix}
    assert not torch.isnan(full.mins).any()
    lazy = score_views([rec], perms, matrix, delivered, y, t, need, lazy=True)
    nlm = lazy.by_view["views"]["nlmeans"]
    cheap = torch.stack([torch.nan_to_num(m, nan=float("inf"))
                         for k, m in lazy.by_view["views"].items() if k != "nlmeans"]).amin(0)
    assert torch.equal(torch.isnan(nlm), cheap < need)
    assert torch.equal(lazy.mins < need, full.mins < need)
    assert torch.equal(full.mins, torch.stack(
        [full.by_view["views"][v.name] for v in matrix]).amin(0))


def test_the_verdict_reads_each_verifier_in_the_label_set_s_order():
    """A verifier with its labels in another order is read through its permutation; its own
    view's logits are kept for the results."""
    stub = Fixed(answer=2)  # "bus" in LABELS' order
    stub.labels = ("bus", "cat", "dog")  # ... answered at index 2: "dog"
    perm = torch.tensor([stub.labels.index(lab) for lab in LABELS])
    x = rand_images(3, 16)
    y, t = torch.tensor([0, 1, 2]), torch.full((3,), -1)
    v = score_views([stub], [perm], (views.OWN,), x, y, t, required=0.5)
    assert v.own["stub"].argmax(1).tolist() == [1, 1, 1], "dog"
    assert (v.mins >= 0.5).tolist() == [True, False, True]
    assert torch.equal(v.per_verifier["stub"], v.mins)


def test_takes_geometry():
    assert takes_geometry(ViewRecorder()) and not takes_geometry(TinyNet())
    assert not takes_geometry(Fixed(0))
    assert takes_geometry(lambda images, **kw: images)
