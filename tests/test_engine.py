"""The attack engine: exact invariants of losses, transforms, attacks, ensemble and scheduler."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import advx
from advx.engine import losses, metrics, transforms, views
from advx.engine.attacks import MIFGSM, PGD, PGDL2
from advx.engine.config import HardenConfig
from advx.engine.ensemble import Ensemble

LABELS = ("cat", "dog", "bus")


class TinyNet(nn.Module):
    """A small random-init conv classifier over LABELS (images in [0, 1], any size)."""

    def __init__(self, seed: int = 0, name: str = "tiny", scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.name, self.labels, self.scale = name, LABELS, scale
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, len(LABELS)),
        )
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x - 0.5) * 50


class Fixed:
    """A verifier stub that always answers ``answer`` and records what it was shown."""

    def __init__(self, answer: int, name: str = "stub") -> None:
        self.name, self.labels, self.answer, self.seen = name, LABELS, answer, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        logits = torch.zeros(len(images), len(LABELS))
        logits[:, self.answer] = 5.0
        return logits


def rand_images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255)


# --- losses, metrics, transforms -----------------------------------------------------------------


def test_losses_exact():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(losses.logit_gap(logits, y), torch.tensor([-2.0, 3.0]))
    assert torch.equal(losses.targeted_margin_loss(logits, torch.tensor([1, 2])),
                       torch.tensor([-2.0, 3.0]))
    ce = losses.ce_loss(logits, y)
    assert torch.allclose(ce, -torch.log_softmax(logits, 1)[[0, 1], [0, 1]])
    assert torch.equal(losses.margin_loss(logits * 100, y), torch.tensor([-200.0, 50.0]))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("hinge", False)


def test_metrics_exact():
    import skimage.metrics

    a = rand_images(2, 32)
    b = (a + 4 / 255 * torch.sign(torch.randn_like(a))).clamp(0, 1)
    assert torch.allclose(metrics.linf(b, a), torch.full((2,), 4 / 255), atol=1e-6)
    mse = (b - a).pow(2).flatten(1).mean(1)
    assert torch.allclose(metrics.psnr(b, a), 10 * torch.log10(1 / mse))
    assert metrics.psnr(a, a)[0] == float("inf")
    for i in range(2):
        want = skimage.metrics.structural_similarity(
            b[i].permute(1, 2, 0).double().numpy(), a[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=2)
        assert abs(float(metrics.ssim(b[i : i + 1], a[i : i + 1])) - want) < 1e-5


@pytest.mark.parametrize("preset", sorted(views.PRESETS))
def test_transforms_keep_shape_and_range(preset):
    x = rand_images(2, 40)
    p = views.get_preset(preset)
    g = torch.Generator().manual_seed(0)
    for t in p.eot:
        y = t(x, g)
        assert y.shape == x.shape and y.min() >= -1e-6 and y.max() <= 1 + 1e-6, str(t)
    for v in p.views:  # views are deterministic
        a = v.images(x)
        assert torch.equal(a, v.images(x)), v.name
        assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6, v.name


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


def test_input_diversity_and_ti_shapes():
    x = rand_images(2, 30)
    g = torch.Generator().manual_seed(0)
    assert transforms.InputDiversity(prob=1.0)(x, g).shape == x.shape
    assert torch.equal(transforms.InputDiversity(prob=0.0)(x, g), x)
    k = transforms.ti_kernel(5)
    assert k.shape == (3, 1, 5, 5) and torch.allclose(k.sum((1, 2, 3)), torch.ones(3))
    assert transforms.smooth_gradient(x, k).shape == x.shape


# --- attacks ---------------------------------------------------------------------------------


ATTACKS = [
    (PGD, {}),
    (MIFGSM, {"decay": 1.0}),
    (MIFGSM, {"nesterov": True, "diversity": transforms.InputDiversity(0.5), "ti_size": 5}),
    (MIFGSM, {"diversity": transforms.InputDiversity(1.0), "ti_size": 5}),
    (PGD, {"eot": views.get_preset("robust"), "eot_samples": 2}),
    (PGD, {"loss": "ce"}),
]


@pytest.mark.parametrize(("cls", "kw"), ATTACKS)
def test_attack_invariants(cls, kw):
    model = TinyNet()
    x, y = rand_images(4), torch.tensor([0, 1, 2, 0])
    eps = 8 / 255

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return cls(model, eps_01=eps, alpha_01=2 / 255, steps=10, generator=g, **kw)(x, y)

    adv = run(0)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, run(0)), "seeded runs repeat exactly"
    assert not torch.equal(adv, run(1))
    loss_fn = losses.get_loss(kw.get("loss", "margin"), False)
    assert loss_fn(model(adv), y).mean() > loss_fn(model(x), y).mean(), "the loss rises"


def test_pgd_l2_invariants():
    model, x, y = TinyNet(), rand_images(3), torch.tensor([0, 1, 2])
    attack = PGDL2(model, eps_01=0.5, alpha_01=0.1, steps=10,
                   generator=torch.Generator().manual_seed(0))
    adv = attack(x, y)
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert losses.logit_gap(model(adv), y).mean() > losses.logit_gap(model(x), y).mean()


def test_targeted_attack_moves_towards_target():
    model, x = TinyNet(), rand_images(4)
    y, t = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 0, 2])
    adv = PGD(model, eps_01=16 / 255, alpha_01=2 / 255, steps=20, targeted=True)(x, y, t)
    assert (losses.logit_gap(model(adv), t) < losses.logit_gap(model(x), t)).all()
    with pytest.raises(ValueError, match="target for every row"):
        PGD(model, eps_01=0.1, alpha_01=0.01, targeted=True)(x, y)


def test_ensemble_gradients_normalised_per_model():
    a, b = TinyNet(0, "a"), TinyNet(1, "b")
    x, y = rand_images(2), torch.tensor([0, 1])
    _, g1 = Ensemble([a, b]).loss_and_grad(x, y, losses.Objective("margin"))
    plain = losses.Objective("margin", kappa=float("inf"))
    _, g2 = Ensemble([a, TinyNet(1, "b", scale=1000.0)]).loss_and_grad(x, y, plain)
    assert torch.allclose(g1, g2, atol=1e-5), "one model's gradient scale must not dominate"
    _, raw = Ensemble([a, TinyNet(1, "b", scale=1000.0)], normalize_grads=False).loss_and_grad(
        x, y, plain)
    assert not torch.allclose(g1 / g1.abs().mean(), raw / raw.abs().mean(), atol=1e-2)
    with pytest.raises(ValueError):
        Ensemble([a], weights=[-1.0])


# --- scheduler and API ----------------------------------------------------------------------------


def uint8_images(n: int, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def cfg(**kw) -> HardenConfig:
    base = dict(steps=10, verify_every=2, transforms="none", batch_size=2, diversity_prob=0.0,
                patience=0)
    return HardenConfig(**{**base, **kw})


def test_harden_invariants_and_repeatability():
    images, labels = uint8_images(5), ["cat", "dog", "bus", "cat", "dog"]
    surrogate, verifier = TinyNet(0, "s"), TinyNet(0, "v")  # white-box: must be fooled

    def run():
        return advx.harden(images, labels, label_set=LABELS, surrogates=[surrogate],
                           verifiers=[verifier], config=cfg(eps=8))

    results = run()
    assert [r.index for r in results] == list(range(5))
    for r, img in zip(results, images, strict=True):
        diff = np.abs(r.image.astype(int) - img.astype(int))
        assert r.image.dtype == np.uint8 and r.image.shape == img.shape
        assert diff.max() <= 8 and r.linf <= 8 + 1e-4
        assert r.status == "fooled" and r.predictions_after["v"] != r.label
        assert r.margins["v"] >= 0.5 and 0 <= r.steps <= 10
        assert r.ssim <= 1 and r.psnr > 20
    again = run()
    assert all(np.array_equal(a.image, b.image) for a, b in zip(results, again, strict=True))


def test_already_misclassified_costs_no_steps():
    images = uint8_images(3)
    stub = Fixed(answer=2)  # always "bus"
    res = advx.harden(images, ["cat", "dog", "bus"], label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[stub], config=cfg())
    assert [r.steps for r in res[:2]] == [0, 0]
    assert [r.stop_reason for r in res[:2]] == ["already_fooled"] * 2
    assert np.array_equal(res[0].image, images[0]) and res[0].linf == 0
    assert res[2].status == "unfooled" and res[2].steps == 10 and res[2].stop_reason == "max_steps"


class RightUntilAttacked:
    """A verifier that reads every clean image right (its true label, decisively) and answers
    like the surrogate on anything else: only attacked pixels can fool it. It records what it
    was shown, so what it checks can be compared with what is delivered."""

    def __init__(self, clean: list[np.ndarray], labels: list[str], surrogate: nn.Module,
                 name: str = "right-until-attacked", jpeg: int | None = None) -> None:
        self.name, self.labels, self.surrogate = name, LABELS, surrogate
        self.clean = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2).float() / 255
        if jpeg is not None:  # the clean images as a JPEG delivery shows them
            self.clean = transforms.jpeg_roundtrip(self.clean, jpeg)
        self.y = [LABELS.index(lab) for lab in labels]
        self.seen: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        with torch.no_grad():
            logits = self.surrogate(images).clone()
        for i, x in enumerate(images):
            d = (self.clean - x).abs().flatten(1).amax(1)
            if float(d.min()) == 0:  # a clean image: right, by a wide margin
                logits[i] = 0
                logits[i, self.y[int(d.argmin())]] = 50
        return logits


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_verification_sees_exactly_what_is_delivered(fmt):
    images = uint8_images(3)
    labels = ["cat", "dog", "bus"]
    surrogate = TinyNet()
    v = RightUntilAttacked(images, labels, surrogate, jpeg=70 if fmt == "jpeg" else None)
    res = advx.harden(images, labels, label_set=LABELS, surrogates=[surrogate], verifiers=[v],
                      config=cfg(eps=16, steps=20, output_format=fmt, jpeg_quality=70))
    first = v.seen[0]
    assert torch.equal(first, v.clean[: len(first)]), "admission scores the delivered clean"
    attacked = [x for batch in v.seen[1:] for x in batch]
    assert attacked, "attacked candidates were verified"
    assert all(torch.equal((x * 255).round(), x * 255) for x in attacked), "8-bit pixels"
    for r in res:
        assert r.status == "fooled" and r.steps > 0, "right until attacked: attacks were needed"
        delivered = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 255
        if fmt == "jpeg":
            delivered = transforms.jpeg_roundtrip(delivered, 70)
        # the verifier saw exactly the delivered bytes
        assert any(torch.equal(x, delivered[0]) for batch in v.seen for x in batch)
        z = v(delivered)
        assert float(losses.fooling_margin(z, torch.tensor([LABELS.index(r.label)]))[0]) >= 0.5


class ViewRecorder(TinyNet):
    """A verifier that records each call with its geometry."""

    def __init__(self) -> None:
        super().__init__(3, "views")
        self.calls: list[tuple[torch.Tensor, object]] = []

    def forward(self, x, geometry=None):
        self.calls.append((x.clone(), geometry))
        if geometry is not None:
            x = geometry.apply(x, (20, 20))
        return super().forward(x)


def test_every_view_scored_on_exactly_the_delivered_pixels():
    from advx.engine.scheduler import Scheduler, quantise

    rec = ViewRecorder()
    sched = Scheduler(PGD(TinyNet(), eps_01=8 / 255, alpha_01=2 / 255), [TinyNet()], [rec], LABELS,
                      cfg(transforms="solver"), torch.device("cpu"))
    delivered = quantise(rand_images(3, 32))
    y, t = torch.tensor([0, 1, 2]), torch.tensor([-1, -1, -1])
    verdict = sched.verify(delivered, y, t)
    preset = views.get_preset("solver")
    assert [c[1] for c in rec.calls] == [v.geometry for v in preset.views if v.cost == 1] + [
        v.geometry for v in preset.views if v.cost > 1]
    seen = {id(v): x for v, (x, _) in zip(
        [v for v in preset.views if v.cost == 1] + [v for v in preset.views if v.cost > 1],
        rec.calls, strict=True)}
    for view in preset.views:
        assert torch.equal(seen[id(view)], view.images(delivered)), view.name
    assert set(verdict.by_view["views"]) == {v.name for v in preset.views}
    # lazily, a view is scored only for rows every earlier view finds fooled; non-local means
    # (costly) comes last
    rec.calls.clear()
    lazy = sched.verify(delivered, y, t, lazy=True)
    nlm = lazy.by_view["views"]["nlmeans"]
    cheap = torch.stack([torch.nan_to_num(m, nan=float("inf"))
                         for k, m in lazy.by_view["views"].items() if k != "nlmeans"]).amin(0)
    assert torch.equal(torch.isnan(nlm), cheap < sched.config.required_margin)
    need = sched.config.required_margin
    assert torch.equal(lazy.mins < need, verdict.mins < need)


def test_views_sharing_a_denoiser_filter_each_row_once(monkeypatch):
    """Two verifiers and two views of non-local means (one with a geometry of its own): the
    filter runs once per row, and every logit equals scoring that view alone (to float
    rounding: the network runs on another copy of the same pixels)."""
    from advx.engine.geometry import Geometry
    from advx.engine.scheduler import quantise
    from advx.engine.scoring import score_views

    rows: list[int] = []
    real = views.NonLocalMeans.__call__

    def counting(self, x, g=None):
        rows.append(len(x))
        return real(self, x, g)

    monkeypatch.setattr(views.NonLocalMeans, "__call__", counting)
    a, b = ViewRecorder(), ViewRecorder()
    b.name = "b"
    nlm_whole = views.View("nlm-whole", denoise=views.NonLocalMeans(),
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
                                       views.score(v, delivered, view).float())
    # lazily, the second view of the filter reuses the rows the first one filtered
    rows.clear()
    score_views([a, b], perms, matrix, delivered, y, t, required=-1e9, lazy=True)
    assert rows == [4]


def test_a_view_smaller_than_the_graph_goes_through_its_own_preprocessing(tiny_models):
    """A 96 px solver view into a fixed-size export: resized by the export's own preprocessing,
    never skipped."""
    from advx.engine.views import View
    from advx.export import OnnxVerifier, export_cached

    v = OnnxVerifier(export_cached(tiny_models["timm"], LABELS))
    x = rand_images(2, 160)
    view = View("lowres96", prescale=96)
    z = views.score(v, x, view)
    small = views.resize(x, (96, 96), "bilinear", True)
    assert small.shape[-1] == 96 and v.manifest.input_size != 96
    assert torch.allclose(z, v(small), atol=1e-6)
    assert not torch.allclose(z, v(x), atol=1e-4), "the low-resolution view changes the answer"


def test_continuous_batching_and_size_buckets():
    images = uint8_images(5, 24) + uint8_images(2, 31, seed=1)
    labels = ["cat", "dog", "bus", "cat", "dog", "bus", "cat"]
    seen = []
    res = advx.harden(images, labels, label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[TinyNet(0, "v")], config=cfg(batch_size=3),
                      on_result=lambda r: seen.append(r.index))
    assert sorted(seen) == list(range(7)) and len(res) == 7
    assert res[5].image.shape == (31, 31, 3)


def test_out_of_memory_halves_the_batch():
    class Fragile(TinyNet):
        def forward(self, x):
            if x.requires_grad and len(x) > 1 and x.shape[-1] == 24:  # not the model check
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    from advx.engine.api import Hardener

    h = Hardener(LABELS, surrogates=[Fragile()], verifiers=[Fixed(answer=0)],
                 config=cfg(batch_size=4))
    res = h.run(uint8_images(4), ["cat"] * 4)  # never fooled: every image takes every step
    assert len(res) == 4 and h.scheduler.chunk == 1
    assert all(r.steps == 10 and r.linf > 0 for r in res)


def test_ssim_floor_and_linf_cap_hold_on_the_delivered_file():
    images = uint8_images(4, 32)
    for fmt in ("png", "jpeg"):
        res = advx.harden(images, ["cat", "dog", "bus", "cat"], label_set=LABELS,
                          surrogates=[TinyNet()], verifiers=[Fixed(answer=0)],
                          config=cfg(eps=32, ssim_floor=0.95, steps=20, output_format=fmt,
                                     jpeg_quality=90))
        for r in res:
            if r.stop_reason == "already_fooled":
                continue
            assert r.linf > 0
            x = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 255
            clean = torch.from_numpy(images[r.index]).permute(2, 0, 1)[None].float() / 255
            if fmt == "jpeg":
                x = transforms.jpeg_roundtrip(x, 90)
            assert float(metrics.ssim(x, clean)) >= 0.95 and r.ssim >= 0.95
            if fmt == "png":
                diff = np.abs(r.image.astype(int) - images[r.index].astype(int))
                assert diff.max() <= 32


def test_minimal_perturbation_ladder_and_texture_mask():
    from advx.engine.scheduler import texture_mask

    flat = torch.full((1, 3, 32, 32), 0.5)
    busy = rand_images(1, 32)
    m = texture_mask(torch.cat([flat, busy]), 0.35)
    assert torch.allclose(m[0], torch.full_like(m[0], 0.35))
    assert m[1].mean() > 0.9
    images = uint8_images(3, 24)
    surrogate = TinyNet()
    v = RightUntilAttacked(images, ["cat", "dog", "bus"], surrogate)
    res = advx.harden(images, ["cat", "dog", "bus"], label_set=LABELS, surrogates=[surrogate],
                      verifiers=[v], config=cfg(eps=16, steps=30, eps_rungs=3, ssim_floor=None,
                                                texture_mask=None, random_start=False))
    for r in res:  # fooled on the first rung needs no more than eps / 4
        if r.status == "fooled" and r.fooled_at <= 10 // 2:
            assert r.linf <= 16 / 4 + 1e-3


def test_targeted_run_and_argument_errors():
    images = uint8_images(2)
    res = advx.harden(images, ["cat", "dog"], label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[TinyNet(0, "v")], targets=["bus", "bus"],
                      config=cfg(targeted=True, eps=16, steps=20))
    for r in res:
        assert r.target == "bus"
        assert (r.predictions_after["v"] == "bus") == (r.status == "fooled")
    with pytest.raises(ValueError, match="target"):
        advx.harden(images, ["cat", "dog"], label_set=LABELS, surrogates=[TinyNet()],
                    verifiers=[], config=cfg(targeted=True))
    with pytest.raises(ValueError, match="not in the label set"):
        advx.harden(images, ["cat", "emu"], label_set=LABELS, surrogates=[TinyNet()],
                    verifiers=[])
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        advx.harden(images, ["cat"], label_set=LABELS, surrogates=[TinyNet()], verifiers=[])
    with pytest.raises(ValueError, match="eps"):
        HardenConfig(eps=0)
    with pytest.raises(ValueError, match="transform preset"):
        dataclasses.replace(HardenConfig(), transforms="blur")


def test_surrogate_checks():
    from advx.engine.checks import ModelCheckError, check_surrogate

    class Probs(TinyNet):
        def forward(self, x):
            return super().forward(x).softmax(-1)

    class Dropout(TinyNet):
        def forward(self, x):
            return super().forward(x) + torch.randn(len(x), 3)

    check_surrogate(TinyNet())
    with pytest.raises(ModelCheckError, match="probabilities"):
        check_surrogate(Probs())
    with pytest.raises(ModelCheckError, match="deterministic"):
        check_surrogate(Dropout())


def test_zero_shot_end_to_end(tiny_models):
    """A tiny random-init open_clip surrogate, and the same model exported to ONNX as verifier."""
    name = tiny_models["open_clip"]
    images = uint8_images(3, 32)
    res = advx.harden(images, ["cat", "dog", "bus"], label_set=LABELS, surrogates=[name],
                      verifiers=[name], config=cfg(eps=8, steps=10))
    for r in res:
        assert set(r.predictions_before) == {name} and name in r.margins
        assert np.abs(r.image.astype(int) - images[r.index].astype(int)).max() <= 8
    assert sum(r.fooled for r in res) >= 2  # white-box on a tiny model


def test_public_api_and_library_never_imports_cli():
    import subprocess
    import sys

    for name in advx.__all__:
        assert getattr(advx, name) is not None, name
    code = ("import sys, advx, advx.engine.api, advx.export, advx.engine.zoo; "
            "print(any(m.startswith('advx.cli') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seeded_runs_repeat_exactly_under_the_solver_views():
    images, labels = uint8_images(3, 32), ["cat", "dog", "bus"]

    class Geo(TinyNet):
        def forward(self, x, geometry=None):
            return super().forward(x if geometry is None else geometry.apply(x, (24, 24)))

    def run():
        return advx.harden(images, labels, label_set=LABELS, surrogates=[TinyNet()],
                           verifiers=[Geo(1, "v")],
                           config=cfg(transforms="solver", steps=6, eps=8, seed=3))

    with pytest.raises(ValueError, match="cannot take another preprocessing"):
        advx.harden(images, labels, label_set=LABELS, surrogates=[TinyNet()],
                    verifiers=[TinyNet(1, "v")], config=cfg(transforms="solver"))

    a, b = run(), run()
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and x.margins_by_view == y.margins_by_view
        assert set(x.margins_by_view["v"]) == {v.name for v in views.get_preset("solver").views}


def test_no_progress_stops_an_image_early():
    res = advx.harden(uint8_images(2), ["cat", "cat"], label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[Fixed(answer=0)],  # says "cat" whatever it is shown
                      config=cfg(steps=40, patience=2, eps_rungs=1, texture_mask=None))
    for r in res:
        assert r.stop_reason == "no_progress" and r.status == "unfooled"
        assert r.steps == 2 * 2  # two passes (of 2 steps) find nothing better than clean


def test_micro_batches_give_the_batch_gradient():
    """Members run their backward passes a few rows at a time (bounded memory on the CPU): the
    loss and gradient, through a shared input transform, equal the whole batch's."""
    from advx.engine.ensemble import micro_batch_size

    torch.manual_seed(0)
    ens = Ensemble([TinyNet(), TinyNet()], [1.0, 2.0])
    x = rand_images(5, 24)
    y = torch.tensor([0, 1, 2, 0, 1])

    def transform(z: torch.Tensor) -> torch.Tensor:  # nonlinear and size-changing, like DI
        return torch.nn.functional.interpolate(z.pow(1.1), size=(28, 28), mode="bilinear")

    ens.micro_batch = 64
    loss_all, grad_all = ens.loss_and_grad(x, y, transform=transform)
    for chunk in (1, 2, 3):
        ens.micro_batch = chunk
        loss, grad = ens.loss_and_grad(x, y, transform=transform)
        assert torch.allclose(loss, loss_all, atol=1e-6)
        assert torch.allclose(grad, grad_all, atol=1e-6, rtol=1e-5)
    assert micro_batch_size((3, 224, 224), torch.device("cpu")) == 4
    assert micro_batch_size((3, 683, 1024), torch.device("cpu")) == 1
    assert micro_batch_size((3, 224, 224), torch.device("cuda")) > 1000


def test_denoisers_on_threads_give_opencv_s_own_output():
    """Non-local means runs a few tiles at a time on threads: exactly OpenCV's output for each
    tile called alone, in order."""
    import cv2

    x = rand_images(5, 40)
    frames = views._to_uint8_bgr(x)
    alone = views._from_bgr([cv2.fastNlMeansDenoisingColored(f, None, 10, 10, 7, 21)
                             for f in frames], x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(views.NonLocalMeans()(x), alone)
        torch.set_num_threads(1)
        assert torch.equal(views.NonLocalMeans()(x), alone)
    finally:
        torch.set_num_threads(threads)
    assert views.per_frame(lambda f: f * 2, [np.full(3, i) for i in range(7)])[6][0] == 12


def test_cpu_surrogate_towers_run_channels_last_with_the_same_values(tiny_models):
    """On the CPU, an ImageNet tower is put in channels_last (faster oneDNN kernels): logits and
    input gradients equal those of the same weights in the default layout."""
    from advx.engine.api import build_surrogates
    from advx.engine.zoo import create_classifier

    (m,) = build_surrogates([tiny_models["timm"]], LABELS, torch.device("cpu"))
    ref = create_classifier(tiny_models["timm"], LABELS)
    conv = next(p for p in m.core.visual.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not next(p for p in ref.core.visual.parameters()
                    if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    x = rand_images(3, 64).requires_grad_(True)
    (g,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x)[:, 0].sum(), x)
    assert torch.allclose(m(x), ref(x), atol=1e-5)
    assert torch.allclose(g, g_ref, atol=1e-6, rtol=1e-3)


def test_denoiser_threads_work_in_a_forked_child():
    """A child forked after the denoiser threads exist gets threads of its own instead of
    waiting forever on the parent's (which a fork does not copy)."""
    import os
    import signal

    views.per_frame(np.negative, [np.ones(2)] * 3)  # the parent's threads now exist
    pid = os.fork()
    if pid == 0:  # the child: the thread pool only (torch's OpenMP is not fork-safe itself)
        signal.alarm(30)
        out = views.per_frame(np.negative, [np.full(2, i) for i in range(3)])
        os._exit(0 if out[2][0] == -2 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_adaptive_eot_is_steered_by_verification_and_repeats_exactly():
    images, labels = uint8_images(3, 32), ["cat", "dog", "bus"]
    hardener = advx.Hardener(LABELS, surrogates=[TinyNet()], verifiers=[TinyNet(1, "v")],
                             config=cfg(transforms="jpeg", steps=6, eps=8, seed=3,
                                        eot_focus=2.0))
    a = hardener.run(images, labels)
    weights = hardener.scheduler.attack.eot_weights
    assert weights is not None and len(weights) == len(views.get_preset("jpeg").eot)
    assert float(weights.min()) >= 1.0 and float(weights.max()) <= 3.0
    b = hardener.run(images, labels)  # the weights start uniform again: the same run
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and x.margins_by_view == y.margins_by_view
