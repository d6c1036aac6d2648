"""``advx serve`` with a ``text`` field: a text captcha hardened over HTTP against a real OCR
solver (captcha-whisperer), its readings those of the delivered file, the bad requests of the
text path (422 JSON), a captcha over the size cap (413), and a deadline that stops the work."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_serve import _health, _post, _Running

SOLVER = "captcha-whisperer"
EPS = 8


@pytest.fixture(scope="module")
def captcha():
    from advx.engine.tasks.text.draw import draw_captchas

    return draw_captchas(1, seed=3)[0]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from advx.engine.config import HardenConfig
    from advx.engine.serve.service import HardenService

    import tiny

    pytest.importorskip("captcha_whisperer")
    model = f"timm:test_efficientnet/{tiny.save_tiny_timm_checkpoint(tmp_path_factory.mktemp('t'))}"
    cfg = HardenConfig(eps=EPS, steps=2, transforms="none", batch_size=4, eps_rungs=1)
    svc = HardenService(("cat", "dog"), surrogates=[model], verifiers=[model], config=cfg,
                        max_batch=4, text_surrogates=[SOLVER], text_verifiers=[SOLVER])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service):
    from advx.engine.serve.http import create_app

    with _Running(create_app(service, max_side=256)) as srv:
        yield srv


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_a_text_captcha_is_hardened_and_its_readings_are_the_delivered_files(server, service,
                                                                           captcha):
    from advx.engine.tasks.text.eval import read_views
    from advx.engine.tasks.text.losses import edit_distance
    from advx.engine.views.view import views_of

    text, pixels = captcha
    assert _health(server.base) and service.models()["text"] is None  # nothing loaded yet
    status, headers, body = _post(server.base + "/harden", {"text": text}, _png(pixels))
    assert status == 200, body[:300]
    assert headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= EPS
    record = json.loads(headers["x-advx-result"])
    assert record["text"] == text and record["status"] in ("fooled", "unfooled")
    assert record["linf"] <= EPS + 1e-4 and record["steps"] <= 2
    solver = service.text_hardener().solvers[SOLVER]
    views = views_of("text")
    again = read_views([solver.verifier()], [torch.from_numpy(out.copy()).permute(2, 0, 1)],
                       views)[SOLVER]
    assert record["read_after"][SOLVER] == {w: r[0] for w, r in again.items()}
    cs = solver.charset
    assert record["cer_after"][SOLVER] == {
        w: round(edit_distance(cs.key(r[0]), cs.key(text)) / len(text), 4)
        for w, r in again.items()}
    fooled = all(not cs.same(record["read_after"][SOLVER][w], text)
                 for w in record["deciding"][SOLVER])
    assert record["status"] == ("fooled" if fooled else "unfooled")
    assert service.models()["text"] == {"surrogates": [SOLVER], "verifiers": [SOLVER]}


def test_bad_text_requests_get_422_json(server, captcha):
    text, pixels = captcha
    png = _png(pixels)
    wide = _png(np.concatenate([pixels, pixels], axis=1))  # 320 px: over --max-side 256
    cases = [  # (fields, image, status, what the error says)
        ({"text": "AB~"}, png, 422, f"{SOLVER} cannot read '~'"),
        ({"text": ""}, png, 422, "empty"),
        ({"text": f" {text}"}, png, 422, "leading or trailing spaces"),
        ({"text": text, "label": "cat"}, png, 422, "not both"),
        ({}, png, 422, "label (or text"),
        ({"text": text, "label_set": "cat,dog"}, png, 422, "label_set is for image tiles"),
        ({"text": text, "eps": "99"}, png, 422, "eps must be in"),
        ({"text": text}, None, 422, "image"),
        ({"text": text}, wide, 413, "over the longest side of 256 px"),
    ]
    for fields, image, want, says in cases:
        status, headers, body = _post(server.base + "/harden", fields, image)
        assert status == want, (fields, body[:300])
        assert headers["content-type"] == "application/json"
        err = json.loads(body)
        assert list(err) == ["error"] and says in err["error"], (fields, err)


def test_a_deadline_answers_504_and_stops_the_text_work(service, captcha):
    """A budget that never fools (eps 0.5/255 rounds away) runs at least two verification
    passes (10 steps) unless stopped; each step is slowed so that the deadline falls first."""
    from advx.engine.serve.http import create_app

    text, pixels = captcha
    h = service.text_hardener(0.5, 1000)
    attack, calls = h.scheduler.attack, []
    step = attack.step

    def slow(state, *a, **kw):
        calls.append(time.monotonic())
        time.sleep(0.4)
        return step(state, *a, **kw)

    attack.step = slow
    try:
        with _Running(create_app(service, timeout_s=1.5)) as srv:
            status, _, body = _post(srv.base + "/harden", {"text": text, "eps": "0.5",
                                                           "steps": "1000"}, _png(pixels))
            t504 = time.monotonic()
            assert status == 504 and "not hardened within" in json.loads(body)["error"]
            while service.busy:
                assert time.monotonic() - t504 < 3, "the worker went on"
                time.sleep(0.05)
            assert _health(srv.base)["timed_out"] == 1
    finally:
        attack.step = step
    assert 0 < len(calls) < 10 and all(t < t504 + 0.5 for t in calls)


def test_a_server_without_a_default_label_set_serves_text_and_asks_images_for_one(captcha):
    from advx.engine.config import HardenConfig
    from advx.engine.serve.label_sets import LabelSets
    from advx.engine.serve.service import HardenService

    cfg = HardenConfig(eps=EPS, steps=1, transforms="none", batch_size=2, eps_rungs=1)
    svc = HardenService((), surrogates=["timm:unused"], verifiers=["timm:unused"], config=cfg,
                        text_surrogates=[SOLVER], text_verifiers=[SOLVER], start=False)
    try:
        assert svc.text.built  # the OCR solvers load at start: no image models to build
        with pytest.raises(ValueError, match=r"no default label set .* send label_set"):
            svc.submit(captcha[1], "cat")
    finally:
        svc.close()
    sets = LabelSets((), allowed=[("dog", "cat")])
    assert sets.resolve("cat", ["dog", "cat"]) == ("cat", "dog")
    with pytest.raises(ValueError, match="not allowed"):
        sets.resolve("cat", ["cat", "bus"])
