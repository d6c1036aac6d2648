"""advx.engine.evaluate: tile accuracy and grid solve rates, exact on constructed models; eval
sets from labelled folders and advx runs; scorers from zoo names and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advx.engine.errors import RunError
from advx.engine.evaluate import evaluate, evaluate_folder, load_eval_set, load_scorer
from advx.export.onnx.export import export_classifier
from advx.export.zoo import create_classifier


def _label_images(labels: list[int]) -> list[np.ndarray]:
    return [np.full((20, 20, 3), 40 * y, np.uint8) for y in labels]


def _oracle(shift: int):
    """A fake model reading the label off the pixel value; shift=1 makes it always wrong."""

    def score(x):
        y = (x.mean(dim=(1, 2, 3)) * 255 / 40).round().long()
        return torch.nn.functional.one_hot((y + shift) % 3, 3).float()

    return score


@pytest.mark.parametrize("transforms", ["none", "jpeg"])
def test_evaluate_exact_on_constructed_models(transforms):
    labels = [0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 2]
    names = ["bus", "car", "cat"]
    res = evaluate(_label_images(labels), [names[y] for y in labels],
                   {"right": _oracle(0), "wrong": _oracle(1)}, names, transforms=transforms,
                   grids=50, seed=3)
    rows = {(r["model"], r["view"]): r for r in res["results"]}
    assert len(rows) == 2 * (1 if transforms == "none" else 2)
    for (model, _), r in rows.items():
        expected = 1.0 if model == "right" else 0.0
        assert r["accuracy"] == expected and r["grid_solve_rate"] == expected
    assert res["images"] == len(labels) and res["grids"] == 50


def test_evaluate_leaves_unreadable_images_out():
    labels = [0, 1, 2, 0, 1, 2]
    images: list = _label_images(labels)
    images[2] = None
    res = evaluate(images, [["bus", "car", "cat"][y] for y in labels], {"right": _oracle(0)},
                   ["bus", "car", "cat"], grids=10)
    assert res["images"] == 5 and res["skipped"] == 1
    assert res["results"][0]["accuracy"] == 1.0


def _folder(root, n=2):
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
    res = evaluate_folder(_folder(tmp_path / "in"), [name, str(export_dir)], grids=20,
                          device="cpu")
    assert res["source"] == "folder" and res["input"] == str(tmp_path / "in")
    assert res["label_set"] == ["cat", "dog"] and res["images"] == 4 and res["skipped"] == 1
    assert len(res["unreadable"]) == 1 and "broken.png" in res["unreadable"][0]
    by_model = {r["model"]: r for r in res["results"]}
    assert len(by_model) == 2
    torch_row, onnx_row = (by_model[k] for k in sorted(by_model, key=lambda k: "onnx" in k))
    assert "(fp32 onnx)" in onnx_row["model"]
    assert torch_row["accuracy"] == onnx_row["accuracy"]
    json.dumps(res)  # the CLI prints it as JSON


def test_eval_set_of_an_advx_run(tmp_path):
    out = tmp_path / "run"
    (out / "cat").mkdir(parents=True)
    records = [{"path": "cat/b.png", "status": "fooled", "output": "cat/b.png", "label": "cat"},
               {"path": "cat/a.png", "status": "unfooled", "output": "cat/a.png", "label": "cat"},
               {"path": "cat/c.png", "status": "error", "label": "cat"}]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps({"label_set": ["cat", "dog"]}))
    data = load_eval_set(out, None, None)
    assert data.source == "advx run" and data.label_set == ("cat", "dog")
    assert data.paths == [out / "cat/a.png", out / "cat/b.png"] and data.labels == ["cat"] * 2
    assert load_eval_set(out, None, ["dog", "cat"]).label_set == ("dog", "cat")
    with pytest.raises(RunError, match="--labels is for labelled input folders"):
        load_eval_set(out, tmp_path / "labels.csv", None)
    with pytest.raises(RunError, match="not in the label set"):
        load_eval_set(out, None, ["dog", "bus"])


def test_scorer_of_an_export_over_other_labels_is_refused(tiny_models, tmp_path):
    export_classifier(create_classifier(tiny_models["timm"], ("cat", "dog")), tmp_path)
    name, score = load_scorer(str(tmp_path), ("dog", "cat"), device="cpu")
    assert name.endswith("(fp32 onnx)") and score(torch.rand(2, 3, 24, 24)).shape == (2, 2)
    with pytest.raises(RunError, match="re-export it with --labels cat,bus"):
        load_scorer(str(tmp_path), ("cat", "bus"), device="cpu")


def test_eval_of_a_run_finds_its_label_map_from_another_directory(tmp_path, monkeypatch):
    from advx.engine.config import HardenConfig
    from advx.engine.evaluate import run_label_map
    from advx.engine.folder.run import HardenJob, run_info

    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.json").write_text(json.dumps({"kitty": ["tabby"]}))
    monkeypatch.chdir(tmp_path / "maps")
    job = HardenJob(tmp_path, tmp_path / "run", config=HardenConfig(), label_map=Path("m.json"))
    info = run_info(job, ("kitty", "dog"))
    assert info["label_map"] == str(tmp_path / "maps" / "m.json")  # absolute
    assert info["label_map_entries"] == {"kitty": ["tabby"]}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(info))
    (tmp_path / "maps" / "m.json").unlink()  # the map file itself is gone
    monkeypatch.chdir(tmp_path)
    assert run_label_map(tmp_path / "run") == {"kitty": ["tabby"]}
    assert run_label_map(tmp_path) is None
