"""Transfer methods: skip gradients (SGM), feature-level loss (FIA), variance reduction (SVRE)."""

from __future__ import annotations

import pytest
import torch
from test_engine import TinyNet, rand_images

from advx.engine import features
from advx.engine.attacks import MIFGSM, AttackState
from advx.engine.config import HardenConfig
from advx.engine.ensemble import Ensemble
from advx.engine.zoo import create_classifier

LABELS = ("cat", "dog", "bus")
TINY_TIMM = "timm:test_efficientnet/none"


@pytest.fixture(scope="module")
def effnet():
    return create_classifier(TINY_TIMM, LABELS)


def test_the_middle_stage_is_the_layer(effnet):
    blocks = effnet.core.visual.blocks
    assert features.feature_layer(effnet) is blocks[len(blocks) // 2]
    assert features.feature_layer(TinyNet()) is None  # no known layer: logit loss kept


def test_guides_are_unit_norm_and_seeded(effnet):
    x, y = rand_images(3, 32), torch.tensor([0, 1, 2])

    def guide(seed):
        return features.guides(effnet, x, y, None, copies=3, drop=0.3, chunk=2,
                               generator=torch.Generator().manual_seed(seed))

    g = guide(0)
    with features.capture(features.feature_layer(effnet)) as seen:
        effnet(x)
    assert g.shape == seen[-1].shape
    assert torch.allclose(g.flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(g, guide(0)) and not torch.equal(g, guide(1))
    assert features.guides(TinyNet(), x, y, None, copies=2, drop=0.3, chunk=2,
                           generator=None) is None


def test_fia_attack_stays_in_budget_and_lowers_the_guided_features(effnet):
    x, y = rand_images(4, 32), torch.tensor([0, 1, 2, 0])
    eps = 8 / 255
    attack = MIFGSM(Ensemble([effnet, TinyNet()]), eps_01=eps, alpha_01=2 / 255, steps=8,
                    fia_copies=2, generator=torch.Generator().manual_seed(0))
    state = attack.init(x, labels=y)
    guide, none = state.guides
    assert guide is not None and none is None and len(guide) == 4
    # rows leave and come back with their own guides (continuous batching)
    part = AttackState.cat([state.take(slice(2, 4)), state.take(slice(0, 2))])
    assert torch.equal(part.guides[0], torch.cat([guide[2:], guide[:2]]))

    def guided(images):
        with features.capture(features.feature_layer(effnet)) as seen:
            effnet(images)
        return features.feature_loss(seen[-1], guide)

    start = guided(state.adv)
    for _ in range(8):
        attack.step(state, y)
    assert (state.adv - x).abs().max() <= eps + 1e-6
    assert state.adv.min() >= 0 and state.adv.max() <= 1
    assert guided(state.adv).mean() > start.mean(), "the feature loss rises"
    with pytest.raises(ValueError, match="labels"):
        attack.init(x)
    with pytest.raises(ValueError, match="fia"):
        HardenConfig(fia=-1)


def test_svre_stays_in_budget_repeats_and_fools_the_ensemble():
    from advx.engine.attacks import SVRE
    from advx.engine.losses import margin_loss

    a, b = TinyNet(0, "a"), TinyNet(1, "b")
    x, y = rand_images(4), torch.tensor([0, 1, 2, 0])
    eps = 8 / 255

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return SVRE(Ensemble([a, b]), eps_01=eps, alpha_01=2 / 255, steps=6, generator=g)(x, y)

    adv = run(0)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, run(0)) and not torch.equal(adv, run(1))
    for m in (a, b):
        assert margin_loss(m(adv), y).mean() > margin_loss(m(x), y).mean()


def test_skip_gradient_scales_only_the_residual_gradients():
    vit = create_classifier("timm:test_vit/none", LABELS)
    x = rand_images(2, 32).requires_grad_(True)

    def run(gamma):
        with features.skip_gradient(vit, gamma) as n:
            out = vit(x)
            (g,) = torch.autograd.grad(out[:, 0].sum(), x)
        return n, out.detach(), g

    n, plain_out, plain = run(1.0)
    assert n == len(features.residual_branches(vit)) == 2 * len(vit.core.visual.blocks)
    _, out, g = run(0.5)
    assert torch.equal(out, plain_out), "forward values unchanged"
    assert not torch.allclose(g, plain, atol=1e-6)
    _, _, again = run(1.0)
    assert torch.equal(again, plain)
    assert not any(b._forward_hooks for b in features.residual_branches(vit)), "hooks removed"
    with pytest.raises(ValueError, match="skip_gamma"):
        HardenConfig(skip_gamma=0)


def test_ghost_networks_erode_every_pass_seeded_and_leave_no_hooks():
    vit = create_classifier("timm:test_vit/none", LABELS)  # the tiny EfficientNet has no skips
    x = rand_images(2, 32)
    plain = vit(x)

    def two_passes(seed):
        with features.ghost_branches(vit, 0.2, torch.Generator().manual_seed(seed)) as n:
            return n, vit(x), vit(x)

    n, a, b = two_passes(0)
    assert n == len(features.residual_branches(vit)) > 0
    assert not torch.allclose(a, plain, atol=1e-5) and not torch.allclose(a, b, atol=1e-5)
    _, a2, b2 = two_passes(0)
    assert torch.equal(a, a2) and torch.equal(b, b2), "seeded"
    assert torch.equal(vit(x), plain), "hooks removed"
    with features.ghost_branches(vit, 1e-9):
        assert torch.allclose(vit(x), plain, atol=1e-5)
    with pytest.raises(ValueError, match="ghost"):
        HardenConfig(ghost=1.0)


def test_sgm_is_on_for_transfer_and_off_white_box():
    from advx.engine.config import TRANSFER_SKIP_GAMMA

    assert HardenConfig().resolved(white_box=False).skip_gamma == TRANSFER_SKIP_GAMMA < 1
    assert HardenConfig().resolved(white_box=True).skip_gamma == 1.0
    assert HardenConfig(skip_gamma=0.3).resolved(white_box=True).skip_gamma == 0.3
    import advx

    def attack(verifier):
        return advx.Hardener(LABELS, surrogates=[TinyNet(0, "s")], verifiers=[verifier],
                             config=HardenConfig(transforms="none")).scheduler.attack

    assert attack(TinyNet(0, "v")).skip_gamma == TRANSFER_SKIP_GAMMA
    assert attack(TinyNet(0, "s")).skip_gamma is None  # the verifier is the surrogate


def test_members_per_step_draws_seeded_subsets_with_the_members_own_gradient():
    from advx.engine import losses

    a, b, c = TinyNet(0, "a"), TinyNet(1, "b"), TinyNet(2, "c")
    x, y = rand_images(2), torch.tensor([0, 1])
    obj = losses.Objective("margin")
    ens = Ensemble([a, b, c])
    _, only_b = ens.loss_and_grad(x, y, obj, members=[1])
    _, alone = Ensemble([b]).loss_and_grad(x, y, obj)
    assert torch.equal(only_b, alone), "one member: exactly its own normalised gradient"
    _, ab = ens.loss_and_grad(x, y, obj, members=[0, 1])
    _, pair = Ensemble([a, b]).loss_and_grad(x, y, obj)
    assert torch.allclose(ab, pair, atol=1e-6), "weights renormalised over the chosen members"
    for bad in ([], [3], [0, 0]):
        with pytest.raises(ValueError, match="members"):
            ens.loss_and_grad(x, y, obj, members=bad)

    def draws(seed, k):
        atk = MIFGSM(ens, eps_01=0.03, alpha_01=0.01, members_per_step=k,
                     generator=torch.Generator().manual_seed(seed))
        return [atk.draw_members(ens) for _ in range(30)]

    d = draws(0, 1)
    assert d == draws(0, 1), "seeded"
    assert all(len(m) == 1 for m in d) and {m[0] for m in d} == {0, 1, 2}
    assert all(len(m) == 2 and m[0] < m[1] for m in draws(0, 2))
    assert draws(0, 3) == [None] * 30 and draws(0, None) == [None] * 30  # everyone, every step
    with pytest.raises(ValueError, match="members_per_step"):
        HardenConfig(members_per_step=0)


def test_geometry_eot_replaces_the_preprocessing_of_members_that_take_one(effnet):
    from advx.engine import losses
    from advx.engine.views import Geometry, GeometryDraw, get_preset

    x, y = rand_images(2, 40), torch.tensor([0, 1])
    obj = losses.Objective("margin")
    geo = Geometry(crop=1.0, interpolation="bicubic", antialias=False)
    ens = Ensemble([effnet, TinyNet(0, "plain")])  # TinyNet has no geometry: keeps its own
    _, g_own = ens.loss_and_grad(x, y, obj, members=[0])
    _, g_geo = ens.loss_and_grad(x, y, obj, members=[0], geometry=geo)
    _, g_ref = Ensemble([lambda_geometry(effnet, geo)]).loss_and_grad(x, y, obj)
    assert torch.allclose(g_geo, g_ref, atol=1e-6) and not torch.allclose(g_geo, g_own)
    _, t_own = ens.loss_and_grad(x, y, obj, members=[1])
    _, t_geo = ens.loss_and_grad(x, y, obj, members=[1], geometry=geo)
    assert torch.equal(t_own, t_geo)

    draw = GeometryDraw(p=0.5)
    got = [draw(torch.Generator().manual_seed(s)) for s in range(200)]
    assert got == [draw(torch.Generator().manual_seed(s)) for s in range(200)], "seeded"
    geos = [d for d in got if d is not None]
    assert 60 < len(geos) < 140
    assert {d.crop == 1.0 for d in geos} == {True, False} and all(d.crop >= 0.8 for d in geos)
    assert {d.interpolation for d in geos} == {"bilinear", "bicubic", "area"}
    assert {d.fit for d in geos} == {"squash", "letterbox"}
    assert GeometryDraw(p=0)(None) is None
    assert get_preset("solver").geometry is not None and get_preset("jpeg").geometry is None


def lambda_geometry(model, geometry):
    """``model`` with ``geometry`` fixed as its preprocessing (a reference for the test)."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, images):
            return self.inner(images, geometry=geometry)

    return Fixed()


def test_adaptive_eot_weights_follow_the_views_still_failing():
    from advx.engine.scoring import Verdict, failing_shares
    from advx.engine.views import eot_weights, get_preset, sample_eot, stands_for

    p = get_preset("solver")
    names = {str(t): [v.name for v in p.views if stands_for(t, v)] for t in p.eot}
    assert names["identity"] == ["own", "whole-tile"]
    assert names["jpeg50-95"] == ["jpeg75", "jpeg50"] and names["real-nlmeans10"] == ["nlmeans"]
    assert names["softmedian3"] == ["median3"] and names["resize0.5-1"] == ["resize0.75"]

    # 4 rows, one verifier: own fooled by all, jpeg50 by half, nlmeans never scored (lazy)
    nan, hi, lo = float("nan"), 5.0, -1.0
    by_view = {"v": {"own": torch.tensor([hi, hi, hi, hi]),
                     "jpeg50": torch.tensor([hi, lo, hi, lo]),
                     "nlmeans": torch.tensor([nan, nan, nan, nan])}}
    verdict = Verdict(torch.zeros(4), {}, {}, by_view, {}, torch.zeros(4), torch.zeros(4))
    shares = failing_shares(verdict, 0.5)
    assert shares == {"own": 0.0, "jpeg50": 0.5, "nlmeans": 1.0}
    w = dict(zip(names, eot_weights(p, shares, 2.0).tolist(), strict=True))
    assert w["identity"] == 1.0 and w["jpeg50-95"] == 2.0 and w["real-nlmeans10"] == 3.0
    assert w["crop0.06shift0.03"] == 1.0  # stands for no view of the matrix: the floor
    assert eot_weights(p, shares, 0.0).tolist() == [1.0] * len(p.eot)

    # a draw follows the weights (all on the median: always the median, which is deterministic)
    x = rand_images(2, 16)
    only = torch.zeros(len(p.eot))
    only[[str(t) for t in p.eot].index("softmedian3")] = 1.0
    median = p.eot[[str(t) for t in p.eot].index("softmedian3")]
    g = torch.Generator().manual_seed(0)
    assert all(torch.equal(sample_eot(p, x, g, only), median(x)) for _ in range(5))
    with pytest.raises(ValueError, match="eot_focus"):
        HardenConfig(eot_focus=-1)
    assert HardenConfig().eot_focus == 0.0 == HardenConfig().resolved(white_box=True).eot_focus


def test_scale_invariance_scales_intensities_by_a_power_of_two():
    from advx.engine.transforms import AUGMENTS

    x = rand_images(2, 8)
    si = AUGMENTS["si"]()
    seen = set()
    for s in range(20):
        y = si(x, torch.Generator().manual_seed(s))
        k = round(float((x.sum() / y.sum()).log2()))
        assert 0 <= k < si.copies and torch.equal(y, x / 2**k)
        assert torch.equal(y, si(x, torch.Generator().manual_seed(s))), "seeded"
        seen.add(k)
    assert len(seen) > 2
    assert HardenConfig(augments=("si",)).augments == ("si",)


def test_nesterov_takes_the_gradient_at_the_momentum_s_look_ahead():
    model, x, y = TinyNet(), rand_images(3), torch.tensor([0, 1, 2])
    attack = MIFGSM(model, eps_01=8 / 255, alpha_01=2 / 255, decay=0.9, nesterov=True,
                    random_start=False)
    seen = []
    gradient = attack.gradient

    def spy(adv, *args, **kwargs):
        seen.append(adv.clone())
        return gradient(adv, *args, **kwargs)

    attack.gradient = spy
    state = attack.init(x)
    attack.step(state, y)
    assert torch.equal(seen[0], x), "no momentum yet: the look-ahead is the point itself"
    adv, momentum = state.adv.clone(), state.momentum.clone()
    assert momentum.abs().sum() > 0
    attack.step(state, y)
    ahead = torch.minimum(torch.maximum(adv + (2 / 255) * momentum.sign(), x - 8 / 255),
                          x + 8 / 255).clamp(0, 1)
    assert torch.allclose(seen[1], ahead)
    assert (state.adv - x).abs().max() <= 8 / 255 + 1e-6
    plain = MIFGSM(model, eps_01=8 / 255, alpha_01=2 / 255, decay=0.9, nesterov=False,
                   random_start=False)
    plain_state = plain.init(x)
    for _ in range(2):
        plain.step(plain_state, y)
    assert not torch.equal(plain_state.adv, state.adv), "the look-ahead changes the second step"
    assert HardenConfig().nesterov and HardenConfig().resolved(white_box=False).attack == "mifgsm"
