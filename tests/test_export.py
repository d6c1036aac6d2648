"""The export stage: ONNX fp32/fp16 per backend, parity, manifest integrity, cache, verifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advx.export import (
    ExportSpec,
    ManifestError,
    OnnxVerifier,
    ParityError,
    Tolerance,
    export_cached,
    export_classifier,
    load_manifest,
)
from advx.export.zoo import create_classifier

from conftest import tiles

LABELS = ("cat", "dog", "bus")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("backend", ["open_clip", "hf", "timm"])
def test_tiny_export_parity(tiny_models, backend, precision, tmp_path):
    import onnx

    clf = create_classifier(tiny_models[backend], LABELS)
    m = export_classifier(clf, tmp_path, ExportSpec(precision=precision))
    model = onnx.load(tmp_path / "model.onnx")
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m.batch_axis == "batch"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 IO at every precision
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    tol = ExportSpec(precision=precision).tolerance
    assert m.parity.max_abs_diff <= tol.atol + tol.rtol * 100
    assert m.parity.decisive_flips == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["labels"] == list(LABELS) and manifest["precision"] == precision
    assert manifest["input_size"] == clf.input_size and manifest["source_model"] == clf.name
    assert manifest["templates"] == ("simple" if backend != "timm" else None)
    # the verifier scores new images of another size and batch like the torch model
    v = OnnxVerifier(tmp_path, device="cpu")
    for n in (1, 5):
        x = torch.rand(n, 3, 37, 51)
        np.testing.assert_allclose(v(x).numpy(), clf(x).detach().numpy(), atol=tol.atol * 2 + 1e-4,
                                   rtol=tol.rtol)


def test_parity_error_names_worst_difference(tiny_models, tmp_path):
    clf = create_classifier(tiny_models["open_clip"], LABELS)
    strict = ExportSpec(precision="fp16",
                        tolerances={"fp16": Tolerance(atol=0.0, rtol=0.0, decisive_gap=0.0)})
    with pytest.raises(ParityError, match=r"differs from torch by up to [0-9.e-]+ \(sample \d+, "
                                          r"label \d+\)") as err:
        export_classifier(clf, tmp_path, strict)
    assert err.value.max_abs_diff > 0
    assert not (tmp_path / "model.onnx").exists(), "a failed export leaves no model behind"


def test_tampered_manifest_is_refused(tiny_models, tmp_path):
    clf = create_classifier(tiny_models["timm"], LABELS)
    export_classifier(clf, tmp_path)
    load_manifest(tmp_path)
    with open(tmp_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"sha256 .* does not match"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError):
        OnnxVerifier(tmp_path)
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        load_manifest(tmp_path / "nowhere")


def test_spec_validation():
    with pytest.raises(ValueError, match="precision"):
        ExportSpec(precision="int8")
    with pytest.raises(ValueError, match="opset"):
        ExportSpec(opset=7)
    spec = ExportSpec()
    assert spec.io_names == ("images", "logits", "batch")  # the names of every export so far
    assert spec.dynamic_axes == {"images": {0: "batch"}, "logits": {0: "batch"}}
    custom = ExportSpec(input_name="pixel_values", output_name="scores", batch_axis="n")
    assert custom.dynamic_axes == {"pixel_values": {0: "n"}, "scores": {0: "n"}}
    for field in ("input_name", "output_name", "batch_axis"):
        for bad in ("", "0x", "a b", "in-put", "x.1", None, 3):
            with pytest.raises(ValueError, match=f"{field} must be a non-empty identifier"):
                ExportSpec(**{field: bad})
    with pytest.raises(ValueError, match="input_name and output_name must differ"):
        ExportSpec(input_name="x", output_name="x")
    with pytest.raises(ValueError, match="parity_batch"):
        ExportSpec(parity_batch=0)
    with pytest.raises(ValueError, match="no entry for precision 'fp16'"):
        ExportSpec(precision="fp16", tolerances={"fp32": spec.tolerance})


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_declared_interface_round_trips(tiny_models, precision, tmp_path):
    """Non-default input, output and batch-axis names reach the graph, the manifest and the
    verifier (onnxruntime); a manifest that no longer matches its graph is refused."""
    import onnx

    spec = ExportSpec(precision=precision, input_name="pixel_values", output_name="scores",
                      batch_axis="n")
    clf = create_classifier(tiny_models["timm"], LABELS)
    m = export_classifier(clf, tmp_path, spec)
    assert (m.input_name, m.output_name, m.batch_axis) == ("pixel_values", "scores", "n")
    graph = onnx.load(tmp_path / "model.onnx").graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("pixel_values", "scores")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "n"
    assert out.type.tensor_type.shape.dim[0].dim_param == "n"
    v = OnnxVerifier(tmp_path, device="cpu")
    x = torch.rand(3, 3, 37, 51)
    tol = spec.tolerance
    np.testing.assert_allclose(v(x).numpy(), clf(x).detach().numpy(), atol=tol.atol * 2 + 1e-4,
                               rtol=tol.rtol)
    # a manifest edited to other names (its sha256 covers only the graph) fails at load
    path = tmp_path / "manifest.json"
    for key, value in (("input_name", "images"), ("output_name", "logits"), ("batch_axis", "b")):
        edited = {**json.loads(path.read_text()), key: value}
        bad = tmp_path / key
        bad.mkdir()
        (bad / "model.onnx").write_bytes((tmp_path / "model.onnx").read_bytes())
        (bad / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ManifestError, match="not the declared"):
            OnnxVerifier(bad, device="cpu")


def test_manifest_without_batch_axis_loads(tiny_models, tmp_path):
    """Manifests written before the batch axis was declarable still load (as 'batch')."""
    export_classifier(create_classifier(tiny_models["timm"], LABELS), tmp_path)
    path = tmp_path / "manifest.json"
    old = json.loads(path.read_text())
    assert old.pop("batch_axis") == "batch"
    path.write_text(json.dumps(old))
    assert load_manifest(tmp_path).batch_axis == "batch"
    assert OnnxVerifier(tmp_path, device="cpu")(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_cache_key_of_the_interface(tiny_models):
    from advx.export.onnx.cache import cache_key

    def key(**kw):
        return cache_key(tiny_models["timm"], LABELS, "simple", ExportSpec(**kw))

    default = key()
    assert key(tolerances={"fp32": ExportSpec().tolerance}) == default  # validation only
    others = {key(input_name="x"), key(output_name="y"), key(batch_axis="n")}
    assert default not in others and len(others) == 3


def test_export_cache_reuses(tiny_models, tmp_path, monkeypatch):
    from advx.export.onnx import cache

    name = tiny_models["timm"]
    first = export_cached(name, LABELS, cache_dir=tmp_path)
    assert (first / "model.onnx").is_file()

    def fail(*a, **k):
        raise AssertionError("a cached export must not be rebuilt")

    monkeypatch.setattr(cache, "export_classifier", fail)
    assert export_cached(name, LABELS, cache_dir=tmp_path) == first
    with pytest.raises(AssertionError):  # other labels or precision: another entry
        export_cached(name, ("cat", "dog"), cache_dir=tmp_path)
    with pytest.raises(AssertionError):
        export_cached(name, LABELS, precision="fp16", cache_dir=tmp_path)
    with pytest.raises(AssertionError):  # other graph names: another entry
        export_cached(name, LABELS, spec=ExportSpec(input_name="pixels"), cache_dir=tmp_path)
    assert export_cached(name, LABELS, spec=ExportSpec(), cache_dir=tmp_path) == first
    with pytest.raises(ValueError, match="contradicts"):
        export_cached(name, LABELS, precision="fp16", spec=ExportSpec(), cache_dir=tmp_path)
    monkeypatch.undo()
    with open(first / "model.onnx", "ab") as f:  # a tampered cache entry is rebuilt
        f.write(b"\0")
    assert export_cached(name, LABELS, cache_dir=tmp_path) == first
    load_manifest(first)


def test_cpu_sessions_block_instead_of_spinning(tiny_models, tmp_path):
    """CPU verifier sessions share two cores with torch: their idle threads must not spin."""
    from advx.export import OnnxVerifier

    v = OnnxVerifier(export_cached(tiny_models["timm"], LABELS, cache_dir=tmp_path),
                     device="cpu")
    opts = v.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_effnet_export_real_photos(precision, photos, tmp_path):
    """Real EfficientNet-Lite weights: torch and the exported ONNX agree on the photos."""
    labels = ("cat", "motorcycle", "espresso", "dog", "car")
    clf = create_classifier("effnet-lite0", labels)
    images = torch.stack([
        torch.from_numpy(t.copy()).permute(2, 0, 1).float() / 255
        for key in ("chelsea", "stereo_motorcycle", "coffee")
        for t in tiles(photos[key][0], n=2)
    ])
    m = export_classifier(clf, tmp_path, ExportSpec(precision=precision), images=images)
    assert m.parity.top1_agreement == 1.0
    v = OnnxVerifier(tmp_path, device="cpu")
    want = ["cat", "cat", "motorcycle", "motorcycle", "espresso", "espresso"]
    assert [labels[i] for i in v(images).argmax(1)] == want
    assert [labels[i] for i in clf(images).argmax(1)] == want
