"""The ``text`` task over HTTP: a text captcha hardened against a real OCR solver
(captcha-whisperer), its readings and error rates those of the delivered file; and a server
without a default label set, which serves text at once (a captcha over the size cap refused)
and asks labels requests for one. (The
bad requests and the deadline of each task are in test_serve.py, its deciding views in
test_serve_decide.py.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_serve import SOLVER, captchas
from web import Running, get, png, post

EPS = 8


@pytest.fixture(scope="module")
def captcha():
    return captchas(1)[0]


@pytest.fixture(scope="module")
def service():
    from advx.engine.config import HardenConfig
    from advx.engine.serve.requests import TaskSetup
    from advx.engine.serve.service import HardenService

    pytest.importorskip("captcha_whisperer")
    cfg = HardenConfig(eps=EPS, steps=2, batch_size=4, eps_rungs=1)
    svc = HardenService({"text": TaskSetup([SOLVER], [SOLVER])}, config=cfg, max_batch=4)
    yield svc
    svc.close()


def test_a_text_captcha_is_hardened_and_its_readings_are_the_delivered_files(service,
                                                                           captcha):
    from advx.engine.serve.http import create_app
    from advx.engine.tasks.text.evaluate import read_views
    from advx.engine.tasks.text.losses import edit_distance
    from advx.engine.views.view import views_of

    text, pixels = captcha
    with Running(create_app(service)) as server:
        models = get(server.base + "/models")[1]["tasks"]
        assert models["text"]["transforms"] == "text"
        assert models["text"]["loaded"] is None  # nothing loaded before the first request
        status, headers, body = post(server.base + "/harden", {"text": text}, png(pixels))
        assert status == 200, body[:300]
        assert get(server.base + "/models")[1]["tasks"]["text"]["loaded"] == {
            "surrogates": [SOLVER], "verifiers": [SOLVER], "left_out": {}, "notes": []}
    assert headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= EPS
    record = json.loads(headers["x-advx-result"])
    assert record["task"] == "text"
    assert record["text"] == text and record["status"] in ("fooled", "unfooled")
    assert record["linf"] <= EPS + 1e-4 and record["steps"] <= 2
    solver = service.hardener("text").models.solvers[SOLVER]
    views = views_of("text")
    again = read_views([solver.verifier()], [torch.from_numpy(out.copy()).permute(2, 0, 1)],
                       views)[SOLVER]
    assert record["read_after"][SOLVER] == {w: r[0] for w, r in again.items()}
    cs = solver.charset
    assert record["cer_after"][SOLVER] == {
        w: round(edit_distance(cs.key(r[0]), cs.key(text)) / len(text), 4)
        for w, r in again.items()}
    assert record["right_after"][SOLVER] == {w: cs.same(r[0], text) for w, r in again.items()}
    fooled = all(not cs.same(record["read_after"][SOLVER][w], text)
                 for w in record["deciding"][SOLVER])
    assert record["status"] == ("fooled" if fooled else "unfooled")


def test_a_server_without_a_default_label_set_serves_text_and_asks_labels_for_one(captcha):
    """As `advx serve` without --label-set: the text task's models load at start (it needs no
    option), the labels task's on a request that names its label set."""
    from advx.engine.config import HardenConfig
    from advx.engine.errors import NotAllowed
    from advx.engine.serve.requests import TaskSetup
    from advx.engine.serve.service import HardenService

    pytest.importorskip("captcha_whisperer")
    cfg = HardenConfig(eps=EPS, steps=1, batch_size=2, eps_rungs=1)
    svc = HardenService({"labels": TaskSetup(["timm:unused"], ["timm:unused"],
                                             allowed=[("dog", "cat")]),
                         "text": TaskSetup([SOLVER], [SOLVER], eager=True)},
                        config=cfg, max_side=256, start=False)
    try:
        loaded = svc.models()
        assert loaded["text"]["loaded"] is not None  # the OCR solvers load at start
        assert loaded["labels"]["loaded"] is None and svc.label_set_builds == 1
        with pytest.raises(ValueError, match=r"no default label set .* send label_set"):
            svc.submit(captcha[1], "cat")
        # without a default set, a request's set is sorted: every order shares its models
        group = svc.requests.group("labels", "cat", label_set=["dog", "cat"])
        assert dict(group.options)["label_set"] == ("cat", "dog")
        with pytest.raises(NotAllowed, match="not allowed"):
            svc.requests.group("labels", "cat", label_set=["cat", "bus"])
        assert svc.label_set_builds == 1  # no labels model was touched
        # a captcha is hardened at its own size: one over max_side is refused, not downscaled
        text, pixels = captcha
        wide = np.concatenate([pixels, pixels], axis=1)  # 320 px
        with pytest.raises(ValueError, match="320x60 px is over the longest side of 256 px"):
            svc.submit(wide, text, task="text")
        assert svc.pending() == 0
    finally:
        svc.close()
