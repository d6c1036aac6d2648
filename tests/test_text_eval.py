"""``advx eval --task text`` (advx.engine.evaluate with the text task): figures (CER included)
equal to a hand count from ``read_views`` on a tiny set, by the one rule (fooled only where
read right clean); hostile rows skipped with their reasons; an advx run's folder evaluated
against its originals; the command's options; and the text API's exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from advx.engine.errors import DatasetError, RunError
from advx.engine.evaluate import evaluate_folder

SOLVER = "captcha-whisperer"
pytest.importorskip("captcha_whisperer")


def _write(folder: Path, images: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, px in images.items():
        Image.fromarray(px).save(folder / name)


def _csv(path: Path, rows: list[list[str]], header=("path", "text", "note")) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Four clean captchas and their "hardened" copies: 0 and 3 unchanged, 1 blank, 2 showing
    captcha 3 (misread however clean 2 was read)."""
    from advx.engine.tasks.text.draw import draw_captchas

    root = tmp_path_factory.mktemp("text-eval")
    caps = draw_captchas(4, seed=5)
    names = [f"c{i}.png" for i in range(4)]
    clean = {n: px for n, (_, px) in zip(names, caps, strict=True)}
    hard = dict(clean)
    hard["c1.png"] = np.full_like(caps[1][1], 255)
    hard["c2.png"] = caps[3][1]
    _write(root / "clean", clean)
    _write(root / "hard", hard)
    rows = [[n, t, "x"] for n, (t, _) in zip(names, caps, strict=True)]
    return root, rows, [t for t, _ in caps], names


def _hand_count(root: Path, names, texts, folder: str, clean: str | None):
    """view -> the figures, counted here from read_views: fooled only among the captchas read
    right clean under that view."""
    from advx.engine.tasks.text.evaluate import read_views
    from advx.engine.tasks.text.losses import edit_distance
    from advx.engine.tasks.text.models import load_text_solver
    from advx.engine.views.presets import get_preset
    from advx.engine.views.view import views_of

    solver = load_text_solver(SOLVER)
    cs = solver.charset

    def reads(sub):
        ims = [torch.from_numpy(np.asarray(Image.open(root / sub / n).convert("RGB")).copy())
               .permute(2, 0, 1) for n in names]
        return read_views([solver.verifier()], ims, views_of("text"))[SOLVER]

    def cer(got):
        errs = [edit_distance(cs.key(a), cs.key(t)) / len(t)
                for a, t in zip(got, texts, strict=True)]
        return round(sum(errs) / len(errs), 4)

    got, before = reads(folder), reads(clean) if clean else None
    deciding = get_preset("text").deciding
    n = len(texts)
    out = {}
    for w, r in got.items():
        right = [cs.same(a, t) for a, t in zip(r, texts, strict=True)]
        row = {"model": SOLVER, "view": w, "deciding": w in deciding, "n": n,
               "right": sum(right), "right_rate": round(sum(right) / n, 4), "cer": cer(r)}
        if before is not None:
            ok = [cs.same(a, t) for a, t in zip(before[w], texts, strict=True)]
            fooled = sum(o and not g for o, g in zip(ok, right, strict=True))
            row.update(right_clean=sum(ok), right_clean_rate=round(sum(ok) / n, 4),
                       fooled=fooled,
                       fooled_rate=round(fooled / sum(ok), 4) if sum(ok) else None,
                       cer_clean=cer(before[w]))
        out[w] = row
    return out


def test_figures_equal_a_hand_count(sets):
    from advx.engine.views.presets import get_preset

    root, rows, texts, names = sets
    labels = _csv(root / "labels.csv", rows)
    res = evaluate_folder(root / "hard", [SOLVER], task="text", labels_csv=labels,
                          clean_dir=root / "clean", device="cpu")
    want = _hand_count(root, names, texts, "hard", "clean")
    assert res["task"] == "text" and res["source"] == "folder"
    assert res["items"] == 4 and res["skipped"] == [] and res["models"] == [SOLVER]
    assert res["transforms"] == "text" and res["left_out"] == []
    assert [r["view"] for r in res["results"]] == list(want)
    for r in res["results"]:
        assert r == want[r["view"]], r["view"]
    assert {r["view"] for r in res["results"] if r["deciding"]} == set(
        get_preset("text").deciding)
    own = next(r for r in res["results"] if r["view"] == "own")
    assert own["fooled"] >= 1  # the blank captcha at least
    plain = evaluate_folder(root / "clean", [SOLVER], task="text", labels_csv=labels,
                            device="cpu")
    want = _hand_count(root, names, texts, "clean", None)
    assert plain["clean"] is None
    assert all(r == want[r["view"]] and "fooled" not in r for r in plain["results"])


def test_hostile_rows_are_skipped_with_their_reasons(sets, tmp_path):
    root, rows, _, _ = sets
    hard, clean = tmp_path / "hard", tmp_path / "clean"
    for sub, dst in (("hard", hard), ("clean", clean)):  # each with its original
        c0, c1 = (np.asarray(Image.open(root / sub / n)) for n in ("c0.png", "c1.png"))
        _write(dst, {"c0.png": c0, "e.png": c1, "w.png": c1, "text.png": c1, "tiny.png": c1})
    (hard / "text.png").write_text("not an image")
    _write(hard, {"tiny.png": np.zeros((5, 5, 3), np.uint8),
                  "lonely.png": np.full((60, 160, 3), 255, np.uint8)})  # no original
    (hard / "out.png").symlink_to(root / "hard" / "c2.png")
    lines = [rows[0], ["../hard/c1.png", "AB"], ["/etc/passwd", "AB"], ["nope.png", "AB"],
             ["w.png", "AB~"], ["e.png", ""], ["d.png", "AB"], ["d.png", "CD"],
             ["text.png", "ABCD"], ["tiny.png", "ABCD"], ["out.png", "ABCD"],
             ["lonely.png", "ABCD"], rows[0]]  # c0.png again, with its text: one row
    res = evaluate_folder(hard, [SOLVER], task="text",
                          labels_csv=_csv(tmp_path / "l.csv", lines), clean_dir=clean,
                          device="cpu")
    assert res["items"] == 1 and all(r["n"] == 1 for r in res["results"])
    expect = [("line 3", "points outside"), ("line 4", "must be relative"),
              ("line 5", "no file 'nope.png'"), ("line 6", f"{SOLVER} cannot read '~'"),
              ("line 7", "the truth text is empty"), ("lines 8, 9", "different texts"),
              ("line 10", "not an image"), ("line 11", "too small"),
              ("line 12", "leads outside"), ("line 13", "its original: no file 'lonely.png'")]
    assert len(res["skipped"]) == len(expect), res["skipped"]
    missing = [e for e in expect if not any(f"l.csv {e[0]}:" in s and e[1] in s
                                            for s in res["skipped"])]
    assert missing == [], res["skipped"]
    with pytest.raises(DatasetError, match="the header has no 'text' column"):
        evaluate_folder(hard, [SOLVER], task="text", device="cpu",
                        labels_csv=_csv(tmp_path / "b.csv", lines, ("path", "label")))


def test_an_advx_run_is_read_against_its_originals(sets, tmp_path):
    """A run's folder: its task and originals from summary.json, the hardened files and
    truths from results.jsonl (error records skipped)."""
    root, _, texts, names = sets
    run = tmp_path / "run"
    run.mkdir()
    records = [{"path": n, "output": f"out/{n}", "text": t, "status": "fooled"}
               for n, t in zip(names, texts, strict=True)]
    records.append({"path": "gone.png", "output": None, "text": "AB", "status": "error",
                    "error": "unreadable"})
    (run / "out").mkdir()
    for n in names:
        (run / "out" / n).write_bytes((root / "hard" / n).read_bytes())
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps({"task": "text", "input": str(root / "clean"),
                                                  "config": {"transforms": "text"}}))
    res = evaluate_folder(run, [SOLVER], device="cpu")
    want = _hand_count(root, names, texts, "hard", "clean")
    assert res["task"] == "text" and res["source"] == "advx run"
    assert res["clean"] == str(root / "clean")
    assert res["items"] == 4 and "not hardened (unreadable)" in res["skipped"][0]
    assert all(r == want[r["view"]] for r in res["results"])
    with pytest.raises(RunError, match="--labels is for folders of inputs"):
        evaluate_folder(run, [SOLVER], labels_csv=root / "labels.csv")
    with pytest.raises(RunError, match="holds a text run; evaluate it with --task text"):
        evaluate_folder(run, [SOLVER], task="labels")


def test_the_command(sets):
    from advx.cli.main import cli
    from advx.engine.tasks.text import DEFAULT_SOLVERS

    root, rows, _, _ = sets
    labels = _csv(root / "cli.csv", [*rows, ["nope.png", "AB"]])
    run = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", "--labels",
                                   str(labels), "--clean", str(root / "clean"), "--models",
                                   SOLVER, "--device", "cpu", "--json"])
    assert run.exit_code == 0, run.output
    res = json.loads(run.stdout)
    assert res["items"] == 4 and "skipped cli.csv line 6: no file" in run.stderr
    table = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", "--labels",
                                     str(labels), "--models", SOLVER, "--device", "cpu"])
    assert table.exit_code == 0 and f"{SOLVER}  own*" in table.stdout
    assert "cer" in table.stdout.splitlines()[1]  # the task's own figure, a column
    # the labels task's options are refused; the removed ones are unknown
    bad = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", "--labels",
                                   str(labels), "--models", SOLVER, "--label-set", "a,b"])
    assert bad.exit_code != 0 and "the text task takes no option label_set" in bad.output
    for args in (["--solvers", SOLVER], ["--grids", "5"]):
        bad = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", *args])
        assert bad.exit_code == 2 and "No such option" in bad.output
    # no --models: the task's default verifiers, those not installed left out (named)
    default = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text",
                                       "--labels", str(labels), "--device", "cpu", "--json"])
    assert default.exit_code == 0, default.output
    res = json.loads(default.stdout)
    assert SOLVER in res["models"]
    assert sorted([*res["models"], *(m.split(":")[0] for m in res["left_out"])]) == sorted(
        DEFAULT_SOLVERS)
    assert {r["model"] for r in res["results"]} == set(res["models"])


def test_the_text_api_is_exported():
    import advx
    from advx.engine import api, evaluate
    from advx.engine.config import HardenConfig
    from advx.engine.results import HardenResult
    from advx.engine.tasks import text

    for name, module in (("harden", api), ("Hardener", api), ("evaluate_folder", evaluate)):
        assert getattr(advx, name) is getattr(module, name) and name in advx.__all__
    assert advx.TextResult is text.TextResult and "TextResult" in advx.__all__
    assert issubclass(advx.TextResult, HardenResult) and advx.TextResult.task == "text"
    assert "text" in advx.TASKS
    assert HardenConfig(eps=6).transforms is None  # until a task names its preset
    assert HardenConfig(eps=6).for_task("text").transforms == "text"
    for gone in ("harden_text", "TextHardener", "text_config"):
        assert not hasattr(advx, gone)
