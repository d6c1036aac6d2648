"""Tiny random-init models of every backend, built offline (no hub, no download)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

TINY_OPEN_CLIP = "advx-tiny-clip"
TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_open_clip(tmp: Path) -> str:
    """Register a tiny open_clip architecture (uses open_clip's bundled tokenizer)."""
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        cfg = tmp / f"{TINY_OPEN_CLIP}.json"
        cfg.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
        open_clip.add_model_config(cfg)
    return TINY_OPEN_CLIP


def save_tiny_open_clip_checkpoint(tmp: Path, seed: int = 0) -> Path:
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(register_tiny_open_clip(tmp), pretrained=None)
    path = tmp / "tiny_open_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def _tiny_bpe(tmp: Path, n_merges: int = 2000) -> tuple[Path, Path, dict[str, int]]:
    """vocab.json / merges.txt for a CLIP tokenizer, cut from open_clip's bundled BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : n_merges + 1]
    merges = [tuple(m.split()) for m in lines]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    vfile, mfile = tmp / "vocab.json", tmp / "merges.txt"
    vfile.write_text(json.dumps(ids))
    mfile.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vfile, mfile, ids


def save_tiny_hf_clip(out: Path, seed: int = 0) -> Path:
    """A tiny random-init transformers CLIPModel + tokenizer + image processor, saved to ``out``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vfile, mfile, ids = _tiny_bpe(out)
    tok = CLIPTokenizer(str(vfile), str(mfile))
    eos = ids["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=len(ids), max_position_embeddings=77,
                         bos_token_id=ids["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
    processor.save_pretrained(out)
    return out


def save_tiny_timm_checkpoint(tmp: Path, arch: str = "test_efficientnet", seed: int = 0) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    path = tmp / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# --- foreign solvers: small ONNX graphs with their specs -----------------------------------------

SOLVER_LABELS = ("Bicycle", "Bus", "Motorcycle", "Car", "Crosswalk")


class TinySolver(torch.nn.Module):
    """A conv + transformer grid solver like the reCAPTCHA ones: [N, 3, 128, 128] -> sigmoid
    probabilities per label and per grid cell [N, labels, 16] and a mask [N, 1, 16, 16]."""

    def __init__(self, seed: int = 0, n_labels: int = len(SOLVER_LABELS)) -> None:
        from torch import nn

        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.GELU(), nn.Conv2d(16, 32, 2, 2))
        self.ln = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln2 = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, n_labels)
        self.mask = nn.Conv2d(32, 1, 1)
        with torch.no_grad():  # decisive answers, as a trained solver gives
            self.head.weight.mul_(8)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.stem(x)
        t = torch.nn.functional.adaptive_avg_pool2d(f, 4).flatten(2).transpose(1, 2)
        h = self.ln(t)
        a, _ = self.attn(h, h, h, need_weights=False)
        t = t + a
        t = t + self.mlp(self.ln2(t))
        return torch.sigmoid(self.head(t)).transpose(1, 2), torch.sigmoid(self.mask(f))


class BgrSolver(torch.nn.Module):
    """A closed-set solver taking BGR pixels in [0, 255] normalised by mean / std outside the
    graph: [N, 3, 96, 96] -> softmax probabilities [N, labels]."""

    def __init__(self, seed: int = 0, n_labels: int = len(SOLVER_LABELS)) -> None:
        from torch import nn

        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU6(), nn.Conv2d(8, 16, 3, 2),
                                 nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(16, n_labels))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) * 4).softmax(-1)


BGR_MEAN, BGR_STD = (103.5, 116.3, 123.7), (57.4, 57.1, 58.4)


def export_graph(module: torch.nn.Module, example: torch.Tensor, path: Path,
                 outputs: tuple[str, ...], input_name: str = "image", opset: int = 17) -> Path:
    import warnings

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=list(outputs),
                              dynamic_axes={input_name: {0: "n"}, **{o: {0: "n"} for o in outputs}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


def save_tiny_solver(out: Path, variant: str = "grid", seed: int = 0, **spec_overrides) -> Path:
    """A tiny foreign solver graph and its hand-written spec; returns the spec's path.

    ``grid``: TinySolver (multi-label, per-cell sigmoid, a second mask output, RGB [0, 1]);
    ``bgr``: BgrSolver (closed-set softmax, BGR [0, 255] with mean / std, 96 px).
    """
    out.mkdir(parents=True, exist_ok=True)
    if variant == "grid":
        export_graph(TinySolver(seed), torch.rand(2, 3, 128, 128), out / "grid.onnx",
                     ("probs", "masks"))
        spec = {"model": "grid.onnx",
                "input": {"name": "image", "size": [128, 128], "layout": "NCHW",
                          "dtype": "float32", "range": [0, 1], "mean": [0, 0, 0],
                          "std": [1, 1, 1], "channels": "RGB", "resize": "bilinear",
                          "antialias": False, "crop": 1.0},
                "output": {"name": "probs", "kind": "multilabel", "label_axis": 1,
                           "reduce": "max"},
                "labels": list(SOLVER_LABELS),
                "label_map": {"motorcycle": "Motorcycle"},
                "threshold": 0.5}
    elif variant == "bgr":
        export_graph(BgrSolver(seed), torch.rand(2, 3, 96, 96) * 255, out / "bgr.onnx",
                     ("probs",))
        spec = {"model": "bgr.onnx",
                "input": {"name": "image", "size": [96, 96], "layout": "NCHW",
                          "dtype": "float32", "range": [0, 255], "mean": list(BGR_MEAN),
                          "std": list(BGR_STD), "channels": "BGR", "resize": "bicubic",
                          "antialias": True, "crop": 0.875},
                "output": {"name": "probs", "kind": "softmax", "label_axis": 1},
                "labels": list(SOLVER_LABELS)}
    else:
        raise ValueError(variant)
    for key, value in spec_overrides.items():
        section, _, field = key.partition("__")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    path = out / f"{variant}.json"
    path.write_text(json.dumps(spec, indent=2))
    return path
