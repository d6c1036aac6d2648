"""The ONNX -> torch path on OCR graphs: recurrent layers, dynamically quantised graphs, weights
held outside the initializers, graphs cut at their logits; greedy CTC decoding.

Tiny random-init graphs are built here (onnx.helper, or a torch model exported at opset 17) and
every conversion is checked against onnxruntime; the real solvers shipped on PyPI (ddddocr,
captcha-whisperer, rapidocr's PP-OCRv4) run in slow tests when their packages are installed.
"""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from toys import CAPTCHA_ALPHABET, SeededSecrets

from advx.export.solver import SolverParityError
from advx.export.solver.convert import ConversionError, convert, only_output
from advx.export.solver.ctc import greedy_ctc, sequence_parity

# --- helpers ----------------------------------------------------------------------------------


def _run(model: onnx.ModelProto, x: np.ndarray, output: str | None = None) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = output or session.get_outputs()[0].name
    return session.run([name], {session.get_inputs()[0].name: x})[0]


def _torch(model: onnx.ModelProto, output: str, x: np.ndarray) -> torch.Tensor:
    graph = convert(model, output, torch.from_numpy(x))
    with torch.no_grad():
        return graph(torch.from_numpy(x))


def _assert_parity(model: onnx.ModelProto, output: str, x: np.ndarray, atol: float = 1e-5):
    ref = _run(model, x, output)
    got = _torch(model, output, x).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=1e-4)


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _rnn_model(op: str, direction: str, states: str, seed: int = 0,
               **attrs) -> onnx.ModelProto:
    """One LSTM / GRU node on input X; outputs Y, Y_h (and Y_c). ``states``: "absent",
    "constant" (initializers) or "computed" (from X, so they reach the module at run time)."""
    rng = np.random.default_rng(seed)
    steps, batch, size = 5, 2, 4  # hidden size = input size, so a state can be made from X
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if op == "LSTM" else 3
    x_shape = [steps, batch, size]
    inits = [_init("W", (dirs, gates * size, size), rng),
             _init("R", (dirs, gates * size, size), rng),
             _init("B", (dirs, 2 * gates * size), rng)]
    nodes, state_names = [], ["", ""]
    state_shape = (dirs, batch, size)
    if states == "constant":
        inits += [_init("h0", state_shape, rng), _init("c0", state_shape, rng)]
        state_names = ["h0", "c0"]
    elif states == "computed":  # tanh of the mean over time, one copy per direction
        nodes.append(helper.make_node("ReduceMean", ["X"], ["m"], axes=[0], keepdims=1))
        nodes.append(helper.make_node("Tanh", ["m"], ["t"]))
        nodes.append(helper.make_node("Concat", ["t"] * dirs, ["h0"], axis=0))
        nodes.append(helper.make_node("Sigmoid", ["h0"], ["c0"]))
        state_names = ["h0", "c0"]
    inputs = ["X", "W", "R", "B", "", state_names[0]]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        inputs.append(state_names[1])
        outputs.append("Y_c")
    while inputs[-1] == "":
        inputs.pop()
    nodes.append(helper.make_node(op, inputs, outputs, direction=direction, hidden_size=size,
                                  **attrs))
    graph = helper.make_graph(
        nodes, "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _x(shape: tuple[int, ...], seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


class TinyCRNN(torch.nn.Module):
    """Conv features -> bidirectional LSTM over the columns -> per-step class scores [T, N, C]."""

    def __init__(self, classes: int = 7, gru: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.SiLU(),
            torch.nn.Conv2d(8, 8, 3, (2, 1), 1), torch.nn.SiLU())
        rnn = torch.nn.GRU if gru else torch.nn.LSTM
        self.rnn = rnn(8 * 4, 16, bidirectional=True)
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).flatten(1, 2).permute(2, 0, 1)  # [T, N, 32]
        y, _ = self.rnn(f)
        return self.head(y)


def _export(module: torch.nn.Module, x: torch.Tensor, **kwargs) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), f, opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"], **kwargs)
    return onnx.load_from_string(f.getvalue())


@pytest.fixture(scope="module")
def crnn() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _export(TinyCRNN(), torch.rand(1, 1, 16, 40))


def _quantised(model: onnx.ModelProto, tmp_path, **kwargs) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic

    src, dst = tmp_path / "float.onnx", tmp_path / "quant.onnx"
    onnx.save(model, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), **kwargs)
    return onnx.load(str(dst))


def _input_grad(model: onnx.ModelProto, output: str, x: np.ndarray) -> torch.Tensor:
    graph = convert(model, output, torch.from_numpy(x))
    xt = torch.from_numpy(x).requires_grad_(True)
    graph(xt).logsumexp(-1).sum().backward()
    return xt.grad


# --- recurrent layers ---------------------------------------------------------------------------


@pytest.mark.parametrize("states", ["absent", "constant", "computed"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_matches_onnxruntime(direction, states):
    model = _rnn_model("LSTM", direction, states)
    for output in ("Y", "Y_h", "Y_c"):
        _assert_parity(model, output, _x((5, 2, 4)))


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("states", ["absent", "constant", "computed"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_matches_onnxruntime(direction, states, linear_before_reset):
    model = _rnn_model("GRU", direction, states, linear_before_reset=linear_before_reset)
    for output in ("Y", "Y_h"):
        _assert_parity(model, output, _x((5, 2, 4)))


@pytest.mark.parametrize("attrs", [{"clip": 1.0}, {"input_forget": 1}, {"layout": 1},
                                   {"activations": ["Relu", "Tanh", "Tanh"]}])
def test_lstm_unsupported_attributes_name_the_op(attrs):
    model = _rnn_model("LSTM", "forward", "absent", **attrs)
    with pytest.raises(ConversionError, match="LSTM"):
        convert(model, "Y", torch.from_numpy(_x((5, 2, 4))))


@pytest.mark.parametrize("gru", [False, True])
def test_exported_crnn_parity_and_gradient(gru):
    torch.manual_seed(1)
    model = _export(TinyCRNN(gru=gru), torch.rand(1, 1, 16, 40))
    assert {"GRU" if gru else "LSTM", "Conv"} <= {n.op_type for n in model.graph.node}
    x = np.random.default_rng(2).random((1, 1, 16, 40), dtype=np.float32)
    got, ref = _torch(model, "logits", x), torch.from_numpy(_run(model, x))
    parity = sequence_parity(got, ref, blank=0, time_axis=0)
    assert parity.max_abs_diff < 1e-4 and parity.same_strings == 1
    grad = _input_grad(model, "logits", x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- weights outside the initializers -----------------------------------------------------------


def test_weights_listed_as_graph_inputs(crnn):
    """Initializers that are also graph inputs (IR < 4 exporters): the graph still has one
    image input for advx, and onnx2torch folds the weights in."""
    torch.manual_seed(0)
    model = _export(TinyCRNN(), torch.rand(1, 1, 16, 40), keep_initializers_as_inputs=True)
    inits = {t.name for t in model.graph.initializer}
    assert sum(i.name in inits for i in model.graph.input) > 4
    _assert_parity(model, "logits", np.random.default_rng(3).random((1, 1, 16, 40), np.float32))


def test_weights_in_constant_nodes(crnn):
    """paddle2onnx graphs (PP-OCR) hold every weight in a Constant node, no initializers:
    onnx2torch's own converters read weights from the initializers (KeyError)."""
    model = onnx.ModelProto()
    model.CopyFrom(crnn)
    constants = [helper.make_node("Constant", [], [t.name], value=t)
                 for t in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert not model.graph.initializer
    _assert_parity(model, "logits", np.random.default_rng(4).random((1, 1, 16, 40), np.float32))


def test_batch_norm_after_a_reshape_of_unknown_rank():
    """A Reshape whose target length is computed leaves its output without a rank in shape
    inference (as in PP-OCRv4's neck); BatchNormalization after it still converts."""
    rng = np.random.default_rng(5)
    c = 3
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Shape", ["s"], ["rank"]),
        helper.make_node("Sub", ["rank", "two"], ["keep"]),
        helper.make_node("Slice", ["s", "zero", "keep"], ["head"]),
        helper.make_node("Concat", ["head", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("BatchNormalization", ["flat", "g", "b", "m", "v"], ["y"],
                         epsilon=1e-3),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("two", [2]), ("zero", [0]), ("minus1", [-1]))]
    inits += [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("g", rng.random(c) + 0.5), ("b", rng.standard_normal(c)),
        ("m", rng.standard_normal(c)), ("v", rng.random(c) + 0.5))]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    flat = next((v for v in inferred if v.name == "flat"), None)
    assert flat is None or not flat.type.tensor_type.HasField("shape")
    _assert_parity(model, "y", _x((2, c, 4, 5)))
    from advx.export.solver.o2t import RankFreeBatchNorm

    graph = convert(model, "y", torch.from_numpy(_x((2, c, 4, 5))))
    assert any(isinstance(m, RankFreeBatchNorm) for m in graph.modules())


# --- dynamically quantised graphs ---------------------------------------------------------------


@pytest.mark.parametrize(("weight_type", "per_channel"),
                         [("QUInt8", False), ("QInt8", False), ("QInt8", True)])
def test_dynamically_quantised_crnn(crnn, tmp_path, weight_type, per_channel):
    from onnxruntime.quantization import QuantType

    model = _quantised(crnn, tmp_path, weight_type=getattr(QuantType, weight_type),
                       per_channel=per_channel)
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"} <= ops
    x = np.random.default_rng(6).random((1, 1, 16, 40), dtype=np.float32)
    got, ref = _torch(model, "logits", x), torch.from_numpy(_run(model, x))
    parity = sequence_parity(got, ref, blank=0, time_axis=0, atol=1e-4)
    assert parity.same_strings == 1
    grad = _input_grad(model, "logits", x)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.5


def test_quantised_graph_runs_each_sample_alone(crnn, tmp_path):
    """Quantisation ranges are per tensor: a batch of three reads as three single images."""
    model = _quantised(crnn, tmp_path)
    xs = np.random.default_rng(10).random((3, 1, 16, 40), dtype=np.float32)
    xs[1] *= 4  # a wider range than its neighbours: a shared range would change the others
    graph = convert(model, "logits", torch.from_numpy(xs[:1]))
    assert graph.sample_axis == 1  # logits [T, N, C]
    assert graph.alone == "vmap"  # one batched call in which each sample sees a batch of one
    with torch.no_grad():
        got = graph(torch.from_numpy(xs))
    ref = np.concatenate([_run(model, xs[i : i + 1]) for i in range(3)], 1)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    assert convert(crnn, "logits", torch.from_numpy(xs[:1])).sample_axis is None  # float: batched


def test_batching_picks_the_fastest_mode_that_answers_each_sample_as_alone():
    from advx.export.solver.convert import batching, each_alone

    probe = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(0))
    assert batching(lambda x: x.tanh() * 3, probe) == "batch"  # no sample sees another
    def ranged(x):
        return x / x.abs().amax()  # a per-tensor range, as DynamicQuantizeLinear's
    assert batching(ranged, probe) == "vmap"
    lstm = nn.LSTM(6, 3)  # no vmap batching rule: one call per sample
    assert batching(lambda x: lstm(x.transpose(0, 1))[0].transpose(0, 1) + ranged(x)[..., :3],
                    probe) == "loop"
    x = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(1))
    alone = torch.cat([ranged(x[i : i + 1]) for i in range(3)])
    for how in ("vmap", "loop"):
        torch.testing.assert_close(each_alone(ranged, x, 0, how), alone)
    assert not torch.allclose(each_alone(ranged, x, 0, "batch"), alone)


def test_dynamic_quantize_linear_matches_onnxruntime():
    """Same uint8 values, scale and zero point, including all-positive and all-zero inputs."""
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zp"])
    graph = helper.make_graph(
        [node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("q", TensorProto.UINT8), ("scale", TensorProto.FLOAT), ("zp", TensorProto.UINT8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    from advx.export.solver.quant_ops import DynamicQuantize

    for x in (_x((64,), 7, 3.0), np.abs(_x((64,), 8)) + 1, np.zeros(64, np.float32)):
        q, scale, zp = session.run(None, {"x": x})
        tq, tscale, tzp = DynamicQuantize()(torch.from_numpy(x))
        np.testing.assert_array_equal(tq.numpy(), q.astype(np.float32))
        assert float(tzp) == float(zp)
        if x.any():
            assert float(tscale) == pytest.approx(float(scale), rel=1e-6)


@pytest.mark.parametrize("weight_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 2, 0]])
@pytest.mark.parametrize("per_column", [False, True])
def test_integer_ops_match_onnxruntime(weight_dtype, group, pads, per_column):
    """ConvInteger (asymmetric pads, groups, strides; onnxruntime takes only a scalar weight
    zero point) then MatMulInteger (scalar or per-column zero point), exactly."""
    rng = np.random.default_rng(11)
    lo, hi = np.iinfo(weight_dtype).min, np.iinfo(weight_dtype).max
    w = rng.integers(lo, hi + 1, (4, 4 // group, 3, 3)).astype(weight_dtype)
    b = rng.integers(lo, hi + 1, (6, 5)).astype(weight_dtype)
    b_zp = rng.integers(0, 9, 5) if per_column else np.array(3)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("ConvInteger", ["q", "w", "z", "wz"], ["ci"], pads=pads,
                         strides=[2, 1], group=group, kernel_shape=[3, 3]),
        helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["cf", "shape"], ["flat"]),
        helper.make_node("DynamicQuantizeLinear", ["flat"], ["q2", "s2", "z2"]),
        helper.make_node("MatMulInteger", ["q2", "b", "z2", "bz"], ["mi"]),
        helper.make_node("Cast", ["mi"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array(7, weight_dtype), "wz"),
             numpy_helper.from_array(b_zp.astype(weight_dtype), "bz"),
             numpy_helper.from_array(np.array([-1, 6], np.int64), "shape")]
    graph = helper.make_graph(
        nodes, "integer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    _assert_parity(model, "y", _x((1, 4, 6, 6), 12), atol=0)


def test_verifier_keeps_the_quantised_graph(crnn, tmp_path):
    """Conversion works on a copy: the graph onnxruntime runs keeps its integer ops."""
    from onnxruntime.quantization import QuantType

    model = _quantised(crnn, tmp_path, weight_type=QuantType.QUInt8)
    before = model.SerializeToString()
    convert(model, "logits", torch.rand(1, 1, 16, 40))
    assert model.SerializeToString() == before


# --- cutting a graph at its logits --------------------------------------------------------------


def test_cut_at_the_logits_before_an_argmax(crnn):
    """A graph that ends in an ArgMax: cut at the scores it takes the argmax of."""
    model = onnx.ModelProto()
    model.CopyFrom(crnn)
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["ids"], axis=2, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("ids", TensorProto.INT64, None))
    x = np.random.default_rng(9).random((1, 1, 16, 40), dtype=np.float32)
    cut = only_output(model, "logits")
    onnx.checker.check_model(cut)
    assert [o.name for o in cut.graph.output] == ["logits"]
    logits = _run(cut, x)
    np.testing.assert_array_equal(logits.argmax(2), _run(model, x))
    np.testing.assert_allclose(_torch(model, "logits", x).numpy(), logits, atol=1e-5)
    with pytest.raises(ValueError, match="no tensor"):
        only_output(model, "not-a-tensor")


# --- greedy CTC ---------------------------------------------------------------------------------


def _scores(path: list[int], classes: int = 5) -> torch.Tensor:
    """[1, T, C] scores whose best symbol at step t is path[t]."""
    return torch.nn.functional.one_hot(torch.tensor([path]), classes).float()


@pytest.mark.parametrize(("path", "blank", "expected"), [
    ([1, 1, 1, 2, 2], 0, [1, 2]),  # repeats collapse
    ([0, 1, 0, 0, 2, 0], 0, [1, 2]),  # blanks drop
    ([1, 0, 1], 0, [1, 1]),  # a blank between repeats keeps both
    ([1, 1, 0, 1, 1], 0, [1, 1]),
    ([0, 0, 0], 0, []),  # all blank: empty reading
    ([4, 1, 4, 4, 2], 4, [1, 2]),  # blank at the end of the charset (captcha-whisperer)
    ([3, 3, 3], 0, [3]),
])
def test_greedy_ctc(path, blank, expected):
    assert greedy_ctc(_scores(path), blank) == [expected]


def test_greedy_ctc_layouts_and_batch():
    scores = torch.randn(3, 9, 6, generator=torch.Generator().manual_seed(0))
    by_batch = greedy_ctc(scores, 0)
    assert greedy_ctc(scores.transpose(0, 1), 0, time_axis=0) == by_batch
    assert greedy_ctc(scores.softmax(-1), 0) == by_batch  # probabilities decode alike
    assert by_batch == [greedy_ctc(s[None], 0)[0] for s in scores]
    for row in by_batch:  # no blank, no immediate repeat
        assert 0 not in row
    with pytest.raises(ValueError):
        greedy_ctc(scores[0], 0)


def test_sequence_parity_verdicts():
    ref = _scores([1, 0, 2, 2]) * 5
    assert sequence_parity(ref + 1e-4, ref, 0).same_strings == 1
    with pytest.raises(SolverParityError, match="another string on 1 of 1"):
        sequence_parity(_scores([1, 0, 3, 3]) * 5, ref, 0, atol=10, margin=1)
    tie = _scores([1, 0, 1, 2]) * 5
    tie[0, 1, 1] = 5 - 1e-3  # onnxruntime nearly ties blank and "1" at step 1: "11" or "1"
    flipped = tie.clone()
    flipped[0, 1, 1] = 5 + 1e-3
    parity = sequence_parity(flipped, tie, 0, atol=0.01)
    assert (parity.same_strings, parity.undecided) == (0, 1)


# --- the real solvers (slow; skipped where the package is not installed) -------------------------

@pytest.fixture(scope="module")
def captchas() -> list[tuple[str, bytes]]:
    """Eight 160x60 captchas drawn by the captcha package: (text, PNG bytes)."""
    image = pytest.importorskip("captcha.image")
    old = image.secrets
    image.secrets = SeededSecrets(11)
    try:
        rng = random.Random(12)
        gen = image.ImageCaptcha(160, 60)
        out = []
        for _ in range(8):
            text = "".join(rng.choice(CAPTCHA_ALPHABET) for _ in range(rng.choice((4, 5))))
            buf = io.BytesIO()
            gen.generate_image(text).save(buf, "PNG")
            out.append((text, buf.getvalue()))
        return out
    finally:
        image.secrets = old


@pytest.mark.slow
@pytest.mark.parametrize(("graph_file", "beta", "atol", "margin"), [
    ("common.onnx", True, 1e-3, None),
    # quantised: a last-bit difference in a float kernel can move a whole quantisation step
    ("common_old.onnx", False, 2.0, 3.0),
])
def test_ddddocr_parity(captchas, graph_file, beta, atol, margin):
    ddddocr = pytest.importorskip("ddddocr")
    from pathlib import Path

    from PIL import Image

    ocr = ddddocr.DdddOcr(show_ad=False, beta=beta)
    engine = ocr.ocr_engine
    charset = engine.charset_manager.get_charset()
    model = onnx.load(str(Path(ddddocr.__file__).parent / graph_file))
    # its own preprocessing: height 64 keeping the aspect ratio (LANCZOS), grey, /255
    xs = [engine._preprocess_image(Image.open(io.BytesIO(png)), False) for _, png in captchas]
    graph = convert(model, "387", torch.from_numpy(xs[0]))  # "387": logits [T, 1, C]
    for (_, png), x in zip(captchas, xs, strict=True):
        ref = torch.from_numpy(engine.session.run(["387"], {"input1": x})[0])
        with torch.no_grad():
            got = graph(torch.from_numpy(x))
        sequence_parity(got, ref, 0, time_axis=0, atol=atol, margin=margin, name=graph_file)
        read = "".join(charset[i] for i in greedy_ctc(ref, 0, time_axis=0)[0])
        assert read == ocr.classification(png)
    xt = torch.from_numpy(xs[0]).requires_grad_(True)
    graph(xt).logsumexp(-1).sum().backward()
    assert xt.grad.abs().sum() > 0


@pytest.mark.slow
def test_captcha_whisperer_parity(captchas):
    pytest.importorskip("captcha_whisperer")
    from captcha_whisperer.constants import BLANK_INDEX
    from captcha_whisperer.preprocess import preprocess_bytes
    from captcha_whisperer.recognizer import decode, default_model_path

    model = onnx.load(str(default_model_path()))
    x = np.concatenate([preprocess_bytes(png) for _, png in captchas])  # BGR 160x60, 0-255
    ref = torch.from_numpy(_run(model, x, "logits"))  # [T, N, C]
    got = _torch(model, "logits", x)
    parity = sequence_parity(got, ref, BLANK_INDEX, time_axis=0, name="captcha-whisperer")
    assert parity.same_strings == len(captchas)
    assert decode(got.numpy())[0] == decode(ref.numpy())[0]  # the package's own reading


@pytest.mark.slow
def test_ppocr_v4_parity(captchas):
    """rapidocr-onnxruntime asks for the GUI opencv-python, which fights the headless one; only
    its wheel's files are read, where the zoo finds them ($ADVX_PPOCR_REC, which conftest.py
    sets from the wheel it downloads)."""
    import math

    import cv2

    from advx.export.zoo.ocr import ppocr_graph
    from advx.export.zoo.registry import ModelUnavailableError

    try:
        model = onnx.load(str(ppocr_graph()))
    except ModelUnavailableError as e:
        pytest.skip(str(e))

    def preprocess(png: bytes) -> np.ndarray:  # TextRecognizer.resize_norm_img, one image
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        width = int(48 * max(320 / 48, w / h))
        resized = min(width, math.ceil(48 * w / h))
        r = cv2.resize(img, (resized, 48)).astype(np.float32).transpose(2, 0, 1) / 255
        out = np.zeros((3, 48, width), np.float32)
        out[:, :, :resized] = (r - 0.5) / 0.5
        return out[None]

    x = np.concatenate([preprocess(png) for _, png in captchas])
    logits = "p2o.Add.277"  # the input of the final Softmax
    ref = torch.from_numpy(_run(only_output(model, logits), x))
    got = _torch(model, logits, x)
    parity = sequence_parity(got, ref, 0, name="PP-OCRv4")
    assert parity.same_strings == len(captchas)
    probs = torch.from_numpy(_run(model, x))
    assert torch.allclose(got.softmax(-1), probs, atol=1e-3)
