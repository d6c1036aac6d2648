"""The command line: every command's help, harden end to end on real weights for every task
(odd inputs, large images, refusal, a task's own options, resume, SIGKILL / SIGINT in a real
process), eval, export, models, demo, and serve's options."""

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

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advx.cli.main import cli
from advx.engine.folder import records as rec
from advx.engine.tasks import TASKS, get_task
from advx.engine.tasks.labels.grids import Grid, grid_solve_rate, sample_grids

FAST = ["--steps", "3", "--transforms", "none", "--batch-size", "4", "--quiet"]
ONE_SURROGATE = ["--surrogates", "effnet-lite0"]  # cheaper where the defaults are not the point
EPS = 8.0
BUILT_IN = sorted(TASKS)  # the tasks registered at import (tests/test_tasks.py adds its own)
OCR = "captcha-whisperer"  # the text task's cheapest OCR solver, surrogate and verifier


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


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """3 drawn captchas and one over --max-side, hardened once by `advx harden --task text`
    with the options every task takes (--required-margin, --max-side)."""
    pytest.importorskip("captcha_whisperer")
    from advx.engine.tasks.text.draw import write_captcha_folder

    base = tmp_path_factory.mktemp("text")
    inp = base / "in"
    csv = write_captcha_folder(inp, 3, seed=5)
    with Image.open(inp / "captcha_000.png") as im:
        im.resize((im.width * 2, im.height * 2)).save(inp / "big.png")
    text = csv.read_text().splitlines()[1].split(",")[1]
    with csv.open("a") as fh:
        fh.write(f"big.png,{text}\n")
    before = tree_hashes(inp)
    out = base / "out"
    result = invoke("harden", inp, "--out", out, "--task", "text", "--surrogates", OCR,
                    "--verifiers", OCR, "--steps", "2", "--transforms", "none",
                    "--batch-size", "4", "--required-margin", "0.7", "--max-side", "200",
                    "--json")
    assert result.exit_code == 0, result.output
    return inp, out, before, result


# --------------------------------------------------------------------------- help and models


def test_every_command_has_help_with_an_example():
    assert invoke("--help").exit_code == 0
    assert {"harden", "eval", "export", "models", "demo", "bench", "serve"} <= set(cli.commands)
    for name in cli.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.output, name
    assert "130" in invoke("harden", "--help").output  # exit codes documented
    for name in ("harden", "eval", "demo", "serve"):  # one command for every task
        text = " ".join(invoke(name, "--help").output.split())
        for t in TASKS.values():
            assert t.name in text and t.columns in text, (name, t.name)


def test_version():
    from advx import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch():
    code = "import sys; from advx.cli.main import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # nor does any command's --help (the tasks, their presets and default models are listed)
    code = ("import contextlib, io, sys\n"
            "from advx.cli.main import cli\n"
            "for args in [['--help'], *([c, '--help'] for c in cli.commands)]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        cli(args, standalone_mode=False)\n"
            "print(sorted(cli.commands), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("] False") and "'serve'" in out.stdout


def _option_help(command: click.Command, opt: str) -> str:
    """One option's help as the command's --help shows it (with its default; whitespace
    collapsed)."""
    (param,) = [p for p in command.params if opt in p.opts]
    return " ".join(param.get_help_record(click.Context(command))[1].split())


def test_defaults_have_one_home():
    """The CLI shows the engine's defaults (read from advx.engine.defaults, the presets, the
    tasks and HardenConfig, never copied), and the views and templates the engine builds are
    the ones named there."""
    from advx.engine.config import HardenConfig
    from advx.engine.defaults import DEFAULT_MAX_SIDE, DEFAULT_SURROGATES, DEFAULT_VERIFIERS
    from advx.engine.views.presets import PRESETS, view_matrices
    from advx.engine.views.view import views_of
    from advx.export.defaults import DEFAULT_TEMPLATES, TEMPLATE_SETS
    from advx.export.zoo.zeroshot import _templates

    assert {n: tuple(v.name for v in views_of(n)) for n in PRESETS} == {
        n: p.views for n, p in PRESETS.items()}
    assert set(_templates()) == set(TEMPLATE_SETS)
    harden = cli.commands["harden"]
    help_text = " ".join(invoke("harden", "--help").output.split())
    d = HardenConfig()
    for opt, value in (("--eps", d.eps), ("--steps", d.steps), ("--batch-size", d.batch_size),
                       ("--ssim-floor", d.ssim_floor), ("--required-margin", d.required_margin),
                       ("--eps-rungs", d.eps_rungs), ("--seed", d.seed),
                       ("--max-side", DEFAULT_MAX_SIDE), ("--templates", DEFAULT_TEMPLATES)):
        assert f"[default:{value}" in _option_help(harden, opt).replace(" ", ""), opt
    # a task's own defaults: its view preset (HardenConfig names none) and its models
    assert d.transforms is None
    assert get_task("labels").default_models() == (DEFAULT_SURROGATES, DEFAULT_VERIFIERS)
    transforms = _option_help(harden, "--transforms")
    for t in TASKS.values():
        assert d.for_task(t).transforms == t.preset
        assert f"{t.name} {t.preset}" in transforms, t.name
        for opt, models in zip(("--surrogates", "--verifiers"), t.default_models(), strict=True):
            shown = f"{t.name}:{','.join(models) or '-'}"
            assert shown in _option_help(harden, opt).replace(" ", ""), (opt, t.name)
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
        assert r["task"] == "labels" and r["label"] == r["path"].split("/")[0]
    summary = json.loads((out / rec.SUMMARY).read_text())
    printed = json.loads(result.stdout)  # --json: the summary on stdout
    assert printed["total"] == summary["total"] == 4 and summary["complete"]
    assert summary["fooled"] + summary["unfooled"] == 4 and summary["errors"] == 0
    assert summary["task"] == "labels" and summary["label_set"] == ["cat", "espresso"]
    assert summary["config"]["steps"] == 3 and summary["config"]["transforms"] == "none"
    assert summary["models"]["surrogates"] == ["effnet-lite0", "effnet-lite1"]
    assert summary["models"]["verifiers"] == ["effnet-lite2"]
    assert set(summary["headline"]) == {"effnet-lite2"}
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


def test_harden_text_folder(text_run):
    """`advx harden --task text`: the one command, with the options every task takes: the
    margin reaches the run, a captcha over --max-side is an error record (a text is hardened
    at its own size), the others are hardened at their own paths."""
    inp, out, before, result = text_run
    truths = dict(line.split(",") for line in (inp / "labels.csv").read_text().splitlines()[1:])
    recs = {r["path"]: r for r in assert_one_record_and_output_each(inp, out, 4)}
    assert set(recs) == set(truths)
    big = recs.pop("big.png")
    assert big["status"] == "error" and "over --max-side 200" in big["error"]
    for path, r in recs.items():
        assert r["status"] in ("fooled", "unfooled") and r["error"] is None, r
        assert r["task"] == "text" and r["text"] == truths[path] and r["output"] == path
        assert r["linf"] <= EPS + 1e-3 and 0 < r["ssim"] <= 1
        assert set(r["right_before"]) == set(r["read_before"]) == {OCR}
        with Image.open(out / r["output"]) as im, Image.open(inp / path) as orig:
            assert im.size == orig.size
    summary = json.loads((out / rec.SUMMARY).read_text())
    assert json.loads(result.stdout)["total"] == summary["total"] == 4
    assert summary["task"] == "text" and summary["complete"] and summary["errors"] == 1
    assert summary["fooled"] + summary["unfooled"] == 3
    assert summary["config"]["required_margin"] == 0.7 and summary["max_side"] == 200
    assert summary["config"]["transforms"] == "none"
    assert summary["models"]["surrogates"] == summary["models"]["verifiers"] == [OCR]
    assert set(summary["headline"]) == {OCR}
    assert "mean_cer" in summary["headline"][OCR]["views"]["own"]
    assert (out / rec.REPORT).is_file()
    assert tree_hashes(inp) == before  # INPUT unchanged


@pytest.mark.parametrize("args", [
    ["--label-set", "a,b"], ["--decoy", "cat"], ["--templates", "openai"], ["--label-map", None],
    ["--label-set", "a,b", "--label-map", None, "--decoy", "a"],
])
def test_labels_options_are_refused_for_text(args, tmp_path):
    """A task's own options are refused for another task, as a usage error naming each,
    before anything is read or written."""
    label_map = tmp_path / "map.json"
    label_map.write_text('{"cat": ["tabby"]}')
    args = [str(label_map) if a is None else a for a in args]
    inp = tmp_path / "in"
    inp.mkdir()  # no labels.csv: refused before the folder is read
    result = invoke("harden", inp, "--out", tmp_path / "o", "--task", "text", *args)
    assert result.exit_code == 2, result.output
    named = [a for a in args if a.startswith("--")]
    assert f"{', '.join(named)}: not an option of --task text" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("task", BUILT_IN)
def test_options_of_every_task_reach_the_run(task, tmp_path, monkeypatch):
    """--required-margin, --max-side, --ray and --ray-workers (and the budget, views and output
    options) go to the run whatever the task; --transforms defaults to the task's preset; a
    labels run takes its own options too."""
    from advx.engine import folder
    from advx.engine.views.presets import get_preset

    jobs = []
    monkeypatch.setattr(folder, "run_harden",
                        lambda job, **kw: jobs.append(job) or folder.Outcome({}, False, ""))
    own = ["--label-set", "cat,espresso", "--templates", "openai"] if task == "labels" else []
    result = invoke("harden", tmp_path, "--out", tmp_path / "o", "--task", task, "--quiet",
                    "--required-margin", "1.25", "--max-side", "256", "--ray", "local",
                    "--ray-workers", "3", "--eps", "4", "--decide", "all", "--format", "jpeg",
                    *own)
    assert result.exit_code == 0, result.output
    (job,) = jobs
    t = get_task(task)
    assert job.task == task and job.max_side == 256
    assert job.ray.address == "local" and job.ray.workers == 3
    assert job.config.required_margin == 1.25 and job.config.eps == 4
    assert job.config.transforms == t.preset
    assert job.config.decide == get_preset(t.preset).views
    assert job.config.output_format == "jpeg"
    assert job.surrogates is job.verifiers is None  # the task's defaults
    assert dict(job.options) == ({"label_set": ("cat", "espresso"), "templates": "openai"}
                                 if task == "labels" else {})


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


def test_bad_text_labels_are_reported(tmp_path):
    """A text run reads INPUT/labels.csv (or --labels): a missing file or a header without
    the truth column is a clear error before any model loads, and nothing is written."""
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(photo_tile("cat", 0)).save(inp / "a.png")
    result = invoke("harden", inp, "--out", tmp_path / "out", "--task", "text", *FAST)
    assert result.exit_code == 1 and "labels file not found" in result.output
    assert "--labels" in result.output and "Traceback" not in result.output
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,cat\n")
    result = invoke("harden", inp, "--labels", csv, "--out", tmp_path / "out", "--task", "text",
                    *FAST)
    assert result.exit_code == 1 and "no 'text' column" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_bad_model_name(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    result = invoke("harden", inp, "--out", tmp_path / "out", *FAST,
                    "--surrogates", "effnet-lite9")
    assert result.exit_code == 1
    assert "unknown model 'effnet-lite9'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / rec.RESULTS).exists()  # a retry needs no --resume


def test_bad_text_solver_name(tmp_path):
    from advx.engine.tasks.text.draw import write_captcha_folder

    write_captcha_folder(tmp_path / "in", 1)
    result = invoke("harden", tmp_path / "in", "--out", tmp_path / "out", "--task", "text",
                    *FAST, "--surrogates", "effnet-lite9")
    assert result.exit_code == 1
    assert "'effnet-lite9' is not a text solver" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / rec.RESULTS).exists()  # a retry needs no --resume


def test_usage_errors_exit_2(tmp_path):
    inp = make_folder(tmp_path / "in", per_label=1)
    assert invoke("harden", inp, "--out", tmp_path / "o", "--eps", "0").exit_code == 2
    assert invoke("harden", inp, "--out", tmp_path / "o", "--attack", "fgsm").exit_code == 2
    assert invoke("harden", inp).exit_code == 2  # --out missing
    for task in BUILT_IN:
        result = invoke("harden", inp, "--out", tmp_path / "o", "--task", task,
                        "--ray-workers", "2")
        assert result.exit_code == 2 and "--ray-workers needs --ray" in result.output
        # --decide is checked against the task's own preset when --transforms names none
        result = invoke("harden", inp, "--out", tmp_path / "o", "--task", task,
                        "--decide", "own,nope")
        assert result.exit_code == 2, result.output
        assert f"views of preset '{get_task(task).preset}'" in result.output
    result = invoke("harden", inp, "--out", tmp_path / "o", "--task", "image")
    assert result.exit_code == 2 and "'image' is not a task" in result.output
    assert not (tmp_path / "o").exists()
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


def _eval(*args) -> dict:
    result = invoke("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_command_on_input_and_hardened_run(tiny_run, lite2_export):
    """--models names zoo models and export folders; the views are an advx run's own (tiny_run:
    none), else the task's preset; a run's originals are its input, for the fooled figures."""
    from advx.engine.views.presets import get_preset

    inp, out, _, _ = tiny_run
    export_dir, _ = lite2_export
    for folder in (inp, out):
        res = _eval(folder, "--models", f"effnet-lite0,{export_dir}")
        run = folder == out
        assert res["task"] == "labels" and res["source"] == ("advx run" if run else "folder")
        assert res["items"] == 4 and not res["skipped"]
        assert res["label_set"] == ["cat", "espresso"] and len(res["models"]) == 2
        assert res["clean"] == (str(inp) if run else None)
        preset = get_preset("none" if run else get_task("labels").preset)
        assert res["transforms"] == preset.name
        assert [(r["model"], r["view"]) for r in res["results"]] == [
            (m, w) for m in res["models"] for w in preset.views]
        for r in res["results"]:
            assert r["n"] == 4 and r["deciding"] == (r["view"] in preset.deciding)
            assert 0 <= r["right_rate"] <= 1 and 0 <= r["grid_solve_rate"] <= 1
            if run:
                assert 0 <= r["fooled"] <= r["right_clean"] <= 4
                assert 0 <= r["grid_solve_rate_clean"] <= 1
            else:
                assert "fooled" not in r
    res = _eval(out, "--models", "effnet-lite0", "--transforms", "jpeg")
    assert res["transforms"] == "jpeg"
    assert [r["view"] for r in res["results"]] == list(get_preset("jpeg").views)
    table = invoke("eval", out, "--models", "effnet-lite0")
    assert table.exit_code == 0 and "grid_solve_rate" in table.output
    assert "fooled" in table.output and "own*" in table.output


def test_eval_clean_gives_a_folder_the_figures_of_its_run(tiny_run, tmp_path):
    """--clean names the originals of a plain folder (same relative paths): the hardened files
    copied out of the run and their originals give the figures the run itself gives."""
    inp, out, _, _ = tiny_run
    plain, clean = tmp_path / "plain", tmp_path / "clean"
    for r in records_of(out):
        for src, dst in ((out / r["output"], plain / r["output"]),
                         (inp / r["path"], clean / r["output"])):
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im.save(dst)  # PNG: the same pixels as the JPEG original decodes to
    run = _eval(out, "--models", "effnet-lite0")
    res = _eval(plain, "--models", "effnet-lite0", "--clean", clean, "--transforms", "none")
    assert res["source"] == "folder" and res["clean"] == str(clean) and res["items"] == 4
    assert res["results"] == run["results"]
    assert all("fooled" in r and "grid_solve_rate_clean" in r for r in res["results"])


def test_eval_text_run_and_folder(text_run):
    """--models names OCR solvers for text; a run's task, views and originals are its own;
    a folder of captchas takes --task text, its labels.csv and the task's preset."""
    from advx.engine.views.presets import get_preset

    inp, out, _, _ = text_run
    res = _eval(out, "--models", OCR)
    assert res["task"] == "text" and res["source"] == "advx run" and res["clean"] == str(inp)
    assert res["transforms"] == "none" and res["models"] == [OCR] and res["items"] == 3
    assert len(res["skipped"]) == 1 and "big.png" in res["skipped"][0]  # not hardened
    assert "label_set" not in res
    (row,) = res["results"]
    own = json.loads((out / rec.SUMMARY).read_text())["headline"][OCR]["views"]["own"]
    assert row["view"] == "own" and row["deciding"] and row["n"] == 3
    assert (row["right_clean"], row["fooled"]) == (own["right_clean"], own["fooled"])
    assert 0 <= row["cer"] <= 1 and 0 <= row["cer_clean"] <= 1
    # the originals against themselves: right as often as clean, never fooled
    res = _eval(inp, "--task", "text", "--models", OCR, "--clean", inp)
    preset = get_preset(get_task("text").preset)
    assert res["source"] == "folder" and res["transforms"] == preset.name and res["items"] == 4
    assert [r["view"] for r in res["results"]] == list(preset.views)
    for r in res["results"]:
        assert r["right"] == r["right_clean"] and r["fooled"] == 0
        assert r["cer"] == r["cer_clean"] and r["deciding"] == (r["view"] in preset.deciding)
    table = invoke("eval", out, "--models", OCR)
    assert table.exit_code == 0 and "cer" in table.output and "(text, advx run" in table.output


def test_eval_bad_options_are_clean_errors(text_run, tmp_path):
    inp, out, _, _ = text_run
    result = invoke("eval", out, "--task", "labels", "--models", OCR)
    assert result.exit_code == 1 and "holds a text run" in result.output
    result = invoke("eval", out, "--models", OCR, "--label-set", "a,b")
    assert result.exit_code == 1 and "takes no option label_set" in result.output
    result = invoke("eval", out, "--labels", inp / "labels.csv", "--models", OCR)
    assert result.exit_code == 1 and "advx output folder" in result.output
    result = invoke("eval", inp, "--task", "nope")
    assert result.exit_code == 2 and "'nope' is not a task" in result.output
    result = invoke("eval", tmp_path, "--task", "text", "--models", OCR)
    assert result.exit_code == 1 and "labels file not found" in result.output
    result = invoke("eval", out, "--models", "effnet-lite0")  # not a text solver
    assert result.exit_code == 1 and "not a text solver" in result.output
    assert "Traceback" not in result.output


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
    from advx.engine.tasks.labels.demo import (
        PHOTOS,
        correctly_classified,
        load_photos,
        make_tiles,
    )

    photos, missing = load_photos()
    assert missing == 0 and len(photos) == len(PHOTOS) >= 5
    tiles = make_tiles(photos, per_photo=2)
    assert all(t.shape == (224, 224, 3) and t.dtype == np.uint8 for _, _, t in tiles)
    label_set = sorted({lab for lab, _, _ in tiles})
    assert all(correctly_classified(tiles, label_set))


@pytest.mark.parametrize("task", BUILT_IN)
def test_demo_missing_packages_say_how_to_install(task, monkeypatch, tmp_path):
    from advx.engine.tasks.labels import demo

    def missing():
        raise ImportError("No module named 'skimage'")

    monkeypatch.setattr(demo, "PHOTOS", (missing,) * 3)
    monkeypatch.setitem(sys.modules, "captcha.image", None)  # the text demo's font
    result = invoke("demo", "--task", task, "--out", tmp_path / "d", "--quiet")
    assert result.exit_code == 1 and "advx[samples]" in result.output
    assert "Traceback" not in result.output


def _fake_run(monkeypatch) -> list:
    """The demo's plumbing only (the hardening itself is tested above): run_harden records
    the job and returns an empty summary."""
    from advx.engine import folder
    from advx.engine.folder.records import summarize

    jobs = []

    def fake_run(job, **kw):
        jobs.append(job)
        summary = {**summarize([], get_task(job.task), total=0), "task": job.task,
                   "images_per_s": None, "seconds": 0.0}
        return folder.Outcome(summary, False, "")

    monkeypatch.setattr(folder, "run_harden", fake_run)
    return jobs


def test_demo_command(monkeypatch, tmp_path):
    """Checked tiles are written under OUT/input/<label>/, harden runs on them into
    OUT/hardened, the report is named."""
    from advx.engine.tasks.labels import demo

    jobs = _fake_run(monkeypatch)
    monkeypatch.setattr(demo, "correctly_classified",
                        lambda tiles, labels: [i != 0 for i in range(len(tiles))])
    out = tmp_path / "d"
    result = invoke("demo", "--out", out, "--steps", "7", "--tiles-per-photo", "1")
    assert result.exit_code == 0, result.output
    assert "dropped 1 tile(s)" in result.output and "report.html" in result.output
    (job,) = jobs
    assert job.task == "labels" and job.labels_csv is None
    assert job.input_dir == out / "input" and job.out_dir == out / "hardened" and job.resume
    assert job.config.steps == 7
    tiles = sorted(p.relative_to(out / "input").as_posix() for p in (out / "input").rglob("*.png"))
    assert len(tiles) == len(demo.PHOTOS) - 1
    assert "military_uniform/grace_hopper_1.png" in tiles


def test_demo_text_command(monkeypatch, tmp_path):
    """--task text draws captchas and their labels.csv under OUT/text-input and hardens them
    into OUT/text-hardened with the text task; --tiles-per-photo is the labels demo's."""
    pytest.importorskip("captcha")
    jobs = _fake_run(monkeypatch)
    out = tmp_path / "d"
    result = invoke("demo", "--task", "text", "--out", out, "--tiles-per-photo", "1")
    assert result.exit_code == 2 and "--tiles-per-photo" in result.output and not jobs
    result = invoke("demo", "--task", "text", "--out", out, "--steps", "7")
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    (job,) = jobs
    assert job.task == "text" and job.resume and job.config.steps == 7
    assert job.input_dir == out / "text-input" and job.out_dir == out / "text-hardened"
    assert job.labels_csv == out / "text-input" / "labels.csv"
    from advx.engine.tasks.text.task import DEMO_CAPTCHAS

    rows = get_task("text").read_rows(job.input_dir, job.labels_csv)
    assert len(rows) == DEMO_CAPTCHAS and all(r.problem is None and r.truth for r in rows)
    assert all((job.input_dir / r.path).is_file() for r in rows)
    assert not (out / "input").exists()  # the labels demo's folders are left alone


# --------------------------------------------------------------------------- serve


def test_every_serve_option_has_help_and_a_named_default(monkeypatch):
    """Each option of `advx serve` says what it does, and its default is the named constant
    of advx.engine.defaults, HardenConfig or the templates (never a copy): as declared, as the
    command receives it, as --help shows it, and as the service and its limits take it."""
    import inspect

    from advx.cli.serve import serve_cmd
    from advx.engine import defaults as d
    from advx.engine.config import HardenConfig
    from advx.engine.serve.http import Limits
    from advx.engine.serve.service import HardenService
    from advx.export.defaults import DEFAULT_TEMPLATES

    c = HardenConfig()
    named = {"host": d.SERVE_HOST, "port": d.SERVE_PORT, "eps": c.eps, "steps": c.steps,
             "device": c.device, "batch_size": c.batch_size, "max_queue": d.SERVE_MAX_QUEUE,
             "timeout_s": d.SERVE_TIMEOUT_S, "max_upload_mb": d.SERVE_MAX_UPLOAD_MB,
             "max_pixels": d.SERVE_MAX_PIXELS, "max_side": d.DEFAULT_MAX_SIDE,
             "templates": DEFAULT_TEMPLATES, "max_label_sets": d.SERVE_MAX_LABEL_SETS,
             "replicas": d.SERVE_REPLICAS}
    # no value unless given: the tasks' own defaults, or nothing
    unset = {"served": None, "surrogates": {}, "verifiers": {}, "transforms": {},
             "label_set": None, "label_map": None, "allowed": None, "token": None,
             "ray_address": None}
    params = {p.name: p for p in serve_cmd.params}
    assert set(params) == set(named) | set(unset)  # a new option must be placed here
    monkeypatch.delenv(d.SERVE_TOKEN_ENV, raising=False)
    ctx = serve_cmd.make_context("serve", [])
    for name, p in params.items():
        assert isinstance(p, click.Option) and p.help and p.help.strip(), name
        if name in named:
            assert p.default == named[name] and p.show_default, name
            assert ctx.params[name] == named[name], name
            shown = _option_help(serve_cmd, p.opts[0]).replace(" ", "")
            assert f"[default:{named[name]}" in shown, name
        else:
            assert ctx.params[name] == unset[name], name
    assert params["token"].envvar == d.SERVE_TOKEN_ENV
    for name in ("served", "surrogates", "verifiers", "transforms", "allowed"):
        assert "default" in params[name].help, name
    for t in TASKS.values():  # each task's defaults, from the task
        assert f"{t.name} {t.preset}" in params["transforms"].help
        for name, models in zip(("surrogates", "verifiers"), t.default_models(), strict=True):
            assert f"{t.name}: {','.join(models) or '-'}" in params[name].help, (name, t.name)
    service = inspect.signature(HardenService).parameters
    assert service["max_queue"].default == named["max_queue"]
    assert service["max_label_sets"].default == named["max_label_sets"]
    assert service["max_side"].default == named["max_side"]
    assert Limits() == Limits(max_upload=named["max_upload_mb"] << 20,
                              max_pixels=named["max_pixels"], max_side=named["max_side"],
                              timeout_s=named["timeout_s"])


class _Served:
    """What `advx serve` would serve: the service's arguments and the app's limits (nothing
    is loaded, nothing listens)."""

    def __init__(self, monkeypatch) -> None:
        from advx.engine.serve import http, service

        self.services: list[dict] = []
        self.apps: list[dict] = []
        self.listening: list[tuple] = []
        monkeypatch.setattr(service, "HardenService",
                            lambda **kw: self.services.append(kw) or "service")
        monkeypatch.setattr(http, "create_app",
                            lambda svc, **kw: self.apps.append(kw) or "app")
        monkeypatch.setattr(http, "serve_forever", lambda app, host, port:
                            self.listening.append((app, host, port)))


def test_serve_takes_each_tasks_models_and_views(monkeypatch, tmp_path):
    """--surrogates / --verifiers / --transforms are [TASK=]VALUE (a bare value is labels'),
    each task gets its own setup; the labels options go to labels only."""
    from advx.engine.serve.requests import TaskSetup

    served = _Served(monkeypatch)
    label_map = tmp_path / "map.json"
    label_map.write_text('{"kitty": ["tabby"]}')
    result = invoke("serve", "--surrogates", "effnet-lite0", "--verifiers", "effnet-lite2",
                    "--surrogates", f"text={OCR},ddddocr", "--transforms", "text=none",
                    "--transforms", "jpeg", "--label-set", "kitty,dog",
                    "--allow-label-set", "bus,car", "--label-map", label_map,
                    "--templates", "openai", "--max-side", "512", "--eps", "4",
                    "--max-queue", "5", "--max-label-sets", "2", "--batch-size", "3",
                    "--port", "8123", "--timeout", "30")
    assert result.exit_code == 0, result.output
    (kw,) = served.services
    setups = kw["tasks"]
    assert set(setups) == set(TASKS)
    labels, text = setups["labels"], setups["text"]
    assert labels == TaskSetup(surrogates=("effnet-lite0",), verifiers=("effnet-lite2",),
                               transforms="jpeg", options=labels.options,
                               allowed=(("bus", "car"),), eager=True)
    assert labels.options["label_set"] == ("kitty", "dog")
    assert labels.options["templates"] == "openai" and labels.options["label_map"]
    assert text == TaskSetup(surrogates=(OCR, "ddddocr"), verifiers=None, transforms="none",
                             options={}, allowed=None, eager=True)
    assert (kw["max_side"], kw["max_queue"], kw["max_label_sets"], kw["max_batch"]) == (
        512, 5, 2, 3)
    assert kw["config"].eps == 4 and kw["config"].batch_size == 3
    (app,) = served.apps
    assert app["limits"].max_side == 512 and app["limits"].timeout_s == 30
    assert served.listening == [("app", "127.0.0.1", 8123)]
    # without --label-set the labels models wait for a request's label set
    result = invoke("serve", "--tasks", "labels")
    assert result.exit_code == 0, result.output
    setups = served.services[-1]["tasks"]
    assert set(setups) == {"labels"} and not setups["labels"].eager
    assert setups["labels"].surrogates is None and setups["labels"].transforms is None


@pytest.mark.parametrize("args,message", [
    (["--surrogates", "nope=a,b"], "'nope' is not a task"),
    (["--surrogates", "text="], "nothing after text="),
    (["--tasks", "text", "--surrogates", "a,b"], "labels: not a task served"),
    (["--tasks", "text", "--transforms", "labels=jpeg"], "labels: not a task served"),
    (["--tasks", "text,nope"], "nope: not a task served"),
    (["--allow-label-set", "bus"], "two or more distinct labels"),
    (["--tasks", ""], "expected a comma-separated list"),
])
def test_serve_usage_errors(args, message, monkeypatch):
    served = _Served(monkeypatch)
    result = invoke("serve", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not served.services


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


@pytest.mark.parametrize("task", BUILT_IN)
def test_ctrl_c_exits_130_with_the_resume_command(task, tmp_path, monkeypatch):
    """Ctrl-C while hardening, for every task: exit 130, the summary says interrupted, the
    command to resume names the task; --resume then completes the run."""
    from advx.engine.api import Hardener

    if task == "labels":
        inp, n, models = make_folder(tmp_path / "in", per_label=1), 2, ONE_SURROGATE
    else:  # the task's own case (tests/tasks.py)
        from tasks import case

        c, inp = case(task), tmp_path / "in"
        labels = c.write(inp)
        rows = labels.read_text().splitlines()
        labels.write_text("\n".join(rows[:3]) + "\n")  # two items
        surrogates, verifiers = c.models(tmp_path)
        n, models = 2, ["--surrogates", ",".join(surrogates), "--verifiers", ",".join(verifiers)]
    out = tmp_path / "out"
    args = ["harden", inp, "--out", out, "--task", task, *FAST[:-1], *models]

    def ctrl_c(self, *a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Hardener, "run", ctrl_c)
        result = invoke(*args)
    assert result.exit_code == 130, result.output
    assert f"Interrupted: 0 of {n} inputs done" in result.output
    assert "--resume" in result.output and "Traceback" not in result.output
    assert (f"--task {task}" in result.output) == (task != "labels")
    summary = json.loads((out / rec.SUMMARY).read_text())
    assert summary["interrupted"] and not summary["complete"] and summary["pending"] == n
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert_one_record_and_output_each(inp, out, n)
    summary = json.loads((out / rec.SUMMARY).read_text())
    assert summary["complete"] and not summary["interrupted"] and summary["task"] == task


def test_resume_compares_options_like_with_like(tmp_path):
    """Options read back from summary.json (lists) equal this run's (tuples): no warning on
    identical options, a warning naming each option that differs."""
    info = {"task": "labels",
            "config": {"eps": 8.0, "decide": ("own", "jpeg75"), "ssim_floor": None},
            "surrogates": ("effnet-lite0",), "label_set": ("cat", "dog"), "max_side": 1024}
    (tmp_path / rec.SUMMARY).write_text(json.dumps(info))
    assert rec.changed_options(tmp_path, info) == []
    other = {**info, "config": {**info["config"], "decide": ("own",)}, "label_set": ("cat",)}
    assert sorted(rec.changed_options(tmp_path, other)) == ["config.decide", "label_set"]


def test_resume_warns_of_a_label_set_that_changed(tiny_run, tmp_path):
    """The run's label set (resolved from its items when not given) is recorded and compared
    on --resume like the options given."""
    inp, done, _, _ = tiny_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    result = invoke("harden", inp, "--out", out, *FAST, "--resume")
    assert result.exit_code == 0 and "options differ" not in result.output
    result = invoke("harden", inp, "--out", out, *FAST, "--resume",
                    "--label-set", "cat,espresso,bus")
    assert result.exit_code == 0, result.output
    assert "options differ" in result.output and "label_set" in result.output
