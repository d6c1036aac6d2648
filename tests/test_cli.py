"""The command line: every command's help, harden end to end on real weights (odd inputs, large
images, refusal, resume, SIGKILL / SIGINT in a real process), eval, export, models, demo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advx.cli.main import cli
from advx.engine.folder import records as rec
from advx.engine.tasks.labels.grids import Grid, grid_solve_rate, sample_grids

FAST = ["--steps", "3", "--transforms", "none", "--batch-size", "4", "--quiet"]
ONE_SURROGATE = ["--surrogates", "effnet-lite0"]  # cheaper where the defaults are not the point
EPS = 8.0


# --------------------------------------------------------------------------- helpers


def photo_tile(label: str, i: int, size: int = 48) -> np.ndarray:
    """A small crop of a real photo (cat: chelsea, espresso: coffee)."""
    import skimage.data as sd

    src = sd.chelsea() if label == "cat" else sd.coffee()
    src = np.asarray(Image.fromarray(src).resize((src.shape[1] // 3, src.shape[0] // 3)))
    y, x = 10 + 5 * i, 20 + 9 * i
    tile = np.ascontiguousarray(src[y : y + size, x : x + size])
    assert tile.shape == (size, size, 3)
    return tile


def make_folder(root: Path, per_label: int = 2, size: int = 48) -> Path:
    for label in ("cat", "espresso"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            Image.fromarray(photo_tile(label, i, size)).save(root / label / f"{i:03d}.jpg",
                                                             quality=95)
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def records_of(out: Path) -> list[dict]:
    lines = (out / rec.RESULTS).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def report_links(out: Path) -> list[str]:
    parser = _Links()
    parser.feed((out / rec.REPORT).read_text(encoding="utf-8"))
    return parser.links


def assert_one_record_and_output_each(inp: Path, out: Path, n_inputs: int) -> list[dict]:
    recs = records_of(out)
    paths = [r["path"] for r in recs]
    assert len(paths) == len(set(paths)) == n_inputs
    outputs = [r["output"] for r in recs if r["status"] != "error"]
    assert len(outputs) == len(set(outputs))
    for r in recs:
        if r["status"] != "error":
            assert (out / r["output"]).is_file()
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                    if p.is_file() and not p.relative_to(out).parts[0].startswith(
                        (rec.REPORT_FILES, rec.RESULTS, rec.SUMMARY, rec.REPORT)))
    assert images == sorted(outputs), "stray or missing output files"
    return recs


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 labels x 2 images hardened once; shared by the tests that inspect a finished run."""
    base = tmp_path_factory.mktemp("tiny")
    inp = make_folder(base / "in")
    before = tree_hashes(inp)
    out = base / "out"
    result = invoke("harden", inp, "--out", out, *FAST[:-1], "--json")
    assert result.exit_code == 0, result.output
    return inp, out, before, result


@pytest.fixture(scope="module")
def lite2_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lite2"
    result = invoke("export", "effnet-lite2", "--labels", "cat,espresso", "--precision", "fp32",
                    "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


# --------------------------------------------------------------------------- help and models


def test_every_command_has_help_with_an_example():
    assert invoke("--help").exit_code == 0
    assert {"harden", "eval", "export", "models", "demo", "bench"} <= set(cli.commands)
    for name in cli.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.output, name
    assert "130" in invoke("harden", "--help").output  # exit codes documented


def test_version():
    from advx import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch():
    code = "import sys; from advx.cli.main import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults_have_one_home():
    """The CLI shows the engine's defaults (read from advx.engine.defaults, advx.engine.views.presets
    and HardenConfig, never copied), and the views and templates the engine builds are the
    ones named there."""
    from advx.engine.config import HardenConfig
    from advx.engine.views.presets import PRESETS, view_matrices
    from advx.engine.views.view import views_of
    from advx.export.defaults import TEMPLATE_SETS
    from advx.export.zoo.zeroshot import _templates

    assert {n: tuple(v.name for v in views_of(n)) for n in PRESETS} == {
        n: p.views for n, p in PRESETS.items()}
    assert set(_templates()) == set(TEMPLATE_SETS)
    help_text = " ".join(invoke("harden", "--help").output.split())
    d = HardenConfig()
    for opt, value in (("--eps", d.eps), ("--steps", d.steps), ("--transforms", d.transforms),
                       ("--batch-size", d.batch_size), ("--ssim-floor", d.ssim_floor),
                       ("--surrogates", "effnet-lite0,effnet-lite1")):
        option_help = help_text.split("Options:", 1)[1].split(opt + " ", 1)[1].split(" --", 1)[0]
        assert f"[default:{value}" in option_help.replace(" ", ""), opt
    for line in view_matrices().splitlines():
        assert line in help_text


def test_models_lists_entries_and_grammar():
    from advx.export.zoo import GRAMMAR, list_entries

    result = invoke("models")
    assert result.exit_code == 0
    for e in list_entries():
        assert e.name in result.output
    assert GRAMMAR in result.output
    full = invoke("models", "--all")
    assert full.exit_code == 0 and "open_clip:ViT-B-32/" in full.output


# --------------------------------------------------------------------------- harden


def test_harden_tiny_folder(tiny_run):
    inp, out, before, result = tiny_run
    recs = assert_one_record_and_output_each(inp, out, 4)
    assert {r["path"] for r in recs} == {f"{lab}/{i:03d}.jpg" for lab in ("cat", "espresso")
                                         for i in range(2)}
    for r in recs:
        assert r["status"] in ("fooled", "unfooled") and r["error"] is None
        assert r["output"] == r["path"].replace(".jpg", ".png")
        assert r["linf"] <= EPS + 1e-3 and 0 < r["ssim"] <= 1
        assert set(r["predictions_before"]) == {"effnet-lite0", "effnet-lite1", "effnet-lite2"}
        with Image.open(out / r["output"]) as im:
            assert im.size == (48, 48)
    summary = json.loads((out / rec.SUMMARY).read_text())
    printed = json.loads(result.stdout)  # --json: the summary on stdout
    assert printed["total"] == summary["total"] == 4 and summary["complete"]
    assert summary["fooled"] + summary["unfooled"] == 4 and summary["errors"] == 0
    assert summary["label_set"] == ["cat", "espresso"]
    assert summary["config"]["steps"] == 3 and summary["surrogates"] == ["effnet-lite0",
                                                                          "effnet-lite1"]
    assert sum(summary["fooled_by_step"].values()) == summary["fooled"]
    assert tree_hashes(inp) == before  # INPUT unchanged


def test_report_links_are_relative_and_exist(tiny_run):
    _, out, _, _ = tiny_run
    links = report_links(out)
    assert len(links) >= 12  # 4 images x (original, hardened, difference) thumbnails + links
    for link in links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        assert (out / unquote(parsed.path)).resolve().exists(), link
    html = (out / rec.REPORT).read_text()
    assert "<svg" in html and "<script" not in html


def test_existing_results_are_refused_without_resume(tiny_run):
    inp, out, _, _ = tiny_run
    result = invoke("harden", inp, "--out", out, *FAST)
    assert result.exit_code == 1
    assert "--resume" in result.output and "Traceback" not in result.output


def test_nothing_to_do_on_resume_of_a_complete_run(tiny_run, tmp_path):
    inp, done, _, _ = tiny_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    result = invoke("harden", inp, "--out", out, *FAST, "--resume",
                    "--surrogates", "no-such-model")  # no models are built: nothing to do
    assert result.exit_code == 0, result.output
    assert len(records_of(out)) == 4


def _odd_inputs(root: Path) -> dict[str, str]:
    """Write odd and broken inputs; path -> expected error substring ('' = must harden)."""
    cat, esp = root / "cat", root / "espresso"
    cat.mkdir(parents=True)
    esp.mkdir(parents=True)
    base = photo_tile("cat", 0)
    expect = {}
    (cat / "zero.jpg").write_bytes(b"")
    expect["cat/zero.jpg"] = "empty file"
    buf = root / "full.png.bin"
    Image.fromarray(base).save(buf, format="PNG")
    (cat / "truncated.png").write_bytes(buf.read_bytes()[:120])
    buf.unlink()
    expect["cat/truncated.png"] = "truncated or corrupt"
    (cat / "text.png").write_text("this is not an image\n")
    expect["cat/text.png"] = "not an image"
    Image.fromarray(base[:8, :8]).save(cat / "tiny.png")
    expect["cat/tiny.png"] = "too small"
    gray16 = (photo_tile("cat", 1)[:, :, 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(cat / "sixteen.png")
    expect["cat/sixteen.png"] = ""
    Image.fromarray(photo_tile("cat", 2)).convert("P").save(cat / "palette.gif")
    expect["cat/palette.gif"] = ""
    Image.fromarray(photo_tile("espresso", 0)).convert("CMYK").save(esp / "cmyk.jpg")
    expect["espresso/cmyk.jpg"] = ""
    rgba = np.dstack([photo_tile("espresso", 1), np.full((48, 48), 200, np.uint8)])
    Image.fromarray(rgba).save(esp / "rgba.png")
    expect["espresso/rgba.png"] = ""
    Image.fromarray(photo_tile("espresso", 2)).convert("L").save(esp / "gray.png")
    expect["espresso/gray.png"] = ""
    frames = [Image.fromarray(photo_tile("cat", i)).convert("P") for i in (3, 4)]
    frames[0].save(cat / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    expect["cat/anim.gif"] = ""
    Image.fromarray(photo_tile("espresso", 3)).save(esp / "ünï cödé name.png")
    expect["espresso/ünï cödé name.png"] = ""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo_tile("cat", 5)[:, :40]).save(cat / "exif.jpg", exif=exif)
    expect["cat/exif.jpg"] = ""
    import skimage.data as sd

    big = np.asarray(Image.fromarray(sd.coffee()).resize((200, 150)))
    Image.fromarray(big).save(esp / "big.png")
    expect["espresso/big.png"] = ""
    return expect


NOTES = {
    "cat/sixteen.png": "16-bit", "cat/palette.gif": "palette", "espresso/cmyk.jpg": "CMYK",
    "espresso/rgba.png": "alpha", "espresso/gray.png": "grayscale", "cat/anim.gif": "animated",
    "cat/exif.jpg": "EXIF orientation 6", "espresso/big.png": "attacked at 64x48",
}


def test_odd_inputs(tmp_path):
    import torch

    from advx.engine.images import load_image
    from advx.export import OnnxVerifier, export_cached

    inp = tmp_path / "odd"
    expect = _odd_inputs(inp)
    before = tree_hashes(inp)
    out = tmp_path / "out"
    result = invoke("harden", inp, "--out", out, *FAST, *ONE_SURROGATE, "--max-side", "64",
                    "--steps", "1", "--batch-size", "8", "--format", "jpeg", "--quality", "85")
    assert result.exit_code == 0, result.output
    recs = {r["path"]: r for r in assert_one_record_and_output_each(inp, out, len(expect))}
    assert set(recs) == set(expect)
    for path, error in expect.items():
        r = recs[path]
        if error:
            assert r["status"] == "error" and error in r["error"], r
        else:
            assert r["status"] in ("fooled", "unfooled"), r
            assert Path(r["output"]).suffix == ".jpg"
    for path, note in NOTES.items():
        assert any(note in n for n in recs[path]["notes"]), recs[path]["notes"]
    with Image.open(out / "cat" / "exif.jpg") as im:
        assert im.size == (48, 40)  # rotated upright
    big = recs["espresso/big.png"]
    with Image.open(out / big["output"]) as im:
        assert im.size == (200, 150)  # full size
        hardened = np.asarray(im, dtype=np.int16)
    with Image.open(inp / "espresso" / "big.png") as im:
        original = np.asarray(im, dtype=np.int16)
    linf = np.abs(hardened - original).max()  # of the delivered JPEG, recomputed at full size
    assert linf > 0 and abs(big["linf"] - linf) < 1e-3
    # the verifier saw exactly the delivered file: same JPEG quality, same decoded pixels
    verifier = OnnxVerifier(export_cached("effnet-lite2", ("cat", "espresso")), device="cpu")
    for r in recs.values():
        if r["status"] != "error" and r["path"] != "espresso/big.png":
            x = load_image(out / r["output"]).pixels
            logits = verifier(torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255)
            label = verifier.labels[int(logits.argmax())]
            assert label == r["predictions_after"]["effnet-lite2"], r["path"]
    assert tree_hashes(inp) == before
    html = (out / rec.REPORT).read_text(encoding="utf-8")
    assert "empty file" in html and "ünï cödé name" in html


def test_large_image_policy_keeps_the_budget_and_metrics_match_the_engine():
    import torch

    from advx.engine import metrics
    from advx.engine.working import (
        downscale,
        full_size_metrics,
        upsample_perturbation,
        working_size,
    )

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (203, 301, 3), dtype=np.uint8)
    size = working_size(301, 203, 100)
    assert size == (100, 67) and working_size(90, 60, 100) is None
    work = downscale(original, size)
    adv = np.clip(work.astype(int) + rng.choice([-8, 8], work.shape), 0, 255).astype(np.uint8)
    full = upsample_perturbation(original, work, adv)
    assert full.shape == original.shape and full.dtype == np.uint8
    assert np.abs(full.astype(int) - original).max() <= 8
    got = full_size_metrics(full, original, strip=37)  # strips must not change the figures
    x, ref = (torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None] / 255
              for a in (full, original))
    assert got["ssim"] == pytest.approx(float(metrics.ssim(x, ref)), abs=1e-5)
    assert got["psnr"] == pytest.approx(float(metrics.psnr(x, ref)), abs=1e-3)
    assert got["linf"] == pytest.approx(float(metrics.linf(x, ref)) * 255, abs=1e-3)
    assert got["l2"] == pytest.approx(float(metrics.l2(x, ref)), abs=1e-3)


def test_bad_csv_line_is_reported(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\ncat/000.jpg,cat\nespresso/000.jpg\n")
    result = invoke("harden", inp, "--labels", csv, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 1
    assert "line 3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_model_name(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    result = invoke("harden", inp, "--out", tmp_path / "out", *FAST,
                    "--surrogates", "effnet-lite9")
    assert result.exit_code == 1
    assert "unknown model 'effnet-lite9'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / rec.RESULTS).exists()  # a retry needs no --resume


def test_usage_errors_exit_2(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    assert invoke("harden", inp, "--out", tmp_path / "o", "--eps", "0").exit_code == 2
    assert invoke("harden", inp, "--out", tmp_path / "o", "--attack", "fgsm").exit_code == 2
    assert invoke("harden", inp).exit_code == 2  # --out missing
    result = invoke("harden", inp, "--out", tmp_path / "o", "--ray-workers", "2")
    assert result.exit_code == 2 and "--ray-workers needs --ray" in result.output
    result = invoke("harden", inp, "--out", inp / "hardened", *FAST)
    assert result.exit_code == 1 and "INPUT is never modified" in result.output


def test_label_set_must_cover_the_input(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    result = invoke("harden", inp, "--out", tmp_path / "o", *FAST, "--label-set", "cat,dog")
    assert result.exit_code == 1 and "espresso" in result.output
    shutil.rmtree(inp / "espresso")  # one label: a binary challenge against the negatives
    result = invoke("harden", inp, "--out", tmp_path / "o", *FAST, *ONE_SURROGATE)
    assert result.exit_code == 0, result.output
    label_set = json.loads((tmp_path / "o" / rec.SUMMARY).read_text())["label_set"]
    assert label_set[0] == "cat" and {"dog", "bus", "flower"} <= set(label_set[1:])


def test_an_output_folder_is_not_taken_for_input(tiny_run, tmp_path):
    _, out, _, _ = tiny_run
    result = invoke("harden", out, "--out", tmp_path / "again", *FAST)
    assert result.exit_code == 1 and "advx output folder" in result.output


def test_output_paths_never_collide():
    out = rec.output_paths(["a/x.jpg", "a/x.png", "a/y.gif", "report.html/z.png"], "png")
    assert out == {"a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png.png", "a/y.gif": "a/y.png",
                   "report.html/z.png": "_report.html/z.png"}
    assert rec.output_paths(["b/q.png"], "jpeg") == {"b/q.png": "b/q.jpg"}


def test_records_to_keep(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"x")
    outputs = {"a/1.jpg": "a/1.png", "a/2.jpg": "a/2.png", "a/3.jpg": "a/3.png"}
    recs = [
        {"path": "a/1.jpg", "status": "fooled", "output": "a/1.png"},
        {"path": "a/2.jpg", "status": "unfooled", "output": "a/2.png"},  # output missing
        {"path": "a/3.jpg", "status": "error", "output": None, "error": "empty file"},
        {"path": "gone.jpg", "status": "fooled", "output": "gone.png"},  # input removed
    ]
    assert set(rec.records_to_keep(tmp_path, recs, outputs)) == {"a/1.jpg", "a/3.jpg"}
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"path": "a/2.j')
    got, bad = rec.read_records(path)
    assert len(got) == 4 and bad == 1


# --------------------------------------------------------------------------- eval


def test_grids_are_seeded_and_well_formed():
    labels = [0] * 3 + [1] * 10 + [2] * 5
    grids = sample_grids(labels, 100, seed=7)
    assert grids == sample_grids(labels, 100, seed=7) != sample_grids(labels, 100, seed=8)
    for g in grids:
        assert len(g.tiles) == 9
        assert 1 <= sum(labels[t] == g.target for t in g.tiles) <= 4
    assert {g.target for g in grids} == {0, 1, 2}
    # one wrong tile fails the whole grid
    grid = [Grid(0, (0, 3, 4, 5, 6, 7, 8, 9, 10))]
    preds = list(labels)
    assert grid_solve_rate(preds, labels, grid) == 1.0
    preds[5] = 0  # a negative selected
    assert grid_solve_rate(preds, labels, grid) == 0.0


def test_eval_command_on_input_and_hardened_run(tiny_run, lite2_export):
    inp, out, _, _ = tiny_run
    export_dir, _ = lite2_export
    for folder in (inp, out):
        result = invoke("eval", folder, "--models", f"effnet-lite0,{export_dir}", "--grids", "20",
                        "--json")
        assert result.exit_code == 0, result.output
        res = json.loads(result.stdout)
        assert res["source"] == ("folder" if folder == inp else "advx run")
        assert res["images"] == 4 and res["label_set"] == ["cat", "espresso"]
        assert len(res["results"]) == 2
        for r in res["results"]:
            assert 0 <= r["accuracy"] <= 1 and 0 <= r["grid_solve_rate"] <= 1
    table = invoke("eval", out, "--models", "effnet-lite0", "--grids", "5")
    assert table.exit_code == 0 and "grid solve rate" in table.output


def test_eval_refuses_an_export_over_other_labels(tiny_run, lite2_export, tmp_path):
    inp, _, _, _ = tiny_run
    export_dir, _ = lite2_export
    result = invoke("eval", inp, "--models", str(export_dir), "--label-set", "cat,espresso,bus")
    assert result.exit_code == 1 and "re-export" in result.output


# --------------------------------------------------------------------------- export


def test_export_command(lite2_export):
    out, result = lite2_export
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert "max abs diff" in result.output and "top-1 agreement 100.0%" in result.output
    assert str(out / "manifest.json") in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["cat", "espresso"] and manifest["precision"] == "fp32"


def test_export_errors_are_clean(tmp_path):
    result = invoke("export", "effnet-lite2", "--labels", "cat,qwzxv", "--out", tmp_path / "e")
    assert result.exit_code == 1 and "qwzxv" in result.output
    assert "Traceback" not in result.output
    result = invoke("export", "nope:thing", "--labels", "cat,dog", "--out", tmp_path / "e")
    assert result.exit_code == 1 and "unknown backend" in result.output


# --------------------------------------------------------------------------- demo


def test_demo_tiles_are_labelled_correctly():
    from advx.cli.demo import PHOTOS, correctly_classified, load_photos, make_tiles

    photos, missing = load_photos()
    assert missing == 0 and len(photos) == len(PHOTOS) >= 5
    tiles = make_tiles(photos, per_photo=2)
    assert all(t.shape == (224, 224, 3) and t.dtype == np.uint8 for _, _, t in tiles)
    label_set = sorted({lab for lab, _, _ in tiles})
    assert all(correctly_classified(tiles, label_set))


def test_demo_missing_packages_say_how_to_install(monkeypatch, tmp_path):
    from advx.cli import demo

    def missing():
        raise ImportError("No module named 'skimage'")

    monkeypatch.setattr(demo, "PHOTOS", (missing,) * 3)
    result = invoke("demo", "--out", tmp_path / "d", "--quiet")
    assert result.exit_code == 1 and "advx[samples]" in result.output


def test_demo_command(monkeypatch, tmp_path):
    """The demo's plumbing (the hardening itself is tested above): checked tiles are written
    under OUT/input/<label>/, harden runs on them into OUT/hardened, the report is named."""
    from advx.cli import demo
    from advx.engine import folder
    from advx.engine.folder.records import summarize

    jobs = []

    def fake_run(job, **kw):
        jobs.append(job)
        summary = {**summarize([], total=0), "images_per_s": None, "seconds": 0.0}
        return folder.Outcome(summary, False, "")

    monkeypatch.setattr(folder, "run_harden", fake_run)
    monkeypatch.setattr(demo, "correctly_classified",
                        lambda tiles, labels: [i != 0 for i in range(len(tiles))])
    out = tmp_path / "d"
    result = invoke("demo", "--out", out, "--steps", "7", "--tiles-per-photo", "1")
    assert result.exit_code == 0, result.output
    assert "dropped 1 tile(s)" in result.output and "report.html" in result.output
    (job,) = jobs
    assert job.input_dir == out / "input" and job.out_dir == out / "hardened" and job.resume
    assert job.config.steps == 7
    tiles = sorted(p.relative_to(out / "input").as_posix() for p in (out / "input").rglob("*.png"))
    assert len(tiles) == len(demo.PHOTOS) - 1
    assert "military_uniform/grace_hopper_1.png" in tiles


# --------------------------------------------------------------------------- real processes


def _start(inp: Path, out: Path, steps: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "advx.cli.main", "harden", str(inp), "--out", str(out),
           "--steps", str(steps), "--transforms", "none", "--batch-size", "1", "--seed", "1",
           *ONE_SURROGATE, "--quiet", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell that starts jobs in the background ignores SIGINT for them (and so for us):
    # give the child the default disposition, as a terminal would
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _interrupt_midway(inp: Path, out: Path, n: int, sig: int) -> subprocess.Popen:
    """Start a run and send ``sig`` once 1 <= records < n; retry with more steps if it was too
    quick to catch."""
    for steps in (2, 8, 30):
        shutil.rmtree(out, ignore_errors=True)
        proc = _start(inp, out, steps)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if 1 <= _lines(out / rec.RESULTS) < n:
                proc.send_signal(sig)
                proc.wait(timeout=120)
                if _lines(out / rec.RESULTS) < n:
                    return proc
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail("the run always finished before it could be interrupted")


@pytest.fixture(scope="module")
def eight_images(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("eight") / "in", per_label=4, size=64)


@pytest.mark.slow
def test_sigkill_then_resume(eight_images, tmp_path):
    out = tmp_path / "out"
    proc = _interrupt_midway(eight_images, out, 8, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / rec.SUMMARY).exists()  # killed: no summary, records survive
    partial, _ = rec.read_records(out / rec.RESULTS)  # the last line may be torn
    stamps = {r["path"]: (out / r["output"]).stat().st_mtime_ns for r in partial}
    # what else a kill can leave: a torn last line, a temp file of an atomic write
    with open(out / rec.RESULTS, "a", encoding="utf-8") as fh:
        fh.write('{"path": "cat/003.jpg", "outp')
    (out / "cat" / ".003.png.0123abcd.tmp").write_bytes(b"partial")
    resumed = _start(eight_images, out, 2, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "torn" in err  # the skipped line is reported
    recs = assert_one_record_and_output_each(eight_images, out, 8)
    assert not list(out.rglob("*.tmp"))
    done_before = {r["path"]: r for r in partial}
    for r in recs:  # what was finished before the kill is kept as it was, not redone
        if r["path"] in done_before:
            assert r == done_before[r["path"]]
            assert (out / r["output"]).stat().st_mtime_ns == stamps[r["path"]]
    summary = json.loads((out / rec.SUMMARY).read_text())
    assert summary["complete"] and summary["new_this_run"] == 8 - len(partial)


@pytest.mark.slow
def test_sigint_exits_130_and_resume_completes(eight_images, tmp_path):
    out = tmp_path / "out"
    proc = _interrupt_midway(eight_images, out, 8, signal.SIGINT)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    summary = json.loads((out / rec.SUMMARY).read_text())
    assert summary["interrupted"] and not summary["complete"] and summary["pending"] > 0
    assert (out / rec.REPORT).is_file()
    resumed = _start(eight_images, out, 2, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_one_record_and_output_each(eight_images, out, 8)
    assert json.loads((out / rec.SUMMARY).read_text())["complete"]


def test_resume_compares_options_like_with_like(tmp_path):
    """Options read back from summary.json (lists) equal this run's (tuples): no warning on
    identical options, a warning naming each option that differs."""
    from advx.engine.folder.run import _changed_options

    info = {"config": {"eps": 8.0, "views": ("own", "jpeg75"), "ssim_floor": None},
            "surrogates": ("effnet-lite0",), "label_set": ("cat", "dog"), "max_side": 1024}
    (tmp_path / rec.SUMMARY).write_text(json.dumps(info))
    assert _changed_options(tmp_path, info) == []
    other = {**info, "config": {**info["config"], "views": ("own",)}, "label_set": ("cat",)}
    assert sorted(_changed_options(tmp_path, other)) == ["config.views", "label_set"]
