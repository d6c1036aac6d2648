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
