"""The retraining check (``advx adapt``): fine-tuning a solver copy improves it on what it trains
on (a tiny classifier, a tiny CTC model), the retrained copy is written as a spec that loads as
surrogate and verifier and answers as it did in torch, held-out items and their sources never
reach training, and a check goes end to end, resumes, and runs from the command line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tasks import LABEL_SET, case

from advx.engine.adapt import AdaptConfig, adapt_run
from advx.engine.adapt.split import Split, check_disjoint, split_rows
from advx.engine.adapt.train import augment, fit
from advx.engine.errors import RunError
from advx.engine.evaluate import EvalRow
from advx.engine.folder import harden_folder
from advx.engine.tasks import get_task
from advx.export.onnx.retrained import tie_equal_parameters
from advx.export.zoo import create_classifier, create_verifier

from tiny import save_tiny_solver

CPU = torch.device("cpu")


def _tiles(n: int, seed: int = 0, tinted: bool = False) -> list[torch.Tensor]:
    """Noise tiles; ``tinted``: tile i leans to colour channel i % 3 (a learnable label)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.rand(3, 40, 40, generator=g)
        if tinted:
            x = 0.6 * x
            x[i % 3] += 0.4
        out.append((x * 255).round().to(torch.uint8))
    return out


def _accuracy(module, images, truths, labels) -> float:
    with torch.no_grad():
        got = module(torch.stack(images).float() / 255).argmax(1)
    return float(np.mean([labels[i] == t for i, t in zip(got.tolist(), truths, strict=True)]))


@pytest.fixture(scope="module")
def bgr_spec(tmp_path_factory) -> str:
    return f"onnx:{save_tiny_solver(tmp_path_factory.mktemp('solver'), 'bgr', seed=3)}"


def test_fine_tuning_a_tiny_classifier_learns_its_training_items(bgr_spec, tmp_path):
    labels = ("Bicycle", "Bus", "Car")
    images = _tiles(12, tinted=True)
    truths = [labels[i % 3] for i in range(12)]
    trainee = get_task("labels").trainee(bgr_spec, device=CPU, label_set=labels)
    before = _accuracy(trainee.module, images, truths, labels)
    fit(trainee, images, truths, epochs=40, batch_size=6, lr=3e-2, seed=0, device=CPU,
        checkpoint=tmp_path / "c.pt", on_epoch=lambda e: None)
    after = _accuracy(trainee.module, images, truths, labels)
    assert before < 0.7 and after >= 0.9, (before, after)
    # the cached solver the copy came from is untouched
    fresh = create_classifier(bgr_spec, labels)
    assert _accuracy(fresh, images, truths, labels) == before

    # written back as a spec: it loads as a surrogate (torch) and a verifier (onnxruntime),
    # both answering as the trained module does
    example = torch.stack(images[:3]).float() / 255
    name = trainee.save(tmp_path / "model", example, "tiny@12")
    assert name.startswith("onnx:") and Path(name[5:]).is_file()
    x = torch.stack(images).float() / 255
    with torch.no_grad():
        want = trainee.module(x)
        surrogate = create_classifier(name, labels)(x)
    verifier = create_verifier(name, labels)(x)
    assert torch.allclose(surrogate, want, atol=1e-3) and torch.allclose(verifier, want, atol=1e-3)
    assert json.loads(Path(name[5:]).read_text())["name"] == "tiny@12"


class ConvCTC(torch.nn.Module):
    """A tiny fully convolutional CTC reader: a column of class scores per pixel column."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, 1, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, (16, 3), 1, (0, 1)), torch.nn.ReLU(),
            torch.nn.Conv2d(32, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(2).permute(2, 0, 1)  # [T, N, C]


def _tiny_ctc(folder: Path) -> str:
    """ConvCTC (random init) over 'abc7' as an ONNX graph and a ctc spec."""
    from test_text_solvers import CHARSET, _export

    torch.manual_seed(0)
    _export(ConvCTC(len(CHARSET)), torch.rand(1, 1, 16, 40), folder / "ctc.onnx")
    spec = {"model": "ctc.onnx",
            "input": {"name": "image", "size": [16, 40], "channels": "GREY", "range": [0, 1]},
            "output": {"name": "scores", "kind": "ctc", "layout": "TNC", "blank": 0,
                       "charset": CHARSET, "case": "insensitive"}}
    (folder / "ctc.json").write_text(json.dumps(spec))
    return f"onnx:{folder / 'ctc.json'}"


ROWS = {"a": slice(0, 8), "b": slice(8, 16), "c": slice(0, 16), "7": slice(5, 11)}


def _strips(texts: list[str]) -> list[torch.Tensor]:
    """16 x 40 strips, a dark mark per character (its rows say which) in its own 12 columns."""
    g = torch.Generator().manual_seed(1)
    out = []
    for text in texts:
        x = 0.85 + 0.1 * torch.rand(1, 16, 40, generator=g)
        for j, ch in enumerate(text):
            x[:, ROWS[ch], 2 + 12 * j : 8 + 12 * j] = 0.1
        out.append((x.expand(3, -1, -1) * 255).round().to(torch.uint8))
    return out


def test_fine_tuning_a_tiny_ctc_model_learns_to_read_its_training_items(tmp_path):
    name = _tiny_ctc(tmp_path)
    rng = np.random.default_rng(0)
    truths = ["".join(rng.choice(list("abc7"), 3)) for _ in range(8)]
    images = _strips(truths)
    trainee = get_task("text").trainee(name, device=CPU)

    def reads() -> float:
        got = trainee.module.read(torch.stack(images).float() / 255)
        return float(np.mean([g == t.upper() or g.lower() == t for g, t in
                              zip(got, truths, strict=True)]))

    def loss() -> float:
        with torch.no_grad():
            x = torch.stack(images).float() / 255
            return float(trainee.loss(trainee.module(x), truths))

    before, loss_before = reads(), loss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainee, images, truths, epochs=150, batch_size=8, lr=1e-2, seed=0, device=CPU,
            checkpoint=tmp_path / "c.pt", on_epoch=lambda e: None)
    assert loss() < 0.3 * loss_before and reads() > before and reads() >= 0.75, (
        before, reads(), loss_before, loss())
    saved = trainee.save(tmp_path / "model", torch.stack(images[:2]).float() / 255, "ctc@8")
    solver = get_task("text").load_scorers([saved], device="cpu")[0][0]
    assert solver.read(torch.stack(images).float() / 255) == trainee.module.read(
        torch.stack(images).float() / 255)


def test_fine_tuning_a_detector_raises_its_label_where_the_truth_is(tmp_path):
    pytest.importorskip("ddddocr")
    from advx.engine.tasks.cells.draw import draw_clicks

    items = draw_clicks(2, seed=3)
    images = [torch.from_numpy(px).permute(2, 0, 1).contiguous() for px, _, _ in items]
    truths = [{"label": "text", "boxes": boxes} for _, boxes, _ in items]
    trainee = get_task("cells").trainee("ddddocr-det", device=CPU)
    x = torch.stack(images).float() / 255

    def loss() -> float:
        with torch.no_grad():
            return float(trainee.loss(trainee.module(x), truths))

    before = loss()
    fit(trainee, images, truths, epochs=2, batch_size=2, lr=1e-4, seed=0, device=CPU,
        checkpoint=tmp_path / "c.pt", on_epoch=lambda e: None)
    assert loss() < 0.8 * before
    name = trainee.save(tmp_path / "det", x[:1], "det@2")
    verifier = get_task("cells").load_scorers([name], device="cpu")[0][0]
    with torch.no_grad():
        want = trainee.module.model.dense(x).scores
    assert torch.allclose(verifier.dense(x).scores, want, atol=1e-3)


def test_tying_makes_equal_weights_one_parameter():
    a, b, c = (torch.nn.Linear(4, 4) for _ in range(3))
    b.weight.data.copy_(a.weight.data)
    module = torch.nn.Sequential(a, b, c)
    assert tie_equal_parameters(module) == 1
    assert module[0].weight is module[1].weight and module[2].weight is not module[0].weight
    assert len(list(module.parameters())) == 5


def test_augmentation_keeps_shape_and_range_and_follows_its_seed():
    x = torch.rand(4, 3, 20, 30)
    one = augment(x, torch.Generator().manual_seed(1), flip=True)
    two = augment(x, torch.Generator().manual_seed(1), flip=True)
    assert one.shape == x.shape and one.min() >= 0 and one.max() <= 1
    assert torch.equal(one, two) and not torch.equal(one, x)


def _rows(root: Path, paths: list[str], same: dict[str, str] | None = None) -> list[EvalRow]:
    for i, p in enumerate(paths):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        src = (same or {}).get(p)
        data = (root / src).read_bytes() if src else f"item {i}".encode()
        (root / p).write_bytes(data)
    return [EvalRow(p, p, "x", p) for p in paths]


def test_split_holds_out_whole_sources_and_never_shares_an_original(tmp_path):
    # copy.png holds photo3/0.png's bytes: it must go where photo3 goes
    paths = [f"photo{k}/{i}.png" for k in range(5) for i in range(4)] + ["lone.png", "copy.png"]
    rows = _rows(tmp_path, paths, {"copy.png": "photo3/0.png"})
    for seed in range(6):
        s = split_rows(rows, tmp_path, 0.3, seed)
        assert len(s.train) + len(s.held) == len(rows)
        held_groups = {r.clean.split("/")[0] for r in s.held if "/" in r.clean}
        train_groups = {r.clean.split("/")[0] for r in s.train if "/" in r.clean}
        assert not held_groups & train_groups
        together = {"copy.png", "photo3/0.png"}
        assert together <= {r.clean for r in s.held} or together <= {r.clean for r in s.train}
        check_disjoint(s)
        assert s == split_rows(rows, tmp_path, 0.3, seed)  # the same draw each time
    leak = Split(s.train + s.held[:1], s.held, s.digests)
    with pytest.raises(RunError, match="leak"):
        check_disjoint(leak)
    with pytest.raises(RunError, match="one source"):
        split_rows([EvalRow("a", "a/1.png", "x", "photo0/0.png")], tmp_path, 0.5, 0)


@pytest.fixture(scope="module")
def labels_run(tmp_path_factory):
    """The tiny labels case hardened: six tiles in three label folders."""
    c = case("labels")
    tmp = tmp_path_factory.mktemp("adapt")
    inp = tmp / "in"
    inp.mkdir()
    c.write(inp)
    sur, ver = c.models(tmp)
    harden_folder(inp, tmp / "run", task="labels", surrogates=sur, verifiers=ver,
                  config=c.config, label_set=LABEL_SET)
    return tmp, ver[0]


def test_a_check_goes_end_to_end_and_resumes(labels_run, monkeypatch):
    tmp, solver = labels_run
    out = tmp / "check"
    state = adapt_run(tmp / "run", out, solver=solver, echo=lambda m: None,
                      config=AdaptConfig(sizes=(0, 2), epochs=2, lr=1e-2, held_out=0.3))
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["held_out"])
    assert not ({split["sha256"][p] for p in split["train"]}
                & {split["sha256"][p] for p in split["held_out"]})
    sets = {(r["set"], r["copy"], r["trained_on"], r["epoch"]) for r in state["rows"]}
    assert {("held-out", "original", 0, 0), ("held-out", "retrained", 2, 1),
            ("held-out", "retrained", 2, 2), ("fresh", "retrained", 2, 2),
            ("second-round", "retrained", 2, 2),
            ("second-round", "independent", 2, 2)} <= sets
    assert all(r["n"] == len(split["held_out"]) for r in state["rows"] if r["set"] == "held-out")
    assert state["headline"]["sentence"] and (out / "report.html").read_text().count("<svg") == 1
    # the retrained copy was among the second round's models
    second = json.loads((out / "second-round" / "summary.json").read_text())
    assert any("models/n2/solver.json" in m for m in second["surrogates"])
    # a rerun trains and hardens nothing again
    monkeypatch.setattr("advx.engine.adapt.run.fit",
                        lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr("advx.engine.adapt.run.harden_folder",
                        lambda *a, **k: pytest.fail("hardened again"))
    again = adapt_run(tmp / "run", out, solver=solver, echo=lambda m: None,
                      config=AdaptConfig(sizes=(0, 2), epochs=2, lr=1e-2, held_out=0.3))
    assert again["rows"] == state["rows"]
    with pytest.raises(RunError, match="other config"):
        adapt_run(tmp / "run", out, solver=solver, echo=lambda m: None,
                  config=AdaptConfig(sizes=(0, 2), epochs=3, lr=1e-2, held_out=0.3))


def test_a_killed_training_resumes_from_its_last_epoch(bgr_spec, tmp_path):
    labels = ("Bicycle", "Bus", "Car")
    images, truths = _tiles(6, tinted=True), [labels[i % 3] for i in range(6)]
    seen: list[int] = []

    def run(epochs: int, die_at: int | None = None):
        trainee = get_task("labels").trainee(bgr_spec, device=CPU, label_set=labels)

        def on_epoch(e: int) -> None:
            seen.append(e)
            if e == die_at:
                raise KeyboardInterrupt

        fit(trainee, images, truths, epochs=epochs, batch_size=3, lr=1e-2, seed=0,
            device=CPU, checkpoint=tmp_path / "c.pt", on_epoch=on_epoch)
        return trainee.module

    with pytest.raises(KeyboardInterrupt):
        run(3, die_at=2)
    resumed = run(3)
    assert seen == [1, 2, 2, 3]  # epoch 2 is trained again from epoch 1's checkpoint
    (tmp_path / "c.pt").unlink()
    straight = run(3)
    x = torch.stack(images).float() / 255
    with torch.no_grad():
        assert torch.allclose(resumed(x), straight(x), atol=1e-5)


def test_cli_adapt(labels_run):
    from click.testing import CliRunner

    from advx.cli.main import cli

    tmp, solver = labels_run
    res = CliRunner().invoke(cli, ["adapt", str(tmp / "run"), "--out", str(tmp / "cli"),
                                   "--solver", solver, "--sizes", "0,2", "--epochs", "1",
                                   "--held-out", "0.3", "--no-counter-moves"])
    assert res.exit_code == 0, res.output
    assert "hardened" in res.stdout and (tmp / "cli" / "adapt.json").is_file()
    bad = CliRunner().invoke(cli, ["adapt", str(tmp / "run"), "--out", str(tmp / "x"),
                                   "--sizes", "a,b"])
    assert bad.exit_code == 2 and "comma list" in bad.output
    inputs = CliRunner().invoke(cli, ["adapt", str(tmp / "in"), "--out", str(tmp / "y")])
    assert inputs.exit_code == 1 and "not an advx output folder" in inputs.output


def _row(n: int, epoch: int, right: float, clean: float, view: str = "own",
         kind: str = "held-out", copy: str = "retrained") -> dict:
    return {"set": kind, "copy": copy if n else "original", "trained_on": n, "epoch": epoch,
            "view": view, "right_rate": right, "right_clean_rate": clean, "n": 10}


def test_the_headline_names_the_first_size_read_at_half_the_clean_rate():
    from advx.engine.adapt.report import headline

    rows = [_row(0, 0, 0.0, 1.0), _row(50, 1, 0.6, 1.0), _row(50, 2, 0.4, 0.9),  # last epoch
            _row(200, 2, 0.5, 0.9), _row(200, 2, 0.0, 0.9, view="jpeg75"),
            _row(200, 2, 0.2, 0.9, kind="fresh")]
    got = headline({"solver": "s", "task": "text", "rows": rows}, "own")
    assert got["half_clean_at"] == 200 and got["sentence"].startswith("After 200 hardened")
    assert got["fresh/retrained"] == {"right_rate": 0.2, "right_clean_rate": 0.9}
    never = headline({"solver": "s", "task": "text", "rows": rows[:3]}, "own")
    assert never["half_clean_at"] is None and "does not read" in never["sentence"]
    broken = headline({"solver": "s", "task": "text", "rows": [_row(0, 0, 0.6, 1.0)]}, "own")
    assert broken["half_clean_at"] == 0 and "before any retraining" in broken["sentence"]
