"""The model zoo: name grammar, every backend on tiny models, label maps, real EfficientNet-Lite."""

from __future__ import annotations

import pickle

import pytest
import torch

from advx.export.zoo import (
    CAPTCHA_LABEL_MAP,
    LabelMapError,
    ModelNameError,
    ModelUnavailableError,
    binary_label_set,
    create_classifier,
    list_backends,
    list_entries,
    parse_name,
)
from advx.export.zoo.labels import imagenet_classes
from advx.export.zoo.zeroshot import label_embeddings

from conftest import tiles

LABELS = ("cat", "dog", "bus")

# How each registry entry is tested. Entries with hub weights cannot be downloaded here; their
# backend is exercised on a tiny random-init model of the same backend, and their name must parse
# and name a real architecture/tag. A new entry without a line here fails test_every_entry_tested.
ENTRY_TESTS = {
    "effnet-lite0": "real weights: test_effnet_real_photos",
    "effnet-lite1": "real weights: test_effnet_real_photos",
    "effnet-lite2": "real weights: test_effnet_real_photos",
    "open_clip:ViT-B-32/laion2b_s34b_b79k": "open_clip",
    "open_clip:ViT-B-16/laion2b_s34b_b88k": "open_clip",
    "open_clip:RN50/openai": "open_clip",
    "open_clip:ViT-B-32-quickgelu/metaclip_400m": "open_clip",
    "open_clip:EVA02-B-16/merged2b_s8b_b131k": "open_clip",
    "open_clip:ViT-B-16-SigLIP/webli": "open_clip",
    "hf:openai/clip-vit-base-patch32": "hf",
    "hf:google/siglip-base-patch16-224": "hf",
    "hf:facebook/metaclip-b32-400m": "hf",
    "timm:convnext_base.fb_in22k_ft_in1k": "timm",
    "timm:resnet50.a1_in1k": "timm",
}


def test_every_entry_tested(tiny_models):
    # image entries here; text entries in tests/test_text_solvers.py (each with its slow test)
    names = {e.name for e in list_entries(task="image")}
    assert names == set(ENTRY_TESTS), f"untested entries: {names - set(ENTRY_TESTS)}"
    assert set(list_backends()) == set(tiny_models), "every backend needs a tiny test model"
    for name, how in ENTRY_TESTS.items():
        if not how.startswith("real"):
            assert parse_name(name).backend == how


def test_hub_entries_name_real_architectures_and_tags():
    import open_clip
    import timm

    pretrained = set(open_clip.list_pretrained())
    for name in ENTRY_TESTS:
        ref = parse_name(name)
        if ref.backend == "open_clip":
            assert (ref.arch, ref.weights) in pretrained, name
        elif ref.backend == "timm":
            assert ref.arch in timm.list_pretrained(), name


@pytest.mark.parametrize(
    ("name", "backend", "arch", "weights"),
    [
        ("open_clip:ViT-B-32/laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("open_clip:RN50/none", "open_clip", "RN50", "none"),
        ("open_clip:ViT-B-32//models/ckpt.pt", "open_clip", "ViT-B-32", "/models/ckpt.pt"),
        ("openclip:RN50/openai", "open_clip", "RN50", "openai"),
        ("hf:openai/clip-vit-base-patch32", "hf", "openai/clip-vit-base-patch32", None),
        ("timm:convnext_base.fb_in22k_ft_in1k", "timm", "convnext_base.fb_in22k_ft_in1k", None),
        ("effnet-lite0", "alias", "effnet-lite0", None),
        ("onnx:solvers/re captcha.json", "onnx", "solvers/re captcha.json", None),
        ("onnx:C:/solvers/x.json", "onnx", "C:/solvers/x.json", None),
    ],
)
def test_parse_name(name, backend, arch, weights):
    ref = parse_name(name)
    assert (ref.backend, ref.arch, ref.weights) == (backend, arch, weights)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("", "empty model name"),
        ("efnet-lite0", "advx models"),
        ("effnetlite0", "Did you mean 'effnet-lite0'"),
        ("tflite:foo", "unknown backend 'tflite'"),
        ("onnx:", "names no model"),
        ("timm:", "names no model"),
        ("open_clip:ViT-B-32/", "expected open_clip:ARCH[/WEIGHTS]"),
    ],
)
def test_bad_names_say_how_to_fix(name, hint):
    with pytest.raises(ModelNameError, match=hint.replace("(", r"\(").replace("[", r"\[")):
        parse_name(name)


def test_bad_architecture_and_missing_tag():
    with pytest.raises(ModelNameError, match="Did you mean ViT-B-32"):
        create_classifier("open_clip:ViT-B-33/openai", LABELS)
    with pytest.raises(ModelNameError, match="laion2b_s34b_b79k"):
        create_classifier("open_clip:ViT-B-32", LABELS)
    with pytest.raises(ModelNameError, match="unknown timm model"):
        create_classifier("timm:resnet5000", LABELS)


def test_offline_download_errors_name_a_local_alternative(monkeypatch):
    import open_clip
    import timm
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ModelUnavailableError, match=r"open_clip:RN50/path/to/"):
        create_classifier("open_clip:RN50/openai", LABELS)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)  # read first
    with pytest.raises(ModelUnavailableError, match=r"hf:/path/to/dir"):
        create_classifier("hf:openai/clip-vit-base-patch32", LABELS)
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelUnavailableError, match=r"timm:resnet50.a1_in1k/path/to/"):
        create_classifier("timm:resnet50.a1_in1k", LABELS)


@pytest.mark.parametrize("backend", ["open_clip", "hf", "timm", "onnx"])
def test_tiny_backend_interface(tiny_models, backend):
    clf = create_classifier(tiny_models[backend], LABELS)
    assert clf.labels == LABELS
    for shape in [(2, 3, 48, 40), (1, 3, clf.input_size, clf.input_size), (3, 3, 17, 90)]:
        x = torch.rand(shape, requires_grad=True)
        logits = clf(x)
        assert logits.shape == (shape[0], len(LABELS)) and logits.dtype == torch.float32
        (g,) = torch.autograd.grad(logits.sum(), x)  # a solver may not know every label
        assert g.abs().sum() > 0, "gradients must flow through preprocessing"
    # deterministic: same input, same logits
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(clf(x), clf(x))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        clf(torch.rand(3, 32, 32))


def test_local_checkpoints_load_exactly(tiny_models):
    for backend in ("open_clip", "timm", "hf", "onnx"):
        a = create_classifier(tiny_models[backend], LABELS)
        b = create_classifier(tiny_models[backend], LABELS)
        x = torch.rand(2, 3, 40, 40)
        assert torch.equal(a(x), b(x)), backend


def test_unsafe_pickle_is_refused(tmp_path, tiny_models):
    from advx.export.zoo.backends import load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(ModelUnavailableError, match="weights_only"):
        load_state_dict(path)
    arch = tiny_models["open_clip"].split(":")[1].split("/")[0]
    with pytest.raises(ModelUnavailableError):
        create_classifier(f"open_clip:{arch}/{path}", LABELS)


def test_zero_shot_head_and_cache(tiny_models):
    from advx.export.zoo import build_backbone

    clf = create_classifier(tiny_models["open_clip"], LABELS)
    feats = clf.core.head.label_features
    assert torch.allclose(feats.norm(dim=-1), torch.ones(len(LABELS)), atol=1e-6)
    backbone = build_backbone(parse_name(tiny_models["open_clip"]))
    calls = []
    encode = backbone.encode_text
    backbone.encode_text = lambda p: calls.append(p) or encode(p)
    e1 = label_embeddings(backbone, ["zebra", "ox"], "openai")
    e2 = label_embeddings(backbone, ["zebra", "ox"], "openai")
    assert torch.equal(e1, e2) and len(calls) == 2  # cached: encoded once per label
    assert len(calls[0]) == 80  # the CLIP paper's ImageNet templates
    e3 = label_embeddings(backbone, ["zebra", "ox"], "photo")
    assert not torch.equal(e1, e3)
    with pytest.raises(ValueError, match="unknown template set"):
        label_embeddings(backbone, ["zebra"], "nope")


def test_label_map():
    for label in CAPTCHA_LABEL_MAP:
        assert imagenet_classes(label), label
    assert imagenet_classes("bus") == (654, 779, 874)
    assert imagenet_classes("traffic_light") == (920,)
    assert len(imagenet_classes("dog")) == 118
    assert imagenet_classes("espresso") == (967,)  # fallback: an ImageNet class name
    with pytest.raises(LabelMapError, match="maps to no ImageNet class"):
        imagenet_classes("xyzzy")
    with pytest.raises(LabelMapError):
        create_classifier("effnet-lite0", ("cat", "xyzzy"))


def test_binary_challenge_label_set():
    labels = binary_label_set("bus")
    assert labels[0] == "bus" and "bus" not in labels[1:] and "car" in labels
    assert "taxi" in binary_label_set("bus")
    assert "taxi" not in binary_label_set("car")  # overlapping classes are not negatives
    assert binary_label_set("cat", ["dog", "cat"]) == ("cat", "dog")


def test_effnet_sha_check(monkeypatch):
    from advx.export.zoo import backends

    monkeypatch.setattr(backends, "sha256_file", lambda path: "0" * 64)
    with pytest.raises(ModelUnavailableError, match="sha256"):
        create_classifier("effnet-lite2", LABELS)


@pytest.mark.parametrize("name", ["effnet-lite0", "effnet-lite1", "effnet-lite2"])
def test_effnet_real_photos(name, photos):
    """The real offline weights classify the package photos right through the label map."""
    labels = ("cat", "motorcycle", "espresso", "dog", "car", "bus")
    clf = create_classifier(name, labels)
    for key in ("chelsea", "stereo_motorcycle", "coffee"):
        image, label = photos[key]
        for tile in tiles(image, n=2):
            x = torch.from_numpy(tile.copy()).permute(2, 0, 1)[None].float() / 255
            assert clf.labels[int(clf(x).argmax())] == label, (name, key)



def _with_stats(bn: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    bn.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
    bn.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def test_batchnorm_folding_is_exact_or_undone():
    import copy

    import timm
    from torch import nn

    from advx.export.zoo.fold import fold_batchnorm

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # a timm EfficientNet (BatchNormAct2d after each conv): logits and input gradients kept
    net = timm.create_model("test_efficientnet", pretrained=False).eval()
    for i, m in enumerate(net.modules()):
        if isinstance(m, nn.BatchNorm2d):
            _with_stats(m, i)
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded, x) > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    grads = []
    for model in (net, folded):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out[:, 0].sum().backward()
        grads.append((out.detach(), xi.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-3)
    assert fold_batchnorm(folded, x) == 0  # nothing left: folding twice changes nothing

    class Liar(nn.Module):  # conv registered before a norm that reads the input instead
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(z))

    liar = Liar().eval()
    _with_stats(liar.bn, 7)
    ref, weight = liar(x), liar.conv.weight
    assert fold_batchnorm(liar, x) == 0
    assert isinstance(liar.bn, nn.BatchNorm2d) and liar.conv.weight is weight
    assert torch.equal(liar(x), ref)


def test_offline_surrogates_run_folded():
    from advx.export.zoo import create_classifier

    assert create_classifier("effnet-lite0", ("cat", "dog"), device="cpu").folded_layers == 49
