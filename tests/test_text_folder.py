"""Folder runs of text captchas (``advx harden --task text``), what tests/test_tasks.py does not
cover for every task: outputs at their paths (a sub-folder, CSV columns in any order), hostile
rows as error records naming their CSV line, a captcha over --max-side as an error record, the
headline recomputed from the readings with the solver's case rule (and its CER), the budget
read back from disk, a seeded CLI run repeating the library's byte for byte, a finished run
resumed without loading a model, the report's readings and 3x crops, the labels CSV's rows.

One real OCR solver (captcha-whisperer) is both surrogate and verifier, on captchas drawn by
engine/tasks/text/draw.py, with few steps: the file runs two hardening runs of two captchas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import advx.engine.api as api
from advx.cli.main import cli
from advx.engine import metrics
from advx.engine.config import HardenConfig
from advx.engine.errors import DatasetError, RunError
from advx.engine.folder import harden_folder
from advx.engine.folder import records as rec
from advx.engine.tasks import get_task
from advx.engine.tasks.text.draw import draw_captchas
from advx.engine.tasks.text.report import zoom_of
from advx.export.zoo import ModelUnavailableError
from advx.export.zoo.ocr import text_solver

SOLVER = "captcha-whisperer"
STEPS = 5
CONFIG = HardenConfig(steps=STEPS).for_task("text")
GOOD = ("a.png", "sub/b.png")


@pytest.fixture(scope="module")
def charset():
    try:
        return text_solver(SOLVER).charset
    except ModelUnavailableError as e:
        pytest.skip(f"{SOLVER} is not installed: {e}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, charset) -> tuple[Path, dict[str, str]]:
    """Two good captchas (one in a sub-folder) and three hostile rows; another CSV lists the
    good ones alone."""
    pytest.importorskip("captcha")  # its font draws the captchas
    d = tmp_path_factory.mktemp("captchas")
    (d / "sub").mkdir()
    (a_text, a), (b_text, b) = draw_captchas(2, seed=3)
    for name, px in (("a.png", a), ("sub/b.png", b), ("empty.png", a), ("euro.png", b)):
        Image.fromarray(px).save(d / name)
    (d / "labels.csv").write_text(
        "id,text,path\n"  # columns in any order, extra ones ignored
        f"1,{a_text},a.png\n2,{b_text},sub/b.png\n3,ABCD,missing.png\n4,,empty.png\n"
        "5,AB€,euro.png\n", encoding="utf-8")
    (d / "good.csv").write_text(f"path,text\na.png,{a_text}\nsub/b.png,{b_text}\n")
    return d, {"a.png": a_text, "sub/b.png": b_text}


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> tuple[Path, Path, dict, list[dict]]:
    d, _ = folder
    out = tmp_path_factory.mktemp("run") / "out"
    outcome = harden_folder(d, out, task="text", config=CONFIG, surrogates=[SOLVER],
                            verifiers=[SOLVER])  # labels: INPUT/labels.csv
    assert not outcome.interrupted
    records, bad = rec.read_records(out / rec.RESULTS)
    assert bad == 0
    return d, out, outcome.summary, records


def _by_path(records: list[dict]) -> dict[str, dict]:
    return {r["path"]: r for r in records}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_one_output_per_good_row_at_its_path(run, folder):
    d, out, summary, records = run
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")
                     if rec.REPORT_FILES not in p.parts)
    assert written == sorted(GOOD)
    by = _by_path(records)
    assert sorted(by) == sorted([*GOOD, "missing.png", "empty.png", "euro.png"])
    assert len(records) == summary["total"] == summary["done"] == 5
    for path in GOOD:
        assert by[path]["output"] == path and by[path]["text"] == folder[1][path]
        assert by[path]["status"] in ("fooled", "unfooled") and by[path]["error"] is None
        assert _pixels(out / path).shape == _pixels(d / path).shape
    assert summary["task"] == "text" and summary["config"]["output_format"] == "png"
    assert summary["models"] == {"surrogates": [SOLVER], "verifiers": [SOLVER],
                                 "left_out": {}, "notes": []}


def test_hostile_rows_become_error_records(run):
    by = _by_path(run[3])
    errors = {p: r["error"] for p, r in by.items() if r["status"] == "error"}
    assert sorted(errors) == ["empty.png", "euro.png", "missing.png"]
    assert errors["missing.png"] == "labels.csv line 4: file not found"
    assert errors["empty.png"].startswith("labels.csv line 5: the truth text is empty")
    assert errors["euro.png"].startswith(f"labels.csv line 6: {SOLVER} cannot read '€'")
    assert all(by[p]["output"] is None for p in errors)
    assert run[2]["errors"] == 3


def test_a_captcha_over_max_side_is_an_error_record(folder, tmp_path):
    """A captcha is hardened at its own size (its readings are those of the delivered file):
    over --max-side it is refused, not downscaled; --max-side applies to text runs."""
    d, _ = folder
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, [
        "harden", str(d), "--out", str(out), "--labels", str(d / "good.csv"), "--task", "text",
        "--max-side", "100", "--surrogates", SOLVER, "--verifiers", SOLVER, "--quiet"])
    assert res.exit_code == 0, res.output
    records, _ = rec.read_records(out / rec.RESULTS)
    assert [r["status"] for r in records] == ["error", "error"]
    for r in records:
        line = 2 + GOOD.index(r["path"])
        assert r["error"] == (f"good.csv line {line}: 160x60 px is over --max-side 100: a "
                              f"captcha is hardened at its own size")
        assert r["output"] is None and not (out / r["path"]).exists()


def test_missing_text_column_is_a_clear_error_before_any_model(tmp_path, monkeypatch):
    def no_models(*a, **k):
        raise AssertionError("models loaded before the CSV was checked")

    monkeypatch.setattr(api, "Hardener", no_models)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "labels.csv").write_text("path,label\na.png,AB12\n")
    with pytest.raises(DatasetError, match=r"no 'text' column .*'path,text' header"):
        harden_folder(tmp_path / "in", tmp_path / "out", task="text")
    assert not (tmp_path / "out").exists()


def test_headline_is_what_the_records_imply(run, charset):
    """Recomputed from the readings in results.jsonl with the solver's own case rule: under
    each view it is fooled only on captchas it read right clean there (the others apart)."""
    _, _, summary, records = run
    hard = [r for r in records if r["status"] != "error"]
    assert len(hard) == len(GOOD)

    def right(r: dict, when: str, w: str) -> bool:
        return charset.same(r[f"read_{when}"][SOLVER][w], r["text"])

    views = list(hard[0]["read_after"][SOLVER])
    assert all(list(r["read_before"][SOLVER]) == views for r in hard)
    # the right_before / right_after the headline counts are the readings under the case rule
    for r in hard:
        for when in ("before", "after"):
            assert r[f"right_{when}"][SOLVER] == {w: right(r, when, w) for w in views}
    deciding = list(CONFIG.deciding)
    h = summary["headline"][SOLVER]
    assert list(summary["headline"]) == [SOLVER]
    assert h["deciding"] == deciding
    assert h["reported"] == [w for w in views if w not in deciding]
    solved = [r for r in hard if all(right(r, "before", w) for w in deciding)]
    beaten = [not any(right(r, "after", w) for w in deciding) for r in solved]
    assert h["solved_clean"] == len(solved) and h["beaten"] == sum(beaten)
    assert h["beaten_rate"] == (round(sum(beaten) / len(solved), 4) if solved else None)
    assert list(h["views"]) == views
    for w, e in h["views"].items():
        clean = [r for r in hard if right(r, "before", w)]
        fooled = sum(not right(r, "after", w) for r in clean)
        assert e["right_clean"] == len(clean) and e["wrong_clean"] == len(hard) - len(clean)
        assert e["fooled"] == fooled
        assert e["fooled_rate"] == (round(fooled / len(clean), 4) if clean else None)
        assert e["mean_cer"] == round(np.mean([r["cer_after"][SOLVER][w] for r in hard]), 4)
    # one verifier: a captcha is fooled exactly when it misreads all its deciding views
    misread = [all(not right(r, "after", w) for w in deciding) for r in hard]
    assert [r["status"] == "fooled" for r in hard] == misread
    assert summary["fooled"] == sum(misread)
    assert summary["unfooled"] == len(hard) - sum(misread)
    attacked = [r for r in hard if r["stop_reason"] != "already_fooled"]
    assert summary["already_fooled"] == len(hard) - len(attacked)
    assert summary["fooled_rate"] == (round(sum(r["status"] == "fooled" for r in attacked)
                                            / len(attacked), 4) if attacked else None)
    assert summary["min_ssim"] == round(min(r["ssim"] for r in hard), 4)
    assert summary["mean_steps"] == round(np.mean([r["steps"] for r in hard]), 4)
    assert sum(summary["stop_reasons"].values()) == len(hard)
    # the character error rate is the edit distance to the truth under the case rule
    from advx.engine.tasks.text.losses import edit_distance

    for r in hard:
        for w, s in r["read_after"][SOLVER].items():
            cer = edit_distance(charset.key(s), charset.key(r["text"])) / len(r["text"])
            assert r["cer_after"][SOLVER][w] == round(cer, 4)


def test_budget_holds_on_the_delivered_files(run):
    d, out, _, records = run
    for r in records:
        if r["status"] == "error":
            continue
        x, y = _pixels(d / r["path"]), _pixels(out / r["output"])
        linf = int(np.abs(y.astype(int) - x.astype(int)).max())
        assert linf <= CONFIG.eps and r["linf"] <= CONFIG.eps + 1e-3
        as_t = [torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255 for p in (y, x)]
        assert float(metrics.ssim(*as_t)[0]) >= CONFIG.ssim_floor


def test_cli_repeats_the_seeded_run_byte_for_byte(run, folder, tmp_path):
    """`advx harden --task text` of the good rows: same options and seed, same batch, so the
    same bytes as the library run; the printed summary opens with the headline."""
    d, out, _, _ = run
    cli_out = tmp_path / "cli"
    res = CliRunner().invoke(cli, [
        "harden", str(d), "--out", str(cli_out), "--labels", str(d / "good.csv"),
        "--task", "text", "--steps", str(STEPS), "--surrogates", SOLVER,
        "--verifiers", SOLVER, "--seed", "0"])
    assert res.exit_code == 0, res.output
    # the progress bar is on stderr
    assert res.stdout.startswith(f"  {SOLVER}: right clean under all deciding views (own, ")
    assert "fooled / right clean: own " in res.stdout and "jpeg50 (reported) " in res.stdout
    assert "mean CER: own " in res.stdout
    for path in GOOD:
        assert (cli_out / path).read_bytes() == (out / path).read_bytes()
    summary = json.loads((cli_out / rec.SUMMARY).read_text())
    assert summary["total"] == 2 and summary["errors"] == 0


def test_cli_refuses_options_of_other_tasks(folder, tmp_path):
    d, _ = folder
    res = CliRunner().invoke(cli, ["harden", str(d), "--out", str(tmp_path / "o"),
                                   "--task", "text", "--label-set", "a,b", "--decoy", "a",
                                   "--max-side", "64"])
    assert res.exit_code == 2
    assert "--label-set, --decoy: not an option of --task text" in res.output
    assert not (tmp_path / "o").exists()


def test_resume_keeps_what_is_done(run, tmp_path, monkeypatch):
    """Every row already has its record: a resumed run loads no model and changes none."""
    d, out, _, records = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with pytest.raises(RunError, match="--resume"):
        harden_folder(d, copy, task="text", config=CONFIG, surrogates=[SOLVER],
                      verifiers=[SOLVER])

    def no_models(*a, **k):
        raise AssertionError("nothing was left to harden")

    monkeypatch.setattr(api, "Hardener", no_models)
    summary = harden_folder(d, copy, task="text", config=CONFIG, surrogates=[SOLVER],
                            verifiers=[SOLVER], resume=True).summary
    assert summary["new_this_run"] == 0 and summary["complete"]
    assert summary["models"]["verifiers"] == [SOLVER]  # from the earlier run's summary
    again, _ = rec.read_records(copy / rec.RESULTS)
    assert sorted(map(rec.dumps, again)) == sorted(map(rec.dumps, records))


def test_report_shows_headline_readings_and_3x_crops(run):
    d, out, _, records = run
    html = (out / rec.REPORT).read_text(encoding="utf-8")
    assert SOLVER in html and "<th>own</th>" in html and "jpeg50 (reported)" in html
    assert html.index("What the solvers still solve") < html.index("<h2>Run</h2>")
    for r in records:
        assert r["path"] in html
    for r in records:  # each hardened captcha's readings, clean and as delivered
        if r["status"] != "error":
            for when in ("before", "after"):
                assert all(f">{s}</td>" in html for s in r[f"read_{when}"][SOLVER].values())
    crops = sorted((out / rec.REPORT_FILES).glob("*_text_*.png"))
    assert len(crops) == 3 * len(GOOD)  # original, hardened, difference
    h, w = _pixels(d / GOOD[0]).shape[:2]
    k = zoom_of(h, w)
    assert k == 3
    assert {_pixels(c).shape for c in crops} == {(k * h, k * w, 3)}


def test_labels_csv_rows(tmp_path):
    """Duplicates with one text merge (noted), with two texts are an error; escaping paths and
    empty ones are errors of their row."""
    csv = tmp_path / "labels.csv"
    csv.write_text("path,text\na.png,AB\n./a.png,AB\nb.png,AB\nb.png,CD\n../c.png,AB\n,AB\n")
    rows = get_task("text").read_rows(tmp_path, None)  # INPUT/labels.csv
    assert rows == get_task("text").read_rows(tmp_path, csv)
    assert [(r.path, r.line) for r in rows] == [("a.png", 2), ("b.png", 4), ("../c.png", 6),
                                                ("", 7)]
    assert rows[0].problem is None and rows[0].notes == ("listed 2 times in labels.csv "
                                                         "(lines 2, 3)",)
    assert rows[1].problem.startswith("labels.csv lines 4, 5: 'b.png' is listed with "
                                      "different texts ('AB', 'CD')")
    assert rows[2].problem == "labels.csv line 6: path '../c.png' points outside the input folder"
    assert rows[3].problem == "labels.csv line 7: empty path"
