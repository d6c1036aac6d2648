"""``advx eval --task text`` (advx.engine.tasks.text.evaluate): figures equal to a hand count from
``read_views`` on a tiny set, hostile rows skipped with their reasons, an advx run's folder
evaluated against its originals, the command's options; and the text API's exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from advx.engine.errors import RunError
from advx.engine.tasks.labels.dataset import DatasetError

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
    """solver -> view -> the figures, counted here from read_views."""
    from advx.engine.tasks.text.api import load_text_solver
    from advx.engine.tasks.text.eval import read_views
    from advx.engine.tasks.text.losses import edit_distance
    from advx.engine.views.view import views_of

    solver = load_text_solver(SOLVER)
    cs = solver.charset

    def reads(sub):
        ims = [torch.from_numpy(np.asarray(Image.open(root / sub / n).convert("RGB")).copy())
               .permute(2, 0, 1) for n in names]
        return read_views([solver.verifier()], ims, views_of("text"))[SOLVER]

    got, before = reads(folder), reads(clean) if clean else None
    out = {}
    for w, r in got.items():
        right = [cs.same(a, t) for a, t in zip(r, texts, strict=True)]
        cer = [edit_distance(cs.key(a), cs.key(t)) / len(t) for a, t in zip(r, texts,
                                                                              strict=True)]
        row = {"n": len(texts), "read": sum(right), "read_rate": sum(right) / len(texts),
               "cer": sum(cer) / len(cer)}
        if before is not None:
            ok = [cs.same(a, t) for a, t in zip(before[w], texts, strict=True)]
            fooled = sum(o and not g for o, g in zip(ok, right, strict=True))
            row.update(read_clean=sum(ok), fooled=fooled,
                       fooled_rate=fooled / sum(ok) if sum(ok) else None)
        out[w] = row
    return out


def test_figures_equal_a_hand_count(sets):
    from advx.engine.tasks.text.evaluate import evaluate_text_folder
    from advx.engine.views.presets import get_preset

    root, rows, texts, names = sets
    labels = _csv(root / "labels.csv", rows)
    res = evaluate_text_folder(root / "hard", [SOLVER], labels_csv=labels,
                               clean_dir=root / "clean", device="cpu")
    want = _hand_count(root, names, texts, "hard", "clean")
    assert res["captchas"] == 4 and res["skipped"] == [] and res["solvers"] == [SOLVER]
    assert [r["view"] for r in res["results"]] == list(want)
    for r in res["results"]:
        assert {k: r[k] for k in want[r["view"]]} == want[r["view"]], r["view"]
    assert {r["view"] for r in res["results"] if r["deciding"]} == set(
        get_preset("text").deciding)
    own = next(r for r in res["results"] if r["view"] == "own")
    assert own["fooled"] >= 1  # the blank captcha at least
    plain = evaluate_text_folder(root / "clean", [SOLVER], labels_csv=labels, device="cpu")
    want = _hand_count(root, names, texts, "clean", None)
    assert all({k: r[k] for k in want[r["view"]]} == want[r["view"]] and "fooled" not in r
               for r in plain["results"])


def test_hostile_rows_are_skipped_with_their_reasons(sets, tmp_path):
    from advx.engine.tasks.text.evaluate import evaluate_text_folder

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
    res = evaluate_text_folder(hard, [SOLVER], labels_csv=_csv(tmp_path / "l.csv", lines),
                               clean_dir=clean, device="cpu")
    assert res["captchas"] == 1 and all(r["n"] == 1 for r in res["results"])
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
        evaluate_text_folder(hard, [SOLVER], device="cpu",
                             labels_csv=_csv(tmp_path / "b.csv", lines, ("path", "label")))


def test_an_advx_run_is_read_against_its_originals(sets, tmp_path):
    from advx.engine.tasks.text.evaluate import evaluate_text_folder

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
    (run / "summary.json").write_text(json.dumps({"input": str(root / "clean")}))
    res = evaluate_text_folder(run, [SOLVER], device="cpu")
    want = _hand_count(root, names, texts, "hard", "clean")
    assert res["source"] == "advx run" and res["clean"] == str(root / "clean")
    assert res["captchas"] == 4 and "not hardened (unreadable)" in res["skipped"][0]
    assert all({k: r[k] for k in want[r["view"]]} == want[r["view"]] for r in res["results"])
    with pytest.raises(RunError, match="--labels is for folders of captchas"):
        evaluate_text_folder(run, [SOLVER], labels_csv=root / "labels.csv")
    (run / "results.jsonl").write_text(json.dumps({"path": "a.png", "output": "a.png",
                                                   "label": "cat", "status": "fooled"}))
    with pytest.raises(RunError, match="--task image"):
        evaluate_text_folder(run, [SOLVER])


def test_the_command(sets):
    from advx.cli.main import cli

    root, rows, _, _ = sets
    labels = _csv(root / "cli.csv", [*rows, ["nope.png", "AB"]])
    run = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", "--labels",
                                   str(labels), "--clean", str(root / "clean"), "--solvers",
                                   SOLVER, "--device", "cpu", "--json"])
    assert run.exit_code == 0, run.output
    res = json.loads(run.stdout)
    assert res["captchas"] == 4 and "skipped cli.csv line 6: no file" in run.stderr
    table = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", "--labels",
                                     str(labels), "--solvers", SOLVER, "--device", "cpu"])
    assert table.exit_code == 0 and f"{SOLVER}  own*" in table.stdout
    for args, says in ((["--models", "effnet-lite0"], "--models: not for --task text"),
                       (["--grids", "5"], "--grids: not for --task text")):
        bad = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--task", "text", *args])
        assert bad.exit_code == 2 and says in bad.output
    bad = CliRunner().invoke(cli, ["eval", str(root / "hard"), "--solvers", SOLVER])
    assert bad.exit_code == 2 and "--solvers: not for --task image" in bad.output
    bad = CliRunner().invoke(cli, ["eval", str(root / "hard")])
    assert bad.exit_code == 2 and "--models is required" in bad.output


def test_the_text_api_is_exported():
    import advx
    from advx.engine import results
    from advx.engine.tasks.text import api as text_api

    for name in ("harden_text", "TextHardener", "text_config"):
        assert getattr(advx, name) is getattr(text_api, name) and name in advx.__all__
    assert advx.TextResult is results.TextResult and "TextResult" in advx.__all__
    assert advx.text_config(eps=6).transforms == "text"
