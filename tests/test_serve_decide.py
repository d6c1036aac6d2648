"""``decide`` on ``POST /harden``: a request names its deciding views (as ``advx harden
--decide``), the record says which views decided, bad names answer 422 listing the preset's
views, and requests with other deciding views are never hardened in one scheduler run."""

from __future__ import annotations

import json

import pytest
from test_serve import LABELS, _png, _post, _Running, _tile

VIEWS = ["own", "jpeg75"]  # the "jpeg" preset: both decide by default


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """A surrogate and a held-out verifier (a verifier that is also a surrogate is held to every
    view, whatever ``decide`` says)."""
    import tiny

    return tuple(f"timm:test_efficientnet/"
                 f"{tiny.save_tiny_timm_checkpoint(tmp_path_factory.mktemp(f't{s}'), seed=s)}"
                 for s in (0, 1))


def _service(models: tuple[str, str], **kw):
    from advx.engine.config import HardenConfig
    from advx.engine.serve.service import HardenService

    cfg = HardenConfig(steps=2, transforms="jpeg", batch_size=4, eps_rungs=1)
    return HardenService(LABELS, surrogates=[models[0]], verifiers=[models[1]], config=cfg,
                         max_batch=4, **kw)


def _deciding(headers: dict) -> list[list[str]]:
    return list(json.loads(headers["x-advx-result"])["deciding"].values())


def test_a_request_names_its_deciding_views_and_bad_names_answer_422(models):
    from advx.engine.serve.http import create_app

    service = _service(models)
    png = _png(_tile())
    with _Running(create_app(service)) as srv:
        for fields, want in [({}, VIEWS), ({"decide": "own"}, ["own"]),
                             ({"decide": " jpeg75 , own"}, VIEWS), ({"decide": "all"}, VIEWS)]:
            status, headers, body = _post(srv.base + "/harden", {"label": "cat", **fields}, png)
            assert status == 200, body[:300]
            assert _deciding(headers) == [want], fields
        for fields, names in [({"label": "cat", "decide": "own,nope"}, "own, jpeg75"),
                              ({"label": "cat", "decide": "own,own"}, "own, jpeg75"),
                              ({"text": "7KX2P", "decide": "nope"}, "own, grey, otsu")]:
            status, headers, body = _post(srv.base + "/harden", fields, png)
            assert status == 422 and headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error.startswith("decide: ") and names in error, error
    assert service.label_set_builds == 1  # the other views: a schedule on the same models
    assert service.text.built is False  # refused before any OCR solver loads
    service.close()


def test_requests_with_other_deciding_views_are_not_batched_together(models):
    service = _service(models, start=False)
    tiles = [_tile(i) for i in range(4)]
    futures = [service.submit(tiles[0], "cat"),
               service.submit(tiles[1], "dog", decide=("own",)),
               service.submit(tiles[2], "bus", decide="jpeg75,own"),  # the default, as a list
               service.submit(tiles[3], "cat", decide="own")]
    with pytest.raises(ValueError, match="own, jpeg75"):
        service.submit(tiles[0], "cat", decide=("blur",))
    assert service.pending() == 4
    service.start()  # one batch of four: two groups, two scheduler runs
    results = [f.result(timeout=300) for f in futures]
    assert service.batches == 2
    assert [list(r.deciding.values()) for r in results] == [[VIEWS], [["own"]], [VIEWS],
                                                            [["own"]]]
    service.close()


def test_text_requests_take_views_of_the_text_preset(models):
    from advx.engine.views.presets import get_preset

    service = _service(models, start=False)
    assert service.deciding("grey, own", text=True) == ("own", "grey")
    assert service.deciding("own,grey,jpeg75,median3", text=True) is None  # its default
    assert service.deciding("all", text=True) == get_preset("text").views
    with pytest.raises(ValueError, match="'text'"):
        service.deciding("whole-tile", text=True)
    service.close()


def test_a_text_hardener_of_other_views_shares_the_loaded_solvers(models):
    pytest.importorskip("captcha_whisperer")
    solver = "captcha-whisperer"
    service = _service(models, start=False, text_surrogates=[solver], text_verifiers=[solver])
    default = service.text_hardener()
    grey = service.text_hardener(decide="grey")
    assert service.text_hardener(decide=["grey"]) is grey and grey is not default
    assert service.text_hardener(decide="own,grey,jpeg75,median3") is default
    assert grey.scheduler.deciding == {solver: ("grey",)}
    assert default.scheduler.deciding == {solver: ("own", "grey", "jpeg75", "median3")}
    assert grey.solvers[solver] is default.solvers[solver]  # not loaded again
    service.close()
