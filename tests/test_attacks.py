"""engine/attacks: the invariants every registered attack keeps, and each attack's own rule."""

from __future__ import annotations

import pytest
import torch
from toys import TinyNet, rand_images

from advx.engine.attacks import ATTACKS, MIFGSM, PGD, AttackState, register_attack
from advx.engine.config import HardenConfig
from advx.engine.tasks.labels import losses
from advx.engine.views.transforms import InputDiversity
from advx.engine.views.view import eot_of

# Every registered attack must be listed here, with the variants of its own options that the
# invariants run over ({}: its defaults only); test_every_registered_attack_is_covered fails
# for an attack registered without an entry.
ATTACK_VARIANTS: dict[str, dict[str, dict]] = {
    "pgd": {"": {}},
    "mifgsm": {"": {}, "decay0.9": {"decay": 0.9}, "no-nesterov": {"nesterov": False}},
}

# the Attack options every attack takes, run with each attack's plain variant
OPTIONS: dict[str, dict] = {
    "plain": {},
    "di0.5": {"diversity": InputDiversity(0.5)},
    "di1": {"diversity": InputDiversity(1.0)},
    "eot-robust": {"eot": eot_of("robust", samples=2)},
}


def uncovered(registry: dict = ATTACKS) -> set[str]:
    """Registered attacks without invariant cases, and cases of attacks no longer registered."""
    return set(registry) ^ set(ATTACK_VARIANTS)


def cases() -> list:
    out = []
    for name in sorted(ATTACKS):
        variants = ATTACK_VARIANTS.get(name, {"": {}})
        for vname, kw in variants.items():
            for oname, opt in OPTIONS.items():
                if vname and oname != "plain":
                    continue  # an attack's own options run without the shared ones
                out.append(pytest.param(name, {**kw, **opt},
                                        id="-".join(p for p in (name, vname, oname) if p)))
    return out


def test_every_registered_attack_is_covered():
    assert uncovered() == set(), (
        "every registered attack needs an entry in ATTACK_VARIANTS (the invariants run over it)")


def test_the_coverage_check_sees_a_new_attack(monkeypatch):
    import advx.engine.attacks.base as base

    monkeypatch.setattr(base, "ATTACKS", dict(ATTACKS))  # a copy: the registry is left alone

    @base.register_attack("toy")
    class Toy(PGD):
        pass

    assert Toy.name == "toy" and base.ATTACKS["toy"] is Toy
    assert uncovered(base.ATTACKS) == {"toy"}
    assert "toy" not in ATTACKS


def test_a_duplicate_attack_name_is_refused():
    before = dict(ATTACKS)
    with pytest.raises(ValueError, match="already registered"):

        @register_attack("pgd")
        class Another(PGD):
            pass

    assert before == ATTACKS and ATTACKS["pgd"] is PGD and PGD.name == "pgd"
    assert MIFGSM.name == "mifgsm"


@pytest.mark.parametrize(("name", "kw"), cases())
def test_attack_invariants(name, kw):
    model = TinyNet()
    x, y = rand_images(4), torch.tensor([0, 1, 2, 0])
    eps = 8 / 255

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return ATTACKS[name](model, eps_01=eps, alpha_01=2 / 255, steps=10, generator=g,
                             **kw)(x, y)

    adv = run(0)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, run(0)), "seeded runs repeat exactly"
    assert not torch.equal(adv, run(1))
    assert (losses.Objective()(model(adv), y).mean()
            > losses.Objective()(model(x), y).mean()), "the loss rises"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_per_pixel_budget_holds(name):
    """The scheduler's per-pixel budgets and per-image steps (AttackState.budget, alpha_01)."""
    model, x, y = TinyNet(), rand_images(2), torch.tensor([0, 1])
    budget = torch.full((2, 1, 24, 24), 8 / 255)
    budget[:, :, :12] = 2 / 255
    budget[1] /= 2
    attack = ATTACKS[name](model, eps_01=8 / 255, alpha_01=2 / 255,
                           generator=torch.Generator().manual_seed(0))
    state = attack.init(x, budget, torch.tensor([1 / 255, 0.5 / 255]))
    for _ in range(6):
        attack.step(state, y)
    assert ((state.adv - x).abs() <= budget + 1e-6).all()
    assert state.adv.min() >= 0 and state.adv.max() <= 1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_targeted_attack_moves_towards_target(name):
    model, x = TinyNet(), rand_images(4)
    y, t = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 0, 2])
    cls = ATTACKS[name]
    adv = cls(model, eps_01=16 / 255, alpha_01=2 / 255, steps=20, targeted=True)(x, y, t)
    assert (losses.logit_gap(model(adv), t) < losses.logit_gap(model(x), t)).all()
    with pytest.raises(ValueError, match="target for every row"):
        cls(model, eps_01=0.1, alpha_01=0.01, targeted=True)(x, y)
    with pytest.raises(ValueError, match="target for every row"):
        cls(model, eps_01=0.1, alpha_01=0.01, targeted=True)(x, y, torch.tensor([1, 2, -1, 0]))


def test_rows_leave_and_come_back_with_their_own_state():
    """Continuous batching: rows taken out and put back keep their candidates and momentum."""
    model, x, y = TinyNet(), rand_images(4), torch.tensor([0, 1, 2, 0])
    attack = MIFGSM(model, eps_01=8 / 255, alpha_01=2 / 255,
                    generator=torch.Generator().manual_seed(0))
    state = attack.init(x)
    attack.step(state, y)
    swapped = AttackState.cat([state.take(slice(2, 4)), state.take(slice(0, 2))])
    assert len(swapped) == 4
    for f in AttackState._FIELDS:
        whole = getattr(state, f)
        assert torch.equal(getattr(swapped, f), torch.cat([whole[2:], whole[:2]])), f
    part = state.take(slice(1, 3))
    attack.step(part, y[1:3])
    state.put(slice(1, 3), part)
    assert torch.equal(state.adv[1:3], part.adv) and torch.equal(state.momentum[1:3],
                                                                 part.momentum)


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
    assert MIFGSM(model, eps_01=0.1, alpha_01=0.01).nesterov, "on by default"
    assert HardenConfig().plan(False).attack == "mifgsm"
