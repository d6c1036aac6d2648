"""engine/config: the validated options of a run, and the plan a run derives from them."""

from __future__ import annotations

import dataclasses

import pytest
from toys import LABELS, TinyNet

import advx
from advx.engine.config import TRANSFER_SKIP_GAMMA, HardenConfig, Plan


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="eps"):
        HardenConfig(eps=0)
    with pytest.raises(ValueError, match="transform preset"):
        dataclasses.replace(HardenConfig(), transforms="blur")
    for bad, match in (({"attack": "svre"}, "attack"), ({"steps": -1}, "steps"),
                       ({"alpha": 0}, "alpha"), ({"verify_every": 0}, "verify_every"),
                       ({"ssim_floor": 1.0}, "ssim_floor"), ({"eps_rungs": 0}, "eps_rungs"),
                       ({"texture_mask": 0}, "texture_mask"),
                       ({"output_format": "webp"}, "output_format"),
                       ({"jpeg_quality": 0}, "jpeg_quality"), ({"batch_size": 0}, "batch_size"),
                       ({"amp": "int8"}, "amp")):
        with pytest.raises(ValueError, match=match):
            HardenConfig(**bad)
    c = HardenConfig(eps=8)
    assert c.eps_01 == 8 / 255 and c.alpha_01 == 2 / 255
    assert HardenConfig(eps=8, alpha=1).alpha_01 == 1 / 255


def test_the_plan_follows_white_box_or_transfer():
    white, transfer = HardenConfig().plan(True), HardenConfig().plan(False)
    assert white == Plan(attack="pgd", diversity_prob=0.0, eot_samples=2, skip_gamma=None,
                         relax_mask=True)
    assert transfer == Plan(attack="mifgsm", diversity_prob=0.5, eot_samples=1,
                            skip_gamma=TRANSFER_SKIP_GAMMA, relax_mask=False)
    assert HardenConfig(attack="mifgsm").plan(True).attack == "mifgsm"
    assert HardenConfig(attack="pgd").plan(False).attack == "pgd"


def test_sgm_is_on_for_transfer_and_off_white_box():
    assert HardenConfig().plan(False).skip_gamma == TRANSFER_SKIP_GAMMA < 1
    assert HardenConfig().plan(True).skip_gamma is None

    def hardener(verifier):
        return advx.Hardener(surrogates=[TinyNet(0, "s")], verifiers=[verifier],
                             config=HardenConfig(transforms="none"), label_set=LABELS)

    transfer = hardener(TinyNet(0, "v"))
    assert not transfer.white_box and transfer.plan == transfer.config.plan(False)
    assert transfer.scheduler.attack.skip_gamma == TRANSFER_SKIP_GAMMA
    assert transfer.scheduler.attack.name == "mifgsm"
    white = hardener(TinyNet(0, "s"))  # the verifier is the surrogate
    assert white.white_box and white.scheduler.attack.skip_gamma is None
    assert white.scheduler.attack.name == "pgd" and white.scheduler.attack.eot_samples == 2
    other = transfer.with_config(HardenConfig(transforms="none", attack="pgd"))
    assert other.plan.attack == "pgd" and other.scheduler.attack.name == "pgd"
    assert transfer.scheduler.attack.name == "mifgsm", "the original is left as it was"


def test_the_views_are_the_task_s_preset_unless_named():
    c = HardenConfig()
    assert c.transforms is None
    with pytest.raises(ValueError, match="no view preset yet"):
        _ = c.deciding
    labels, text = c.for_task("labels"), c.for_task("text")
    assert (labels.transforms, text.transforms) == ("solver", "text")
    assert labels.deciding == ("own", "whole-tile", "jpeg75", "resize0.75")
    assert text.deciding == ("own", "grey", "jpeg75", "median3")
    named = HardenConfig(transforms="jpeg")
    assert named.for_task("text") is named  # a preset named is kept
    # deciding views are checked once the preset is known: the task's, or the one named
    decide = HardenConfig(decide=["grey", "otsu"])
    assert decide.decide == ("grey", "otsu") and decide.for_task("text").deciding == (
        "grey", "otsu")
    with pytest.raises(ValueError, match="deciding views must be distinct views of preset "
                                         "'solver'"):
        decide.for_task("labels")
    with pytest.raises(ValueError, match="deciding views"):
        HardenConfig(transforms="jpeg", decide=("grey",))
