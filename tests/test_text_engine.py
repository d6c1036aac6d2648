"""The text task's hardening engine: roles of views, budgets, seeded repeats, hostile input.

Tiny random-init CTC models and scripted verifiers (in a stand-in :class:`TextModels`) check
the scheduler's invariants exactly; captcha-whisperer (the real offline CRNN) checks the
delivered files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from advx.engine import metrics
from advx.engine.api import Hardener, harden
from advx.engine.attacks import ATTACKS
from advx.engine.config import HardenConfig
from advx.engine.schedule.scheduler import Scheduler
from advx.engine.tasks.text.models import TextEnsemble, TextModels
from advx.engine.views.view import eot_of
from advx.export.solver.charset import Charset, CharsetError
from advx.export.solver.resample import clip8
from advx.export.solver.text_spec import CTCHead

HEAD = CTCHead(charset=("-", "A", "B", "C"), blank=0)
CHARSET = Charset.of(HEAD, "tiny")


class TinyOCR(nn.Module):
    """A random-init CTC head over HEAD: a conv, pooled over height, one step per 4 columns."""

    def __init__(self, seed: int = 0, name: str = "tiny-ocr") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.name, self.charset = name, CHARSET
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Linear(8, HEAD.classes)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x - 0.5)).mean(2)  # [N, 8, W]
        h = nn.functional.avg_pool1d(h, 4)  # [N, 8, W/4]
        return self.out(h.transpose(1, 2)) * 20


class Scripted:
    """A verifier that reads "AB" on binary images (what Otsu gives) and "C" on the rest."""

    def __init__(self, name: str = "scripted") -> None:
        self.name, self.charset = name, CHARSET
        self.solver = SimpleNamespace(head=HEAD)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        binary = ((images == 0) | (images == 1)).flatten(1).all(1)
        z = torch.full((len(images), 5, HEAD.classes), -10.0)
        z[:, :, 0] = 0.0
        z[binary, 1, 1], z[binary, 3, 2] = 10.0, 10.0  # "A", blank, "B"
        z[~binary, 2, 3] = 10.0  # "C"
        return z

    def read(self, images: torch.Tensor) -> list[str]:
        return ["AB" if bool(((x == 0) | (x == 1)).all()) else "C" for x in images]


class StubModels(TextModels):
    """The text task's models as given (nothing loaded): torch surrogates and verifiers that
    read as the scheduler's TextVerification asks (``scores``, ``charset``,
    ``solver.head``)."""

    def __init__(self, surrogates, verifiers) -> None:
        self.surrogates, self.verifiers = list(surrogates), list(verifiers)
        self.solvers = {s.name: s for s in [*self.surrogates, *self.verifiers]}
        self.charsets = {v.name: v.charset for v in self.verifiers}
        self.left_out, self.notes = {}, []
        self._ensemble = TextEnsemble(self.surrogates)
        self.truths = []


def _harden(decide: tuple[str, ...], texts: list[str], steps: int = 6) -> list:
    """A scheduler over the scripted verifier (TinyOCR attacked) run on two captchas."""
    config = HardenConfig(steps=steps, verify_every=2, decide=decide, batch_size=2
                          ).for_task("text")
    models = StubModels([TinyOCR()], [Scripted()])
    attack = ATTACKS["pgd"](models.ensemble(), eps_01=config.eps_01, alpha_01=config.alpha_01,
                            steps=steps, eot=eot_of("text"),
                            generator=torch.Generator().manual_seed(0))
    scheduler = Scheduler(attack, models, config, torch.device("cpu"))
    y, t = models.encode(texts, None)
    return scheduler.run(_images(len(texts)), y, t)


def _images(n: int = 2, h: int = 20, w: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [(0.5 + 0.2 * torch.rand(3, h, w, generator=g)) for _ in range(n)]


def test_a_reported_view_that_reads_the_truth_does_not_keep_a_captcha():
    results = _harden(("own", "grey"), ["AB", "AB"])
    assert [r.status for r in results] == ["fooled", "fooled"]
    assert [r.stop_reason for r in results] == ["already_fooled"] * 2
    for r in results:
        assert r.read_after["scripted"]["otsu"] == "AB"  # reported, right
        assert r.right_after["scripted"]["otsu"] and not r.right_after["scripted"]["own"]
        assert r.read_before["scripted"] == r.read_after["scripted"]  # nothing was attacked
        assert r.right_before == r.right_after
        assert not r.fooled_every_view


def test_a_deciding_view_that_reads_the_truth_keeps_a_captcha():
    results = _harden(("own", "otsu"), ["AB", "AB"], steps=6)
    assert [r.status for r in results] == ["unfooled", "unfooled"]
    assert all(r.stop_reason in ("max_steps", "no_progress") and r.steps > 0 for r in results)
    assert all(r.deciding == {"scripted": ["own", "otsu"]} for r in results)
    assert all(r.right_after["scripted"]["otsu"] for r in results)


def test_a_truth_longer_than_a_head_can_emit_is_misread_and_noted():
    # the scripted head has 5 time steps: "ABCAB" needs 5 (fits), "ABCABC" 6 (cannot be read)
    long, fits = _harden(("own", "grey"), ["ABCABC", "ABCAB"])
    assert long.status == "fooled" and long.stop_reason == "already_fooled"
    assert long.notes == ["scripted cannot read 6 characters at 32x20 px: its head has 5 "
                          "time steps"]
    assert fits.notes == [] and fits.read_after["scripted"]["own"] == "C"


def test_each_member_is_scored_on_its_own_charset():
    other = TinyOCR(1, "other")
    other.charset = Charset(("A", "B", "C", "-"), 3, solver="other")  # blank last
    ens = TextEnsemble([TinyOCR(), other])
    ens.set_truths(["AB", "BA", "CA"])
    assert ens.truths[0].groups[:, :2].tolist() == [[1, 2], [2, 1], [3, 1]]
    assert ens.truths[1].groups[:, :2].tolist() == [[0, 1], [1, 0], [2, 0]]
    x = torch.rand(2, 3, 20, 32)
    loss, grad = ens.loss_and_grad(x, torch.tensor([2, 0]))
    assert loss.shape == (2,) and grad.shape == x.shape and bool(grad.abs().sum() > 0)
    with pytest.raises(CharsetError, match="tiny cannot read 'D'"):
        ens.set_truths(["AD"])


def test_a_saturated_pixel_keeps_its_gradient():
    x = torch.tensor([0.0, 255.0, 300.0, 100.0], requires_grad=True)
    y = clip8(x)
    assert y.tolist() == [0.0, 255.0, 255.0, 100.0]
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [1.0, 1.0, 1.0, 1.0]


# --- the real CRNN ---------------------------------------------------------------------------

WHISPERER = ["captcha-whisperer"]


@pytest.fixture(scope="module")
def whisperer():
    pytest.importorskip("captcha_whisperer")
    return Hardener("text", surrogates=WHISPERER, verifiers=WHISPERER,
                    config=HardenConfig(steps=6, verify_every=3))


@pytest.fixture(scope="module")
def drawn():
    from advx.engine.tasks.text.draw import draw_captchas

    return draw_captchas(3, seed=5)


def test_delivered_captchas_keep_the_budget(whisperer, drawn):
    results = whisperer.run([a for _, a in drawn], [t for t, _ in drawn])
    cfg = whisperer.config
    assert cfg.transforms == "text"  # the task's preset
    for (text, clean), r in zip(drawn, results, strict=True):
        assert r.text == text and r.image.dtype == np.uint8 and r.image.shape == clean.shape
        d = np.abs(r.image.astype(int) - clean.astype(int)).max()
        assert d <= cfg.eps and r.linf == pytest.approx(d, abs=1e-3)
        x = torch.from_numpy(np.stack([r.image, clean])).permute(0, 3, 1, 2).float() / 255
        ssim = float(metrics.ssim(x[:1], x[1:])[0])
        assert ssim >= cfg.ssim_floor and r.ssim == pytest.approx(ssim, abs=1e-4)
        # what the result says the solver reads is what it reads on the delivered file
        verifier = whisperer.verifiers[0]
        again, before = verifier.read(x[:1])[0], verifier.read(x[1:])[0]
        assert r.read_after["captcha-whisperer"]["own"] == again
        assert r.read_before["captcha-whisperer"]["own"] == before
        same = verifier.charset.same
        assert r.fooled == all(not same(r.read_after["captcha-whisperer"][w], text)
                               for w in r.deciding["captcha-whisperer"])
        for when, reads in (("before", r.read_before), ("after", r.read_after)):
            right = getattr(r, f"right_{when}")["captcha-whisperer"]
            assert right == {w: same(s, text) for w, s in reads["captcha-whisperer"].items()}


def test_a_seeded_run_repeats_exactly(whisperer, drawn):
    imgs, texts = [a for _, a in drawn[:2]], [t for t, _ in drawn[:2]]
    a = whisperer.run(imgs, texts)
    b = whisperer.run(imgs, texts)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert [x.read_after for x in a] == [y.read_after for y in b]


def test_odd_sizes_are_attacked_in_their_own_buckets(whisperer, drawn):
    big = drawn[0][1]
    odd = np.ascontiguousarray(big[3:58, 5:150])  # 55 x 145
    results = whisperer.run([big, odd], [drawn[0][0]] * 2)
    assert [r.image.shape for r in results] == [big.shape, odd.shape]


def test_hostile_input_is_refused_clearly(whisperer, drawn):
    img = drawn[0][1]
    with pytest.raises(CharsetError, match="captcha-whisperer cannot read '€'"):
        whisperer.run([img], ["AB€"])
    with pytest.raises(CharsetError, match="empty"):
        whisperer.run([img], [""])
    with pytest.raises(ValueError, match="too small"):
        whisperer.run([img[:5, :5]], ["AB"])
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        whisperer.run([img, img], ["AB"])
    with pytest.raises(ValueError, match="untargeted"):
        whisperer.run([img], ["AB"], targets=["CD"])
    with pytest.raises(ValueError, match="untargeted"):
        harden([img], ["AB"], task="text", surrogates=WHISPERER, verifiers=WHISPERER,
               config=HardenConfig(targeted=True), targets=["CD"])
    with pytest.raises(TypeError, match="the text task takes no option label_set"):
        Hardener("text", surrogates=WHISPERER, verifiers=WHISPERER, label_set=["a", "b"])
