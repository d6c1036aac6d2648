"""engine/scheduler: continuous batching, verification of exactly what is delivered, the
perceptual budget (rungs, texture mask, SSIM floor), out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toys import (
    LABELS,
    Fixed,
    RightUntilAttacked,
    TinyNet,
    ViewRecorder,
    cfg,
    rand_images,
    uint8_images,
)

import advx
from advx.engine import metrics
from advx.engine.attacks import PGD
from advx.engine.devices import is_oom
from advx.engine.pixels import quantise
from advx.engine.schedule.scheduler import Scheduler
from advx.engine.tasks.base import Verdict
from advx.engine.tasks.labels import losses
from advx.engine.tasks.labels.models import LabelModels
from advx.engine.tasks.labels.scoring import ViewScores
from advx.engine.views import transforms
from advx.engine.views.view import views_of

CPU = torch.device("cpu")


def scheduler(surrogates, verifiers, config, relax_mask=False) -> Scheduler:
    """A labels scheduler over LABELS attacking with PGD through ``surrogates``."""
    models = LabelModels(LABELS, surrogates, verifiers, device=CPU)
    attack = PGD(models.ensemble(), eps_01=config.eps_01, alpha_01=config.alpha_01,
                 steps=config.steps)
    return Scheduler(attack, models, config, CPU, relax_mask=relax_mask)


def test_already_misclassified_costs_no_steps():
    images = uint8_images(3)
    stub = Fixed(answer=2)  # always "bus"
    res = advx.harden(images, ["cat", "dog", "bus"], label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[stub], config=cfg())
    assert [r.steps for r in res[:2]] == [0, 0]
    assert [r.stop_reason for r in res[:2]] == ["already_fooled"] * 2
    assert np.array_equal(res[0].image, images[0]) and res[0].linf == 0
    assert res[2].status == "unfooled" and res[2].steps == 10
    # out of steps (on the same pass as the top rung's no-progress stop, where that exists)
    assert res[2].stop_reason in ("max_steps", "no_progress")


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


def test_every_view_scored_on_exactly_the_delivered_pixels():
    rec = ViewRecorder()
    sched = scheduler([TinyNet()], [rec], cfg(transforms="solver", eps=8))
    delivered = quantise(rand_images(3, 32))
    y, t = sched.models.encode(["cat", "dog", "bus"], None)
    assert y.tolist() == [0, 1, 2] and t.tolist() == [-1, -1, -1]
    verdict = sched._timed(sched.check.final, delivered, delivered, y, t)
    assert isinstance(verdict, Verdict) and isinstance(verdict.detail[0], ViewScores)
    scores = verdict.detail[0]
    matrix = views_of("solver")
    assert [c[1] for c in rec.calls] == [v.geometry for v in matrix if v.cost == 1] + [
        v.geometry for v in matrix if v.cost > 1]
    seen = {id(v): x for v, (x, _) in zip(
        [v for v in matrix if v.cost == 1] + [v for v in matrix if v.cost > 1],
        rec.calls, strict=True)}
    for view in matrix:
        assert torch.equal(seen[id(view)], view.images(delivered)), view.name
    assert set(scores.by_view["views"]) == {v.name for v in matrix}
    need = sched.config.required_margin
    assert torch.equal(verdict.done, scores.mins >= need)
    assert torch.equal(verdict.score, scores.score)
    # lazily (during the attack) the same rows are found fooled
    rec.calls.clear()
    lazy = sched.check.lazy(delivered, y, t)
    assert torch.equal(lazy.done, verdict.done)
    assert sched.time["verify"] > 0


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

    h = Hardener(surrogates=[Fragile()], verifiers=[Fixed(answer=0)],
                 config=cfg(batch_size=4), label_set=LABELS)
    res = h.run(uint8_images(4), ["cat"] * 4)  # never fooled: every image takes every step
    assert len(res) == 4 and h.scheduler.chunk == 1
    assert all(r.steps == 10 and r.linf > 0 for r in res)
    assert is_oom(torch.OutOfMemoryError("x")) and is_oom(RuntimeError("CUDA out of memory."))
    assert not is_oom(RuntimeError("shape mismatch"))


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


def test_minimal_perturbation_ladder():
    images = uint8_images(3, 24)
    surrogate = TinyNet()
    v = RightUntilAttacked(images, ["cat", "dog", "bus"], surrogate)
    res = advx.harden(images, ["cat", "dog", "bus"], label_set=LABELS, surrogates=[surrogate],
                      verifiers=[v], config=cfg(eps=16, steps=30, eps_rungs=3, ssim_floor=None,
                                                texture_mask=None))
    for r in res:  # fooled on the first rung needs no more than eps / 4
        if r.status == "fooled" and r.fooled_at <= 10 // 2:
            assert r.linf <= 16 / 4 + 1e-3


def test_the_rungs_and_the_relaxed_last_rung():
    def rungs(relax, **kw):
        s = scheduler([TinyNet()], [TinyNet(1, "v")],
                      cfg(eps=8, steps=40, verify_every=5, **kw), relax_mask=relax)
        return [round(e * 255, 6) for e in s.rung_eps_01], s.rung_masked, s.rung_steps

    assert rungs(False) == ([2.0, 4.0, 8.0], [True] * 3, 10)
    assert rungs(True) == ([2.0, 4.0, 8.0, 8.0], [True, True, True, False], 5)
    assert rungs(True, texture_mask=None) == ([2.0, 4.0, 8.0], [False] * 3, 10)
    assert rungs(False, eps_rungs=1) == ([8.0], [True], 20)


class NoiseSaysBus:
    """A verifier that answers "bus" on noisy tiles and "cat" on smooth ones: a 3x3 median
    (which removes the noise) turns its answer back to "cat"."""

    name, labels = "noise-says-bus", LABELS

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rough = (images[..., 1:] - images[..., :-1]).abs().mean((1, 2, 3))
        logits = torch.zeros(len(images), len(LABELS))
        logits[:, LABELS.index("bus")] = torch.where(rough > 0.2, 5.0, -5.0)
        logits[:, LABELS.index("cat")] = 1.0
        return logits


@pytest.mark.parametrize("decide", [("own",), ("own", "median3")])
def test_a_deciding_view_keeps_an_image_and_a_reported_one_does_not(monkeypatch, decide):
    from advx.engine.views import presets

    monkeypatch.setitem(presets.PRESETS, "own-median", presets.Preset(
        "own-median", ("own", "median3"), ("identity",)))
    images = uint8_images(2, 32)
    res = advx.harden(images, ["cat", "cat"], label_set=LABELS, surrogates=[TinyNet()],
                      verifiers=[NoiseSaysBus()],
                      config=cfg(transforms="own-median", decide=decide, steps=6))
    for r in res:
        assert r.margins_by_view["noise-says-bus"]["own"] >= 0.5  # wrong as delivered
        assert r.margins_by_view["noise-says-bus"]["median3"] < 0  # right after the median
        assert r.deciding == {"noise-says-bus": list(decide)}
        assert not r.fooled_every_view
        if decide == ("own",):  # the median only reports: done at admission
            assert (r.status, r.steps, r.stop_reason) == ("fooled", 0, "already_fooled")
        else:  # the median decides: the image stays in the batch
            assert r.status == "unfooled" and r.steps > 0


def test_a_verifier_that_is_also_a_surrogate_is_held_to_every_view(monkeypatch):
    from advx.engine.views import presets

    monkeypatch.setitem(presets.PRESETS, "own-median", presets.Preset(
        "own-median", ("own", "median3"), ("identity",), decide=("own",)))
    net = TinyNet()
    sched = scheduler([net], [net, NoiseSaysBus()], cfg(transforms="own-median"))
    assert sched.check.deciding == {"tiny": ("own", "median3"), "noise-says-bus": ("own",)}
