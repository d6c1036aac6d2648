"""engine/losses: the margin forms the attacks maximise and verification reads, hand-computed."""

from __future__ import annotations

import torch

from advx.engine.tasks.labels import losses


def test_losses_exact():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(losses.logit_gap(logits, y), torch.tensor([-2.0, 3.0]))
    decoys = torch.tensor([1, 2])
    assert torch.equal(losses.Objective()(logits, y, decoys), torch.tensor([-2.0, 3.0]))
    assert torch.equal(losses.Objective()(logits * 100, y), torch.tensor([-200.0, 50.0]))


def test_the_objective_is_the_fooling_margin_capped_at_kappa():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([-1, 0])
    assert torch.equal(losses.fooling_margin(logits, y, t), torch.tensor([-2.0, -5.0]))
    assert losses.Objective().kappa == 50.0
    assert torch.equal(losses.Objective(kappa=1.0)(logits, y, t), torch.tensor([-2.0, -5.0]))
    assert torch.equal(losses.Objective(kappa=1.0)(logits, y), torch.tensor([-2.0, 1.0]))
    z = torch.tensor([[1.5, -0.5, 2.0]])
    assert torch.equal(losses.Objective(kappa=1.0)(z * 10, torch.tensor([0]), None,
                                                   "multilabel"), torch.tensor([-15.0]))
