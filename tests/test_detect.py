"""Detector and segmenter heads (export/solver/detect*.py, detector.py) and the cells task's
rules and loss (engine/tasks/cells): tiny random-init YOLO-, DETR- and mask heads exported to
ONNX, decoded in torch and by onnxruntime alike; the rules on hand-made boxes and masks; the
vanishing loss's gradient; ddddocr's own detector read through its spec as its package reads
it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advx.engine.tasks.cells import challenge as chal
from advx.engine.tasks.cells.models import vanish_loss
from advx.export.solver import DetectorSolver, SolverSpecError, load_solver
from advx.export.solver.detect import Keep, decode_gfl, decode_yolo, grid_points
from advx.export.solver.spec import parse_spec

from tiny import export_graph

CLASSES = ("bus", "car", "cat")
SIZE = 64


class _Trunk(nn.Module):
    def __init__(self, seed: int, out: int, stride: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                 *[m for _ in range(int(math.log2(stride)) - 1)
                                   for m in (nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())],
                                 nn.Conv2d(8, out, 1))

    def forward(self, x):
        return self.net(x)


class TinyYoloV8(nn.Module):
    """[N, 4 + C (+ k), A] (v8 / v11; with ``k`` mask coefficients and [N, k, 16, 16]
    prototypes: YOLO-seg)."""

    def __init__(self, seed: int = 0, k: int = 0) -> None:
        super().__init__()
        self.k = k
        self.head = _Trunk(seed, 4 + len(CLASSES) + k)
        self.proto = nn.Conv2d(3, k, 4, 4) if k else None

    def forward(self, x):
        y = self.head(x).flatten(2)  # [N, 4 + C + k, A]
        a = y.shape[-1]
        g = SIZE // 8
        col = torch.arange(a) % g
        row = torch.arange(a) // g
        cx = (col + torch.sigmoid(y[:, 0])) * 8
        cy = (row + torch.sigmoid(y[:, 1])) * 8
        wh = torch.sigmoid(y[:, 2:4]) * 24 + 4
        cls = torch.sigmoid(y[:, 4 : 4 + len(CLASSES)] * 3)
        out = torch.cat([cx[:, None], cy[:, None], wh, cls, y[:, 4 + len(CLASSES):]], 1)
        if self.k:
            return out, self.proto(x)
        return out


class TinyYoloX(nn.Module):
    """YOLOX's raw output [N, A, 5 + C] over strides 8, 16 and 32 (grid decoding outside)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.levels = nn.ModuleList(_Trunk(seed + i, 5 + len(CLASSES), s)
                                    for i, s in enumerate((8, 16, 32)))

    def forward(self, x):
        outs = []
        for p in self.levels:
            y = p(x).flatten(2).transpose(1, 2)
            outs.append(torch.cat([y[..., :4] * 0.3, torch.sigmoid(y[..., 4:] * 3)], -1))
        return torch.cat(outs, 1)


class TinyDetr(nn.Module):
    """DETR-style: [N, Q, 4] normalised centre boxes and [N, Q, C] logits."""

    def __init__(self, seed: int = 0, queries: int = 6) -> None:
        super().__init__()
        self.trunk = _Trunk(seed, 16)
        self.queries = nn.Parameter(torch.randn(queries, 16))
        self.box, self.cls = nn.Linear(16, 4), nn.Linear(16, len(CLASSES))

    def forward(self, x):
        f = self.trunk(x).mean((2, 3))  # [N, 16]
        q = torch.tanh(self.queries[None] + f[:, None])
        return torch.sigmoid(self.box(q)), self.cls(q) * 3


def _spec(folder: Path, name: str, module: nn.Module, outputs: tuple[str, ...], output: dict,
          **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    export_graph(module, torch.rand(2, 3, SIZE, SIZE), folder / f"{name}.onnx", outputs)
    spec = {"model": f"{name}.onnx",
            "input": {"size": [SIZE, SIZE], "fit": "letterbox", "pad": 0.5},
            "output": output, "labels": list(CLASSES), "threshold": 0.3, **top}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


class TinyHeat(nn.Module):
    """CLIPSeg-style: a logit map per label, [N, C, 16, 16]."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.trunk = _Trunk(seed, len(CLASSES), 4)

    def forward(self, x):
        return self.trunk(x) * 3


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("detectors")
    return {
        "v8": _spec(d, "v8", TinyYoloV8(), ("out",), {"kind": "yolo", "name": "out"}),
        "yolox": _spec(d, "yolox", TinyYoloX(), ("out",),
                       {"kind": "yolo", "layout": "anchors_first", "objectness": True,
                        "strides": [8, 16, 32]}, nms={"per_class": False, "top_class": True}),
        "detr": _spec(d, "detr", TinyDetr(), ("boxes", "logits"),
                      {"kind": "detr", "boxes": "boxes", "logits": "logits"}),
        "seg": _spec(d, "seg", TinyYoloV8(k=4), ("out", "protos"),
                     {"kind": "yolo", "name": "out", "prototypes": "protos",
                      "coefficients": 4}, threshold=0.2),
        "heat": _spec(d, "heat", TinyHeat(), ("logits",), {"kind": "heatmap", "name": "logits"},
                      threshold=0.5),
    }


def _images(n: int = 3, h: int = 48, w: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head", ["v8", "yolox", "detr", "seg", "heat"])
def test_torch_twin_holds_parity_with_onnxruntime(specs, head):
    solver = load_solver(specs[head])
    assert isinstance(solver, DetectorSolver)
    parity = solver.check_parity(_images(4, SIZE, SIZE))
    assert parity.max_abs_diff <= 1e-3 and parity.n == 4
    # the surrogate's logits are the verifier's scores behind the sigmoid
    x = _images(2)
    z = solver.surrogate()(x)
    p = solver.verifier().dense(x).scores
    assert z.shape == p.shape and torch.allclose(torch.sigmoid(z), p, atol=1e-3)


@pytest.mark.parametrize("head", ["v8", "yolox", "detr", "seg", "heat"])
def test_spec_round_trips(specs, head):
    spec = load_solver(specs[head]).spec
    again = parse_spec(json.loads(json.dumps(spec.to_dict())), path=spec.path)
    assert again == spec


def test_verifier_boxes_are_in_the_image_pixels(specs):
    """A letterboxed 48 x 80 image: the kept boxes map back through the letterbox."""
    solver = load_solver(specs["v8"])
    v = solver.verifier()
    x = _images(2, 48, 80)
    dense = v.dense(x)
    det = v(x)
    k = min(SIZE / 48, SIZE / 80)
    top = (SIZE - round(48 * k)) // 2
    for row, d in enumerate(det):
        ref = solver.head.keep(dense, row)
        expect = (ref.boxes - torch.tensor([0, top, 0, top])) / k
        expect = torch.minimum(expect.clamp(min=0), torch.tensor([80.0, 48, 80, 48]))
        assert torch.allclose(d.boxes, expect, atol=1e-4)
        assert bool((d.scores > 0.3).all())


def test_segmenter_masks_lie_inside_their_boxes(specs):
    v = load_solver(specs["seg"]).verifier()
    dets = v(_images(2, SIZE, SIZE, seed=4))
    assert any(len(d.boxes) for d in dets)
    for d in dets:
        assert d.masks is not None and d.masks.shape == (len(d.boxes), SIZE, SIZE)
        for m, (x0, y0, x1, y1) in zip(d.masks, d.boxes.tolist(), strict=True):
            ys, xs = m.nonzero(as_tuple=True)
            if len(xs):
                assert xs.min() >= math.floor(x0) - 1 and xs.max() <= math.ceil(x1)
                assert ys.min() >= math.floor(y0) - 1 and ys.max() <= math.ceil(y1)


def test_heatmap_regions_select_cells_by_the_mask_rule(specs):
    """A segmenter's answer: per label the pixels above the threshold, mapped to the image;
    the cells it selects are those the region covers by 0.5%."""
    solver = load_solver(specs["heat"])
    v = solver.verifier()
    x = _images(2, SIZE, SIZE, seed=2)
    dense = v.dense(x)
    for row, d in enumerate(v(x)):
        for c, m in zip(d.classes.tolist(), d.masks, strict=True):
            heat = torch.nn.functional.interpolate(dense.heatmaps[row : row + 1, c : c + 1],
                                                   size=(SIZE, SIZE), mode="bilinear")[0, 0]
            assert torch.equal(m, heat > 0)  # threshold 0.5: logit 0
            ch = chal.challenge(CLASSES[c], grid=4)
            assert chal.answer(ch, d.boxes[d.classes == c].numpy(), SIZE, SIZE,
                               m[None].numpy()) == chal.mask_cells(m[None].numpy(), 4)


def test_spec_names_the_field_to_fix(specs, tmp_path):
    data = json.loads(specs["v8"].read_text())
    data["model"] = str(specs["v8"].parent / data["model"])
    for change, field in ((lambda d: d.update(labels=["bus", "car"]), "labels"),
                          (lambda d: d["output"].update(name="nope"), "output"),
                          (lambda d: d["output"].update(strides=[8, "x"]), "output.strides"),
                          (lambda d: d["output"].update(anchors=1), "output.anchors"),
                          (lambda d: d["input"].update(align="middle"), "input.align")):
        bad = json.loads(json.dumps(data))
        change(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(SolverSpecError, match=field.replace(".", r"\.")):
            load_solver(path)


# --- decoding by hand -------------------------------------------------------------------------


def test_decode_yolo_raw_grids_by_hand():
    """YOLOX raw: x = (dx + col) * stride, w = exp(dw) * stride; score = obj x cls."""
    strides, size = (8, 16), (32, 32)
    grid, _ = grid_points(strides, size)
    a = len(grid)  # 16 + 4
    out = torch.zeros(1, a, 6)
    i = 5  # stride 8, row 1, col 1
    out[0, i] = torch.tensor([0.5, 0.25, math.log(2), 0.0, 0.8, 0.5])
    d = decode_yolo(out, classes=1, objectness=True, anchors_last=False, strides=strides,
                    size=size)
    cx, cy, w, h = 1.5 * 8, 1.25 * 8, 16, 8
    assert torch.allclose(d.boxes[0, i], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2,
                                                       cy + h / 2]))
    assert d.scores[0, i, 0].item() == pytest.approx(0.4)


def test_decode_gfl_by_hand():
    """Each side is the expected bin times the stride, from the cell centre (offset 0.5)."""
    reg = 3
    n8, n16 = 16, 4  # 32 px: 4x4 and 2x2 cells
    boxes = [torch.full((1, n8, 4 * (reg + 1)), -30.0), torch.full((1, n16, 4 * (reg + 1)), -30.0)]
    # cell 5 of stride 8 (row 1, col 1): left 1 bin, top 1, right 0, bottom 2
    for side, b in enumerate((1, 1, 0, 2)):
        boxes[0][0, 5, side * (reg + 1) + b] = 30.0
    scores = [torch.zeros(1, n8, 2), torch.zeros(1, n16, 2)]
    d = decode_gfl(scores, boxes, strides=(8, 16), size=(32, 32), reg_max=reg, offset=0.5)
    c = 1.5 * 8
    assert torch.allclose(d.boxes[0, 5], torch.tensor([c - 8, c - 8, c, c + 16]), atol=1e-3)


def test_keep_nms_and_top_class():
    from advx.export.solver.detect import Dense

    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]], dtype=torch.float)
    scores = torch.tensor([[[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]]])
    dense = Dense(boxes, scores)
    per_class = Keep(score=0.5, iou=0.5)(dense, 0)
    assert per_class.classes.tolist() == [0, 1, 1]
    assert per_class.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    agnostic = Keep(score=0.5, iou=0.5, per_class=False, top_class=True)(dense, 0)
    assert agnostic.classes.tolist() == [0, 1] and agnostic.scores.tolist() == pytest.approx(
        [0.9, 0.6])


# --- the rules ---------------------------------------------------------------------------------


def test_box_rule_selects_cells_covered_by_more_than_the_share():
    # 4x4 grid on 400 x 400: cells of 100 x 100 (area 10,000); 5% = 500 px
    inside = np.array([[110, 110, 290, 190]])  # cells 6, 7 fully, nothing else
    assert chal.box_cells(inside, 4, 400, 400) == [6, 7]
    at_share = np.array([[0, 0, 100, 105]])  # 500 px of cell 5: exactly 5%, not more
    assert chal.box_cells(at_share, 4, 400, 400) == [1]
    over = np.array([[0, 0, 100, 105.1]])
    assert chal.box_cells(over, 4, 400, 400) == [1, 5]
    assert chal.box_cells(np.zeros((0, 4)), 3, 300, 300) == []


def test_mask_rule_selects_cells_covered_by_half_a_percent():
    masks = np.zeros((1, 300, 300), dtype=bool)  # 3x3: cells 100 x 100; 0.5% = 50 px
    masks[0, 0, 0:50] = True  # cell 1: exactly 50 px
    masks[0, 150, 100:149] = True  # cell 5: 49 px
    assert chal.mask_cells(masks, 3) == [1]
    masks[0, 151, 100] = True
    assert chal.mask_cells(masks, 3) == [1, 5]


def test_points_and_boxes_rules_include_their_edges():
    boxes = np.array([[10, 10, 20, 20]])
    assert chal.covered([[10, 10], [20, 20], [20.5, 15]], boxes) == [True, True, False]
    truth = [[0, 0, 10, 10], [100, 100, 110, 110]]
    half = np.array([[0, 0, 10, 5 / 0.75 * 0.75 * 1.0]])  # IoU 0.5 with the first
    assert chal.found(truth, np.array([[0, 0, 10, 5]])) == [True, False]
    assert chal.found(truth, half * [1, 1, 1, 0.99]) == [False, False]


def test_challenge_parsing_names_the_field():
    ch = chal.parse('{"label": "bus", "grid": 4, "cells": [11, 6, 7, 10]}')
    assert ch == {"label": "bus", "grid": 4, "cells": [6, 7, 10, 11]}
    assert chal.challenge("text", boxes="1 2 3 4; 5 6 7 8")["boxes"] == [[1, 2, 3, 4],
                                                                           [5, 6, 7, 8]]
    for bad, field in (('{"grid": 4}', "label"), ('{"label": "bus", "grid": 5}', "grid"),
                       ('{"label": "bus", "grid": 3, "cells": [10]}', "cells"),
                       ('{"label": "bus", "points": [[1]]}', "points"),
                       ('{"label": "bus", "colour": 1}', "colour"),
                       ('{"label": "bus"}', "a challenge is"), ("[1", "not JSON")):
        with pytest.raises(chal.ChallengeError, match=field):
            chal.parse(bad)


# --- the vanishing loss ------------------------------------------------------------------------


def test_vanishing_loss_reaches_every_candidate_above_the_floor_and_no_other():
    z = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0)) * 3
    z.requires_grad_(True)
    classes = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    floor, margin = 0.5, 1.0
    (g,) = torch.autograd.grad(vanish_loss(z, classes, floor, margin).sum(), z)
    above = z.detach() > floor - margin
    expect = above & classes[:, None, :].bool()
    assert torch.equal(g != 0, expect) and bool((g[expect] == -1).all())


# --- a real detector ---------------------------------------------------------------------------


def test_ddddocr_detector_reads_as_its_package():
    """The built-in ddddocr-det finds the boxes ddddocr's own DdddOcr(det=True).detection
    finds on drawn click captchas (same count; corners within 1.5 px: the package truncates
    them to integers)."""
    ddddocr = pytest.importorskip("ddddocr")
    from PIL import Image

    from advx.engine.tasks.cells.draw import draw_clicks
    from advx.export.zoo.detectors import detector

    items = draw_clicks(4, seed=1)
    x = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255
                     for p, _, _ in items])
    mine = detector("ddddocr-det").verifier()(x)
    det = ddddocr.DdddOcr(det=True, show_ad=False)
    for (px, _, _), d in zip(items, mine, strict=True):
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "PNG")
        ref = np.array(sorted(det.detection(buf.getvalue())), dtype=float)
        got = np.array(sorted(d.boxes.tolist()), dtype=float)
        assert got.shape == ref.shape and len(ref) >= 2
        assert np.abs(got - ref).max() <= 1.5


@pytest.mark.parametrize("head", ["yolox", "detr"])
def test_solver_init_recognises_the_head_and_says_what_it_guessed(specs, head, tmp_path):
    """A template from the graph alone loads as a detector with the same head."""
    from advx.export.solver.template import init_template

    solver = load_solver(specs[head])
    given = solver.spec
    spec, notes = init_template(given.model, tmp_path / "t.json")
    assert spec["output"]["kind"] == given.output.kind
    assert any("output.kind" in n for n in notes) and any(n.startswith("labels") for n in notes)
    spec["model"] = str(given.model)
    parsed = parse_spec(spec, path=tmp_path / "t.json")
    assert DetectorSolver(parsed).tensors == solver.tensors
    assert len(parsed.labels) == len(CLASSES)


def test_a_segmenter_grid_challenge_runs_end_to_end(specs):
    """A 4x4 challenge against the tiny YOLO-seg, attacked with its own gradients: its answer
    is the cells its masks select, the truth its clean answer (truth_from), and every record
    field is filled for every view."""
    from advx import HardenConfig, harden

    solver = load_solver(specs["seg"])
    v = solver.verifier()
    x = _images(6, SIZE, SIZE, seed=7)
    label, row = next((CLASSES[int(d.classes[0])], i) for i, d in enumerate(v(x))
                      if len(d.classes))
    image = (x[row].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    name = f"onnx:{specs['seg']}"
    (r,) = harden([image], [chal.challenge(label, grid=4)], task="cells", surrogates=[name],
                  verifiers=[name], config=HardenConfig(steps=4, verify_every=2,
                                                        transforms="jpeg"))
    key = solver.name  # records name a solver by its display name
    assert r.truth_from == key and r.truth_answer == r.answer_before[key]["own"]
    assert r.truth_answer  # the object covers some cells clean
    assert set(r.answer_after[key]) == {"own", "jpeg75"}
    assert r.right_after[key]["own"] == (r.answer_after[key]["own"] == r.truth_answer)


def test_solver_check_reports_a_detector_and_what_it_keeps(specs, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from advx.cli.main import cli

    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(3).random((48, 80, 3)) * 255).astype(np.uint8)).save(
        image)
    got = CliRunner().invoke(cli, ["solver", "check", str(specs["v8"]), str(image)])
    assert got.exit_code == 0, got.output
    assert "yolo head over 3 labels" in got.output and "torch  converted" in got.output
    n = len(load_solver(specs["v8"]).verifier()(torch.from_numpy(
        np.asarray(Image.open(image)).copy()).permute(2, 0, 1)[None].float() / 255)[0].boxes)
    assert f"x.png: {n} detections" in got.output
    out = tmp_path / "t.json"
    got = CliRunner().invoke(cli, ["solver", "init", str(specs["yolox"].with_suffix(".onnx")),
                                   "--out", str(out)])
    assert got.exit_code == 0 and "output yolo head" in got.output and out.is_file()


@pytest.mark.slow
def test_nanodet_finds_the_cat_and_its_twin_holds_parity():
    """NanoDet-g, once converted by benchmarks/nanodet.py (skipped until then): it finds the
    cat in scikit-image's chelsea through its spec, and its torch twin keeps what onnxruntime
    keeps."""
    import os

    from advx.export.zoo.detectors import detector

    sd = pytest.importorskip("skimage.data")
    # the tests run with a fresh cache folder: the user's converted graph, where it is
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    graph = Path(os.environ.get("ADVX_NANODET") or home / "advx" / "nanodet" / "nanodet.onnx")
    if not graph.is_file():
        pytest.skip(f"{graph} not found: python benchmarks/nanodet.py converts NanoDet-g")
    solver = detector("nanodet", graph)
    x = torch.from_numpy(sd.chelsea().copy()).permute(2, 0, 1)[None].float() / 255
    (d,) = solver.verifier()(x)
    cat = solver.spec.labels.index("cat")
    assert cat in d.classes.tolist()
    assert solver.check_parity(x).max_abs_diff <= 1e-3
