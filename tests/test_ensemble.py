"""engine/ensemble: per-model gradient normalisation, micro-batches, geometry EOT."""

from __future__ import annotations

import pytest
import torch
from toys import LABELS, TinyNet, rand_images

from advx.engine.attacks.ensemble import Ensemble
from advx.engine.tasks.labels import losses
from advx.export.geometry import Geometry
from advx.export.zoo import create_classifier

TINY_TIMM = "timm:test_efficientnet/none"


def test_ensemble_gradients_normalised_per_model():
    a, b = TinyNet(0, "a"), TinyNet(1, "b")
    x, y = rand_images(2), torch.tensor([0, 1])
    _, g1 = Ensemble([a, b]).loss_and_grad(x, y, losses.Objective())
    plain = losses.Objective(kappa=float("inf"))
    _, g2 = Ensemble([a, TinyNet(1, "b", scale=1000.0)]).loss_and_grad(x, y, plain)
    assert torch.allclose(g1, g2, atol=1e-5), "one model's gradient scale must not dominate"
    with pytest.raises(ValueError):
        Ensemble([a], weights=[-1.0])


def test_micro_batches_give_the_batch_gradient():
    """Members run their backward passes a few rows at a time (bounded memory on the CPU): the
    loss and gradient, through a shared input transform, equal the whole batch's."""
    from advx.engine.attacks.ensemble import micro_batch_size

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


def lambda_geometry(model, geometry):
    """``model`` with ``geometry`` fixed as its preprocessing (a reference for the test)."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, images):
            return self.inner(images, geometry=geometry)

    return Fixed()


def test_geometry_eot_replaces_the_preprocessing_of_members_that_take_one():
    effnet = create_classifier(TINY_TIMM, LABELS)
    x, y = rand_images(2, 40), torch.tensor([0, 1])
    obj = losses.Objective()
    geo = Geometry(crop=1.0, interpolation="bicubic", antialias=False)
    ens = Ensemble([effnet])
    _, g_own = ens.loss_and_grad(x, y, obj)
    _, g_geo = ens.loss_and_grad(x, y, obj, geometry=geo)
    _, g_ref = Ensemble([lambda_geometry(effnet, geo)]).loss_and_grad(x, y, obj)
    assert torch.allclose(g_geo, g_ref, atol=1e-6) and not torch.allclose(g_geo, g_own)
    plain = Ensemble([TinyNet(0, "plain")])  # TinyNet has no geometry: keeps its own
    _, t_own = plain.loss_and_grad(x, y, obj)
    _, t_geo = plain.loss_and_grad(x, y, obj, geometry=geo)
    assert torch.equal(t_own, t_geo)
    assert Ensemble([effnet, TinyNet()]).takes_geometry == [True, False]
