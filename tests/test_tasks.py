"""The task seam: every registered task goes through the one scheduler, folder run (records,
resume, report), eval and service, each counted by one rule (a verifier is fooled under a view
only where it answered right clean); a task registered without a case in tests/tasks.py fails;
and a third task written in one module of its own (tests/fake_task.py) goes through every
entry point as it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tasks import CASES, case

from advx.engine.folder import harden_folder
from advx.engine.folder.records import RESULTS, read_records
from advx.engine.tasks import TASKS, get_task, register_task
from advx.engine.views.presets import get_preset

BUILT_IN = sorted(TASKS)


def test_every_registered_task_has_a_case():
    missing = sorted(set(TASKS) - set(CASES))
    assert not missing, f"tasks without a case in tests/tasks.py: {missing}"


def test_a_name_taken_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_task(type(get_task("text"))())


@pytest.fixture(scope="module", params=BUILT_IN)
def run(request, tmp_path_factory):
    """A folder run of each task: (task, case, input folder, labels CSV, output, outcome)."""
    task = request.param
    c = case(task)
    tmp = tmp_path_factory.mktemp(task)
    inp = tmp / "in"
    inp.mkdir()
    csv = c.write(inp)
    surrogates, verifiers = c.models(tmp)
    out = tmp / "out"
    outcome = harden_folder(inp, out, task=task, labels_csv=csv, surrogates=surrogates,
                            verifiers=verifiers, config=c.config, **c.options)
    return task, c, inp, csv, out, outcome, (surrogates, verifiers)


def test_every_view_is_answered_clean_and_as_delivered(run):
    task, c, inp, csv, out, outcome, _ = run
    records, bad = read_records(out / RESULTS)
    rows = get_task(task).read_rows(inp, csv)
    assert not bad and len(records) == len(rows) and outcome.summary["errors"] == 0
    views = set(get_preset(c.config.transforms or get_task(task).preset).views)
    for r in records:
        assert r["task"] == task and (out / r["output"]).is_file()
        for field in ("right_before", "right_after"):
            assert r[field] and all(set(d) == views for d in r[field].values()), field


def test_the_headline_counts_fooled_only_where_right_clean(run):
    task, _, _, _, out, outcome, _ = run
    records, _ = read_records(out / RESULTS)
    headline = outcome.summary["headline"]
    assert headline
    for v, h in headline.items():
        for w, e in h["views"].items():
            clean = [r for r in records if r["right_before"][v][w]]
            assert e["right_clean"] == len(clean)
            assert e["wrong_clean"] == len(records) - len(clean)
            assert e["fooled"] == sum(not r["right_after"][v][w] for r in clean)
        solved = [r for r in records if all(r["right_before"][v][w] for w in r["deciding"][v])]
        assert h["solved_clean"] == len(solved)
        assert h["beaten"] == sum(not any(r["right_after"][v][w] for w in r["deciding"][v])
                                  for r in solved)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == task and summary["headline"] == json.loads(json.dumps(headline))


def test_the_report_shows_the_headline_and_every_item(run):
    _, _, _, _, out, outcome, _ = run
    html = (out / "report.html").read_text()
    assert "What the solvers still solve" in html
    records, _ = read_records(out / RESULTS)
    assert all(r["path"] in html for r in records)
    for v in outcome.summary["headline"]:
        assert v in html


def test_a_resumed_run_redoes_only_what_is_missing(run, tmp_path):
    import shutil

    task, c, inp, csv, out, _, (surrogates, verifiers) = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    lines = [ln for ln in (copy / RESULTS).read_text().splitlines() if ln.strip()]
    last = json.loads(lines[-1])
    (copy / last["output"]).unlink()
    (copy / RESULTS).write_text("".join(ln + "\n" for ln in lines[:-1]))
    again = harden_folder(inp, copy, task=task, labels_csv=csv, surrogates=surrogates,
                          verifiers=verifiers, config=c.config, resume=True, **c.options)
    assert again.summary["new_this_run"] == 1 and again.summary["complete"]
    kept = {r["path"]: r for r in read_records(copy / RESULTS)[0]}
    assert all(kept[r["path"]] == r for r in map(json.loads, lines[:-1]))
    assert last["path"] in kept and (copy / last["output"]).is_file()


def test_eval_reads_the_run_by_the_same_rule(run):
    """The run's verifier read again by ``advx eval`` on the delivered files and their
    originals: the same answers, the same fooled counts."""
    from advx.engine.evaluate import evaluate_folder

    task, _, _, _, out, outcome, (_, verifiers) = run
    result = evaluate_folder(out, verifiers)
    assert result["task"] == task and result["clean"] and not result["skipped"]
    records, _ = read_records(out / RESULTS)
    (v,) = outcome.summary["headline"]
    for row in result["results"]:
        w = row["view"]
        clean = [r for r in records if r["right_before"][v][w]]
        assert row["right_clean"] == len(clean), (w, row)
        assert row["fooled"] == sum(not r["right_after"][v][w] for r in clean), (w, row)
        assert row["right"] == sum(r["right_after"][v][w] for r in records)


def test_the_service_hardens_a_request_of_every_task(run):
    from web import Running, get, post

    from advx.engine.serve.http import create_app
    from advx.engine.serve.requests import TaskSetup
    from advx.engine.serve.service import HardenService

    task, c, inp, csv, _, _, (surrogates, verifiers) = run
    t = get_task(task)
    row = t.read_rows(inp, csv)[0]
    data = (inp / row.path).read_bytes()
    svc = HardenService({task: TaskSetup(surrogates, verifiers, options=c.options)},
                        config=c.config, max_batch=2)
    try:
        with Running(create_app(svc)) as srv:
            status, headers, body = post(srv.base + "/harden", {t.truth: t.truth_text(row.truth)},
                                         data)
            assert status == 200, body
            record = json.loads(headers["x-advx-result"])
            assert record["task"] == task and record[t.truth] == row.truth
            assert set(record["right_after"]) == {v.name for v in svc.hardener(task).verifiers}
            truth, code = c.bad_truth
            status, _, body = post(srv.base + "/harden", {t.truth: truth}, data)
            assert status == code and "error" in json.loads(body)
            assert get(srv.base + "/models")[1]["tasks"][task]["loaded"] is not None
    finally:
        svc.close()


@pytest.mark.parametrize("task", BUILT_IN)
def test_out_of_memory_halves_the_batch_for_every_task(task, tmp_path, monkeypatch):
    from advx.engine.api import Hardener
    from advx.engine.images import load_image

    c = case(task)
    inp = tmp_path / "in"
    inp.mkdir()
    csv = c.write(inp)
    rows = get_task(task).read_rows(inp, csv)[:2]
    surrogates, verifiers = c.models(tmp_path)
    h = Hardener(task, surrogates=surrogates, verifiers=verifiers, config=c.config,
                 **c.options)
    step, failed = h.scheduler.attack.step, []

    def short_of_memory(state, y, t=None):
        if len(state) > 1:
            failed.append(len(state))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return step(state, y, t)

    monkeypatch.setattr(h.scheduler.attack, "step", short_of_memory)
    results = h.run([load_image(inp / r.path).pixels for r in rows], [r.truth for r in rows])
    assert failed and h.scheduler.chunk == 1
    assert all(r is not None and r.steps > 0 for r in results)


# --- a third task, from its own module ----------------------------------------------------------


@pytest.fixture
def shade():
    from fake_task import ShadeTask

    task = register_task(ShadeTask())
    yield task
    TASKS.pop(task.name)


def test_a_third_task_needs_nothing_outside_its_module(shade, tmp_path):
    """The scheduler (through the API), the folder run and report, ``advx eval``, the service
    and the command line take the ``shade`` task as they are."""
    from click.testing import CliRunner
    from fake_task import write_shades
    from web import Running, post

    import advx
    from advx.cli.main import cli
    from advx.engine.config import HardenConfig
    from advx.engine.serve.http import create_app
    from advx.engine.serve.service import HardenService

    inp = tmp_path / "in"
    write_shades(inp)
    config = HardenConfig(steps=6, verify_every=2, batch_size=2)
    # the API and the scheduler
    px = [np.asarray(Image.open(inp / f"{i}.png").convert("RGB")) for i in range(2)]
    results = advx.harden(px, ["dark", "bright"], task="shade", config=config)
    assert [r.shade for r in results] == ["dark", "bright"] and all(r.steps for r in results)
    # the folder run, its records and report
    outcome = harden_folder(inp, tmp_path / "out", task="shade", config=config)
    records, _ = read_records(tmp_path / "out" / RESULTS)
    assert len(records) == 4 and {r["shade"] for r in records} == {"dark", "bright"}
    assert "shade-net-1" in outcome.summary["headline"]
    assert "answered_bright" in outcome.summary["headline"]["shade-net-1"]["views"]["own"]
    assert "class='shade'" in (tmp_path / "out" / "report.html").read_text()
    # advx eval
    ev = advx.evaluate_folder(tmp_path / "out")
    assert ev["task"] == "shade" and {r["view"] for r in ev["results"]} == {"own", "jpeg75"}
    # the service
    svc = HardenService({"shade": advx.TaskSetup()}, config=config, max_batch=2)
    try:
        with Running(create_app(svc)) as srv:
            status, headers, _ = post(srv.base + "/harden", {"shade": "dark"},
                                      (inp / "0.png").read_bytes())
            assert status == 200 and json.loads(headers["x-advx-result"])["shade"] == "dark"
            status, _, body = post(srv.base + "/harden", {"shade": "grey"},
                                   (inp / "0.png").read_bytes())
            assert status == 422 and b"neither dark nor bright" in body
    finally:
        svc.close()
    # the command line
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "cli"),
                                   "--task", "shade", "--steps", "4", "--quiet",
                                   "--surrogates", "shade-net-2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "report.html").is_file()
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "x"),
                                   "--task", "shade", "--label-set", "a,b"])
    assert res.exit_code == 2 and "--label-set: not an option of --task shade" in res.output


def test_the_command_line_lists_every_task():
    from click.testing import CliRunner

    from advx.cli.main import cli

    out = CliRunner().invoke(cli, ["harden", "--help"]).output
    for t in TASKS.values():
        assert t.name in out and t.columns in out
    res = CliRunner().invoke(cli, ["harden", ".", "--out", "x", "--task", "nope"])
    assert res.exit_code == 2 and "'nope' is not a task" in res.output
