"""Labels for ImageNet classifiers: the built-in CAPTCHA vocabularies, --label-map files, labels
ImageNet cannot express, and binary challenges (a folder holding one label)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advx.cli.main import cli
from advx.export.zoo import LabelMapError, create_classifier, load_label_map
from advx.export.zoo.labels import (
    CAPTCHA_LABEL_MAP,
    LABEL_SYNONYMS,
    UNEXPRESSIBLE,
    imagenet_classes,
    imagenet_descriptions,
)

RECAPTCHA = ("bicycle", "boat", "bridge", "bus", "car", "chimney", "crosswalk", "hydrant",
             "motorcycle", "mountain", "palm", "parking meter", "stairs", "taxi", "tractor",
             "traffic light", "truck")
HCAPTCHA = ("airplane", "train", "boat", "bus", "truck", "motorcycle", "bicycle", "dog", "cat",
            "bird", "horse", "elephant", "bear", "zebra", "lion", "tiger", "fox", "monkey",
            "fish", "frog", "turtle", "snake", "butterfly", "bee", "duck", "owl", "penguin",
            "umbrella", "chair", "clock", "bottle", "lighthouse", "tent", "person", "flower",
            "building")


def test_common_vocabularies_map_or_say_why():
    for label in set(RECAPTCHA) | set(HCAPTCHA):
        if label in UNEXPRESSIBLE:
            with pytest.raises(LabelMapError, match="ImageNet has no class for"):
                imagenet_classes(label)
        else:
            classes = imagenet_classes(label)
            assert classes and all(0 <= c < 1000 for c in classes), label
    expressible = [lab for lab in RECAPTCHA if lab not in UNEXPRESSIBLE]
    assert set(RECAPTCHA) - set(expressible) == {"chimney", "crosswalk", "hydrant", "palm",
                                                  "stairs"}
    for synonym, label in LABEL_SYNONYMS.items():
        assert imagenet_classes(synonym) == imagenet_classes(label), synonym


def test_unexpressible_labels_point_to_solvers_and_zero_shot():
    # ("tree" must not fall through to the ImageNet class "tree frog")
    for label in ("crosswalk", "stairs", "chimney", "hydrant", "fire_hydrant", "tree"):
        with pytest.raises(LabelMapError) as err:
            imagenet_classes(label)
        msg = str(err.value)
        assert "onnx:SPEC.json" in msg and "zero-shot" in msg and "--label-map" in msg


def test_person_flower_building_are_real_imagenet_classes():
    descs = imagenet_descriptions()
    assert {descs[i].split(",")[0] for i in imagenet_classes("person")} == {
        "groom", "scuba diver", "ballplayer"}
    assert "daisy" in {descs[i].split(",")[0] for i in imagenet_classes("flower")}
    assert "church" in {descs[i].split(",")[0] for i in imagenet_classes("building")}
    clf = create_classifier("effnet-lite0", ("flower", "person", "building"))
    assert clf.labels == ("flower", "person", "building")


def test_label_map_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"flower": ["daisy", "yellow lady's slipper", "rapeseed"],
                                "scooter": ["moped", 670], "big cat": ["286..293"],
                                "Crosswalk": ["street sign"]}))
    lmap = load_label_map(path)
    assert lmap["scooter"] == (665, 670)
    assert lmap["big cat"] == tuple(range(286, 294))
    assert imagenet_classes("crosswalk", lmap) == (919,), "a user map comes before the refusal"
    assert imagenet_classes("Big_Cat", lmap) == tuple(range(286, 294))
    clf = create_classifier("effnet-lite0", ("big cat", "scooter"), label_map=lmap)
    assert clf.core.head.class_sets == (tuple(range(286, 294)), (665, 670))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": ["crane"]}, r"'crane' names 2 ImageNet classes \(134 = crane"),
        ({"x": ["dasiy"]}, "did you mean 'daisy'"),
        ({"x": [1000]}, "index 1000 is outside 0..999"),
        ({"x": ["5..2000"]}, "must lie within 0..999"),
        ({"x": []}, "lists no ImageNet class"),
        ({"x": [True]}, "not an ImageNet class name or index"),
        ([], "expected a JSON object"),
    ],
)
def test_bad_label_maps(tmp_path, data, message):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LabelMapError, match=message):
        load_label_map(path)


def test_label_map_unreadable(tmp_path):
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(LabelMapError, match="not valid JSON"):
        load_label_map(tmp_path / "m.json")


def _folder(root, labels, n=1, size=40):
    import skimage.data as sd

    src = np.asarray(Image.fromarray(sd.astronaut()).resize((128, 128)))
    for lab in labels:
        (root / lab).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(src[i * 9 : i * 9 + size, 20 : 20 + size]).save(root / lab / f"{i}.png")
    return root


FAST = ["--steps", "2", "--transforms", "none", "--batch-size", "4", "--quiet",
        "--surrogates", "effnet-lite0", "--verifiers", "effnet-lite1"]


def test_flower_person_building_folder_hardens(tmp_path):
    inp = _folder(tmp_path / "in", ("flower", "person", "building"))
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["label_set"] == ["building", "flower", "person"] and summary["errors"] == 0


def test_label_map_option_and_unexpressible_folder(tmp_path):
    inp = _folder(tmp_path / "in", ("crosswalk", "bus"))
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST])
    assert res.exit_code == 1 and "ImageNet has no class for 'crosswalk'" in res.output
    assert not (tmp_path / "out").exists()
    lmap = tmp_path / "map.json"
    lmap.write_text(json.dumps({"crosswalk": ["street sign"]}))
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST,
                                   "--label-map", str(lmap)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "out"), "--models", "effnet-lite0",
                                   "--label-map", str(lmap), "--transforms", "none", "--json"])
    assert res.exit_code == 0, res.output
    given = json.loads(res.output)
    assert given["label_set"] == ["bus", "crosswalk"]
    # the run's summary holds its label map: the outputs are read with it, file or not
    lmap.unlink()
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "out"), "--models", "effnet-lite0",
                                   "--transforms", "none", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["results"] == given["results"]


def test_one_label_folder_is_a_binary_challenge(tmp_path):
    inp = _folder(tmp_path / "in", ("bus",), n=2)
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST])
    assert res.exit_code == 0, res.output
    label_set = json.loads((tmp_path / "out" / "summary.json").read_text())["label_set"]
    assert label_set[0] == "bus" and "car" in label_set and "bus" not in label_set[1:]
    assert "taxi" in label_set and len(label_set) == len(set(label_set))
    assert set(label_set[1:]) <= set(CAPTCHA_LABEL_MAP)


def test_decoy_must_be_in_the_label_set(tmp_path):
    inp = _folder(tmp_path / "in", ("bus", "car"))
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST,
                                   "--decoy", "boat"])
    assert res.exit_code == 1 and "--decoy 'boat' is not in the label set" in res.output
    res = CliRunner().invoke(cli, ["harden", str(inp), "--out", str(tmp_path / "out"), *FAST,
                                   "--decoy", "bus"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in
               (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {r["label"]: r["target"] for r in records} == {"bus": None, "car": "bus"}
