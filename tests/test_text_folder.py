"""Folder runs of text captchas (``advx harden --task text``): outputs at their paths, records
that add up to the summary's headline, hostile rows as error records, the budget read back from
disk, seeded runs that repeat byte for byte, resume, the CLI and the report.

One real OCR solver (captcha-whisperer) is both surrogate and verifier, on captchas drawn by
engine/text_draw.py, with few steps: the file runs two hardening runs of two captchas.
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

from advx.cli.main import cli
from advx.engine import metrics
from advx.engine.errors import RunError
from advx.engine.folder import harden_text_folder
from advx.engine.folder import records as rec
from advx.engine.tasks.labels.dataset import DatasetError
from advx.engine.tasks.text.api import text_config
from advx.engine.tasks.text.draw import draw_captchas
from advx.engine.tasks.text.report import zoom_of
from advx.engine.tasks.text.rows import read_text_labels
from advx.export.zoo import ModelUnavailableError
from advx.export.zoo.ocr import text_solver

SOLVER = "captcha-whisperer"
STEPS = 5
CONFIG = text_config(steps=STEPS)
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
    summary = harden_text_folder(d, out, config=CONFIG, surrogates=[SOLVER], verifiers=[SOLVER],
                                 show_progress=False)
    records, bad = rec.read_records(out / rec.RESULTS)
    assert bad == 0
    return d, out, summary, records


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
    assert summary["task"] == "text" and summary["output_format"] == "png"
    assert summary["solvers"] == {"surrogates": [SOLVER], "verifiers": [SOLVER],
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


def test_missing_text_column_is_a_clear_error_before_any_model(tmp_path, monkeypatch):
    import advx.engine.tasks.text.api as text_api

    def no_models(*a, **k):
        raise AssertionError("models loaded before the CSV was checked")

    monkeypatch.setattr(text_api, "TextHardener", no_models)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "labels.csv").write_text("path,label\na.png,AB12\n")
    with pytest.raises(DatasetError, match=r"no 'text' column .*'path,text' header"):
        harden_text_folder(tmp_path / "in", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_headline_is_what_the_records_imply(run, charset):
    """Recomputed from results.jsonl with the solver's own case rule."""
    _, _, summary, records = run
    hard = [r for r in records if r["status"] != "error"]
    misread = {r["path"]: {w: not charset.same(s, r["text"]) for w, s in
                           r["read_after"][SOLVER].items()} for r in hard}
    deciding = list(CONFIG.deciding)
    beaten = [all(misread[r["path"]][w] for w in deciding) for r in hard]
    h = summary["headline"][SOLVER]
    assert list(summary["headline"]) == [SOLVER]
    assert h["deciding"] == deciding
    assert h["reported"] == [w for w in hard[0]["read_after"][SOLVER] if w not in deciding]
    assert h["beaten_rate"] == round(sum(beaten) / len(hard), 4)
    for w, e in h["views"].items():
        assert e["fooled_rate"] == round(sum(misread[r["path"]][w] for r in hard) / len(hard), 4)
        assert e["mean_cer"] == round(np.mean([r["cer_after"][SOLVER][w] for r in hard]), 4)
        clean = [charset.same(r["read_before"][SOLVER], r["text"]) for r in hard]
        assert e["read_clean_rate"] == (round(sum(clean) / len(hard), 4) if w == "own"
                                        else None)
    # one verifier: a captcha is fooled exactly when it beats all its deciding views
    assert [r["status"] == "fooled" for r in hard] == beaten
    assert summary["fooled"] == sum(beaten) and summary["unfooled"] == len(hard) - sum(beaten)
    assert summary["fooled_rate"] == h["beaten_rate"]
    assert summary["min_ssim"] == round(min(r["ssim"] for r in hard), 4)
    assert summary["mean_steps"] == round(np.mean([r["steps"] for r in hard]), 4)
    assert sum(summary["stop_reasons"].values()) == len(hard)


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
    assert res.stdout.startswith(f"  {SOLVER}: misreads ")  # the progress bar is on stderr
    assert "fooled as delivered: own " in res.stdout and "jpeg50 (reported)" in res.stdout
    for path in GOOD:
        assert (cli_out / path).read_bytes() == (out / path).read_bytes()
    summary = json.loads((cli_out / rec.SUMMARY).read_text())
    assert summary["total"] == 2 and summary["errors"] == 0


def test_cli_refuses_options_of_image_runs(folder, tmp_path):
    d, _ = folder
    res = CliRunner().invoke(cli, ["harden", str(d), "--out", str(tmp_path / "o"),
                                   "--task", "text", "--label-set", "a,b", "--max-side", "64"])
    assert res.exit_code == 2
    assert "--label-set, --max-side do(es) not apply to --task text" in res.output
    assert not (tmp_path / "o").exists()


def test_resume_keeps_what_is_done(run, tmp_path, monkeypatch):
    """Every row already has its record: a resumed run loads no model and changes none."""
    import advx.engine.tasks.text.api as text_api

    d, out, _, records = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with pytest.raises(RunError, match="--resume"):
        harden_text_folder(d, copy, config=CONFIG, surrogates=[SOLVER], verifiers=[SOLVER],
                           show_progress=False)

    def no_models(*a, **k):
        raise AssertionError("nothing was left to harden")

    monkeypatch.setattr(text_api, "TextHardener", no_models)
    summary = harden_text_folder(d, copy, config=CONFIG, surrogates=[SOLVER],
                                 verifiers=[SOLVER], resume=True, show_progress=False)
    assert summary["new_this_run"] == 0 and summary["complete"]
    assert summary["solvers"]["verifiers"] == [SOLVER]  # from the earlier run's summary
    again, _ = rec.read_records(copy / rec.RESULTS)
    assert sorted(map(rec.dumps, again)) == sorted(map(rec.dumps, records))


def test_report_shows_headline_readings_and_3x_crops(run):
    d, out, _, records = run
    html = (out / rec.REPORT).read_text(encoding="utf-8")
    assert SOLVER in html and "own (deciding)" in html and "jpeg50 (reported)" in html
    assert html.index("What the OCR solvers still read") < html.index("<h2>Run</h2>")
    for r in records:
        assert r["path"] in html
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
    rows = read_text_labels(csv)
    assert [(r.path, r.line) for r in rows] == [("a.png", 2), ("b.png", 4), ("../c.png", 6),
                                                ("", 7)]
    assert rows[0].problem is None and rows[0].notes == ("listed 2 times in labels.csv "
                                                         "(lines 2, 3)",)
    assert rows[1].problem.startswith("labels.csv lines 4, 5: 'b.png' is listed with "
                                      "different texts ('AB', 'CD')")
    assert rows[2].problem == "labels.csv line 6: path '../c.png' points outside the input folder"
    assert rows[3].problem == "labels.csv line 7: empty path"
