"""engine/api: ``advx.harden`` and the Hardener end to end on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toys import LABELS, TinyNet, ViewRecorder, cfg, rand_images, uint8_images

import advx
from advx.engine.views.view import eot_of, views_of


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


def test_results_and_records_of_the_labels_task():
    from advx.engine.results import HardenResult
    from advx.engine.tasks.labels import LabelResult

    images, labels = uint8_images(3), ["cat", "dog", "bus"]
    views = [v.name for v in views_of("jpeg")]
    results = advx.harden(images, labels, label_set=LABELS, surrogates=[TinyNet(0, "s")],
                          verifiers=[TinyNet(1, "v")], config=cfg(transforms="jpeg", eps=16))
    for r in results:
        assert isinstance(r, LabelResult) and isinstance(r, HardenResult)
        assert advx.LabelResult is LabelResult and r.task == "labels"
        assert r.deciding == {"v": views}
        # the verifier's answer under each view is right where it selects the tile's label
        for when in ("before", "after"):
            right = getattr(r, f"right_{when}")
            selected = getattr(r, f"selected_by_view_{when}")
            assert set(right) == {"v"} and list(right["v"]) == views
            assert right["v"] == {w: r.label in selected["v"][w] for w in views}
        assert r.fooled == (not any(r.right_after["v"].values()))
        rec = r.to_record()
        assert rec["task"] == "labels" and rec["label"] == r.label and "image" not in rec
        assert rec["right_after"] == r.right_after


def test_the_hardener_s_models_and_checks():
    from advx.engine.tasks.labels.models import LabelModels

    s, v = TinyNet(0, "s"), ViewRecorder()
    h = advx.Hardener("labels", surrogates=[s], verifiers=[v], config=cfg(), label_set=LABELS)
    assert h.task.name == "labels" and isinstance(h.models, LabelModels)
    assert h.models.surrogates == h.surrogates == [s] and h.verifiers == [v]
    assert h.models.ensemble().members[0] is s
    assert h.config.transforms == "none" and h.scheduler.config is h.config
    assert h.problem("cat") is None and "not in the label set" in h.problem("emu")
    assert h.check(["cat", "emu", "bus"]) == [None, h.problem("emu"), None]
    with pytest.raises(ValueError, match="targets must be in the label set"):
        h.check(["cat"], ["cat"])
    assert h.describe() == {"surrogates": ["s"], "verifiers": ["views"], "left_out": {},
                            "notes": []}
    # no preset named: the task's own
    assert advx.Hardener(surrogates=[s], verifiers=[v], label_set=LABELS).config.transforms \
        == "solver"
    with pytest.raises(TypeError, match="takes no option max_len"):
        advx.Hardener(surrogates=[s], verifiers=[v], label_set=LABELS, max_len=3)
    with pytest.raises(ValueError, match="needs a label_set"):
        advx.Hardener(surrogates=[s], verifiers=[v])
    with pytest.raises(ValueError, match="unknown task 'shapes'"):
        advx.Hardener("shapes")


def test_the_attack_is_built_from_the_plan():
    from advx.engine.views.transforms import InputDiversity

    h = advx.Hardener(surrogates=[TinyNet(0, "s")], verifiers=[ViewRecorder()],
                      config=cfg(transforms="solver", eps=8, steps=12), label_set=LABELS)
    a = h.scheduler.attack
    assert a.name == h.plan.attack == "mifgsm" and a.steps == 12 and not a.targeted
    assert a.eps_01 == 8 / 255 and a.alpha_01 == 2 / 255 and a.amp_dtype is None
    assert a.diversity == InputDiversity(0.5) and a.eot_samples == 1
    assert a.eot == eot_of("solver") and a.eot.geometry is not None
    assert a.generator is h.generator
    w = advx.Hardener(surrogates=[TinyNet(0, "s")], verifiers=[TinyNet(0, "s")],
                      config=cfg(), label_set=LABELS)
    assert w.scheduler.attack.diversity is None and w.scheduler.attack.name == "pgd"


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
    with pytest.raises(ValueError, match=r"labels \['emu'\] .*not in --label-set cat,dog,bus"):
        advx.harden(images, ["cat", "emu"], label_set=LABELS, surrogates=[TinyNet()],
                    verifiers=[])
    with pytest.raises(ValueError, match="not in the label set"):  # as Hardener.run says it
        advx.Hardener(surrogates=[TinyNet()], verifiers=[], label_set=LABELS).run(
            images, ["cat", "emu"])
    with pytest.raises(ValueError, match="--decoy 'emu' is not in the label set"):
        advx.harden(images, ["cat", "dog"], label_set=LABELS, surrogates=[TinyNet()],
                    verifiers=[], decoy="emu")
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        advx.harden(images, ["cat"], label_set=LABELS, surrogates=[TinyNet()], verifiers=[])


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
    code = ("import sys, advx, advx.engine.api, advx.export, advx.export.zoo; "
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
        assert set(x.margins_by_view["v"]) == {v.name for v in views_of("solver")}


def test_cpu_surrogate_towers_run_channels_last_with_the_same_values(tiny_models):
    """On the CPU, an ImageNet tower is put in channels_last (faster oneDNN kernels): logits and
    input gradients equal those of the same weights in the default layout."""
    from advx.engine.tasks.labels.models import build_surrogates
    from advx.export.zoo import create_classifier

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
