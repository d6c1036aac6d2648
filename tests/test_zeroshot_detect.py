"""Open-vocabulary detectors and segmenter from transformers (export/zoo/zeroshot_*.py) as
cells-task solvers: tiny random-init OWL-ViT, OWLv2, Grounding DINO and CLIPSeg saved with
save_pretrained and loaded as ``hf:DIR``. Their heads against the transformers models' own
forward, the image processors mirrored in torch, the vanishing loss's gradient, queries bound to
the labels asked, detections in the image's pixels, the ONNX exports' parity, a cells run end to
end, and the hub names' offline error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from advx.engine.tasks.cells import challenge as chal
from advx.engine.tasks.cells.models import CellsModels, load_detector, vanish_loss
from advx.export.zoo import ModelUnavailableError, create_classifier, list_entries, parse_name
from advx.export.zoo.zeroshot_detectors import ARCHS, ZeroShotDetector
from advx.export.zoo.zeroshot_onnx import SCORE_ATOL

from tiny import _tiny_bpe

SIZE = 64  # the tiny models' input (patches of 16: 16 OWL boxes)
LABELS = ("bus", "cat")
TYPES = ("owlvit", "owlv2", "grounding-dino", "clipseg")
# the hub entries and the model type each loads as (a new entry without a line here fails)
ENTRY_TYPES = {
    "hf:google/owlv2-base-patch16-ensemble": "owlv2",
    "hf:google/owlvit-base-patch32": "owlvit",
    "hf:IDEA-Research/grounding-dino-tiny": "grounding-dino",
    "hf:CIDAS/clipseg-rd64-refined": "clipseg",
}
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=16)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               image_size=SIZE, patch_size=16)


def _clip_text(out: Path):
    """A CLIP tokenizer cut from open_clip's BPE file, and the text config it fits."""
    from transformers import CLIPTokenizer

    vocab, merges, ids = _tiny_bpe(out)
    eos = ids["<|endoftext|>"]
    return (CLIPTokenizer(str(vocab), str(merges), model_max_length=16),
            dict(_TEXT, vocab_size=len(ids), bos_token_id=ids["<|startoftext|>"],
                 eos_token_id=eos, pad_token_id=eos))


def _grounding_dino(out: Path):
    """A BERT tokenizer over a handwritten vocabulary, a one-stage Swin and a two-layer
    decoder (one layer cannot tie its box heads)."""
    import transformers as T

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "bus", "cat", "car", "dog"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = T.GroundingDinoConfig(
        backbone_config=T.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                     window_size=4, image_size=SIZE,
                                     out_features=["stage1", "stage2"]),
        text_config=dict(model_type="bert", vocab_size=len(words), hidden_size=32,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10,
        num_feature_levels=2, encoder_n_points=2, decoder_n_points=2, max_text_len=32,
        use_pretrained_backbone=False)
    return (T.GroundingDinoForObjectDetection(cfg), T.BertTokenizer(str(out / "vocab.txt")),
            T.GroundingDinoImageProcessor(size={"shortest_edge": SIZE, "longest_edge": 96}))


def save_tiny(model_type: str, out: Path, seed: int = 0) -> Path:
    """A tiny random-init model of ``model_type`` with its tokenizer and image processor."""
    import transformers as T

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    square = {"height": SIZE, "width": SIZE}
    if model_type == "grounding-dino":
        model, tok, proc = _grounding_dino(out)
    else:
        tok, text = _clip_text(out)
        if model_type == "clipseg":
            model = T.CLIPSegForImageSegmentation(T.CLIPSegConfig(
                text_config=text, vision_config=_VISION, projection_dim=32, reduce_dim=16,
                extract_layers=[0], decoder_num_attention_heads=2, decoder_intermediate_size=32))
            proc = T.ViTImageProcessor(size=square, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225])
        elif model_type == "owlv2":
            model = T.Owlv2ForObjectDetection(T.Owlv2Config(
                text_config=text, vision_config=_VISION, projection_dim=32))
            proc = T.Owlv2ImageProcessor(size=square)
        else:
            model = T.OwlViTForObjectDetection(T.OwlViTConfig(
                text_config=text, vision_config=_VISION, projection_dim=32))
            proc = T.OwlViTImageProcessor(size=square, crop_size=square)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zeroshot")
    return {t: save_tiny(t, root / t) for t in TYPES}


def _images(n: int, h: int = 48, w: int = 80, seed: int = 0) -> torch.Tensor:
    """8-bit images (values k / 255), of another size and aspect than the models' input."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255).round() / 255


def _detector(dirs, model_type: str) -> ZeroShotDetector:
    solver = load_detector(f"hf:{dirs[model_type]}")
    assert isinstance(solver, ZeroShotDetector) and solver.model_type == model_type
    return solver


def _candidates(model_type: str, queries: int) -> int:
    if model_type == "clipseg":
        return SIZE * SIZE  # every pixel of the 64 x 64 maps
    if model_type == "grounding-dino":
        return 10 * queries  # its 10 decoder queries, once per prompt
    return (SIZE // 16) ** 2  # one box per patch


def test_every_hub_entry_is_tested_and_serves_the_cells_task():
    hub = {e.name: e for e in list_entries(task="cells") if parse_name(e.name).backend == "hf"}
    assert set(hub) == set(ENTRY_TYPES), f"untested entries: {set(hub) - set(ENTRY_TYPES)}"
    assert set(ENTRY_TYPES.values()) == set(ARCHS) == set(TYPES)
    assert not any(e.offline for e in hub.values())


@pytest.mark.parametrize("model_type", TYPES)
def test_logits_cover_every_candidate_and_query_and_the_gradient_reaches_the_pixels(
        dirs, model_type):
    solver = _detector(dirs, model_type)
    model = solver.surrogate()
    model.set_queries(["cat", "bus", "dog"])
    x = _images(2).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, _candidates(model_type, 3), 3)
    # push every "bus" candidate (column 1) below the floor: the pixels get a gradient
    classes = torch.tensor([[0.0, 1.0, 0.0]] * 2)
    floor = float(np.log(solver.spec.threshold / (1 - solver.spec.threshold)))
    loss = vanish_loss(logits, classes, floor, margin=50.0)
    assert bool((loss < 0).all())
    loss.sum().backward()
    g = x.grad
    assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


@pytest.mark.parametrize("model_type", TYPES)
def test_the_head_gives_what_the_transformers_model_gives(dirs, model_type):
    """The head (text encoded once, the vision path with its gradient) against the model's own
    forward on the same pixel_values and prompts."""
    solver = _detector(dirs, model_type)
    net, model, tok = solver.net, solver.net.model, solver.net.tokenizer
    x = _images(2)
    px = solver.process(x)
    with torch.no_grad():
        got = net(px, net.encode(LABELS))
        if model_type == "grounding-dino":
            for i, label in enumerate(LABELS):
                t = tok([f"{label}."] * 2, return_tensors="pt")
                out = model(pixel_values=px, **t)
                torch.testing.assert_close(got[0][:, 10 * i : 10 * (i + 1), i],
                                           out.logits.amax(-1), atol=1e-5, rtol=0)
                torch.testing.assert_close(got[1][:, 10 * i : 10 * (i + 1)], out.pred_boxes)
            return
        t = tok(list(LABELS) * 2, padding=True, return_tensors="pt")
        if model_type == "clipseg":  # one (image, prompt) pair per row
            out = model(pixel_values=px.repeat_interleave(2, 0), input_ids=t.input_ids,
                        attention_mask=t.attention_mask)
            torch.testing.assert_close(got, out.logits.view(2, 2, SIZE, SIZE), atol=1e-5, rtol=0)
            return
        out = model(pixel_values=px, input_ids=t.input_ids, attention_mask=t.attention_mask)
    torch.testing.assert_close(got[0], out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], out.pred_boxes, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", TYPES)
def test_the_torch_preprocessing_mirrors_the_image_processor(dirs, model_type):
    """Within two 8-bit levels where the processor resizes the 8-bit image (its uint8 kernel
    rounds between passes), exactly where it works in floats (OWLv2)."""
    solver = _detector(dirs, model_type)
    for h, w in ((48, 80), (97, 61), (64, 64)):
        x = _images(2, h, w, seed=h)
        want = solver.process(x)
        got = solver.preprocess(x)
        assert got.shape == want.shape
        levels = ((got - want) * solver.preprocess.std).abs().max() * 255
        assert float(levels) <= (1e-3 if model_type == "owlv2" else 2.01), (h, w)


@pytest.mark.parametrize("model_type", TYPES)
def test_verifier_detections_lie_in_the_image_and_name_the_queries(dirs, model_type):
    solver = _detector(dirs, model_type)
    v = solver.verifier(LABELS)
    assert v.labels == LABELS
    x = _images(3, 48, 80)
    found = 0
    for d in v(x):
        found += len(d.boxes)
        assert bool((d.boxes[:, 0::2] >= 0).all() and (d.boxes[:, 0::2] <= 80).all())
        assert bool((d.boxes[:, 1::2] >= 0).all() and (d.boxes[:, 1::2] <= 48).all())
        assert bool((d.boxes[:, 2:] >= d.boxes[:, :2]).all())
        assert set(d.classes.tolist()) <= {0, 1}
        assert bool((d.scores > solver.spec.threshold).all())
        if model_type == "clipseg":  # a region per label, in the image's pixels
            assert d.masks.shape == (len(d.boxes), 48, 80) and bool(d.masks.any(dim=(1, 2)).all())
    assert found  # random weights keep something: the checks above saw boxes


@pytest.mark.parametrize("model_type", TYPES)
def test_queries_follow_the_labels_given(dirs, model_type):
    """Each label is its own query, scored as if asked alone (OWL, CLIPSeg: the queries do
    not meet; Grounding DINO: one prompt per label)."""
    solver = _detector(dirs, model_type)
    model = solver.surrogate()
    model.set_queries(["cat", "bus", "cat"])
    assert model.labels == ("cat", "bus") and model.classes_of("bus") == (1,)
    assert model.classes_of("dog") == () and model.open_vocabulary
    x = _images(2)
    with torch.no_grad():
        both = model.dense(x)
        model.set_queries(["bus"])
        alone = model.dense(x)
    assert model.labels == ("bus",) and model.classes_of("cat") == ()
    # Grounding DINO: its "bus" prompt's candidates come second
    both_bus = both.logits[:, 10:, 1] if model_type == "grounding-dino" else both.logits[..., 1]
    torch.testing.assert_close(both_bus, alone.logits[..., 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", TYPES)
def test_the_verifier_runs_the_onnx_export_where_it_holds_parity(dirs, model_type):
    solver = _detector(dirs, model_type)
    v = solver.verifier(["cat", "bus", "car"])
    if not ARCHS[model_type].onnx:
        assert v.graph is None  # Grounding DINO: no export (aten::isin), verified in torch
        return
    assert v.graph is not None and v.graph.path.is_file()
    x = _images(3, 48, 80, seed=5)
    torch_scores = solver.decode(solver.net(solver.process(x), v.encoded)).scores
    assert float((v.dense(x).scores - torch_scores).abs().max()) <= SCORE_ATOL


def test_cells_models_accept_any_label_and_bind_the_queries(dirs):
    name = f"hf:{dirs['owlv2']}"
    models = CellsModels([name], [name], device=torch.device("cpu"))
    assert models.problem(chal.challenge("zebra crossing", grid=4)) is None
    models.encode([chal.challenge("zebra crossing", grid=4), chal.challenge("bus", grid=3),
                   chal.challenge("bus", points="5 5")], None)
    assert models.surrogates[0].labels == models.verifiers[0].labels == ("zebra crossing",
                                                                          "bus")
    assert models.ensemble().classes[0].tolist() == [[1, 0], [0, 1], [0, 1]]


@pytest.mark.parametrize("model_type", ["owlv2", "clipseg"])
def test_a_grid_challenge_runs_end_to_end(dirs, model_type):
    """A 4x4 challenge through the Python API, the tiny model as surrogate and verifier: the
    truth is its clean answer, and the record has its answers under every view."""
    from advx import HardenConfig, harden

    name = f"hf:{dirs[model_type]}"
    image = (_images(1, 64, 64, seed=3)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    (r,) = harden([image], [chal.challenge("bus", grid=4)], task="cells", surrogates=[name],
                  verifiers=[name], config=HardenConfig(steps=4, verify_every=2,
                                                        transforms="jpeg"))
    assert r.truth_from == name and r.truth_answer == r.answer_before[name]["own"]
    assert set(r.answer_after[name]) == {"own", "jpeg75"}
    assert r.right_after[name]["own"] == (r.answer_after[name]["own"] == r.truth_answer)
    assert r.image.shape == image.shape and r.status in ("fooled", "unfooled")
    json.dumps([r.answer_before, r.answer_after, r.found_before])  # a record's plain values


def test_hub_names_fail_offline_with_a_clear_error(monkeypatch):
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    for name in ENTRY_TYPES:
        with pytest.raises(ModelUnavailableError, match=r"hf:/path/to/dir"):
            load_detector(name)


def test_a_detector_is_no_classifier_and_a_clip_model_no_detector(dirs, tiny_models):
    with pytest.raises(ValueError, match="cells task"):
        create_classifier(f"hf:{dirs['owlvit']}", LABELS)
    with pytest.raises(ValueError, match="not a detector"):
        load_detector(tiny_models["hf"])


def test_eval_scores_an_open_vocabulary_detector_on_any_label(dirs):
    """``advx eval``'s path: the scorers take any label, and answer with it as their query."""
    from advx.engine.tasks import get_task
    from advx.engine.views.view import views_of

    task = get_task("cells")
    (scorer,), notes = task.load_scorers([f"hf:{dirs['owlvit']}"], device=torch.device("cpu"))
    truths = [chal.challenge("zebra crossing", grid=4, cells="1 2"),
              chal.challenge("bus", points="5 5; 40 20")]
    assert not notes and all(task.eval_problem([scorer], t) is None for t in truths)
    views = views_of("detect")[:2]
    got = task.answers([scorer], list(_images(2)), views, truths)
    assert scorer.labels == ("zebra crossing", "bus")
    for view in views:
        cells, points = got[scorer.name][view.name]
        assert cells["truth"] == [1, 2] and set(cells["answer"]) <= set(range(1, 17))
        assert points["truth"] == [True, True] and len(points["answer"]) == 2
