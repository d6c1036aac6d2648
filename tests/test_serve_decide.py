"""``decide`` on ``POST /harden``, for each task: a request names its deciding views (as ``advx
harden --decide``) among its task's preset, the record says which views decided, bad names
answer 422 listing the preset's views before any model loads, requests with other deciding
views are never hardened in one scheduler run, and a schedule of other views shares the
models loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from test_serve import LABELS, SOLVER, TASKS, sample
from web import Running, png, post


@dataclass
class Views:
    """A task's preset as the tests use it."""

    preset: str
    default: list[str]  # its deciding views
    every: list[str]  # all its views
    other: str  # a request's views other than the default
    respelled: str  # the default, named otherwise
    listed: str  # how a 422 lists the preset's views
    ordered: tuple[str, tuple[str, ...]]  # views named in any order -> in the preset's


VIEWS = {
    "labels": Views("jpeg", ["own", "jpeg75"], ["own", "jpeg75"], "own", " jpeg75 , own",
                    "own, jpeg75", ("jpeg75", ("jpeg75",))),
    "text": Views("text", ["own", "grey", "jpeg75", "median3"],
                  ["own", "grey", "otsu", "jpeg75", "jpeg50", "median3", "nlmeans",
                   "resize0.5", "rotate3"], "grey", "median3, own,grey , jpeg75",
                  "own, grey, otsu", ("grey, own", ("own", "grey"))),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """A surrogate and a held-out verifier for labels (a verifier that is also a surrogate is
    held to every view, whatever ``decide`` says)."""
    import tiny

    return tuple(f"timm:test_efficientnet/"
                 f"{tiny.save_tiny_timm_checkpoint(tmp_path_factory.mktemp(f't{s}'), seed=s)}"
                 for s in (0, 1))


def _service(models: tuple[str, str], **kw):
    """Both tasks, their models loaded on their first request: labels with the tiny models
    under the "jpeg" preset, text with the OCR solver under its own."""
    from advx.engine.config import HardenConfig
    from advx.engine.serve.requests import TaskSetup
    from advx.engine.serve.service import HardenService

    setups = {"labels": TaskSetup([models[0]], [models[1]], transforms="jpeg",
                                  options={"label_set": LABELS})}
    if kw.pop("text", True):
        setups["text"] = TaskSetup([SOLVER], [SOLVER])
    cfg = HardenConfig(steps=2, batch_size=4, eps_rungs=1)
    return HardenService(setups, config=cfg, max_batch=4, **kw)


def _deciding(headers: dict) -> list[list[str]]:
    return list(json.loads(headers["x-advx-result"])["deciding"].values())


@pytest.mark.parametrize("task", TASKS)
def test_a_request_names_its_deciding_views_and_bad_names_answer_422(models, task):
    from advx.engine.serve.http import create_app

    field, truth, pixels = sample(task)
    v = VIEWS[task]
    service = _service(models)
    image = png(pixels)
    with Running(create_app(service)) as srv:
        for decide in (f"{v.default[0]},nope", f"{v.default[0]},{v.default[0]}", "whole"):
            status, headers, body = post(srv.base + "/harden", {field: truth, "decide": decide},
                                         image)
            assert status == 422 and headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error.startswith("decide: ") and v.listed in error, error
        assert service.models()[task]["loaded"] is None  # refused before any model loads
        assert service.label_set_builds == 0
        for fields, want in [({}, v.default), ({"decide": v.other}, [v.other]),
                             ({"decide": v.respelled}, v.default), ({"decide": "all"}, v.every)]:
            status, headers, body = post(srv.base + "/harden", {field: truth, **fields}, image)
            assert status == 200, body[:300]
            assert _deciding(headers) == [want], fields
    assert service.label_set_builds == 1  # the other views: a schedule on the same models
    service.close()


@pytest.mark.parametrize("task", TASKS)
def test_requests_with_other_deciding_views_are_not_batched_together(models, task):
    v = VIEWS[task]
    service = _service(models, start=False)
    items = [sample(task, i) for i in range(4)]
    decide = [None, (v.other,), v.respelled, v.other]  # the default, spelled otherwise
    futures = [service.submit(pixels, truth, task=task, decide=d)
               for d, (_, truth, pixels) in zip(decide, items, strict=True)]
    with pytest.raises(ValueError, match=v.listed):
        service.submit(items[0][2], items[0][1], task=task, decide=("blur",))
    assert service.pending() == 4
    service.start()  # one batch of four: two groups, two scheduler runs
    results = [f.result(timeout=300) for f in futures]
    assert service.batches == 2
    assert [list(r.deciding.values()) for r in results] == [[v.default], [[v.other]],
                                                            [v.default], [[v.other]]]
    service.close()


@pytest.mark.parametrize("task", TASKS)
def test_requests_take_views_of_their_task_preset(models, task):
    from advx.engine.views.presets import get_preset

    v = VIEWS[task]
    service = _service(models, start=False)
    deciding = service.requests.deciding
    assert get_preset(v.preset).views == tuple(v.every)
    assert get_preset(v.preset).deciding == tuple(v.default)
    assert deciding(v.other, task) == (v.other,)
    spelled, resolved = v.ordered
    assert deciding(spelled, task) == resolved  # in the preset's order
    assert deciding(v.respelled, task) is None  # its default: such requests share batches
    assert deciding(None, task) is None
    all_views = None if v.every == v.default else tuple(v.every)
    assert deciding("all", task) == all_views
    with pytest.raises(ValueError, match=f"'{v.preset}'"):
        deciding("whole-tile" if task == "text" else "grey", task)
    with pytest.raises(ValueError, match="not served here"):
        _service(models, text=False, start=False).requests.deciding("own", "text")
    service.close()


@pytest.mark.parametrize("task", TASKS)
def test_a_hardener_of_other_views_shares_the_loaded_models(models, task):
    if task == "text":
        pytest.importorskip("captcha_whisperer")
    v = VIEWS[task]
    service = _service(models, start=False)
    deciding = service.requests.deciding
    default = service.hardener(task)
    other = service.hardener(task, decide=deciding(v.other, task))
    assert service.hardener(task, decide=deciding([v.other], task)) is other
    assert other is not default
    assert service.hardener(task, decide=deciding(v.respelled, task)) is default
    (verifier,) = (m.name for m in default.verifiers)
    assert other.scheduler.check.deciding == {verifier: (v.other,)}
    assert default.scheduler.check.deciding == {verifier: tuple(v.default)}
    assert other.models is default.models  # not loaded again
    assert service.label_set_builds == 1
    service.close()
