"""advx.engine.evaluate (``advx eval``) for the labels task: right rates, fooled counts and grid
solve rates, exact on constructed models; eval sets from labelled folders (with or without
their originals) and from advx runs (the task, views, label set and label map taken from the
run's summary, the originals from its input); unreadable items skipped with their reasons;
zoo models, their exports and foreign solvers' graphs as models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advx.engine.errors import RunError
from advx.engine.evaluate import evaluate_folder, load_set
from advx.engine.tasks import get_task
from advx.engine.tasks.labels.evaluate import load_scorer
from advx.engine.tasks.labels.report import solve_rate
from advx.engine.views.presets import get_preset
from advx.export.onnx.export import export_classifier
from advx.export.zoo import create_classifier, load_label_map

NAMES = ("bus", "car", "cat")  # label i is drawn as a flat tile of value 40 * i
SHIFTS = {"right": 0, "wrong": 1}


def _tile(label: str, side: int = 20) -> np.ndarray:
    return np.full((side, side, 3), 40 * NAMES.index(label), np.uint8)


def _save(path: Path, px: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)


def _oracle(name: str, label_set) -> object:
    """A fake model reading the label off the pixel value (NAMES order); "wrong" answers the
    next label. It takes (and ignores) a view's geometry, and answers over ``label_set``."""
    shift = SHIFTS[name]

    def score(x, geometry=None):
        y = (x.mean(dim=(1, 2, 3)) * 255 / 40).round().long()
        said = [NAMES[(int(i) + shift) % len(NAMES)] for i in y]
        logits = torch.zeros(len(x), len(label_set))
        for row, lab in enumerate(said):
            logits[row, list(label_set).index(lab)] = 5.0
        return logits

    score.name, score.labels = name, tuple(label_set)
    return score


@pytest.fixture
def oracles(monkeypatch) -> list[dict]:
    """The labels task's eval models replaced by oracles; returns the options each load got."""
    calls: list[dict] = []

    def load_scorers(names, *, device, **options):
        calls.append(options)
        return [_oracle(n, options["label_set"]) for n in names or ("right",)], []

    monkeypatch.setattr(get_task("labels"), "load_scorers", load_scorers)
    return calls


def _rows(res: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["view"]): r for r in res["results"]}


# --- labelled folders ------------------------------------------------------------------------


@pytest.mark.parametrize("transforms", ["none", "jpeg"])
def test_a_labelled_folder_exact_on_constructed_models(oracles, tmp_path, transforms):
    labels = ["bus", "bus", "car", "car", "car", "cat", "cat", "bus", "car", "cat", "cat"]
    for i, lab in enumerate(labels):
        _save(tmp_path / lab / f"{i}.png", _tile(lab))
    res = evaluate_folder(tmp_path, ["right", "wrong"], transforms=transforms, device="cpu")
    assert (res["task"], res["source"], res["input"]) == ("labels", "folder", str(tmp_path))
    assert res["clean"] is None and res["skipped"] == [] and res["items"] == len(labels)
    assert res["transforms"] == transforms and res["models"] == ["right", "wrong"]
    assert res["label_set"] == list(NAMES) and oracles[0]["label_set"] == NAMES
    preset = get_preset(transforms)
    rows = _rows(res)
    assert set(rows) == {(m, w) for m in ("right", "wrong") for w in preset.views}
    for (model, view), r in rows.items():
        expected = 1.0 if model == "right" else 0.0
        assert r["n"] == len(labels) and r["deciding"] == (view in preset.deciding)
        assert r["right"] == expected * len(labels) and r["right_rate"] == expected
        assert r["grid_solve_rate"] == expected
        assert "right_clean" not in r and "fooled" not in r  # no originals: no fooled figures
    json.dumps(res)  # the CLI prints it as JSON


def test_a_folder_is_read_under_the_task_s_preset_by_default(oracles, tmp_path):
    for i, lab in enumerate(NAMES):
        _save(tmp_path / lab / f"{i}.png", _tile(lab, 24))
    res = evaluate_folder(tmp_path, ["right"], device="cpu")
    preset = get_preset(get_task("labels").preset)
    assert res["transforms"] == preset.name == "solver"
    assert [r["view"] for r in res["results"]] == list(preset.views)
    assert {r["view"] for r in res["results"] if r["deciding"]} == set(preset.deciding)
    assert all(r["right_rate"] == 1.0 for r in res["results"])


def test_unreadable_images_are_skipped_with_their_reasons(oracles, tmp_path):
    for i, lab in enumerate(["bus", "car", "cat", "bus", "car"]):
        _save(tmp_path / lab / f"{i}.png", _tile(lab))
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    _save(tmp_path / "cat" / "tiny.png", _tile("cat", 8))  # under the smallest side hardened
    res = evaluate_folder(tmp_path, ["right"], transforms="none", device="cpu")
    assert res["items"] == 5 and len(res["skipped"]) == 3
    reasons = dict(s.split(": ", 1) for s in res["skipped"])
    assert set(reasons) == {"cat/broken.png", "cat/empty.png", "cat/tiny.png"}
    assert "empty file" in reasons["cat/empty.png"]
    assert "8x8 px is too small" in reasons["cat/tiny.png"]
    (row,) = res["results"]
    assert row["n"] == 5 and row["right_rate"] == 1.0  # the figures are over the rest
    # nothing readable: an error naming why
    only = tmp_path / "only"
    (only / "cat").mkdir(parents=True)
    (only / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(RunError, match=r"no item of .* could be evaluated .*broken\.png"):
        evaluate_folder(only, ["right"], transforms="none", device="cpu")


# (truth, what the original shows, what the hardened tile shows)
WITH_ORIGINALS = [
    ("cat", "cat", "bus"),  # right clean, fooled
    ("cat", "cat", "cat"),  # right clean, still right
    ("car", "car", "bus"),  # right clean, fooled
    ("car", "bus", "car"),  # wrong clean: counted apart, right as delivered
    ("bus", "car", "cat"),  # wrong clean and wrong as delivered: not fooled (apart)
    ("bus", "bus", "bus"),  # right clean, still right
]


def _check_fooled_figures(row: dict, items=WITH_ORIGINALS) -> None:
    """The figures of the "right" oracle over ``items``, by hand: fooled only among the items
    it answered right clean."""
    right = [after == truth for truth, _, after in items]
    clean = [before == truth for truth, before, _ in items]
    fooled = [c and not r for c, r in zip(clean, right, strict=True)]
    assert (sum(right), sum(clean), sum(fooled)) == (3, 4, 2)  # the cases above
    assert row["n"] == len(items) and row["right"] == sum(right)
    assert row["right_rate"] == round(sum(right) / len(items), 4)
    assert row["right_clean"] == sum(clean)
    assert row["right_clean_rate"] == round(sum(clean) / len(items), 4)
    assert row["fooled"] == sum(fooled) and row["fooled_rate"] == 0.5
    # the seeded grids are drawn from the tiles in the order read: by path
    items = [items[i] for i in sorted(range(len(items)), key=lambda i: f"{items[i][0]}/{i}")]
    truths = [t for t, _, _ in items]
    assert row["grid_solve_rate"] == solve_rate([[a] for _, _, a in items], truths)
    assert row["grid_solve_rate_clean"] == solve_rate([[b] for _, b, _ in items], truths)


def test_a_labelled_folder_with_its_originals_counts_fooled_only_where_right_clean(
        oracles, tmp_path):
    hardened, clean = tmp_path / "hardened", tmp_path / "clean"
    for i, (truth, before, after) in enumerate(WITH_ORIGINALS):
        _save(clean / truth / f"{i}.png", _tile(before))
        _save(hardened / truth / f"{i}.png", _tile(after))
    _save(hardened / "cat" / "no-original.png", _tile("cat"))
    res = evaluate_folder(hardened, ["right"], clean_dir=clean, transforms="none",
                          device="cpu")
    assert res["clean"] == str(clean) and res["items"] == len(WITH_ORIGINALS)
    (skipped,) = res["skipped"]
    assert skipped.startswith("cat/no-original.png: its original: no file")
    (row,) = res["results"]
    _check_fooled_figures(row)
    with pytest.raises(RunError, match=r"--clean .* is not a folder"):
        evaluate_folder(hardened, ["right"], clean_dir=tmp_path / "nowhere")


# --- advx runs ---------------------------------------------------------------------------------

LABEL_MAP = {"kitty": ["tabby"]}


def _run(tmp_path: Path, summary: dict | None = None) -> tuple[Path, Path]:
    """An input folder (the originals) and an advx run's output folder over it, written by
    hand: WITH_ORIGINALS hardened, plus records that cannot be evaluated."""
    inp, out = tmp_path / "in", tmp_path / "run"
    records = []
    for i, (truth, before, after) in enumerate(WITH_ORIGINALS):
        path = f"{truth}/{i}.jpg"
        _save(inp / path, _tile(before))
        _save(out / f"{truth}/{i}.png", _tile(after))
        records.append({"path": path, "output": f"{truth}/{i}.png", "label": truth,
                        "status": "fooled" if after != truth else "unfooled"})
    _save(inp / "cat/err.png", _tile("cat"))
    records.append({"path": "cat/err.png", "output": None, "label": "cat", "status": "error",
                    "error": "image too small to harden"})
    _save(inp / "cat/gone.png", _tile("cat"))
    records.append({"path": "cat/gone.png", "output": "cat/gone.png", "label": "cat",
                    "status": "fooled"})  # its output was deleted
    _save(out / "cat/orphan.png", _tile("bus"))
    records.append({"path": "cat/orphan.png", "output": "cat/orphan.png", "label": "cat",
                    "status": "fooled"})  # its original was deleted
    (out / "cat/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _save(inp / "cat/broken.png", _tile("cat"))
    records.append({"path": "cat/broken.png", "output": "cat/broken.png", "label": "cat",
                    "status": "fooled"})
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                       + "{torn line\n")
    run = {"task": "labels", "input": str(inp), "config": {"transforms": "jpeg"},
           "label_set": ["bus", "car", "cat", "dog"], "label_map_entries": LABEL_MAP}
    (out / "summary.json").write_text(json.dumps({**run, **(summary or {})}))
    return inp, out


def test_an_advx_run_is_read_with_its_originals_and_its_summary(oracles, tmp_path):
    inp, out = _run(tmp_path)
    res = evaluate_folder(out, ["right"], device="cpu")
    assert (res["task"], res["source"], res["clean"]) == ("labels", "advx run", str(inp))
    # the run's views, label set and label map
    assert res["transforms"] == "jpeg" and res["label_set"] == ["bus", "car", "cat", "dog"]
    assert oracles[0]["label_set"] == ("bus", "car", "cat", "dog")
    assert oracles[0]["label_map"] == load_label_map(LABEL_MAP)
    assert res["items"] == len(WITH_ORIGINALS)
    skipped = "\n".join(res["skipped"])
    assert len(res["skipped"]) == 5, skipped
    assert "results.jsonl: 1 unreadable line(s)" in skipped
    assert "'cat/err.png': not hardened (image too small to harden)" in skipped
    assert "'cat/gone.png': no file 'cat/gone.png'" in skipped
    assert "'cat/orphan.png': its original: no file 'cat/orphan.png'" in skipped
    assert "'cat/broken.png': " in skipped
    rows = _rows(res)
    assert set(rows) == {("right", "own"), ("right", "jpeg75")}
    for row in rows.values():
        assert row["deciding"]
        _check_fooled_figures(row)
    # the options given win over the run's
    res = evaluate_folder(out, ["right"], transforms="none", label_set=["dog", "cat", "car", "bus"],
                          device="cpu")
    assert res["transforms"] == "none" and res["label_set"] == ["dog", "cat", "car", "bus"]
    _check_fooled_figures(res["results"][0])
    with pytest.raises(RunError, match="not in --label-set"):
        evaluate_folder(out, ["right"], label_set=["cat", "dog"], device="cpu")


def test_an_advx_run_without_its_originals(oracles, tmp_path):
    inp, out = _run(tmp_path, {"input": str(tmp_path / "moved")})
    res = evaluate_folder(out, ["right"], transforms="none", device="cpu")
    assert res["clean"] is None and any("--clean" in n for n in res["notes"])
    (row,) = res["results"]
    assert row["right"] == 3 and "right_clean" not in row and "fooled" not in row
    # the originals where they are now (--clean)
    res = evaluate_folder(out, ["right"], clean_dir=inp, transforms="none", device="cpu")
    assert res["clean"] == str(inp) and not res["notes"]
    _check_fooled_figures(res["results"][0])


def test_the_eval_set_of_an_advx_run(tmp_path):
    inp, out = _run(tmp_path)
    data = load_set(out)
    assert data.source == "advx run" and data.task.name == "labels" and data.clean_root == inp
    outputs = sorted(f"{t}/{i}.png" for i, (t, _, _) in enumerate(WITH_ORIGINALS))
    assert [r.path for r in data.rows] == [*outputs, "cat/broken.png"]
    assert all(r.clean == r.path.replace(".png", ".jpg") for r in data.rows
               if r.path != "cat/broken.png")
    assert [r.truth for r in data.rows] == [r.path.split("/")[0] for r in data.rows]
    assert data.run["label_set"] == ["bus", "car", "cat", "dog"]
    with pytest.raises(RunError, match="--labels is for folders of inputs"):
        load_set(out, labels_csv=tmp_path / "labels.csv")
    with pytest.raises(RunError, match="holds a labels run; evaluate it with --task labels"):
        load_set(out, task="text")
    with pytest.raises(RunError, match="takes no option"):
        evaluate_folder(out, ["right"], decoy_count=3)
    (out / "results.jsonl").write_text(json.dumps(
        {"path": "a.png", "output": None, "label": "cat", "status": "error"}) + "\n")
    with pytest.raises(RunError, match="lists no hardened images"):
        load_set(out)


def test_eval_of_a_run_finds_its_label_map_from_another_directory(oracles, tmp_path,
                                                                  monkeypatch):
    """summary.json holds the label map itself: a run is evaluated with it after its file is
    gone, from another directory."""
    from advx.engine.config import HardenConfig
    from advx.engine.folder.run import HardenJob, run_info

    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.json").write_text(json.dumps(LABEL_MAP))
    monkeypatch.chdir(tmp_path / "maps")
    job = HardenJob(tmp_path / "in", tmp_path / "run",
                    options={"label_map": Path("m.json"), "label_set": ("cat", "kitty")})
    info = run_info(job, get_task("labels"), HardenConfig().for_task("labels"))
    assert info["task"] == "labels" and info["config"]["transforms"] == "solver"
    assert info["label_map"] == str(tmp_path / "maps" / "m.json")  # absolute
    assert info["label_map_entries"] == LABEL_MAP and info["label_set"] == ["cat", "kitty"]
    _save(tmp_path / "in" / "cat" / "0.png", _tile("cat"))
    _save(tmp_path / "run" / "cat" / "0.png", _tile("cat"))
    (tmp_path / "run" / "results.jsonl").write_text(json.dumps(
        {"path": "cat/0.png", "output": "cat/0.png", "label": "cat", "status": "unfooled"})
        + "\n")
    (tmp_path / "run" / "summary.json").write_text(json.dumps(
        {**info, "input": str(tmp_path / "in")}))
    (tmp_path / "maps" / "m.json").unlink()  # the map file itself is gone
    monkeypatch.chdir(tmp_path)
    res = evaluate_folder("run", ["right"], transforms="none", device="cpu")
    assert oracles[-1]["label_map"] == load_label_map(LABEL_MAP)
    assert oracles[-1]["label_set"] == ("cat", "kitty") and res["label_set"] == ["cat", "kitty"]


# --- real models: zoo names, exports, foreign solvers ---------------------------------------


def _folder(root: Path, n: int = 2) -> Path:
    for label, value in (("cat", 60), ("dog", 180)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((24, 24, 3), value + 10 * i, np.uint8)).save(
                root / label / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    return root


def test_evaluate_folder_scores_torch_and_export_alike(tiny_models, tmp_path):
    """A labelled folder scored by a zoo model (torch) and by its export (ONNX): the same
    figures, an unreadable file reported and left out."""
    name = tiny_models["timm"]
    export_dir = tmp_path / "export"
    export_classifier(create_classifier(name, ("cat", "dog")), export_dir)
    res = evaluate_folder(_folder(tmp_path / "in"), [name, str(export_dir)], transforms="none",
                          device="cpu")
    assert res["source"] == "folder" and res["input"] == str(tmp_path / "in")
    assert res["label_set"] == ["cat", "dog"] and res["items"] == 4
    assert len(res["skipped"]) == 1 and "broken.png" in res["skipped"][0]
    by_model = {r["model"]: r for r in res["results"]}
    assert len(by_model) == 2 and res["models"] == list(by_model)
    torch_row, onnx_row = (by_model[k] for k in sorted(by_model, key=lambda k: "onnx" in k))
    assert "(fp32 onnx)" in onnx_row["model"]
    for key in ("n", "right", "right_rate", "grid_solve_rate"):
        assert torch_row[key] == onnx_row[key], key
    json.dumps(res)


def test_foreign_solvers_are_models_read_by_their_own_decision_rule(tmp_path):
    """``onnx:SPEC.json`` solvers (a closed-set one and a multi-label one) in their own graph:
    each item is right where the solver selects its label, read as a run reads it."""
    from advx.engine.tasks.labels.scoring import readout
    from advx.export.zoo import create_verifier

    from tiny import save_tiny_solver

    names = [f"onnx:{save_tiny_solver(tmp_path / 'bgr', 'bgr', seed=3)}",
             f"onnx:{save_tiny_solver(tmp_path / 'grid', 'grid', seed=1)}"]
    label_set = ("Bicycle", "Bus", "Car")
    rng = np.random.default_rng(0)
    tiles = {}
    for i in range(9):
        label = label_set[i % 3]
        px = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        _save(tmp_path / "in" / label / f"{i}.png", px)
        tiles[f"{label}/{i}.png"] = (px, label)
    res = evaluate_folder(tmp_path / "in", names, transforms="none", device="cpu")
    assert res["label_set"] == list(label_set) and res["items"] == 9
    rows = {r["model"]: r for r in res["results"]}
    assert len(rows) == 2
    x = torch.from_numpy(np.stack([px for px, _ in tiles.values()])).permute(0, 3, 1, 2)
    for name in names:
        solver = create_verifier(name, label_set)
        logits = solver(x.float() / 255)
        right = sum(truth in readout(solver, label_set, z)[1]
                    for z, (_, truth) in zip(logits, tiles.values(), strict=True))
        row = rows[solver.name]
        assert row["right"] == right and row["right_rate"] == round(right / 9, 4), name
    assert {getattr(create_verifier(n, label_set), "decision", "closed") for n in names} == {
        "closed", "multilabel"}


def test_scorer_of_an_export_over_other_labels_is_refused(tiny_models, tmp_path):
    export_classifier(create_classifier(tiny_models["timm"], ("cat", "dog")), tmp_path)
    score = load_scorer(str(tmp_path), ("dog", "cat"), device="cpu")
    assert score.name.endswith("(fp32 onnx)") and score(torch.rand(2, 3, 24, 24)).shape == (2, 2)
    with pytest.raises(RunError, match="re-export it with --labels cat,bus"):
        load_scorer(str(tmp_path), ("cat", "bus"), device="cpu")
